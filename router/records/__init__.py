"""What the router writes: JSON Lines logs (exposures, outcomes, decisions), their
timestamps, and its Prometheus metrics."""
