"""`create_app(config)`: the router as an aiohttp Application.

Everything that needs a running loop or holds a resource (the connection pool, the prober, the
log writer threads, the file watch) is opened in a `cleanup_ctx` generator and closed after its
`yield`, in reverse order: the logs close last, after the last request has been logged.

With `guard=GuardSetup` (what `python -m router` runs) the SLO guard and ramp are wired in:
the guard observes every backend call and decides the traffic in force, its background task
(router.guard.runtime) checks, writes decisions and saves state, reloads go through it, shadow
answers are compared, and the admin API `POST /admin/experiments/{name}/{action}` is served.
Without it (in-process tests of the request path) the registry's traffic is in force, and other
hooks can be set in `app[OBSERVER]`, `app[TRAFFIC]`, `app[ON_RELOAD]` and `app[SHADOW_LISTENER]`
after `create_app` and before the app starts (see router.proxy.seams).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Callable, Optional

from aiohttp import web

from router.api.admin import ROUTE as ADMIN_ROUTE
from router.api.admin import AdminEndpoint
from router.api.events import OutcomeEndpoint
from router.api.openapi import OpenApiDocument
from router.api.status import StatusViews, get_only
from router.auth import AdminAuth
from router.fleet.runtime import FleetRuntime
from router.guard.runtime import GuardRuntime, GuardSetup
from router.proxy.grpc_path import RpcProxy, RpcUpstreams
from router.proxy.handler import ProxyHandler
from router.proxy.live_registry import LiveRegistry
from router.proxy.reload import ConfigReloader
from router.proxy.seams import (
    ConfiguredTraffic,
    NullObserver,
    ReloadHook,
    RequestObserver,
    ShadowListener,
    TrafficPolicy,
)
from router.proxy.upstreams import Upstreams, make_pool
from router.records.jsonl import EventLogs
from router.records.metrics import RouterMetrics
from router.registry.schema import RouterConfig, RouterSettings
from router.transport.http_server import ClientLimits, FastPathSite, handed_over_requests
from router.transport.pipeline_rpc import PipelineRpcServer, RpcChannels

CleanupContext = Callable[[web.Application], AsyncIterator[None]]

METRICS = web.AppKey("metrics", RouterMetrics)
LIVE = web.AppKey("live", LiveRegistry)
UPSTREAMS = web.AppKey("upstreams", Upstreams)
EVENT_LOGS = web.AppKey("event_logs", EventLogs)
OBSERVER = web.AppKey[RequestObserver]("observer")
TRAFFIC = web.AppKey[TrafficPolicy]("traffic")
RELOADER = web.AppKey[Optional[ConfigReloader]]("reloader")
# None: the built-in hook (traffic edits recorded as `actor: config` decisions).
ON_RELOAD = web.AppKey[Optional[ReloadHook]]("on_reload")
SHADOW_LISTENER = web.AppKey[Optional[ShadowListener]]("shadow_listener")
# The running SLO guard, None without one (create_app(..., guard=None)).
GUARD = web.AppKey[Optional[GuardRuntime]]("guard")
ADMIN_AUTH = web.AppKey("admin_auth", AdminAuth)
# The request path, for servers that parse requests themselves (router.transport.http_server).
PROXY = web.AppKey("proxy", ProxyHandler)
REPLICA = web.AppKey[Optional[str]]("replica")
# The gRPC request path, None unless `router.grpc_port` is set.
RPC_PROXY = web.AppKey[Optional[RpcProxy]]("rpc_proxy")


def create_app(
    config: RouterConfig,
    config_path: Optional[Path] = None,
    *,
    watch: bool = True,
    flush_interval: float = 0.2,
    guard: Optional[GuardSetup] = None,
    environ: Optional[Mapping[str, str]] = None,
    replica: Optional[str] = None,
) -> web.Application:
    """The router for a validated registry; `config_path` enables hot reload of that file,
    `guard` (GuardSetup.load) the SLO guard, ramp and admin API. The admin token is read from
    `environ` (default os.environ) once, here. `replica` is this process's id in a fleet (its
    records carry it, its log files are named by it); None for a router alone."""
    app = web.Application(
        client_max_size=config.router.max_body_bytes,
        middlewares=[handed_over_requests(client_limits(config.router))],
    )
    metrics = RouterMetrics()
    upstreams = Upstreams(metrics)
    live = LiveRegistry(config, upstreams)
    logs = EventLogs.open(
        config.router.log_dir,
        on_drop=lambda log, count: metrics.events_dropped.labels(log).inc(count),
        flush_interval=flush_interval,
        on_write=lambda log, count: metrics.events_written.labels(log).inc(count),
        replica=replica,
    )
    app[METRICS] = metrics
    app[REPLICA] = replica
    app[LIVE] = live
    app[UPSTREAMS] = upstreams
    app[EVENT_LOGS] = logs
    app[OBSERVER] = NullObserver()
    app[TRAFFIC] = ConfiguredTraffic(live.config)
    reloader = (
        ConfigReloader(config_path, live, metrics, logs.decisions, _Deferred(app))
        if config_path is not None
        else None
    )
    app[RELOADER] = reloader
    app[ON_RELOAD] = None
    app[SHADOW_LISTENER] = None
    auth = AdminAuth.from_environ(
        os.environ if environ is None else environ, config.router.admin_token_env
    )
    app[ADMIN_AUTH] = auth
    runtime = _guard_runtime(config, guard, logs, metrics, replica)
    app[GUARD] = runtime
    if runtime is not None:
        app[OBSERVER] = runtime.guard
        app[TRAFFIC] = runtime.guard
        app[ON_RELOAD] = runtime.on_reload
        app[SHADOW_LISTENER] = runtime
    metrics.add_live_gauge(
        "router_traffic_percent",
        "Percent of enrolled units outside control in force, per experiment.",
        ["experiment"],
        lambda: [
            ((name,), app[TRAFFIC].effective_traffic(name)) for name in live.config().experiments
        ],
    )

    handler = ProxyHandler(live, upstreams, metrics, logs, auth)
    app[PROXY] = handler
    views = StatusViews(
        live,
        _Deferred(app),
        metrics,
        runtime.describe_fleet if isinstance(runtime, FleetRuntime) else None,
    )
    outcomes = OutcomeEndpoint(logs.outcomes, live)
    app.router.add_route("*", "/events", outcomes.handle)
    app.router.add_route("*", "/experiments", get_only(views.experiments))
    app.router.add_route("*", "/metrics", get_only(views.metrics))
    app.router.add_route("*", "/healthz", get_only(views.healthz))
    app.router.add_route("*", "/readyz", get_only(views.readyz))
    openapi = OpenApiDocument(live)
    app.router.add_route("*", "/openapi.yaml", get_only(openapi.yaml))
    app.router.add_route("*", "/openapi.json", get_only(openapi.json))
    if runtime is not None:
        app.router.add_route("*", ADMIN_ROUTE, AdminEndpoint(auth, runtime, metrics).handle)
    # Experiment routes change on reload, and the aiohttp router is frozen once started:
    # everything else goes to the proxy, which looks the path up in the registry in force.
    app.router.add_route("*", "/{path:.*}", handler.handle)

    app.cleanup_ctx.append(_event_logs(logs))
    if runtime is not None:
        app.cleanup_ctx.append(_guard(runtime))
    app.cleanup_ctx.append(_hooks(app, handler, reloader))
    app.cleanup_ctx.append(_backends(upstreams, handler))
    app[RPC_PROXY] = None
    if config.router.grpc_port is not None:
        channels = RpcChannels()
        rpc_proxy = RpcProxy(live, RpcUpstreams(metrics, channels), metrics, logs, auth)
        app[RPC_PROXY] = rpc_proxy
        app.cleanup_ctx.append(_grpc(app, rpc_proxy, channels))
    if reloader is not None:
        app.cleanup_ctx.append(_config_reload(reloader, watch))
    return app


class _Deferred:
    """The traffic policy in app state, looked up when used (it may be set after create_app)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def effective_traffic(self, experiment: str) -> float:
        return self._app[TRAFFIC].effective_traffic(experiment)

    def describe(self, experiment: str) -> dict[str, object]:
        return self._app[TRAFFIC].describe(experiment)


