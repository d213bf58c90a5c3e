"""The worker of `python -m serving serve`: one Paddle Serving pipeline server that drains.

Paddle Serving 0.9.0's `PipelineServer.run_server()` keeps its gRPC server in a local variable
and blocks in `wait_for_termination()`, so nothing can stop it gracefully. This module starts
the same two parts itself and keeps hold of both: the gRPC server with Paddle Serving's own
`PipelineServicer` (the DAG of ops), and the HTTP gateway process (Paddle Serving's Go
grpc-gateway, `libproxy_server.so`), which turns each HTTP request into one gRPC call.

The worker ignores SIGTERM, SIGINT and SIGHUP (so does the gateway, which inherits that):
stopping is the supervisor's decision (`serving.supervisor`), even when a signal is aimed at
the worker or its process group. The supervisor asks for a drain with a line on the worker's
stdin (end of file counts as one too). A drain:

1. stops the gRPC server with a grace period: its port closes and new calls are refused at once
   (the gateway answers those HTTP 503, which the router retries on another replica), while the
   calls in flight go on;
2. waits until every call in flight is answered, or the grace period is over (calls still
   running then are cut off);
3. gives the gateway up to `FLUSH_S` to pass the last answers on to its clients, ending early
   once it holds no client connection (a client that sent `Connection: close` has its answer);
4. kills the gateway and exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from concurrent import futures
from pathlib import Path
from typing import Any

from serving.pipeline_service import ServeOptions, build_service
from serving.supervisor import STOP_SIGNALS, die_with_parent

# After the last call is answered, how long the gateway may take to write it to its client
# (milliseconds in practice; a keep-alive client holds its connection open, so this is a cap).
FLUSH_S = 1.0
TCP_ESTABLISHED = "01"


class CallCounter:
    """Calls in flight and calls answered, kept by the gRPC servicer's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self.in_flight = 0
        self.answered = 0

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.answered += 1
            self._done.notify_all()

    def snapshot(self) -> tuple[int, int]:
        """(in flight, answered so far), read together."""
        with self._lock:
            return self.in_flight, self.answered

    def wait_idle(self, timeout: float) -> bool:
        """True once no call is in flight; False if some still are after `timeout` seconds."""
        with self._lock:
            return self._done.wait_for(lambda: self.in_flight == 0, timeout)


