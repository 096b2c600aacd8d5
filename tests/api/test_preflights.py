"""POST /v1/jobs/preflight takes a job's body and accepts what POST /v1/jobs accepts; GET /v1/preflights/{id}
reads it back, for its tenant only. (A pre-flight run by a worker is in tests/e2e/test_preflight.py.)"""

import pytest

from tests.api.helpers import job_spec, queued_messages


def test_a_preflight_is_queued_and_read_back_by_its_tenant_only(service, alice, bob, dataset_id):
    response = service.post("/v1/jobs/preflight", headers=alice, json=job_spec(dataset_id))
    assert response.status_code == 202, response.text
    preflight = response.json()
    assert preflight["id"].startswith("pf_") and preflight["status"] == "queued"
    assert preflight["prompts"] == 5  # GRPO_PREFLIGHT_PROMPTS (16), capped at the dataset's 5 rows
    assert preflight["result"] is None and preflight["hyperparameters"]["group_size"] == 4
    assert queued_messages() == 1
    read = service.get(f"/v1/preflights/{preflight['id']}", headers=alice)
    assert read.status_code == 200 and read.json() == preflight
    assert service.get("/v1/jobs/preflight", headers=alice).json() == {"data": [preflight], "count": 1}
    assert service.get("/v1/jobs/preflight", headers=bob).json() == {"data": [], "count": 0}
    # Another tenant's pre-flight answers exactly as one that does not exist.
    theirs = service.get(f"/v1/preflights/{preflight['id']}", headers=bob)
    missing = service.get("/v1/preflights/pf_" + "0" * 32, headers=bob)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["detail"].replace(preflight["id"], "X") == missing.json()["detail"].replace(
        "pf_" + "0" * 32, "X"
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"base_model": "gpt-9"},
        {"rewards": [{"name": "no_such_reward"}]},
        {"rewards": [{"name": "numeric_answer", "params": {"field": "missing"}}]},
        {"hyperparameters": {"group_size": 1}},
        {"hyperparameters": {"max_steps": 10**9}},
        {"hyperparameters": {"no_such_field": 1}},
        {"dataset_id": "ds_" + "0" * 32},
        {"extra": True},
    ],
)
def test_a_preflight_refuses_what_a_job_refuses(service, alice, dataset_id, overrides):
    spec = job_spec(dataset_id, **overrides)
    job = service.post("/v1/jobs", headers=alice, json=spec)
    preflight = service.post("/v1/jobs/preflight", headers=alice, json=spec)
    assert job.status_code == preflight.status_code and job.status_code in (404, 422), job.text
    assert preflight.json() == job.json()
    assert queued_messages() == 0


def test_another_tenants_dataset_is_refused_as_for_a_job(service, alice, bob, dataset_id):
    job = service.post("/v1/jobs", headers=bob, json=job_spec(dataset_id))
    preflight = service.post("/v1/jobs/preflight", headers=bob, json=job_spec(dataset_id))
    assert preflight.status_code == job.status_code != 202 and preflight.json() == job.json()


def test_a_tenant_past_its_active_preflights_gets_429_and_others_do_not(service, alice, bob, dataset_id):
    for _ in range(2):  # GRPO_MAX_PREFLIGHTS_PER_TENANT's default
        assert service.post("/v1/jobs/preflight", headers=alice, json=job_spec(dataset_id)).status_code == 202
    refused = service.post("/v1/jobs/preflight", headers=alice, json=job_spec(dataset_id))
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
    assert "GRPO_MAX_PREFLIGHTS_PER_TENANT" in refused.json()["detail"]
    from tests.api.helpers import ROWS, jsonl, upload

    bobs = upload(service, bob, jsonl(ROWS)).json()["id"]
    assert service.post("/v1/jobs/preflight", headers=bob, json=job_spec(bobs)).status_code == 202
