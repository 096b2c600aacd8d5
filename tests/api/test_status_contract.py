"""Job and pre-flight statuses have one source, service_core/models.py: the API's schema and metrics, the
dashboard's generated statuses.js and the client's copy all say the same statuses, in the same order."""

import json
import re
from typing import get_args

import pytest

from api import dashboard, metrics, schemas
from api.main import create_app
from grpo_client import cli as client_cli
from grpo_client import types as client_types
from service_core.models import (
    ACTIVE_STATUSES,
    JOB_STATUSES,
    PREFLIGHT_STATUSES,
    TERMINAL_STATUSES,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def schema() -> dict:
    return create_app().openapi()


def enum_of(property_schema: dict) -> list[str]:
    """The string enum of a property or parameter schema, nullable (anyOf [..., null]) or not."""
    choices = [s for s in property_schema.get("anyOf", [property_schema]) if s.get("type") != "null"]
    assert len(choices) == 1, property_schema
    return choices[0]["enum"]


def test_the_statuses_split_into_active_and_terminal():
    assert set(ACTIVE_STATUSES) | set(TERMINAL_STATUSES) == set(JOB_STATUSES)
    assert not set(ACTIVE_STATUSES) & set(TERMINAL_STATUSES)
    assert set(ACTIVE_STATUSES) <= set(PREFLIGHT_STATUSES)  # api/services/preflights.py counts active ones so


def test_the_api_schema_and_metrics_use_the_models_statuses(schema):
    assert get_args(schemas.JobStatus) == JOB_STATUSES
    assert get_args(schemas.PreflightStatus) == PREFLIGHT_STATUSES
    components = schema["components"]["schemas"]
    assert enum_of(components["JobPublic"]["properties"]["status"]) == list(JOB_STATUSES)
    assert enum_of(components["JobChild"]["properties"]["status"]) == list(JOB_STATUSES)
    assert enum_of(components["PreflightPublic"]["properties"]["status"]) == list(PREFLIGHT_STATUSES)
    (status_filter,) = [p for p in schema["paths"]["/v1/jobs"]["get"]["parameters"] if p["name"] == "status"]
    assert enum_of(status_filter["schema"]) == list(JOB_STATUSES)
    assert metrics.JOB_STATUSES == JOB_STATUSES


def test_the_dashboards_statuses_file_is_generated_from_the_models():
    assert dashboard.STATUSES_MODULE.read_text() == dashboard.statuses_module(), (
        "api/static/statuses.js is stale: run `python -m api.dashboard`"
    )
    exported = dict(re.findall(r"export const (\w+) = (\[.*\]);", dashboard.STATUSES_MODULE.read_text()))
    assert json.loads(exported["STATUSES"]) == list(JOB_STATUSES)
    assert json.loads(exported["TERMINAL_STATUSES"]) == list(TERMINAL_STATUSES)
    # The page's other scripts take statuses from that file and spell no list of them of their own.
    for script in dashboard.STATIC_DIR.glob("*.js"):
        if script != dashboard.STATUSES_MODULE:
            assert not re.search(r'\[\s*"(queued|running|succeeded|failed|cancelled)"', script.read_text()), script
    assert 'from "./statuses.js"' in (dashboard.STATIC_DIR / "app.js").read_text()
    assert 'from "./statuses.js"' in (dashboard.STATIC_DIR / "api.js").read_text()


def test_the_clients_copy_equals_the_models_statuses():
    assert get_args(client_types.JobStatus) == JOB_STATUSES
    assert client_types.TERMINAL_STATUSES == frozenset(TERMINAL_STATUSES)
    assert client_cli.JOB_STATUSES == JOB_STATUSES
    assert set(client_cli.EXIT_BY_STATUS) == set(TERMINAL_STATUSES)
