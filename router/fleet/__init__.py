"""Several routers acting as one: rollout state, decisions and measurements shared in Redis."""
