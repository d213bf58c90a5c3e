"""Experiments as the request path sees them: deterministic assignment and unit ids (pure)."""
