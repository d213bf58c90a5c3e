"""The registry, `experiments.yaml`: its schema, its rules and how it is loaded.

The file, parsed and validated; nothing here runs. Router, analysis and serving all read the
file through `router.registry.loading.load_config`.
"""
