"""The router's layout: small packages whose dependencies run one way, no import cycles.

Every import counts, those inside functions too. A package may import from its own package and
from the layers below it, never from a layer above: the registry knows nothing of requests, the
transport nothing of experiments, the request path nothing of the guard that plugs into it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROUTER = Path(__file__).resolve().parents[2] / "router"
# Lowest first. Modules at the top level of `router/` are layers of their own.
LAYERS = [
    {"records"},
    {"registry"},
    {"experiment"},
    {"transport"},
    {"auth", "responses"},
    {"proxy"},
    {"guard"},
    {"fleet"},
    {"api"},
    {"app"},
    {"server"},
    {"__main__"},
]
MAX_TOP_LEVEL_MODULES = 12


def module_name(path: Path) -> str:
    parts = path.relative_to(ROUTER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The router modules `path` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from router.x import y` imports router.x.y when y is a module
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == "router")
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROUTER.rglob("*.py")}
    return {name: imports_of(path) & set(modules) - {name} for name, path in modules.items()}


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else module
    [index] = [i for i, layer in enumerate(LAYERS) if part in layer]
    return index


def test_every_module_belongs_to_a_layer() -> None:
    for module in graph():
        if module != "router":
            layer_of(module)  # raises for a module no layer names


def test_dependencies_run_one_way() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        if module != "router"
        for target in targets
        if target != "router" and layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, str] = {}  # visiting | done

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "visiting"
        for target in sorted(edges[module]):
            if state.get(target) == "visiting":
                cycle = [*trail[trail.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_a_short_top_level() -> None:
    top = sorted(p.name for p in ROUTER.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The graph is read from the files: an import inside a function counts."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from router.proxy.handler import ProxyHandler\n")
    assert "router.proxy.handler" in imports_of(module)
