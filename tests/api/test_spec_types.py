"""Hyperparameters of the wrong type are refused with a 422 that names the field and the value, before any row is
written: an integer field refuses 2.5, "8" and true; a number refuses Infinity; a list of strings refuses a string.
The request model (api.schemas.Hyperparameters) is generated from GRPOConfig, so the OpenAPI schema documents every
field's type, range and default, and a test holds the two together."""

import dataclasses
import json

import pytest

from tests.api.helpers import ROWS, job_spec, jsonl, upload

WRONG_TYPES = [
    ({"max_steps": 2.5}, "hyperparameters.max_steps: Input should be a valid integer, got 2.5"),
    ({"group_size": "8"}, 'hyperparameters.group_size: Input should be a valid integer, got "8"'),
    ({"group_size": 2.5}, "hyperparameters.group_size: Input should be a valid integer, got 2.5"),
    ({"group_size": True}, "hyperparameters.group_size: Input should be a valid integer, got true"),
    ({"seed": "abc"}, 'hyperparameters.seed: Input should be a valid integer, got "abc"'),
    ({"seed": None}, "hyperparameters.seed: Input should be a valid integer, got null"),
    ({"seed": 1e30}, "hyperparameters.seed: Input should be a valid integer, got 1e+30"),
    ({"max_steps": 10**20}, "hyperparameters.max_steps: Input should be less than or equal to 2147483647"),
    ({"micro_batch_size": 2.5}, "hyperparameters.micro_batch_size: Input should be a valid integer, got 2.5"),
    ({"micro_batch_size": -1}, "hyperparameters.micro_batch_size: Input should be greater than or equal to 0"),
    ({"processes": 0}, "hyperparameters.processes: Input should be greater than or equal to 1"),
    ({"processes": "2"}, 'hyperparameters.processes: Input should be a valid integer, got "2"'),
    ({"loss_type": ["grpo"]}, "hyperparameters.loss_type: Input should be 'bnpo', 'dapo', 'dr_grpo' or 'grpo'"),
    ({"dtype": "float16"}, "hyperparameters.dtype: Input should be 'auto', 'bfloat16' or 'float32'"),
    (
        {"importance_sampling_level": "seq"},
        "hyperparameters.importance_sampling_level: Input should be 'sequence' or 'token'",
    ),
    ({"mask_truncated_completions": 1}, "hyperparameters.mask_truncated_completions: Input should be a valid boolean"),
    ({"mask_truncated_completions": "true"}, "hyperparameters.mask_truncated_completions: Input should be a valid"),
    ({"learning_rate": float("inf")}, "hyperparameters.learning_rate: Input should be a finite number, got Infinity"),
    ({"beta": float("inf")}, "hyperparameters.beta: Input should be a finite number, got Infinity"),
    ({"temperature": float("nan")}, "hyperparameters.temperature: Input should be a finite number, got NaN"),
    ({"lora": {"r": 1.5}}, "hyperparameters.lora.r: Input should be a valid integer, got 1.5"),
    ({"lora": {"alpha": float("inf")}}, "hyperparameters.lora.alpha: Input should be a finite number"),
    (
        {"lora": {"target_modules": "q_proj"}},
        'hyperparameters.lora.target_modules: Input should be a valid list, got "q_proj"',
    ),
    ({"lora": {"target_modules": [1]}}, "hyperparameters.lora.target_modules.0: Input should be a valid string, got 1"),
    ({"lora": 5}, "hyperparameters.lora: Input should be a JSON object, got 5"),
    ({"lora": []}, "hyperparameters.lora: Input should be a JSON object, got []"),
    ({"max_step": 3}, "hyperparameters.max_step: Extra inputs are not permitted, got 3"),
    ({"lora": {"rank": 3}}, "hyperparameters.lora.rank: Extra inputs are not permitted, got 3"),
]


