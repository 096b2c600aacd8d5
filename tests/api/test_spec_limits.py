"""Operator limits, the model's own facts and the dataset's recorded contents refuse a job spec with a 422 that names
the field, the value and the limit (and the setting's variable), before anything is queued. What the API accepts is
what trains: datasets are parsed by the worker's own parser."""

import json

import pytest

from tests.api.helpers import ROWS, job_spec, jsonl, queued_messages, upload


@pytest.fixture
def limits(monkeypatch):
    """Small operator limits, so each is easy to pass."""
    from tests.service_env import clear_service_caches

    settings = {
        "MAX_GROUP_SIZE": 8,
        "MAX_PROMPTS_PER_STEP": 4,
        "MAX_COMPLETIONS_PER_STEP": 16,
        "MAX_NUM_ITERATIONS": 2,
        "MAX_EVAL_SAMPLES_PER_PROMPT": 4,
        "MAX_STEPS": 100,
        "MAX_LORA_RANK": 32,
        "MAX_NEW_TOKENS": 64,
        "MAX_PROMPT_TOKENS": 600,
        "MAX_TOKENS_PER_STEP": 8000,
        "MAX_DATASET_ROWS": 6,
        "MAX_CHECKPOINTS_PER_JOB": 10,
    }
    for name, value in settings.items():
        monkeypatch.setenv(f"GRPO_{name}", str(value))
    clear_service_caches()
    yield settings
    clear_service_caches()


def refused(service, headers, spec) -> list[str]:
    response = service.post("/v1/jobs", headers=headers, json=spec)
    assert response.status_code == 422, response.text
    assert queued_messages() == 0
    return response.json()["errors"]


OVER_LIMIT = [
    ({"group_size": 9}, "hyperparameters.group_size: 9 is above the operator's limit of 8 (GRPO_MAX_GROUP_SIZE)"),
    ({"prompts_per_step": 5}, "hyperparameters.prompts_per_step: 5 is above the operator's limit of 4"),
    (
        {"group_size": 8, "prompts_per_step": 3},
        "hyperparameters.group_size x prompts_per_step: 24 completions per step is above the operator's limit of 16 "
        "(GRPO_MAX_COMPLETIONS_PER_STEP)",
    ),
    ({"num_iterations": 3}, "hyperparameters.num_iterations: 3 is above the operator's limit of 2"),
    ({"eval_samples_per_prompt": 10**9}, "eval_samples_per_prompt: 1000000000 is above the operator's limit of 4"),
    ({"max_steps": 10**12}, "hyperparameters.max_steps: Input should be less than or equal to 2147483647"),
    ({"max_steps": 101}, "hyperparameters.max_steps: 101 is above the operator's limit of 100 (GRPO_MAX_STEPS)"),
    ({"warmup_steps": 10**12}, "hyperparameters.warmup_steps: Input should be less than or equal to 2147483647"),
    ({"max_steps": 3, "num_iterations": 2, "warmup_steps": 7}, "warmup_steps: 7 is more than the run's 6 optimizer"),
    (
        {"lora": {"r": 100000}},
        "hyperparameters.lora.r: 100000 is above the operator's limit of 32 (GRPO_MAX_LORA_RANK)",
    ),
    (
        {"max_steps": 100, "checkpoint_every": 9},
        "hyperparameters.checkpoint_every: 9 with max_steps 100 saves 12 checkpoints, above the operator's limit of 10 "
        "(GRPO_MAX_CHECKPOINTS_PER_JOB)",
    ),
    ({"max_new_tokens": 65}, "hyperparameters.max_new_tokens: 65 is above the operator's limit of 64"),
    ({"max_new_tokens": 4097}, "hyperparameters.max_new_tokens: Input should be less than or equal to 4096"),
    (
        {"lora": {"target_modules": ["nope_proj", "q_proj"]}},
        "hyperparameters.lora.target_modules: ['nope_proj'] are not linear layers of tiny-random-llama; valid: "
        "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj",
    ),
]


@pytest.mark.parametrize(("hyperparameters", "message"), OVER_LIMIT, ids=[json.dumps(h) for h, _ in OVER_LIMIT])
def test_a_size_past_its_limit_is_a_422_naming_field_value_and_limit(service, alice, limits, hyperparameters, message):
    dataset = upload(service, alice, jsonl(ROWS)).json()["id"]
    errors = refused(service, alice, job_spec(dataset, hyperparameters={"group_size": 2, **hyperparameters}))
    assert any(message in error for error in errors), errors


def test_sizes_at_their_limits_are_accepted(service, alice, limits):
    dataset = upload(service, alice, jsonl(ROWS)).json()["id"]
    at_limits = {
        "group_size": 8,
        "prompts_per_step": 2,
        "num_iterations": 2,
        "eval_samples_per_prompt": 4,
        "max_steps": 100,
        "checkpoint_every": 10,
        "warmup_steps": 200,
        "lora": {"r": 32, "target_modules": ["q_proj", "down_proj"]},
        "max_new_tokens": 64,
    }
    response = service.post("/v1/jobs", headers=alice, json=job_spec(dataset, hyperparameters=at_limits))
    assert response.status_code == 201, response.text


