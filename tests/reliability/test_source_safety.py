"""Nothing in the router's source evaluates, unpickles or shells out (a cheap static guard)."""

from __future__ import annotations

import importlib
import re

import yaml

from tests.reliability.stack import REPO_ROOT

FORBIDDEN = re.compile(
    r"(?<![.\w])(eval|exec|compile)\(|__import__|\bpickle\b|\bmarshal\b|yaml\.load\(|"
    r"yaml\.unsafe_load|yaml\.Loader\b|os\.system|shell=True|\bsubprocess\b|importlib"
)
YAML_LOADER = re.compile(r"yaml\.load\(.*Loader=(\w+)\)")
# `--workers N`: the supervisor starts its workers as `python -m router` processes, an argument
# list it builds itself (no shell), and nothing else in the router starts a process.
WORKER_PROCESSES = re.compile(
    r"asyncio\.subprocess\.(Process|DEVNULL|PIPE)\b|asyncio\.create_subprocess_exec\("
)


def _safe_yaml_load(module: str, line: str) -> bool:
    """`yaml.load(..., Loader=X)` where X is a yaml.SafeLoader (it builds plain data only)."""
    match = YAML_LOADER.search(line)
    if match is None:
        return False
    loader = getattr(importlib.import_module(f"router.{module}"), match.group(1), None)
    return isinstance(loader, type) and issubclass(loader, yaml.SafeLoader)


def test_the_router_source_has_no_eval_or_unsafe_loading() -> None:
    hits = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted((REPO_ROOT / "router").glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if FORBIDDEN.search(line)
        and not _safe_yaml_load(path.stem, line)
        and not (path.name == "server.py" and WORKER_PROCESSES.search(line))
    ]
    assert hits == []


def test_the_workers_are_started_without_a_shell_from_the_routers_own_command() -> None:
    server = (REPO_ROOT / "router" / "server.py").read_text()
    assert "create_subprocess_shell" not in server and "shell=True" not in server
    main = (REPO_ROOT / "router" / "__main__.py").read_text()
    assert '[sys.executable, "-m", "router"' in main
