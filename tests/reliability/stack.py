"""The real router in front of real backends, for the reliability tests and scripts/soak.py."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import yaml

from tests.router.data import merge_patch
from tests.support import demo_request

REPO_ROOT = Path(__file__).resolve().parents[2]
ROUTE = "/sentiment/prediction"
BODY = json.dumps(demo_request(1)).encode()
SALT = "reliability-2026"


def registry(
    control: list[str],
    treatment: list[str],
    *,
    traffic: float = 50,
    log_dir: str = "logs",
    patch: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """A two-arm registry for the demo route; `patch` is a JSON merge patch over it."""
    raw = {
        "router": {"log_dir": log_dir, "state_dir": "state", "attributes": {"city": "X-City"}},
        "backends": {
            "sentiment-v1": {
                "endpoints": control, "version": "legacy_v1", "timeout_ms": 2000,
                "probe_interval": "200ms",
            },
            "sentiment-v2": {
                "endpoints": treatment, "version": "paddle_new_v2", "timeout_ms": 2000,
                "probe_interval": "200ms",
            },
        },
        "experiments": {
            "sentiment": {
                "route": ROUTE, "salt": SALT, "control": "sentiment-v1",
                "treatment": "sentiment-v2", "traffic": traffic,
            }
        },
    }  # fmt: skip
    merged: dict[str, Any] = merge_patch(raw, patch or {})
    return merged


def write_registry(path: Path, raw: dict[str, Any]) -> Path:
    """Write atomically (the router may be polling the file)."""
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(yaml.safe_dump(raw, sort_keys=False))
    os.replace(scratch, path)
    return path


def read_jsonl(files: list[Path]) -> list[dict[str, Any]]:
    records = []
    for file in sorted(files):
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def exposures(log_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(list(log_dir.glob("exposures-*.jsonl")))


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
        if found == wanted:
            return float(match.group(3))
    return 0.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def listening_on(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port`, from /proc/net/tcp{,6}.

    `0.0.0.0` and `::` mean every interface; read from the kernel, nothing is sent.
    """
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = bytes.fromhex(address)
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, width // 2, 4))
            found.add(str(ipaddress.ip_address(words)))
    return found
