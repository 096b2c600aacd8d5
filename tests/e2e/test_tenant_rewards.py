"""A tenant's own reward code end to end: uploaded over REST, run by the real worker in its sandbox, and the
scores served at /samples equal to the same function called here, directly, on the same completions."""

import json

import pytest

from grpo_core import arithmetic_task
from tests.e2e.helpers import read_events, upload_arithmetic

pytestmark = pytest.mark.slow

PER_SAMPLE = """
def reward(prompt, completion, answer, scale=1.0, **fields):
    print("per-sample", len(completion))
    # Random weights never write the sum: reward closeness to a length, plus the answer, so groups differ.
    return scale * (max(0.0, 1.0 - abs(len(completion) - 30) / 30) + float(str(answer) in completion))
"""

TRL_SHAPED = """
def reward(prompts, completions, answer, **kwargs):
    # Written for TRL's GRPOTrainer: every column as a list, one value per completion.
    print("batch of", len(completions))
    return [len(set(c)) / (1 + len(c)) + (str(a) in c) for c, a in zip(completions, answer)]
"""


def call_directly(source: str, name: str):
    namespace: dict = {}
    exec(compile(source, name, "exec"), namespace)  # our own test code, in the test process
    return namespace["reward"]


def all_samples(client, job_id: str) -> tuple[list[dict], dict]:
    samples, outputs, cursor = [], {}, None
    while True:
        params = {"limit": 3, **({"after": cursor} if cursor else {})}
        page = client.get(f"/v1/jobs/{job_id}/samples", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        samples += body["data"]
        outputs.update(body["outputs"])
        cursor = body["next_cursor"]
        if cursor is None:
            return samples, outputs


@pytest.mark.parametrize("source", [PER_SAMPLE, TRL_SHAPED], ids=["per-sample", "trl-shaped"])
def test_an_uploaded_reward_trains_and_its_stored_scores_equal_the_function_called_directly(running_service, source):
    client = running_service.client("tenant-code")
    uploaded = client.post("/v1/rewards", files={"file": ("reward.py", source.encode())})
    assert uploaded.status_code == 201, uploaded.text
    reward_id = uploaded.json()["id"]
    params = {"scale": 2.0} if source is PER_SAMPLE else {}
    spec = {
        "base_model": "tiny-random-llama",
        "dataset_id": upload_arithmetic(client),
        "rewards": [{"name": reward_id, "params": params}],
        "hyperparameters": {"group_size": 3, "prompts_per_step": 2, "max_new_tokens": 8, "max_steps": 2,
                            "lora": {"r": 4}},
    }  # fmt: skip
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    events = read_events(client, job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    assert not [e for e in events if e["event"] == "warning"], "no sample failed"

    samples, outputs = all_samples(client, job_id)
    # Two groups of three per step (GRPO_SAMPLE_GROUPS_PER_STEP), for both steps, in order.
    assert [(s["step"], s["group"], s["index"]) for s in samples] == [
        (step, group, index) for step in (1, 2) for group in (0, 1) for index in range(3)
    ]
    answers = {row["prompt"]: row["answer"] for row in arithmetic_task()[0]}
    fn = call_directly(source, "reward.py")
    for sample in samples:
        answer = answers[sample["prompt"]]
        if source is PER_SAMPLE:
            expected = fn(sample["prompt"], sample["completion"], answer=answer, **params)
        else:
            [expected] = fn([sample["prompt"]], [sample["completion"]], answer=[answer])
        assert sample["scores"] == {reward_id: pytest.approx(expected, abs=1e-6)}, sample
        assert sample["errors"] == {}
    # Advantages are the group's own: they sum to zero within each group.
    for step in (1, 2):
        for group in (0, 1):
            advantages = [s["advantage"] for s in samples if (s["step"], s["group"]) == (step, group)]
            assert abs(sum(advantages)) < 1e-4
    printed = outputs["1"][reward_id]
    assert ("per-sample" if source is PER_SAMPLE else "batch of 6") in printed
    assert json.dumps(outputs)  # served as plain JSON
