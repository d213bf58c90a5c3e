"""A closed loop of simulated users, the real assignment and the Guard, on a simulated clock.

Users are assigned with router.experiment.assign at the traffic the guard says is in force; each
call's latency and outcome come from the arm's behaviour at that moment; a failed treatment call falls
back to control, observed for both arms, as the router's request path does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from router.experiment.assign import compile_plan
from router.guard.engine import Guard
from router.guard.rollout import Decision
from router.registry.loading import parse_config
from router.registry.schema import RouterConfig

# (latency_s, ok) of one call to an arm at time t
Behaviour = Callable[[float, random.Random], tuple[float, bool]]


def healthy(mean_s: float = 0.004) -> Behaviour:
    return lambda t, rng: (rng.expovariate(1 / mean_s), True)


def failing_after(start_s: float, before: Behaviour, after: Behaviour) -> Behaviour:
    return lambda t, rng: after(t, rng) if t >= start_s else before(t, rng)


def timeouts(timeout_s: float = 0.5) -> Behaviour:
    return lambda t, rng: (timeout_s, False)


def slow(latency_s: float) -> Behaviour:
    return lambda t, rng: (latency_s * (0.9 + 0.2 * rng.random()), True)


BACKENDS = {
    name: {"endpoints": [f"http://127.0.0.1:{port}"], "version": name}
    for name, port in (("v1", 18001), ("v2", 18002), ("v3", 18003))
}


def registry(experiment: dict[str, Any], name: str = "sentiment") -> RouterConfig:
    """A validated registry with one experiment (route and salt filled in)."""
    body = {"route": f"/{name}/prediction", "salt": f"{name}-salt", **experiment}
    return parse_config({"backends": BACKENDS, "experiments": {name: body}})


@dataclass
class Simulation:
    guard: Guard
    config: RouterConfig
    behaviours: dict[str, Behaviour]  # arm -> behaviour
    requests_per_s: float
    experiment: str = "sentiment"
    users: int = 5_000
    step_s: float = 0.05
    now: float = 1_800_000_000.0
    seed: int = 7
    decisions: list[Decision] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)  # arm -> calls observed
    shadow: bool = False

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._plan = compile_plan(self.experiment, self.config.experiments[self.experiment])
        self._debt = 0.0
        self.start = self.now

    @property
    def elapsed(self) -> float:
        return self.now - self.start

    def assign(self, unit: str) -> str:
        return self._plan.assign(unit, self.guard.effective_traffic(self.experiment)).arm.name

    def run(self, seconds: float, until: Optional[Callable[[Decision], bool]] = None) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now += self.step_s
            self._debt += self.requests_per_s * self.step_s
            while self._debt >= 1:
                self._debt -= 1
                self._request()
            new = self.guard.tick(self.now)
            self.decisions.extend(new)
            if until is not None and any(until(d) for d in new):
                return

    def _request(self) -> None:
        unit = f"user-{self._rng.randrange(self.users)}"
        arm = self.assign(unit)
        control = self._plan.control.name
        if self.shadow and arm != control:
            self._call(arm)  # the copy; control answers the user
            self._call(control)
            return
        if not self._call(arm) and arm != control:
            self._call(control)  # fallback

    def _call(self, arm: str) -> bool:
        latency, ok = self.behaviours[arm](self.elapsed, self._rng)
        self.guard.observe(self.experiment, arm, latency, ok, now=self.now)
        self.calls[arm] = self.calls.get(arm, 0) + 1
        return ok

    def actions(self) -> Iterator[Decision]:
        return (d for d in self.decisions if d.action != "none")