def ignore_stop_signals() -> None:
    """Leave stopping to the supervisor; children forked after this inherit it."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def client_connections(pid: int, port: int) -> int:
    """Established TCP connections that process `pid` holds on its local `port` (from /proc)."""
    try:
        inodes = {
            link[len("socket:[") : -1]
            for link in (os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir())
            if link.startswith("socket:[")
        }
    except OSError:  # the process is gone: it holds nothing
        return 0
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = row.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == TCP_ESTABLISHED and fields[9] in inodes:
                    count += 1
    return count


def _run_gateway(pipeline_server: Any, rpc_port: int, http_port: int, parent: int) -> None:
    """The gateway process: dies with the worker, whatever kills the worker."""
    die_with_parent()
    if os.getppid() != parent:  # the worker died before the line above took effect
        os._exit(1)
    pipeline_server._grpc_gateway(rpc_port, http_port)


class DrainableServer:
    """Paddle Serving's gRPC server and HTTP gateway, started so that they can be drained."""

    def __init__(self, pipeline_server: Any) -> None:
        # Private attributes of Paddle Serving 0.9.0's PipelineServer (pinned in requirements).
        if pipeline_server._build_dag_each_worker:
            raise ValueError("build_dag_each_worker (one process per gRPC worker) is not supported")
        self.pipeline_server = pipeline_server
        self.rpc_port: int = pipeline_server._rpc_port
        self.http_port: int = pipeline_server._http_port
        self.calls = CallCounter()
        self.grpc_server: Any = None
        self.gateway: Any = None

    def start(self) -> None:
        """Start the gRPC server (which builds the DAG and its predictors), then the gateway."""
        import grpc
        from paddle_serving_server.pipeline.pipeline_server import PipelineServicer
        from paddle_serving_server.pipeline.proto import pipeline_service_pb2_grpc

        calls = self.calls

        class CountingServicer(PipelineServicer):  # type: ignore[misc]
            def inference(self, request: Any, context: Any) -> Any:
                calls.enter()
                try:
                    return super().inference(request, context)
                finally:
                    calls.leave()

        server = self.pipeline_server
        self.grpc_server = grpc.server(
            # The same options as PipelineServer.run_server: worker_num calls at a time.
            futures.ThreadPoolExecutor(max_workers=server._worker_num),
            options=[
                ("grpc.max_send_message_length", 256 * 1024 * 1024),
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ],
        )
        pipeline_service_pb2_grpc.add_PipelineServiceServicer_to_server(
            CountingServicer(server._name, server._response_op, server._conf), self.grpc_server
        )
        if self.grpc_server.add_insecure_port(f"[::]:{self.rpc_port}") == 0:
            raise SystemExit(f"gRPC port {self.rpc_port} is already in use: choose another")
        self.grpc_server.start()
        # Predictors exist now: whatever signal handlers Paddle installed, stopping stays ours.
        ignore_stop_signals()
        self.gateway = multiprocessing.Process(
            target=_run_gateway,
            args=(server, self.rpc_port, self.http_port, os.getpid()),
            name="grpc-gateway",
            daemon=True,
        )
        self.gateway.start()

    def drain(self, grace_s: float) -> tuple[bool, str]:
        """Steps 1-4 of the module docstring: whether every call in flight was answered, and
        one line saying what happened."""
        started = time.monotonic()
        _, answered_before = self.calls.snapshot()
        self.grpc_server.stop(grace_s)  # refuses new calls from now on; returns at once
        in_flight, answered_at_stop = self.calls.snapshot()
        in_flight += answered_at_stop - answered_before  # any that ended while it stopped
        idle = self.calls.wait_idle(grace_s)
        still_running, answered_after = self.calls.snapshot()
        flush_deadline = time.monotonic() + FLUSH_S
        while time.monotonic() < flush_deadline and self._gateway_has_clients():
            time.sleep(0.02)
        self.stop_gateway()
        took = time.monotonic() - started
        answered = answered_after - answered_before
        cut = "" if idle else f", {still_running} cut off at the grace period ({grace_s:g} s)"
        calls = "call" if in_flight == 1 else "calls"
        return (
            idle,
            f"drained in {took:.2f} s: {in_flight} {calls} in flight, {answered} answered{cut}",
        )

    def _gateway_has_clients(self) -> bool:
        return client_connections(self.gateway.pid, self.http_port) > 0

    def stop_gateway(self) -> None:
        """SIGKILL: it ignores SIGTERM, which is all multiprocessing would send it at exit."""
        if self.gateway is not None:
            self.gateway.kill()
            self.gateway.join()


def say(message: str) -> None:
    with contextlib.suppress(OSError):  # a terminal gone after SIGHUP must not stop the drain
        print(message, file=sys.stderr, flush=True)


def serve_until_drained(options: ServeOptions, workdir: Path, grace_s: float) -> None:
    """Run the server in this process from `workdir` until a drain request, then exit."""
    die_with_parent()  # the supervisor: a worker never outlives it (serving.supervisor)
    ignore_stop_signals()  # stopping is the supervisor's decision, even during the start
    workdir.mkdir(parents=True, exist_ok=True)
    bundle_dir = options.bundle_dir.resolve()
    os.chdir(workdir)  # Paddle Serving writes PipelineServingLogs/ and ProcessInfo.json into cwd
    service = build_service(dataclasses.replace(options, bundle_dir=bundle_dir))
    server = DrainableServer(service._server)
    server.start()
    try:
        say(
            f"serving {bundle_dir} on http://127.0.0.1:{options.http_port} (rpc "
            f"{options.rpc_port}, {options.device}, workdir {workdir}) at {time.strftime('%X')}"
        )
        sys.stdin.buffer.readline()  # a drain request, or end of file
        complete, summary = server.drain(grace_s)
        say(f"serve: worker: {summary}")
        code = 0 if complete else 1
    except BaseException:  # whatever it was, the gateway must not outlive this process
        traceback.print_exc()
        code = 1
    server.stop_gateway()
    # Paddle's threads would hold a normal interpreter exit; everything worth keeping is done.
    os._exit(code)
