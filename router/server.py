"""Run the router until SIGTERM/SIGINT, then shut down gracefully; or, with `--workers N`,
N router processes on one port, supervised.

Before anything else the listen address is checked (`check_listen`): a port already in use is
one `CannotListen` line, raised before the guard reads or writes `state_dir` or a decision is
logged. The SLO guard then starts from the rollout states saved in `state_dir` (it refuses, with
`router.guard.runtime.StartRefused`, a registry that would reshuffle units against them). On a
stop signal the router stops accepting connections, lets requests in flight finish (up to
SHUTDOWN_TIMEOUT_S), closes backend connections, runs the guard's last round (checks due,
decisions, state saves) and flushes every log before exiting.

Several workers (`supervise`): the supervisor checks the port as above and holds it (a socket
bound with SO_REUSEPORT, not listening, `reserve_port`: with port 0 this is where the port is
picked), starts N child processes that each run `serve(..., worker=i)` and listen on that port
with SO_REUSEPORT (the kernel spreads connections over them), and prints the serving line once
every worker listens. It forwards SIGTERM/SIGINT (as SIGTERM) and SIGHUP to the workers, waits
for them to drain, and starts again a worker that dies, after a backoff. A worker that fails to
start the first time stops them all: its error line, exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from aiohttp import web

from router.app import create_app, fast_path_site
from router.guard.runtime import GuardSetup
from router.registry.schema import RouterConfig

log = logging.getLogger("router")

SHUTDOWN_TIMEOUT_S = 10.0

# The supervisor of `--workers N`:
# a worker has this long from its start to listening, or it is killed and counts as failed;
WORKER_START_TIMEOUT_S = 60.0
# this long from the SIGTERM forwarded to it to its exit (it drains within SHUTDOWN_TIMEOUT_S),
# or it is killed;
WORKER_STOP_TIMEOUT_S = 30.0
# the delay before the n-th start in a row of a worker that died (the last one repeats);
RESTART_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
# a worker that served this long before it died starts again from the first delay;
STABLE_AFTER_S = 10.0
# and this many failed starts in a row of a worker, while no other worker listens, end the
# supervisor (exit 1): nothing serves, and a supervisor above it (systemd, Kubernetes) should know.
GIVE_UP_AFTER = 5

# A worker's first line on stdout (a pipe to the supervisor) once it listens:
# `router: worker I listening on http://HOST:PORT`; before that, its start failures' lines.
WORKER_LISTENING = "router: worker {index} listening on http://{host}:{port}"


class CannotListen(Exception):
    """The router cannot listen on its address; the message is one line with the fix."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        if error.errno == errno.EADDRINUSE:
            message = (
                f"port {port} on {host} is already in use: stop the process that holds it, or "
                f"start the router on another port with --port (--port 0 picks a free one)"
            )
        else:
            reason = error.strerror or str(error)
            message = f"cannot listen on {host}:{port}: {reason}; check --host and --port"
        super().__init__(message)


def replica_id(config: RouterConfig, port: int, worker: Optional[int] = None) -> Optional[str]:
    """This process's id in a fleet (router.fleet): `router.fleet.replica`, by default
    `HOSTNAME:PORT`, plus `-wI` for worker I of `--workers N`; None without a fleet."""
    fleet = config.router.fleet
    if fleet is None:
        return None
    base = fleet.replica or f"{socket.gethostname()}:{port}"
    return base if worker is None else f"{base}-w{worker}"


async def serve(
    config: RouterConfig,
    config_path: Optional[Path],
    host: str,
    port: int,
    *,
    watch: bool = True,
    worker: Optional[int] = None,
) -> None:
    """Serve until a stop signal; raises CannotListen or StartRefused (nothing written).

    `worker`: this process is worker `worker` of a supervisor (`supervise`), which checked the
    port and holds it: the router listens with SO_REUSEPORT beside the other workers, and says
    WORKER_LISTENING rather than the serving line."""
    reservation: Optional[PortReservation] = None
    if worker is None:
        await check_listen(host, port)
        fleet = config.router.fleet
        if port == 0 and fleet is not None and fleet.replica is None:
            # The default replica id names the port: pick it before the app is built.
            reservation = reserve_port(host, 0)
            port = reservation.port
    try:
        guard = await GuardSetup.load(config)
        app = create_app(
            config, config_path, watch=watch, guard=guard, replica=replica_id(config, port, worker)
        )
        # The exposure log is the access log: aiohttp's own would double the work per request.
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        try:
            site = fast_path_site(
                runner, host, port, backlog=1024, shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                reuse_port=True if worker is not None or reservation is not None else None,
            )  # fmt: skip
            try:
                await site.start()
            except OSError as exc:  # taken since check_listen: rare, but still one line
                raise CannotListen(host, port, exc) from exc
            if reservation is not None:
                reservation.close()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            bound_host, bound_port = runner.addresses[0][:2]
            if worker is None:
                # Tests and scripts read this line to learn the port when started with --port 0.
                print(f"router: serving on http://{bound_host}:{bound_port}", flush=True)
            else:
                line = WORKER_LISTENING.format(index=worker, host=bound_host, port=bound_port)
                print(line, flush=True)
            await stop.wait()
            log.warning("router: stop signal received, shutting down")
        finally:
            await runner.cleanup()
    finally:
        if reservation is not None:
            reservation.close()
    log.warning("router: stopped")


