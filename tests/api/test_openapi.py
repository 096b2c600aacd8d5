"""The OpenAPI schema is one a client can be generated from: operation ids a person would name a method, every body
typed, downloads declared as bytes (tests/e2e/test_generated_client.py generates a client and drives a job)."""

import re

import pytest

from api.main import create_app

pytestmark = pytest.mark.unit

OPERATION_ID = re.compile(r"^[a-z]+(-[a-z]+)+$")
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


@pytest.fixture(scope="module")
def schema() -> dict:
    return create_app().openapi()


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_operation_ids_are_unique_and_named_tag_then_verb(schema):
    ids = [operation["operationId"] for _, _, operation in operations(schema)]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert [i for i in ids if not OPERATION_ID.match(i)] == []
    for method, path, operation in operations(schema):
        assert operation.get("tags"), f"{method} {path}: give its router a tag, the operation id's first word"
        assert operation["operationId"].startswith(operation["tags"][0] + "-"), operation["operationId"]

    by_route = {(method, path): operation["operationId"] for method, path, operation in operations(schema)}
    assert by_route[("POST", "/v1/jobs")] == "jobs-create"
    assert by_route[("GET", "/v1/jobs")] == "jobs-list"
    assert by_route[("GET", "/v1/jobs/{job_id}/events")] == "jobs-events"
    assert by_route[("GET", "/v1/jobs/{job_id}/checkpoints/{step}/adapter")] == "jobs-checkpoint-adapter"
    assert by_route[("GET", "/v1/jobs/{job_id}/adapter")] == "jobs-adapter"
    assert by_route[("GET", "/v1/jobs/{job_id}/prompts")] == "jobs-prompts"
    assert by_route[("POST", "/v1/datasets")] == "datasets-upload"
    assert by_route[("GET", "/v1/models")] == "models-list"
    assert by_route[("DELETE", "/v1/rewards/{reward_id}")] == "rewards-delete"
    assert by_route[("GET", "/readyz")] == "health-readyz"


def untyped(node, where: str = "#"):
    """Places where a schema says nothing of the value: `{}`."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}/{key}"
            if key in ("schema", "items", "additionalProperties") and value == {}:
                yield here
            yield from untyped(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from untyped(value, f"{where}/{i}")


def test_every_body_is_typed_and_every_error_is_an_error_body(schema):
    assert list(untyped(schema)) == []
    for method, path, operation in operations(schema):
        for status, response in operation["responses"].items():
            content = response.get("content", {})
            for media_type, media in content.items():
                described = "itemSchema" if media_type == "text/event-stream" else "schema"
                assert described in media, (method, path, status, media_type)
            if status.startswith(("4", "5")) and not (path == "/readyz" and status == "503"):
                assert content == {"application/json": {"schema": ERROR_BODY}}, (method, path, status)
        for media in operation.get("requestBody", {}).get("content", {}).values():
            assert media["schema"] not in ({}, {"type": "object"}), (method, path)


def test_downloads_are_bytes_and_the_event_stream_describes_its_events(schema):
    binary = {"schema": {"type": "string", "format": "binary"}}
    for path in ("/v1/jobs/{job_id}/adapter", "/v1/jobs/{job_id}/checkpoints/{step}/adapter"):
        content = schema["paths"][path]["get"]["responses"]["200"]["content"]
        # What the server sends, and the type generators read as bytes (openapi-python-client skips application/gzip).
        assert content == {"application/gzip": binary, "application/octet-stream": binary}
    # Each event described, as OpenAPI 3.2 does it (itemSchema): a whole-stream `schema` is read as one event by
    # tools that predate 3.2, such as schemathesis, and as the stream by others.
    events = schema["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"] and "schema" not in events["text/event-stream"]
    event = events["text/event-stream"]["itemSchema"]
    assert event["required"] == ["id", "event", "data"]
    assert event["properties"]["event"]["enum"] == ["status", "metrics", "checkpoint", "warning"]
