"""A pre-flight through the real API and a real Celery worker: queued, run on the worker, its figures stored."""

import time

import pytest

from grpo_core.preflight import VERDICT_LEVELS
from tests.e2e.helpers import upload_arithmetic

pytestmark = pytest.mark.slow


def wait_for(client, preflight_id: str) -> dict:
    deadline = time.monotonic() + 300
    while True:
        preflight = client.get(f"/v1/preflights/{preflight_id}").json()
        if preflight["status"] in ("succeeded", "failed"):
            return preflight
        assert time.monotonic() < deadline, preflight
        time.sleep(0.3)


def test_a_preflight_runs_on_a_worker_and_reports_every_figure(running_service):
    client = running_service.client("preflight")
    dataset_id = upload_arithmetic(client)
    spec = {
        "base_model": "tiny-random-llama",
        "dataset_id": dataset_id,
        "eval_dataset_id": dataset_id,
        "rewards": [{"name": "length_target", "params": {"target": 40}}, {"name": "numeric_answer"}],
        "hyperparameters": {
            "group_size": 2,
            "prompts_per_step": 4,
            "max_new_tokens": 8,
            "max_steps": 5,
            "eval_every": 2,
            "lora": {"r": 4},
        },
    }
    response = client.post("/v1/jobs/preflight", json=spec)
    assert response.status_code == 202, response.text
    preflight = wait_for(client, response.json()["id"])
    assert preflight["status"] == "succeeded", preflight["error"]
    assert preflight["worker_host"] and preflight["finished_at"] >= preflight["started_at"]
    result = preflight["result"]
    assert (result["prompts"], result["group_size"]) == (16, 2)  # GRPO_PREFLIGHT_PROMPTS' default
    assert [r["name"] for r in result["rewards"]] == ["length_target", "numeric_answer"]
    assert all(r["errors"] == 0 and 0 <= r["mean"] <= 1 for r in result["rewards"])
    # The weighted sum of two rewards in [0, 1], each of weight 1.
    assert 0 <= result["reward_mean"] <= 2 and result["reward_std"] >= 0
    assert 0 <= result["flat_low_groups"] + result["flat_high_groups"] <= result["flat_groups"] <= 16
    assert result["flat_fraction"] == result["flat_groups"] / 16
    assert 0 < result["completion_length_mean"] <= 8 and 0 <= result["truncated_fraction"] <= 1
    assert result["seconds_per_step"] > 0 and result["load_seconds"] > 0
    assert result["evaluations"] == 4  # steps 0, 2, 4 and after the last (5)
    expected = 5 * result["seconds_per_step"] + 4 * result["seconds_per_evaluation"] + result["load_seconds"]
    assert result["estimated_job_seconds"] == pytest.approx(expected)
    assert result["verdict"] in VERDICT_LEVELS and "groups" in result["message"]
    # Nothing of a job was made: the pre-flight's throwaway adapter is not a job's.
    assert client.get("/v1/jobs").json()["count"] == 0
