"""grpo_client/types.py against the API's OpenAPI schema: every body the client parses has a TypedDict whose keys,
nullability and types are the schema's, so a field the API adds, renames or makes nullable fails here until the
client says so too."""

import types
import typing
from typing import Any, Literal, NotRequired, get_args, get_origin, get_type_hints, is_typeddict

import pytest

import grpo_client.types as client_types
from api.main import create_app

pytestmark = pytest.mark.unit

# Each of the client's TypedDicts and the schema component it parses (RewardRef is a request body: a job's rewards).
COMPONENT_OF = {
    client_types.Dataset: "DatasetPublic",
    client_types.Model: "ModelPublic",
    client_types.Reward: "RewardPublic",
    client_types.RewardRef: "RewardRef",
    client_types.JobReward: "StoredRewardRef",
    client_types.Progress: "Progress",
    client_types.JobChild: "JobChild",
    client_types.StoppedEarly: "StoppedEarly",
    client_types.Job: "JobPublic",
    client_types.Metric: "MetricPublic",
    client_types.Checkpoint: "CheckpointPublic",
}
CLIENT_TYPE_OF = {component: cls.__name__ for cls, component in COMPONENT_OF.items()}
SCALARS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "object": "dict"}


@pytest.fixture(scope="module")
def components() -> dict[str, Any]:
    return create_app().openapi()["components"]["schemas"]


def schema_kinds(schema: dict[str, Any]) -> set[str]:
    """What a JSON value of `schema` may be, named as annotation_kinds names a Python annotation."""
    if "anyOf" in schema:
        return set().union(*(schema_kinds(part) for part in schema["anyOf"]))
    if "$ref" in schema:
        return {CLIENT_TYPE_OF.get(schema["$ref"].rsplit("/", 1)[-1], "dict")}
    if "enum" in schema:
        return {"enum " + ",".join(schema["enum"])}
    kind = schema.get("type")
    if kind == "null":
        return {"None"}
    if kind == "array":
        return {"list[" + "|".join(sorted(schema_kinds(schema.get("items", {})))) + "]"}
    return {SCALARS.get(kind, "any")}


def annotation_kinds(annotation: Any) -> set[str]:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(annotation_kinds(part) for part in get_args(annotation)))
    if origin is Literal:
        return {"enum " + ",".join(get_args(annotation))}
    if origin is list:
        return {"list[" + "|".join(sorted(annotation_kinds(get_args(annotation)[0]))) + "]"}
    if origin is dict or annotation is dict:
        return {"dict"}
    if annotation is type(None):
        return {"None"}
    if is_typeddict(annotation):
        return {annotation.__name__}
    if annotation is Any:
        return {"any"}
    return {annotation.__name__}


def client_required_keys(client_type: type) -> set[str]:
    """Keys not marked NotRequired. Read from the annotations: Python 3.11's __required_keys__ misses a NotRequired
    written as a string, as `from __future__ import annotations` writes every annotation."""
    hints = get_type_hints(client_type, include_extras=True)
    return {name for name, hint in hints.items() if get_origin(hint) is not NotRequired}


def test_every_client_type_is_held_to_a_schema_component(components):
    declared = {value for value in vars(client_types).values() if is_typeddict(value)}
    assert declared == set(COMPONENT_OF), "map each TypedDict of grpo_client/types.py to the schema it parses"
    assert set(COMPONENT_OF.values()) <= set(components)


@pytest.mark.parametrize("client_type", list(COMPONENT_OF), ids=lambda cls: cls.__name__)
def test_a_client_type_has_the_fields_of_its_schema(components, client_type):
    component = components[COMPONENT_OF[client_type]]
    hints = get_type_hints(client_type)
    assert set(hints) == set(component["properties"]), (
        f"grpo_client.types.{client_type.__name__} lacks {sorted(set(component['properties']) - set(hints))}, "
        f"has {sorted(set(hints) - set(component['properties']))} the API does not send"
    )
    for name, property_schema in component["properties"].items():
        # Times are sent as strings (format date-time).
        assert annotation_kinds(hints[name]) == schema_kinds(property_schema), f"{client_type.__name__}.{name}"
    required = set(component.get("required", []))
    assert required <= client_required_keys(client_type)
    if COMPONENT_OF[client_type] == "RewardRef":  # a request body: what may be left out is what the API defaults
        assert client_required_keys(client_type) == required
