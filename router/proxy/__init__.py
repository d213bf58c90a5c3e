"""The request path: admission, assignment, the backend call through the upstream pool,
fallback, answer; the registry in force and its hot reload."""
