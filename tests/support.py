"""Small helpers shared by the test suites (no fixtures here: see conftest.py)."""

from __future__ import annotations

import json
from typing import Any

from serving.synthetic import make_reviews


def demo_request(n_rows: int = 1, seed: int = 0) -> dict[str, Any]:
    """A valid pipeline request body for the demo sentiment bundles: `n_rows` real reviews."""
    reviews = make_reviews(n_rows, seed=seed)
    return {"key": ["x"], "value": [json.dumps(reviews.tokens.tolist())]}