@pytest.mark.parametrize(("hyperparameters", "message"), WRONG_TYPES, ids=[repr(h) for h, _ in WRONG_TYPES])
def test_a_hyperparameter_of_the_wrong_type_is_a_422_naming_it_and_nothing_is_stored(
    service, alice, hyperparameters, message
):
    dataset = upload(service, alice, jsonl(ROWS)).json()
    body = json.dumps({**job_spec(dataset["id"]), "hyperparameters": hyperparameters})  # writes Infinity, NaN
    response = service.post("/v1/jobs", headers={**alice, "Content-Type": "application/json"}, content=body)
    assert response.status_code == 422, response.text
    assert any(message in error for error in response.json()["errors"]), response.json()
    listed = service.get("/v1/jobs", headers=alice)
    assert listed.status_code == 200 and listed.json()["count"] == 0


def _flat_fields(config_class) -> dict:
    from grpo_core.config import LoraSettings

    fields = {}
    for spec in dataclasses.fields(config_class):
        if spec.name == "lora":
            fields.update({f"lora.{name}": value for name, value in _flat_fields(LoraSettings).items()})
        else:
            default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
            fields[spec.name] = list(default) if isinstance(default, tuple) else default
    return fields


@pytest.mark.unit
def test_the_request_model_has_exactly_the_config_fields_defaults_and_descriptions():
    from api.schemas import Hyperparameters
    from grpo_core.config import GRPOConfig, LoraSettings, field_docs

    schema = Hyperparameters.model_json_schema()
    lora = schema["$defs"]["LoraHyperparameters"]["properties"]
    documented = {**schema["properties"], **{f"lora.{name}": prop for name, prop in lora.items()}}
    del documented["lora"]
    expected = _flat_fields(GRPOConfig)
    assert set(documented) == set(expected)
    assert {name: prop.get("default") for name, prop in documented.items()} == expected
    docs = {**field_docs(GRPOConfig), **{f"lora.{k}": v for k, v in field_docs(LoraSettings).items()}}
    assert set(docs) >= set(expected), "every config field needs a docstring: it is the field's API description"
    assert all(documented[name]["description"] == docs[name] for name in expected)
    # The model's defaults build the config's defaults: the two agree on what an empty spec means.
    assert GRPOConfig.from_dict(Hyperparameters().model_dump()) == GRPOConfig()


def test_the_openapi_documents_each_hyperparameter_type_range_and_default(service):
    schema = service.get("/openapi.json").json()["components"]["schemas"]
    props = schema["Hyperparameters"]["properties"]
    assert props["group_size"] == {
        **props["group_size"],
        "type": "integer",
        "minimum": 2,
        "maximum": 2**31 - 1,
        "default": 8,
    }
    assert props["epsilon"]["exclusiveMinimum"] == 0 and props["epsilon"]["exclusiveMaximum"] == 1
    assert props["max_new_tokens"]["maximum"] == 4096
    assert set(props["loss_type"]["enum"]) == {"bnpo", "dapo", "dr_grpo", "grpo"}
    assert "completions sampled per prompt" in props["group_size"]["description"]
    lora = schema["LoraHyperparameters"]["properties"]
    assert lora["target_modules"]["type"] == "array" and lora["r"]["minimum"] == 1
    assert schema["JobCreate"]["properties"]["hyperparameters"]["$ref"].endswith("/Hyperparameters")


@pytest.mark.unit
def test_every_integer_in_the_request_model_fits_the_database():
    from api.schemas import Hyperparameters
    from service_core.models import MAX_INT

    schema = Hyperparameters.model_json_schema()
    props = [*schema["properties"].values(), *schema["$defs"]["LoraHyperparameters"]["properties"].values()]
    integers = [p for p in props if p.get("type") == "integer"]
    assert integers and all(
        p["maximum"] <= MAX_INT and p.get("minimum", -MAX_INT - 1) >= -MAX_INT - 1 for p in integers
    )