def _event_logs(logs: EventLogs) -> CleanupContext:
    async def context(app: web.Application) -> AsyncIterator[None]:
        logs.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, logs.close)

    return context


def _guard_runtime(
    config: RouterConfig,
    guard: Optional[GuardSetup],
    logs: EventLogs,
    metrics: RouterMetrics,
    replica: Optional[str],
) -> Optional[GuardRuntime]:
    """The guard of a router alone, or of one replica of a fleet (router.fleet)."""
    if guard is None:
        return None
    fleet = config.router.fleet
    if fleet is None:
        return GuardRuntime(guard, logs.decisions, metrics.registry)
    return FleetRuntime(
        guard, logs.decisions, metrics.registry, fleet=fleet,
        replica=replica or fleet.replica or socket.gethostname(),
        experiments=config.experiments,
    )  # fmt: skip


def _guard(runtime: GuardRuntime) -> CleanupContext:
    """The guard's task; on the way out a last round of checks, decisions and saves, before
    the logs close. A replica of a fleet takes the fleet's states before it serves."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        if isinstance(runtime, FleetRuntime):
            await runtime.join()
        runtime.start()
        yield
        await runtime.stop()

    return context


def _hooks(
    app: web.Application, handler: ProxyHandler, reloader: Optional[ConfigReloader]
) -> CleanupContext:
    async def context(_: web.Application) -> AsyncIterator[None]:
        handler.bind(app[OBSERVER], app[TRAFFIC], app[SHADOW_LISTENER])
        on_reload = app[ON_RELOAD]
        if reloader is not None and on_reload is not None:
            reloader.bind(on_reload)
        yield

    return context


def _backends(upstreams: Upstreams, handler: ProxyHandler) -> CleanupContext:
    async def context(app: web.Application) -> AsyncIterator[None]:
        pool = make_pool(app[LIVE].config().router)
        upstreams.attach(pool)
        prober = asyncio.ensure_future(upstreams.probe_forever())
        yield
        prober.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prober
        await handler.close()
        upstreams.attach(None)
        await pool.close()

    return context


def _grpc(app: web.Application, proxy: RpcProxy, channels: RpcChannels) -> CleanupContext:
    """Paddle Serving's gRPC service on `router.grpc_port` (router.proxy.grpc_path): started
    with the app, stopped with it (calls in flight get 10 s, as HTTP requests do)."""

    async def context(_: web.Application) -> AsyncIterator[None]:
        settings = app[LIVE].config().router
        assert settings.grpc_port is not None
        proxy.bind(app[OBSERVER], app[TRAFFIC], app[SHADOW_LISTENER])
        server = PipelineRpcServer(
            proxy.inference, settings.host, settings.grpc_port,
            max_message_bytes=settings.max_body_bytes,
            max_concurrent_streams=settings.max_grpc_streams,
        )  # fmt: skip
        await server.start()
        prober = asyncio.ensure_future(proxy.upstreams.probe_forever())
        yield
        await server.stop(10.0)
        prober.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prober
        await proxy.close()
        await channels.close()

    return context


def _config_reload(reloader: ConfigReloader, watch: bool) -> CleanupContext:
    async def context(app: web.Application) -> AsyncIterator[None]:
        watcher = None
        if watch:
            # Taken here, before the app serves, not in the task: a read still pending in the
            # worker thread when a first edit lands would take that edit as the start.
            watcher = asyncio.ensure_future(reloader.watch_forever(await reloader.fingerprint()))
        reloader.install_sighup()
        yield
        reloader.remove_sighup()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    return context


def fast_path_site(
    runner: web.BaseRunner, host: Optional[str], port: int, **options: Any
) -> FastPathSite:
    """The site `python -m router` listens with: the fast path (router.transport.http_server)
    for POSTs to experiment routes, wired to this app's request path; aiohttp for the rest."""
    assert isinstance(runner, web.AppRunner)  # aiohttp's TestServer makes one too
    live, proxy = runner.app[LIVE], runner.app[PROXY]
    return FastPathSite(
        runner, host, port, routes=live.fast_routes, start=proxy.start, refuse=proxy.refuse,
        limits=client_limits(live.config().router), **options,
    )  # fmt: skip


def client_limits(settings: RouterSettings) -> ClientLimits:
    """The registry's limits on one client, for the HTTP server (read once: restart-only)."""
    return ClientLimits(
        max_line_bytes=settings.max_line_bytes,
        max_head_bytes=settings.max_head_bytes,
        max_header_count=settings.max_header_count,
        head_timeout_s=settings.head_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=settings.max_client_connections,
        max_unread_answer_bytes=settings.max_unread_answer_bytes,
        lingering_timeout_s=settings.lingering_timeout_s,
    )
