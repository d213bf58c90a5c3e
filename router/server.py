"""Run the router until SIGTERM/SIGINT, then shut down gracefully.

Before anything else the listen address is checked (`check_listen`): a port already in use is
one `CannotListen` line, raised before the guard reads or writes `state_dir` or a decision is
logged. The SLO guard then starts from the rollout states saved in `state_dir` (it refuses, with
`router.guard.runtime.StartRefused`, a registry that would reshuffle units against them). On a
stop signal the router stops accepting connections, lets requests in flight finish (up to
SHUTDOWN_TIMEOUT_S), closes backend connections, runs the guard's last round (checks due,
decisions, state saves) and flushes every log before exiting.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from pathlib import Path
from typing import Optional

from aiohttp import web

from router.app import create_app, fast_path_site
from router.guard.runtime import GuardSetup
from router.registry.schema import RouterConfig

log = logging.getLogger("router")

SHUTDOWN_TIMEOUT_S = 10.0


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


async def serve(
    config: RouterConfig,
    config_path: Optional[Path],
    host: str,
    port: int,
    *,
    watch: bool = True,
) -> None:
    """Serve until a stop signal; raises CannotListen or StartRefused (nothing written)."""
    await check_listen(host, port)
    guard = await GuardSetup.load(config)
    app = create_app(config, config_path, watch=watch, guard=guard)
    # The exposure log is the access log: aiohttp's own would double the work per request.
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = fast_path_site(runner, host, port, backlog=1024, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        try:
            await site.start()
        except OSError as exc:  # taken since check_listen: rare, but still one line
            raise CannotListen(host, port, exc) from exc
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        bound_host, bound_port = runner.addresses[0][:2]
        # Tests and scripts read this line to learn the port when started with --port 0.
        print(f"router: serving on http://{bound_host}:{bound_port}", flush=True)
        await stop.wait()
        log.warning("router: stop signal received, shutting down")
    finally:
        await runner.cleanup()
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
