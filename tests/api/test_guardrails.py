"""A job's stop_when at submit: typed and bounded like the hyperparameters (the pydantic model is generated from
grpo_core.guardrails.StopWhen), refused when a condition could never fire, stored with its defaults filled in."""

import json

import pytest

from tests.api.helpers import ROWS, job_spec, jsonl, upload


def submit(service, headers, dataset_id, stop_when, eval_dataset_id=None, **hyperparameters):
    body = {**job_spec(dataset_id), "stop_when": stop_when, "eval_dataset_id": eval_dataset_id}
    body["hyperparameters"] = {**body.get("hyperparameters", {}), **hyperparameters}
    return service.post("/v1/jobs", headers={**headers, "Content-Type": "application/json"}, content=json.dumps(body))


@pytest.mark.parametrize(
    ("stop_when", "message"),
    [
        ({"kl_above": 0}, "stop_when.kl_above: Input should be greater than 0"),
        ({"kl_above": float("inf")}, "stop_when.kl_above: Input should be a finite number, got Infinity"),
        ({"kl_steps": 2.5}, "stop_when.kl_steps: Input should be a valid integer, got 2.5"),
        ({"eval_patience": 10**6}, "stop_when.eval_patience: Input should be less than or equal to 1000"),
        ({"adapter": "first"}, "stop_when.adapter: Input should be 'best' or 'last'"),
        ({"flat_steps": True}, "stop_when.flat_steps: Input should be a valid integer, got true"),
        ({"kl_treshold": 1}, "stop_when.kl_treshold: Extra inputs are not permitted"),
        (5, "stop_when: Input should be a JSON object"),
        ({"kl_above": 0.1}, "stop_when.kl_above: the KL to the reference is only measured with hyperparameters.beta"),
        ({"eval_patience": 3}, "stop_when.eval_patience: early stopping needs held-out evaluations"),
    ],
)
def test_a_bad_stop_when_is_a_422_naming_it_and_nothing_is_queued(service, alice, stop_when, message):
    dataset = upload(service, alice, jsonl(ROWS)).json()
    response = submit(service, alice, dataset["id"], stop_when)
    assert response.status_code == 422, response.text
    assert any(message in error for error in response.json()["errors"]), response.json()
    assert service.get("/v1/jobs", headers=alice).json()["count"] == 0


def test_stop_when_is_stored_with_its_defaults_and_shown_with_the_job(service, alice):
    dataset = upload(service, alice, jsonl(ROWS)).json()
    response = submit(
        service, alice, dataset["id"], {"kl_above": 0.5, "eval_patience": 2}, dataset["id"], beta=0.1, eval_every=2
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["stop_when"]["kl_above"] == 0.5 and job["stop_when"]["eval_patience"] == 2
    assert job["stop_when"]["kl_steps"] == 3 and job["stop_when"]["max_non_finite_steps"] == 3
    assert job["stopped_early"] is None and job["adapter_step"] is None
    plain = submit(service, alice, dataset["id"], None).json()
    assert plain["stop_when"]["kl_above"] is None and plain["stop_when"]["adapter"] == "best"
