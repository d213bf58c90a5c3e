"""`python -m serving serve` stops gracefully: SIGTERM drains, then nothing of its tree is left.

Real servers on the demo models (a request of a few thousand rows keeps the model busy for a
second or more), real signals; the supervisor alone also runs under a shell "worker" that
leaves an orphan behind, to show that the subreaper catches what escaped.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest

from serving.launcher import REPO_ROOT, free_port, start_server
from serving.supervisor import EXIT_MARGIN_S, descendants
from tests.support import demo_request

ROWS = 8000  # about 1.5 s of the model on one core of the development machine
IN_FLIGHT = 3


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.05)


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, ...]; [] once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def cpu_seconds(pid: int) -> float:
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def group_members(pgids: set[int]) -> list[int]:
    """Live processes whose process group is one of `pgids`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields and fields[0] != "Z" and int(fields[2]) in pgids:
                members.append(int(entry.name))
    return members


def post(port: int, body: bytes, sent: threading.Event) -> tuple[int, dict[str, Any]]:
    """POST a prediction; `sent` is set once the whole request is on its way."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=180)
    try:
        connection.request(
            "POST", "/sentiment/prediction", body, {"Content-Type": "application/json"}
        )
        sent.set()
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


def test_sigterm_drains_requests_in_flight_and_leaves_no_process(
    demo_models: Path, tmp_path: Path
) -> None:
    grace_s = 60.0  # ample for the slow requests on a loaded machine; the drain ends sooner
    server = start_server(
        demo_models / "sentiment_v1", free_port(), tmp_path / "work", grace_s=grace_s
    )
    try:
        server.wait_ready()
        family = [server.pid, *descendants(server.pid)]
        assert len(family) == 3, "supervisor, Paddle Serving worker, HTTP gateway"
        worker = next(pid for pid in family if int(stat_fields(pid)[1]) == server.pid)
        pgids = {int(stat_fields(pid)[2]) for pid in family}
        bodies = [json.dumps(demo_request(ROWS, seed=i)).encode() for i in range(IN_FLIGHT)]

        busy_before = cpu_seconds(worker)
        sent = [threading.Event() for _ in bodies]
        with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
            replies: list[Future[tuple[int, dict[str, Any]]]] = [
                pool.submit(post, server.http_port, body, flag) for body, flag in zip(bodies, sent)
            ]
            wait_for(lambda: all(flag.is_set() for flag in sent), 60, "requests sent")
            # The model is at work on the first request: the others, sent at the same time,
            # have reached the server too (the drain's log line below says how many).
            wait_for(lambda: cpu_seconds(worker) - busy_before > 0.3, 60, "the model at work")
            signalled = time.monotonic()
            os.kill(server.pid, signal.SIGTERM)
            code = server.process.wait(timeout=grace_s + EXIT_MARGIN_S + 5)
            drain_s = time.monotonic() - signalled
            answers = [reply.result(timeout=10) for reply in replies]
    finally:
        server.stop()  # a no-op when the test got this far

    log = server.log_tail(10)
    answered = sum(
        status == 200 and answer["err_no"] == 0 and len(json.loads(answer["value"][0])) == ROWS
        for status, answer in answers
    )
    drained = re.search(r"(\d+) calls in flight, (\d+) answered", log)
    assert drained, log
    in_flight, answered_in_drain = map(int, drained.groups())
    left = [pid for pid in family if alive(pid)] + group_members(pgids)
    print(
        f"\ndrain: {drain_s:.2f} s from SIGTERM to the supervisor's exit (code {code}); "
        f"{in_flight} of {IN_FLIGHT} requests in flight at SIGTERM, {answered_in_drain} answered "
        f"during the drain, {answered}/{IN_FLIGHT} answered 200 with every row; "
        f"processes left: {len(left)}"
    )
    assert in_flight >= 1 and answered_in_drain == in_flight, log
    assert answered == IN_FLIGHT, answers
    assert code == 0, log
    assert left == [], left
    assert drain_s < grace_s + EXIT_MARGIN_S


@pytest.mark.parametrize("cut_by", ["grace period", "second signal"])
def test_the_grace_period_or_a_second_signal_cuts_the_drain_short(
    demo_models: Path, tmp_path: Path, cut_by: str
) -> None:
    """A drain that takes too long is cut: the supervisor kills and reaps the rest."""
    grace_s = 0.5 if cut_by == "grace period" else 60.0
    server = start_server(
        demo_models / "sentiment_v1", free_port(), tmp_path / "w", grace_s=grace_s
    )
    server.wait_ready()
    family = [server.pid, *descendants(server.pid)]  # parents first: [1] is the worker
    body = json.dumps(demo_request(3 * ROWS, seed=9)).encode()  # longer than 0.5 s
    sent = threading.Event()
    busy_before = cpu_seconds(family[1])
    with ThreadPoolExecutor(max_workers=1) as pool:
        reply = pool.submit(post, server.http_port, body, sent)
        wait_for(sent.is_set, 60, "request sent")
        wait_for(lambda: cpu_seconds(family[1]) - busy_before > 0.2, 60, "the model at work")
        signalled = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        if cut_by == "second signal":
            wait_for(lambda: "draining the worker" in server.log_tail(3), 30, "the drain")
            os.kill(server.pid, signal.SIGINT)
        code = server.process.wait(timeout=30)
        took = time.monotonic() - signalled
        try:
            status, _ = reply.result(timeout=10)
        except (OSError, http.client.HTTPException):
            status = 0  # the connection went with the gateway
    log = server.log_tail(3)
    assert status != 200
    assert code == 1, log
    assert took < 0.5 + EXIT_MARGIN_S + 10
    assert [pid for pid in family if alive(pid)] == []
    if cut_by == "grace period":
        assert "1 cut off at the grace period (0.5 s)" in log, log
    else:
        assert "processes killed after a second signal" in log, log


def test_supervisor_reaps_a_descendant_that_escaped(tmp_path: Path) -> None:
    """A daemon that double-forked away from the worker is reparented to the supervisor (a
    child subreaper), which kills and reaps it before exiting."""
    pid_file = tmp_path / "daemon.pid"
    # The "worker": starts a daemon that leaves its parent, then ignores the drain request.
    worker = f"(setsid sleep 600 & echo $! > {pid_file}) ; exec sleep 600"
    supervisor = subprocess.Popen(
        [sys.executable, "-c", _RUN_SUPERVISOR, worker],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, "daemon")
        daemon = int(pid_file.read_text())
        wait_for(lambda: int(stat_fields(daemon)[1]) == supervisor.pid, 30, "reparented")
        family = [supervisor.pid, *descendants(supervisor.pid)]
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(timeout=30)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    _, errors = supervisor.communicate()
    assert [pid for pid in family if alive(pid)] == []
    assert not alive(daemon)
    assert code == 1  # the grace period ran out: what was left got SIGKILL
    assert "processes killed after the grace period" in errors, errors


_RUN_SUPERVISOR = """
import sys
from serving.supervisor import supervise
sys.exit(supervise(["/bin/sh", "-c", sys.argv[1]], grace_s=0.5))
"""


def test_serve_on_a_busy_port_is_one_line(demo_models: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "serving", "serve", "--model",
             str(demo_models / "sentiment_v1"), "--http-port", str(port)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: port {port} is already in use: choose another with --http-port"
    ]
