"""Run the router until SIGTERM/SIGINT, then shut down gracefully.

The SLO guard starts from the rollout states saved in `state_dir`. On a stop signal the router
stops accepting connections, lets requests in flight finish (up to SHUTDOWN_TIMEOUT_S), closes
backend connections, runs the guard's last round (checks due, decisions, state saves) and
flushes every log before exiting.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Optional

from aiohttp import web

from router.app import create_app, fast_path_site
from router.guard.runtime import GuardSetup
from router.registry.schema import RouterConfig

log = logging.getLogger("router")

SHUTDOWN_TIMEOUT_S = 10.0


async def serve(
    config: RouterConfig,
    config_path: Optional[Path],
    host: str,
    port: int,
    *,
    watch: bool = True,
) -> None:
    guard = await GuardSetup.load(config)
    app = create_app(config, config_path, watch=watch, guard=guard)
    # The exposure log is the access log: aiohttp's own would double the work per request.
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = fast_path_site(runner, host, port, backlog=1024, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await site.start()
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