def test_an_evaluation_past_the_per_step_bounds_is_refused(service, alice, limits, monkeypatch):
    from tests.service_env import clear_service_caches

    # The eval set is sampled in one batch: its rows x eval_samples_per_prompt count as a step's completions.
    dataset = upload(service, alice, jsonl(ROWS)).json()["id"]
    spec = job_spec(dataset, hyperparameters={"group_size": 2, "eval_samples_per_prompt": 4})
    errors = refused(service, alice, {**spec, "eval_dataset_id": dataset})
    assert any(
        f"eval_dataset_id {dataset}: its 5 rows x hyperparameters.eval_samples_per_prompt 4 is 20 completions per "
        "evaluation, above the operator's limit of 16 (GRPO_MAX_COMPLETIONS_PER_STEP)" in error
        for error in errors
    ), errors
    spec["hyperparameters"]["eval_samples_per_prompt"] = 3

    # 15 eval sequences of at most 210 tokens (a prompt's bound plus 48 new tokens) each; 2 a step for training.
    monkeypatch.setenv("GRPO_MAX_TOKENS_PER_STEP", "2000")
    clear_service_caches()
    errors = refused(service, alice, {**spec, "eval_dataset_id": dataset})
    assert len(errors) == 1 and errors[0].startswith(
        f"eval_dataset_id {dataset}: rows x eval_samples_per_prompt x (longest prompt + max_new_tokens) is "
    ), errors
    assert errors[0].endswith("tokens per evaluation, above the operator's limit of 2000 (GRPO_MAX_TOKENS_PER_STEP)")

    monkeypatch.setenv("GRPO_MAX_TOKENS_PER_STEP", "8000")
    clear_service_caches()
    response = service.post("/v1/jobs", headers=alice, json={**spec, "eval_dataset_id": dataset})
    assert response.status_code == 201, response.text


def test_too_many_rows_are_refused_at_upload(service, alice, limits):
    response = upload(service, alice, jsonl(ROWS * 2))
    assert response.status_code == 422
    assert "10 rows, more than the operator's limit of 6 (GRPO_MAX_DATASET_ROWS)" in response.json()["detail"]


def test_a_prompt_longer_than_the_model_context_is_refused(service, alice, limits, monkeypatch):
    from tests.service_env import clear_service_caches

    # 850 bytes of prompt: within the tiny model's 1024 tokens alone, not with 64 new tokens and the template.
    long_rows = [{"prompt": "x" * 850, "answer": 1}]
    dataset = upload(service, alice, jsonl(long_rows)).json()["id"]
    monkeypatch.setenv("GRPO_MAX_PROMPT_TOKENS", "5000")
    monkeypatch.setenv("GRPO_MAX_TOKENS_PER_STEP", "100000")
    clear_service_caches()
    spec = job_spec(dataset, hyperparameters={"group_size": 2, "max_new_tokens": 64})
    errors = refused(service, alice, spec)
    bound = 120 + 24 + len("user") + 850
    assert errors == [
        f"dataset_id {dataset}: its longest prompt (at most {bound} tokens, bounded by its UTF-8 bytes) plus "
        f"hyperparameters.max_new_tokens 64 is {bound + 64}, more than tiny-random-llama's context of 1024 tokens; "
        "shorten the prompts or max_new_tokens"
    ]
    fits = service.post(
        "/v1/jobs",
        headers=alice,
        json=job_spec(dataset, hyperparameters={"max_new_tokens": 1024 - bound, "group_size": 2}),
    )
    assert fits.status_code == 201, fits.text


def test_a_prompt_past_the_operator_limits_is_refused(service, alice, limits):
    dataset = upload(service, alice, jsonl([{"prompt": "é" * 300, "answer": 1}])).json()["id"]  # 600 bytes
    errors = refused(service, alice, job_spec(dataset, hyperparameters={"group_size": 8, "prompts_per_step": 2}))
    assert any("is above the operator's limit of 600 prompt tokens (GRPO_MAX_PROMPT_TOKENS)" in e for e in errors)
    assert any("tokens per step, above the operator's limit of 8000 (GRPO_MAX_TOKENS_PER_STEP)" in e for e in errors)


def test_a_micro_batch_is_stored_with_the_job_and_does_not_lift_the_per_step_token_limit(service, alice, limits):
    hyperparameters = {"group_size": 8, "prompts_per_step": 2, "micro_batch_size": 1}
    # Sampling holds every completion of the step at once, whatever the micro batch of the log-prob passes: 16 x
    # (at most 548 prompt tokens + 48) is still above the 8000 tokens a step may hold.
    long_prompts = upload(service, alice, jsonl([{"prompt": "é" * 200, "answer": 1}])).json()["id"]
    assert refused(service, alice, job_spec(long_prompts, hyperparameters=hyperparameters)) == [
        "hyperparameters: group_size x prompts_per_step x (longest prompt + max_new_tokens) is 9536 tokens per step, "
        "above the operator's limit of 8000 (GRPO_MAX_TOKENS_PER_STEP)"
    ]
    dataset = upload(service, alice, jsonl(ROWS)).json()["id"]
    response = service.post("/v1/jobs", headers=alice, json=job_spec(dataset, hyperparameters=hyperparameters))
    assert response.status_code == 201, response.text
    assert response.json()["hyperparameters"]["micro_batch_size"] == 1