async def check_listen(host: str, port: int) -> None:
    """Raise CannotListen unless every address the site will listen on can be bound now.

    The site binds only after the app has started (and the guard with it, which writes its
    start decisions), so the address is tried first, the way asyncio's create_server binds it:
    each address `host` resolves to, with SO_REUSEADDR (a port in TIME_WAIT is free), IPv6
    sockets IPv6 only. Port 0 is always free."""
    if port == 0:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:  # socket.gaierror: an unknown host
        raise CannotListen(host, port, exc) from exc
    for family, kind, proto, _, address in dict.fromkeys(infos):
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
        except OSError as exc:
            raise CannotListen(host, port, exc) from exc


# --- several workers on one port ------------------------------------------------------------


@dataclass
class PortReservation:
    """Sockets bound to `port` on every address of the host, with SO_REUSEPORT, not listening:
    the port stays taken for anyone but processes of this user that bind it with SO_REUSEPORT
    too (the workers), and no connection is queued on them."""

    port: int
    sockets: list[socket.socket]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []


def reserve_port(host: str, port: int) -> PortReservation:
    """Bind `port` (0: a free one, the same on every address) as the site will listen on it:
    each address `host` resolves to, SO_REUSEADDR and SO_REUSEPORT, IPv6 sockets IPv6 only.
    Raises CannotListen."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise CannotListen(host, port, exc) from exc
    reservation = PortReservation(port, [])
    for family, kind, proto, _, address in dict.fromkeys(infos):
        sock = socket.socket(family, kind, proto)
        reservation.sockets.append(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], reservation.port, *address[2:]))
        except OSError as exc:
            reservation.close()
            raise CannotListen(host, reservation.port, exc) from exc
        reservation.port = sock.getsockname()[1]
    return reservation


def become_worker(supervisor: int) -> None:
    """Set up this process as a worker of the supervisor `supervisor` (a pid), first thing.

    It ends with its supervisor: SIGTERM when the supervisor dies, however it dies (Linux
    PR_SET_PDEATHSIG), so it drains and exits rather than serving on alone. Ctrl-C reaches the
    whole process group; the supervisor turns it into one SIGTERM per worker, so SIGINT and
    SIGHUP (forwarded only to workers that listen) are ignored until serve() handles them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the line above
        sys.exit(1)


# (index, port) -> the command line of worker `index` listening on `port`.
WorkerCommand = Callable[[int, int], Sequence[str]]


def supervise(count: int, host: str, port: int, command: WorkerCommand) -> int:
    """Run `count` workers on one port until a stop signal; the exit code. Raises CannotListen
    (one line) when the port is taken, before any worker starts."""
    return asyncio.run(_Supervisor(count, host, port, command).run())


@dataclass
class _Worker:
    index: int
    process: Optional[asyncio.subprocess.Process] = None
    listening_since: Optional[float] = None  # monotonic; None while it starts or after it died
    restarts_in_a_row: int = 0
    relay: Optional[asyncio.Task[None]] = None


@dataclass
class _Start:
    url: Optional[str]  # where it listens; None: it ended before it listened
    problem: list[str] = field(default_factory=list)  # then the lines that say why


