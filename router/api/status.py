"""Read-only endpoints: /experiments, /healthz, /readyz, /metrics."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Callable, Optional

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router.proxy.live_registry import LiveRegistry, Snapshot
from router.proxy.seams import TrafficPolicy
from router.records.metrics import RouterMetrics
from router.responses import error_answer, json_response, method_not_allowed, to_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def get_only(handler: Handler) -> Handler:
    """Route every method here and answer the wrong ones with a JSON 405, like the rest."""

    async def route(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return to_response(method_not_allowed(request.method, ["GET"]))
        return await handler(request)

    return route


class StatusViews:
    def __init__(
        self,
        live: LiveRegistry,
        traffic: TrafficPolicy,
        metrics: RouterMetrics,
        fleet: Optional[Callable[[], dict[str, Any]]] = None,
    ) -> None:
        """`fleet`: this replica's place in a fleet (in sync, deciding), for /readyz."""
        self._live = live
        self._traffic = traffic
        self._metrics = metrics
        self._fleet = fleet

    async def experiments(self, request: web.Request) -> web.Response:
        snapshot = self._live.current
        status = self._live.status
        return json_response(
            {
                "config": {
                    "loaded_at": snapshot.loaded_at,
                    "last_reload": {
                        "ok": status.ok,
                        "source": status.source,
                        "at": status.at,
                        "error": status.error,
                        # The registry in force is older than the file since then.
                        "not_in_force_since": status.not_in_force_since,
                    },
                },
                "experiments": {
                    name: self._describe(snapshot, name) for name in snapshot.config.experiments
                },
                "backends": {
                    name: {
                        "version": runtime.config.version,
                        "endpoints": [
                            {"url": e.url, "up": e.up, "consecutive_failures": e.failures}
                            for e in runtime.endpoints
                        ],
                    }
                    for name, runtime in snapshot.backends.items()
                },
            }
        )

    def _describe(self, snapshot: Snapshot, name: str) -> dict[str, Any]:
        experiment = snapshot.config.experiments[name]
        plan = snapshot.plans[name]
        arms: list[dict[str, Any]]
        if experiment.variants is not None:
            arms = [
                {"name": v.name, "backend": v.backend, "weight": v.weight}
                for v in experiment.variants
            ]
        else:
            arms = [
                {"name": "control", "backend": plan.control.backend},
                {"name": "treatment", "backend": plan.others[0].backend},
            ]
        return {
            "route": experiment.route,
            "mode": experiment.mode,
            "revision": experiment.revision,
            "traffic": self._traffic.effective_traffic(name),
            "configured_traffic": experiment.configured_traffic(),
            "arms": arms,
            "fallback": experiment.fallback,
            "layer": (
                {"name": plan.layer, "buckets": list(plan.layer_slice)}
                if plan.layer is not None and plan.layer_slice is not None
                else None
            ),
            **self._traffic.describe(name),
        }

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready when the registry is loaded and every experiment's control can answer."""
        snapshot = self._live.current
        controls = {e.control_backend() for e in snapshot.config.experiments.values()}
        unhealthy = sorted(b for b in controls if not snapshot.backends[b].healthy())
        if unhealthy:
            message = f"no endpoint in rotation for control backend(s): {', '.join(unhealthy)}"
            return to_response(error_answer(503, "not_ready", message))
        ready: dict[str, Any] = {"status": "ready"}
        if self._fleet is not None:  # cut off from the fleet, a replica still serves: ready
            ready["fleet"] = self._fleet()
        return json_response(ready)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )
