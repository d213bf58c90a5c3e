"""`GET /openapi.yaml` and `/openapi.json`: the router's OpenAPI document (router/api/openapi.yaml)
with one path per experiment route of the registry in force."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from router.proxy.live_registry import LiveRegistry
from router.registry.schema import RouterConfig

DOCUMENT = Path(__file__).with_name("openapi.yaml")
TEMPLATE_KEY = "x-experiment-route"


def load_base() -> dict[str, Any]:
    base: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    return base


def document_for(base: dict[str, Any], config: RouterConfig) -> dict[str, Any]:
    """`base` with the template path item copied to every experiment route."""
    document = copy.deepcopy(base)
    template = document[TEMPLATE_KEY]
    for name, experiment in sorted(config.experiments.items()):
        item = copy.deepcopy(template)
        operation = item["post"]
        operation["operationId"] = f"predict_{name}"
        operation["summary"] = f"Experiment {name}: {operation['summary']}"
        document["paths"][experiment.route] = item
    return document


class OpenApiDocument:
    """Serves the document; rebuilt only when the registry in force changes."""

    def __init__(self, live: LiveRegistry) -> None:
        self._live = live
        self._base = load_base()
        self._built_for: object = None
        self._yaml = b""
        self._json = b""

    def _refresh(self) -> None:
        config = self._live.config()
        if config is not self._built_for:
            document = document_for(self._base, config)
            self._yaml = yaml.safe_dump(document, sort_keys=False, allow_unicode=True).encode()
            self._json = json.dumps(document).encode()
            self._built_for = config

    async def yaml(self, request: web.Request) -> web.Response:
        self._refresh()
        return web.Response(body=self._yaml, content_type="application/yaml")

    async def json(self, request: web.Request) -> web.Response:
        self._refresh()
        return web.Response(body=self._json, content_type="application/json")
