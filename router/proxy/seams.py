"""The seams where the SLO guard and the ramp plug into the request path.

- `RequestObserver.observe` is called after every backend call of the request path with the arm
  that was called, its latency and whether it answered well. A treatment failure hidden by a
  fallback is observed as a failure of the treatment; the control call that answered instead is
  observed for control. Shadow copies are observed for the treatment as well.
- `TrafficPolicy.effective_traffic` is the one place the request path asks how much traffic an
  experiment has right now (percent of enrolled units outside control). The default takes it
  from the registry; a ramp or a rollback overrides it. `describe` adds live state to
  `GET /experiments`.

- `ReloadHook(old, new)` runs right after a reloaded registry is put in force (synchronously,
  so no request sees the new registry before it ran) and returns the decision records to write.
  The default records traffic edits (`actor: config`); the guard replaces it with its own.
- `ShadowListener.shadow_answered` receives both answers of a shadowed request (a payload is
  None when that call failed), for comparing them; `shadow_dropped` is told of each copy not
  sent because too many were in flight.

They are held in the app state (`router.app.OBSERVER`, `TRAFFIC`, `ON_RELOAD`,
`SHADOW_LISTENER`) and must be set before the app starts.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from router.registry.schema import RouterConfig

DecisionRecord = dict[str, Any]
ReloadHook = Callable[[RouterConfig, RouterConfig], list[DecisionRecord]]


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


class ShadowListener(Protocol):
    def shadow_answered(
        self,
        experiment: str,
        variant: str,
        control: Optional[dict[str, Any]],
        shadow: Optional[dict[str, Any]],
    ) -> None: ...

    def shadow_dropped(self, experiment: str, variant: str) -> None:
        """A shadow copy that was not sent: too many copies in flight."""