REWARD_CASES = [
    (
        [{"name": "numeric_answer", "params": {"tolerance": float("inf")}}],
        "reward 'numeric_answer': param tolerance: Input should be a finite number",
    ),
    (
        [{"name": "numeric_answer", "weight": float("inf")}],
        "rewards.0.weight: Input should be a finite number, got Infinity",
    ),
    (
        [{"name": "numeric_answer", "params": {"field": "prompt"}}],
        "reward 'numeric_answer': params.field 'prompt' must name a field holding a number in every row; row 1 of",
    ),
    (
        [{"name": "numeric_answer", "weight": 0}, {"name": "format_tags", "weight": 0.0}],
        "rewards: every weight is 0, so every advantage would be 0 and nothing would train",
    ),
]


@pytest.mark.parametrize(
    ("rewards", "message"), REWARD_CASES, ids=["tolerance inf", "weight inf", "text field", "all 0"]
)
def test_a_reward_that_cannot_score_is_refused_at_submit_time(service, alice, rewards, message):
    dataset = upload(service, alice, jsonl(ROWS)).json()["id"]
    body = json.dumps(job_spec(dataset, rewards=rewards))
    response = service.post("/v1/jobs", headers={**alice, "Content-Type": "application/json"}, content=body)
    assert response.status_code == 422, response.text
    assert any(message in error for error in response.json()["errors"]), response.json()


def test_one_reward_of_weight_zero_is_accepted_as_a_reported_metric(service, alice):
    dataset = upload(service, alice, jsonl(ROWS)).json()["id"]
    rewards = [{"name": "numeric_answer"}, {"name": "format_tags", "weight": 0}]
    assert service.post("/v1/jobs", headers=alice, json=job_spec(dataset, rewards=rewards)).status_code == 201


ROW = b'{"prompt": "What is 2 + 3?", "answer": 5}'
BAD_FILES = [
    (ROW + b"\r" + ROW + b"\r", "line 1: invalid JSON: Extra data"),
    (ROW + b"\n" + b'{"prompt": "\\ud800"}', "line 2: a string holds a lone surrogate"),
    (ROW + b"\n" + b'{"prompt": "x", "a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "line 2: nested deeper than 64"),
    (ROW + b"\n" + b'{"prompt": "x", "answer": ' + b"9" * 5000 + b"}", "line 2: invalid JSON: an integer with more"),
    (ROW + b"\n\n" + b'{"prompt": "x", "answer": NaN}', "line 3: invalid JSON: NaN is not a JSON number"),
]


@pytest.mark.parametrize(("content", "message"), BAD_FILES, ids=["cr only", "surrogate", "deep", "digits", "nan"])
def test_a_dataset_the_worker_could_not_read_is_a_422_naming_the_line(service, alice, monkeypatch, content, message):
    from tests.service_env import clear_service_caches

    monkeypatch.setenv("GRPO_MAX_UPLOAD_MB", "1")
    clear_service_caches()
    response = upload(service, alice, content)
    assert response.status_code == 422, response.text
    assert any(message in error for error in response.json()["errors"]), response.json()


def test_crlf_and_bom_files_upload_with_the_rows_the_worker_reads(service, alice):
    response = upload(service, alice, b"\xef\xbb\xbf" + ROW + b"\r\n" + ROW + b"\r\n")
    assert response.status_code == 201, response.text
    assert response.json()["rows"] == 2


def test_a_job_stored_under_looser_rules_still_reads(service, alice):
    """Bounds tightened later (a reward weight of 5000, beta 50) must not make a stored job a 500 on every read."""
    from sqlalchemy import update

    from service_core.db import session_scope
    from service_core.models import Job

    dataset = upload(service, alice, jsonl(ROWS)).json()["id"]
    job = service.post("/v1/jobs", headers=alice, json=job_spec(dataset)).json()
    with session_scope() as session:
        stored = session.get(Job, job["id"])
        loose = {**stored.hyperparameters, "beta": 50.0}
        session.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(rewards=[{"name": "numeric_answer", "weight": 5000.0, "params": {}}], hyperparameters=loose)
        )
    for path in (f"/v1/jobs/{job['id']}", "/v1/jobs"):
        response = service.get(path, headers=alice)
        assert response.status_code == 200, response.text
    assert service.get(f"/v1/jobs/{job['id']}", headers=alice).json()["rewards"][0]["weight"] == 5000.0
