"""The router's own endpoints: admin actions, outcome events, status views, OpenAPI."""
