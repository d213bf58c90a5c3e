"""schemathesis against the router's published OpenAPI document (GET /openapi.json).

The real router in front of the real Paddle Serving servers; for each operation a bounded
number of generated requests, valid by the schema (positive) and invalid (negative), each
answer checked: a documented status, content type, headers and body schema, never a 500, and
invalid input never accepted.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import requests  # type: ignore[import-untyped]
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import DataGenerationMethod
from schemathesis.exceptions import CheckFailed
from schemathesis.internal.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Backend
from tests.reliability.conftest import Table
from tests.reliability.stack import REPO_ROOT, ROUTE, registry, write_registry
from tests.reliability.summary import Row
from tests.router.router_process import RouterProcess, start_router

pytestmark = [
    pytest.mark.slow,
    # schemathesis 3.39 builds its resolver on a jsonschema class deprecated since 4.18
    pytest.mark.filterwarnings("ignore:jsonschema.RefResolver is deprecated:DeprecationWarning"),
]

EXAMPLES = 25  # per operation and generation method
TOKEN_ENV = "RELIABILITY_SCHEMA_TOKEN"
CHECKS = (
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)


@pytest.fixture(scope="module")
def schema_router(
    paddle_backends: dict[str, Backend], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterProcess]:
    folder = tmp_path_factory.mktemp("schema")
    raw = registry(
        [paddle_backends["sentiment-v1"].url],
        [paddle_backends["sentiment-v2"].url],
        patch={"router": {"admin_token_env": TOKEN_ENV}},
    )
    config = write_registry(folder / "experiments.yaml", raw)
    os.environ[TOKEN_ENV] = secrets.token_urlsafe(16)  # generated requests cannot know it
    try:
        router = start_router(config, folder / "router.log")
    finally:
        del os.environ[TOKEN_ENV]
    yield router
    assert router.stop() == 0
    assert "Exception in thread" not in router.output()


def test_the_published_document_is_the_file_plus_the_registry_routes(
    schema_router: RouterProcess,
) -> None:
    base = yaml.safe_load((REPO_ROOT / "router" / "api" / "openapi.yaml").read_text())
    served = requests.get(f"{schema_router.url}/openapi.yaml", timeout=10)
    assert served.status_code == 200
    document = yaml.safe_load(served.text)
    assert set(document["paths"]) == set(base["paths"]) | {ROUTE}
    assert document["paths"][ROUTE]["post"]["operationId"] == "predict_sentiment"
    as_json = requests.get(f"{schema_router.url}/openapi.json", timeout=10).json()
    assert as_json == document


@dataclass
class Tally:
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    skipped: bool = False
    statuses: dict[int, int] = field(default_factory=dict)


def no_plain_500(response: requests.Response, case: schemathesis.Case) -> None:
    if response.status_code == 500:
        raise AssertionError(f"500 for {case.method} {case.formatted_path}")


def _runner(
    strategy: Any, http: requests.Session, tally: Tally, checks: tuple, name: str
) -> Callable[[], None]:
    """A Hypothesis test that sends each generated case and tallies what the checks found."""

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(session=http, timeout=15)
        tally.sent += 1
        tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1
        try:
            no_plain_500(response, case)
            case.validate_response(response, checks=checks)
        except (CheckFailed, AssertionError) as exc:
            tally.failures.append(f"{name}: {str(exc)[:600]}")

    return run


@pytest.mark.timeout(240)
def test_schemathesis_against_every_operation(
    schema_router: RouterProcess, table: Table, tmp_path: Path
) -> None:
    schema = schemathesis.from_uri(
        f"{schema_router.url}/openapi.json", base_url=schema_router.url, validate_schema=True
    )
    tallies: dict[str, Tally] = {}
    http = requests.Session()
    for method in (DataGenerationMethod.positive, DataGenerationMethod.negative):
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            operation = result.ok()
            name = f"{method.name} {operation.method.upper()} {operation.path}"
            tally = tallies.setdefault(name, Tally())
            checks = CHECKS + ((negative_data_rejection,) if method.is_negative else ())
            inputs = (operation.body, operation.query, operation.headers, operation.path_parameters)
            if method.is_negative and not any(inputs):
                tally.skipped = True  # nothing to make invalid in a GET without parameters
                continue
            strategy = operation.as_strategy(data_generation_method=method)
            _runner(strategy, http, tally, checks, name)()
    sent = sum(t.sent for t in tallies.values())
    failures = [f for t in tallies.values() for f in t.failures]
    statuses = sorted({s for t in tallies.values() for s in t.statuses})
    table.add(
        Row("schema", "schemathesis",
            f"{len({n.split(' ', 1)[1] for n in tallies})} operations of the published OpenAPI document, up to {EXAMPLES} "
            "positive and negative examples each", sent, len(failures), 0,
            f"statuses seen: {', '.join(map(str, statuses))}")
    )  # fmt: skip
    assert failures == [], "\n".join(failures[:10])
    assert all(t.sent > 0 or t.skipped for t in tallies.values()), {
        n: t.sent for n, t in tallies.items()
    }
    assert all(t.sent > 0 for n, t in tallies.items() if n.startswith("positive"))
