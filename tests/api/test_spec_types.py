"""Hyperparameters of the wrong type are refused with a 422 that names the field, before any row is written: an
integer field refuses 2.5, "8" and true; a number refuses Infinity; a list of strings refuses a string."""

import json

import pytest

from tests.api.test_api import ROWS, job_spec, jsonl, upload

WRONG_TYPES = [
    ({"max_steps": 2.5}, "max_steps must be an integer, got 2.5"),
    ({"group_size": "8"}, 'group_size must be an integer, got "8"'),
    ({"group_size": 2.5}, "group_size must be an integer"),
    ({"seed": "abc"}, "seed must be an integer"),
    ({"seed": None}, "seed must be an integer, got null"),
    ({"seed": 1e30}, "seed must be an integer"),
    ({"loss_type": ["grpo"]}, 'loss_type must be a string, got ["grpo"]'),
    ({"learning_rate": float("inf")}, "learning_rate must be a finite number, got Infinity"),
    ({"beta": float("inf")}, "beta must be a finite number"),
    ({"temperature": float("nan")}, "temperature must be a finite number, got NaN"),
    ({"lora": {"r": 1.5}}, "lora.r must be an integer, got 1.5"),
    ({"lora": {"alpha": float("inf")}}, "lora.alpha must be a finite number"),
    ({"lora": {"target_modules": "q_proj"}}, 'lora.target_modules must be a list of strings, got "q_proj"'),
    ({"lora": {"target_modules": [1]}}, "lora.target_modules must be a list of strings, got [1]"),
    ({"lora": 5}, "lora must be an object"),
    ({"lora": []}, "lora must be an object"),
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
