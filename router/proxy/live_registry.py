"""The registry in force: an immutable snapshot swapped as a whole on reload.

A request reads `LiveRegistry.current` once and works with that snapshot to the end, so a reload
in the middle of a request never mixes two registries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from router.experiment.assign import ExperimentPlan, compile_plans
from router.proxy.upstreams import BackendRuntime, Upstreams
from router.records.timestamps import utc_now_iso
from router.registry.schema import RouterConfig
from router.transport.http_server import FastRoutes


@dataclass(frozen=True)
class Snapshot:
    config: RouterConfig
    plans: dict[str, ExperimentPlan]
    routes: dict[str, str]  # route -> experiment name
    backends: dict[str, BackendRuntime]
    loaded_at: str = field(default_factory=utc_now_iso)
    # What the fast path answers itself: the routes a client sends as they are (ASCII, no
    # percent sign; others are aiohttp's to decode), by their raw bytes.
    fast_routes: FastRoutes = field(init=False)

    def __post_init__(self) -> None:
        raw = {r.encode(): r for r in self.routes if r.isascii() and "%" not in r}
        fast = FastRoutes(raw, self.config.router.max_body_bytes)
        object.__setattr__(self, "fast_routes", fast)  # derived once; the dataclass is frozen


@dataclass
class ReloadStatus:
    """The outcome of the last reload attempt, shown by GET /experiments."""

    ok: bool = True
    source: str = "startup"
    at: str = field(default_factory=utc_now_iso)
    error: Optional[str] = None
    # When the file stopped being the registry in force: the first of the failed reloads in a
    # row (None while the last reload succeeded).
    not_in_force_since: Optional[str] = None


class LiveRegistry:
    def __init__(self, config: RouterConfig, upstreams: Upstreams) -> None:
        self._upstreams = upstreams
        self.current = self._snapshot(config)
        self.status = ReloadStatus()

    def install(self, config: RouterConfig) -> Snapshot:
        self.current = self._snapshot(config)
        return self.current

    def _snapshot(self, config: RouterConfig) -> Snapshot:
        return Snapshot(
            config=config,
            plans=compile_plans(config.experiments),
            routes={exp.route: name for name, exp in config.experiments.items()},
            backends=self._upstreams.configure(config.backends),
        )

    def config(self) -> RouterConfig:
        return self.current.config

    def fast_routes(self) -> FastRoutes:
        return self.current.fast_routes
