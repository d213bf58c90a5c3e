"""`python -m router` as a process: graceful SIGTERM and SIGHUP, a port in use, against in-process
fakes."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.router.fakes import start_fake, url_of
from tests.router.harness import DEMO_BODY, registry
from tests.router.router_process import REPO_ROOT, start_router


@pytest.mark.asyncio
async def test_sigterm_lets_requests_in_flight_finish_and_flushes(tmp_path: Path) -> None:
    fake, server = await start_fake("slow")
    fake.mode, fake.delay_s = "slow", 1.0
    try:
        raw = registry(tmp_path / "logs", [url_of(server)], [url_of(server)])
        raw["backends"]["v1"]["timeout_ms"] = raw["backends"]["v2"]["timeout_ms"] = 5000
        config = tmp_path / "experiments.yaml"
        config.write_text(yaml.safe_dump(raw))
        router = start_router(config, tmp_path / "router.log")
        try:
            async with aiohttp.ClientSession() as session:
                in_flight = asyncio.ensure_future(
                    session.post(f"{router.url}/sentiment/prediction", json=DEMO_BODY)
                )
                await asyncio.wait_for(fake.arrived.wait(), 10)
                router.signal(signal.SIGTERM)
                response = await in_flight
                assert response.status == 200
                assert (await response.json())["value"][1] == "slow"
                response.release()
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, router.wait, 15) == 0
        finally:
            router.stop()
        [line] = (tmp_path / "logs").glob("exposures-*.jsonl")
        [record] = [json.loads(text) for text in line.read_text().splitlines()]
        assert record["status"] == 200
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_bad_registry_at_startup_exits_with_the_problems(tmp_path: Path) -> None:
    config = tmp_path / "experiments.yaml"
    config.write_text("experiments: {x: {route: nope}}\n")
    with pytest.raises(RuntimeError) as caught:
        start_router(config, tmp_path / "router.log")
    assert "experiments.x.route: must be an absolute URL path" in str(caught.value)
    assert "experiments.x.salt: required" in str(caught.value)


def test_a_port_in_use_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    """Another process holds the port: one line naming the port and `--port`, exit 1, and no
    decision record, rollout state or log folder left behind (the port is tried first)."""
    raw = registry(tmp_path / "logs", ["http://127.0.0.1:9"], ["http://127.0.0.1:9"])
    raw["router"]["state_dir"] = str(tmp_path / "state")
    config = tmp_path / "experiments.yaml"
    config.write_text(yaml.safe_dump(raw))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "router", "--config", str(config), "--port", str(port)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert done.returncode == 1
    [line] = done.stderr.splitlines()  # no traceback
    assert line.startswith(f"error: port {port} on 127.0.0.1 is already in use")
    assert "--port" in line
    assert done.stdout == ""
    assert not (tmp_path / "logs").exists()  # no decisions.jsonl, nor anything else
    assert not (tmp_path / "state").exists()
