"""The SLO guard and the rollout: measurement, verdicts and the state machine (pure), the
engine that holds them for every experiment, and its runtime in the router (a task, the saved
state, metrics)."""
