"""The seams where the SLO guard and the ramp (issue 4) plug into the request path.

- `RequestObserver.observe` is called after every backend call of the request path with the arm
  that was called, its latency and whether it answered well. A treatment failure hidden by a
  fallback is observed as a failure of the treatment; the control call that answered instead is
  observed for control. Shadow copies are observed for the treatment as well.
- `TrafficPolicy.effective_traffic` is the one place the request path asks how much traffic an
  experiment has right now (percent of enrolled units outside control). The default takes it
  from the registry; a ramp or a rollback overrides it. `describe` adds live state to
  `GET /experiments`.

Both are held in the app state (`router.app.OBSERVER`, `router.app.TRAFFIC`) and must be set
before the app starts.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from router.config import RouterConfig


class RequestObserver(Protocol):
    def observe(self, experiment: str, variant: str, latency_s: float, ok: bool) -> None: ...


class NullObserver:
    def observe(self, experiment: str, variant: str, latency_s: float, ok: bool) -> None:
        return None


class TrafficPolicy(Protocol):
    def effective_traffic(self, experiment: str) -> float: ...

    def describe(self, experiment: str) -> dict[str, Any]: ...


class ConfiguredTraffic:
    """Traffic exactly as the registry in force says."""

    def __init__(self, current_config: Callable[[], RouterConfig]) -> None:
        self._current_config = current_config

    def effective_traffic(self, experiment: str) -> float:
        config = self._current_config().experiments.get(experiment)
        return config.configured_traffic() if config is not None else 0.0

    def describe(self, experiment: str) -> dict[str, Any]:
        return {}