class _Supervisor:
    def __init__(self, count: int, host: str, port: int, command: WorkerCommand) -> None:
        self._host, self._port, self._command = host, port, command
        self._workers = [_Worker(index) for index in range(count)]
        self._stopping = False
        self._gave_up: list[str] = []
        # The lines of the first worker that failed its first start: that stops them all.
        self._start_failed: Optional[list[str]] = None
        self._stop: Optional[asyncio.Event] = None  # created in run(), inside the loop

    async def run(self) -> int:
        await check_listen(self._host, self._port)  # nobody else holds it
        reservation = reserve_port(self._host, self._port)
        self._port = reservation.port
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._forward_sighup)
        try:
            starts = await asyncio.gather(*(self._first_start(w) for w in self._workers))
        finally:
            reservation.close()  # every worker listens on the port now, or has ended
        if self._start_failed is not None:
            await self._wait_all()
            for line in self._start_failed:
                print(line, file=sys.stderr, flush=True)
            return 1
        keepers = []
        if not self._stopping:
            print(f"router: serving on {starts[0].url}", flush=True)
            keepers = [asyncio.ensure_future(self._keep(w)) for w in self._workers]
            await self._stop.wait()
        code = await self._wait_all()
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        for line in self._gave_up:
            print(line, file=sys.stderr, flush=True)
        return 1 if self._gave_up else code

    def _request_stop(self) -> None:
        """SIGTERM to every worker (it drains), once; the keepers start no more."""
        if self._stopping:
            return
        self._stopping = True
        for worker in self._workers:
            self._send(worker, signal.SIGTERM)
        assert self._stop is not None
        self._stop.set()

    def _forward_sighup(self) -> None:
        if not self._stopping:
            for worker in self._workers:
                if worker.listening_since is not None:
                    self._send(worker, signal.SIGHUP)

    @staticmethod
    def _send(worker: _Worker, signum: int) -> None:
        if worker.process is not None and worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signum)

    async def _wait_all(self) -> int:
        """Wait for every worker to exit (killed after WORKER_STOP_TIMEOUT_S); 0 if each ended
        well: exit code 0, or the SIGTERM it got before it could handle it."""
        code = 0
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for worker in self._workers:
            process = worker.process
            if process is None:
                continue
            try:
                left = max(deadline - time.monotonic(), 0.0)
                ended = process.returncode
                if ended is None:
                    ended = await asyncio.wait_for(process.wait(), left)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                ended = await process.wait()
                print(
                    f"router: worker {worker.index} (pid {process.pid}) did not stop within "
                    f"{WORKER_STOP_TIMEOUT_S:g} s; killed",
                    file=sys.stderr,
                    flush=True,
                )
                code = 1
            else:
                if ended not in (0, -signal.SIGTERM) and worker.listening_since is not None:
                    print(
                        f"router: worker {worker.index} (pid {process.pid}) {_ended(ended)} "
                        "while stopping",
                        file=sys.stderr,
                        flush=True,
                    )
                    code = 1
            if worker.relay is not None:
                await worker.relay
        return code

    async def _first_start(self, worker: _Worker) -> _Start:
        """The first start of `worker`: if it fails, the others are stopped at once."""
        start = await self._start(worker)
        if start.url is None and not self._stopping:
            self._start_failed = start.problem
            self._request_stop()
        return start

    async def _start(self, worker: _Worker) -> _Start:
        """Start `worker` and wait until it listens, or ends."""
        process = await asyncio.create_subprocess_exec(
            *self._command(worker.index, self._port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        worker.process, worker.listening_since = process, None
        if self._stopping:  # the stop came while it was being started
            self._send(worker, signal.SIGTERM)
        assert process.stdout is not None
        problem: list[str] = []
        try:
            url = await asyncio.wait_for(
                _listening(process.stdout, problem), WORKER_START_TIMEOUT_S
            )
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            url, problem = (
                None,
                [
                    f"error: worker {worker.index} did not listen within "
                    f"{WORKER_START_TIMEOUT_S:g} s of its start"
                ],
            )
        if url is None:
            ended = await process.wait()
            problem = problem or [
                f"error: worker {worker.index} (pid {process.pid}) {_ended(ended)} before it "
                "listened (its output is above)"
            ]
            return _Start(None, problem)
        worker.listening_since = time.monotonic()
        worker.relay = asyncio.ensure_future(_relay(process.stdout))
        return _Start(url)

    async def _keep(self, worker: _Worker) -> None:
        """Start `worker` again whenever it dies, after RESTART_DELAYS_S."""
        assert worker.process is not None and self._stop is not None
        failed_starts = 0
        while True:
            process = worker.process
            ended = await process.wait()
            if self._stopping:  # how it ended is _wait_all's to judge
                return
            served = time.monotonic() - (worker.listening_since or time.monotonic())
            worker.listening_since = None
            if served >= STABLE_AFTER_S:
                worker.restarts_in_a_row = 0
            why = f"{_ended(ended)}"
            while True:
                delay = RESTART_DELAYS_S[min(worker.restarts_in_a_row, len(RESTART_DELAYS_S) - 1)]
                worker.restarts_in_a_row += 1
                print(
                    f"router: worker {worker.index} (pid {process.pid}) {why}; starting it "
                    f"again in {delay:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stopping:
                    return
                start = await self._start(worker)
                if self._stopping or start.url is not None:
                    failed_starts = 0
                    break
                failed_starts += 1
                assert worker.process is not None
                process = worker.process
                why = "failed to start: " + start.problem[0].removeprefix("error: ")
                if failed_starts >= GIVE_UP_AFTER and not any(
                    w.listening_since is not None for w in self._workers
                ):
                    self._gave_up = [
                        *start.problem,
                        f"error: worker {worker.index} failed to start {failed_starts} times "
                        "in a row and no worker listens; stopping",
                    ]
                    self._request_stop()
                    return
            if self._stopping:
                return


async def _listening(stdout: asyncio.StreamReader, problem: list[str]) -> Optional[str]:
    """The URL a starting worker says it listens on; None if it ends first. The lines it wrote
    before (its start failure) go to `problem`."""
    prefix, _, _ = WORKER_LISTENING.partition("{index}")
    while True:
        line = (await stdout.readline()).decode(errors="replace")
        if not line:
            return None
        text = line.rstrip("\n")
        if text.startswith(prefix) and " listening on " in text:
            return text.rsplit(" ", 1)[-1]
        problem.append(text)


async def _relay(stdout: asyncio.StreamReader) -> None:
    """Whatever a listening worker still writes on stdout goes to the supervisor's."""
    while True:
        line = await stdout.readline()
        if not line:
            return
        with contextlib.suppress(OSError):  # a closed stdout: the line is dropped
            sys.stdout.write(line.decode(errors="replace"))
            sys.stdout.flush()


def _ended(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"
