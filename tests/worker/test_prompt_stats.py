"""Acceptance 4 of per-prompt difficulty: a real job (tiny-random-llama) trains, and GET /v1/jobs/{id}/prompts says
what its stored samples and metrics say, also when a worker died mid-job and the job resumed, running a step
again. Every group of a step is stored as samples here (GRPO_SAMPLE_GROUPS_PER_STEP = prompts_per_step), so each
figure is recomputed from them."""

import json
import statistics
from collections import defaultdict

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.services import datasets as datasets_service
from api.services import keys as keys_service
from service_core.db import session_scope
from service_core.models import Job, Tenant
from tests.service_env import clear_service_caches
from tests.worker.helpers import cpu_queue, make_job
from worker.runner import run_job

PROMPTS_PER_STEP = 3
ROWS = [{"prompt": f"What is {i} + 1?", "answer": i + 1} for i in range(7)]


@pytest.fixture
def api(tmp_path, monkeypatch):
    """A fresh SQLite service with a tenant, its dataset, and the app: (client, headers, tenant id, dataset id)."""
    monkeypatch.setenv("GRPO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("GRPO_DATABASE_URL", raising=False)
    monkeypatch.setenv("GRPO_SAMPLE_GROUPS_PER_STEP", str(PROMPTS_PER_STEP))
    clear_service_caches()
    from api.main import create_app
    from service_core.db import run_migrations

    run_migrations()
    content = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
    with session_scope() as session:
        key = keys_service.create_api_key(session, tenant_name="t")
        tenant_id = session.scalar(select(Tenant.id))
        dataset_id = datasets_service.create_dataset(session, tenant_id=tenant_id, name="d.jsonl", content=content).id
    with TestClient(create_app()) as client:
        yield client, {"Authorization": f"Bearer {key}"}, tenant_id, dataset_id
    clear_service_caches()


def get_all(client, headers, path: str, **params) -> list[dict]:
    """Every item of a paged list: samples by cursor, prompts by offset."""
    items: list[dict] = []
    while True:
        page = client.get(path, headers=headers, params=params).json()
        items += page["data"]
        if "next_cursor" in page:
            if page["next_cursor"] is None:
                return items
            params["after"] = page["next_cursor"]
        else:
            if len(items) >= page["count"]:
                return items
            params["offset"] = len(items)


def expected_from_samples(samples: list[dict]) -> dict[int, dict]:
    """Each row's figures recomputed from the stored samples: a group is a (step, group) pair."""
    row_of = {row["prompt"]: index for index, row in enumerate(ROWS)}
    groups: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for sample in samples:
        groups[sample["step"], sample["group"]].append(sample)
    by_row: dict[int, list[tuple[int, list[float]]]] = defaultdict(list)
    for (step, _group), members in sorted(groups.items()):
        by_row[row_of[members[0]["prompt"]]].append((step, [s["reward"] for s in members]))
    return {
        row: {
            "times_sampled": len(seen),
            "mean_reward": statistics.fmean(r for _step, rewards in seen for r in rewards),
            "zero_variance_share": sum(statistics.stdev(rewards) < 1e-8 for _step, rewards in seen) / len(seen),
            "first_step": seen[0][0],
            "first_reward": statistics.fmean(seen[0][1]),
            "latest_step": seen[-1][0],
            "latest_reward": statistics.fmean(seen[-1][1]),
        }
        for row, seen in by_row.items()
    }


def assert_ordered(client, headers, job_id: str) -> None:
    def listed(order: str) -> list[dict]:
        return get_all(client, headers, f"/v1/jobs/{job_id}/prompts", order=order, limit=2)

    hardest, easiest, improved = listed("hardest"), listed("easiest"), listed("most_improved")
    assert [(p["mean_reward"], p["row"]) for p in hardest] == sorted((p["mean_reward"], p["row"]) for p in hardest)
    assert [(-p["mean_reward"], p["row"]) for p in easiest] == sorted((-p["mean_reward"], p["row"]) for p in easiest)
    assert [(-p["improvement"], p["row"]) for p in improved] == sorted((-p["improvement"], p["row"]) for p in improved)
    assert sorted(p["row"] for p in hardest) == sorted(p["row"] for p in easiest) == sorted(p["row"] for p in improved)


def test_the_prompts_endpoint_agrees_with_the_samples_and_metrics_of_a_job_that_resumed(api, monkeypatch):
    client, headers, tenant_id, dataset_id = api
    job_id = make_job(tenant_id, dataset_id, max_steps=3, checkpoint_every=2, prompts_per_step=PROMPTS_PER_STEP)

    # A worker dies after recording step 3's prompt figures, before its samples: the job resumes from step 2's
    # checkpoint and runs step 3 again, whose figures the first run recorded already.
    from worker import reconciler, runner

    class DiesAtStepThree(runner.DatabaseReporter):
        def on_prompt_groups(self, step, groups):
            super().on_prompt_groups(step, groups)
            if step == 3:
                raise SystemExit("killed")  # not an Exception: the runner records nothing, like a kill -9

    monkeypatch.setattr(runner, "DatabaseReporter", DiesAtStepThree)
    with pytest.raises(SystemExit):
        run_job(job_id)
    monkeypatch.undo()
    monkeypatch.setattr(reconciler, "send_turn", lambda queue: None)
    with session_scope() as session:
        job = session.get(Job, job_id)
        job.lease_expires_at = job.lease_expires_at.replace(year=2000)
    assert reconciler.reconcile_once() == [cpu_queue()]
    assert run_job(job_id) == "succeeded"
    with session_scope() as session:
        assert session.get(Job, job_id).steps_computed == 3 + 1  # step 3 ran again

    prompts = get_all(client, headers, f"/v1/jobs/{job_id}/prompts", limit=2)
    samples = get_all(client, headers, f"/v1/jobs/{job_id}/samples", limit=100)
    metrics = [m["values"] for m in client.get(f"/v1/jobs/{job_id}/metrics", headers=headers).json()["data"]]
    metrics = [m for m in metrics if "zero_std_group_fraction" in m]  # the train rows
    assert len(metrics) == 3 and len(samples) == 3 * PROMPTS_PER_STEP * 2

    # Step by step, as the samples show it (the re-run step 3's, against the first run's figures: exact resume).
    expected = expected_from_samples(samples)
    assert {p["row"] for p in prompts} == set(expected)
    for prompt in prompts:
        want = expected[prompt["row"]]
        assert prompt["prompt"] == ROWS[prompt["row"]]["prompt"]
        assert {k: prompt[k] for k in want} == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert prompt["improvement"] == pytest.approx(want["latest_reward"] - want["first_reward"], abs=1e-12)

    # And in sum, as the metrics show it.
    assert sum(p["times_sampled"] for p in prompts) == 3 * PROMPTS_PER_STEP
    flat_groups = sum(round(p["zero_variance_share"] * p["times_sampled"]) for p in prompts)
    assert flat_groups == round(sum(m["zero_std_group_fraction"] for m in metrics) * PROMPTS_PER_STEP)
    reward_total = sum(p["mean_reward"] * p["times_sampled"] * 2 for p in prompts)
    assert reward_total == pytest.approx(sum(m["reward_mean"] for m in metrics) * PROMPTS_PER_STEP * 2, rel=1e-5)
    assert_ordered(client, headers, job_id)


def test_with_dynamic_sampling_every_drawn_group_counts_dropped_ones_included(api):
    client, headers, tenant_id, dataset_id = api
    job_id = make_job(
        tenant_id,
        dataset_id,
        max_steps=2,
        prompts_per_step=PROMPTS_PER_STEP,
        dynamic_sampling=True,
        max_sampling_rounds=2,
        rewards=[{"name": "numeric_answer"}],  # a random model never answers: every group is flat, and dropped
    )
    assert run_job(job_id) == "succeeded"
    prompts = get_all(client, headers, f"/v1/jobs/{job_id}/prompts", limit=200)
    metrics = [m["values"] for m in client.get(f"/v1/jobs/{job_id}/metrics", headers=headers).json()["data"]]
    metrics = [m for m in metrics if "prompts_drawn" in m]
    drawn = sum(m["prompts_drawn"] for m in metrics)
    assert drawn == 2 * 2 * PROMPTS_PER_STEP  # every round ran
    assert sum(p["times_sampled"] for p in prompts) == drawn
    assert sum(p["zero_variance_share"] * p["times_sampled"] for p in prompts) == sum(
        m["groups_dropped"] for m in metrics
    )
    assert all(p["mean_reward"] == 0 and p["improvement"] == 0 for p in prompts)


@pytest.mark.unit
def test_prompts_are_cut_as_samples_are():
    from api.services import prompts as prompts_service
    from grpo_core import report as trainer

    assert prompts_service.PROMPT_TEXT_CHARS == trainer.SAMPLE_TEXT_CHARS
    long = "x" * (trainer.SAMPLE_TEXT_CHARS + 5)
    assert prompts_service._shown_prompt({"prompt": long}) == trainer._cut(long, trainer.SAMPLE_TEXT_CHARS)
    chat = prompts_service._shown_prompt({"messages": [{"role": "user", "content": long}]})
    assert chat == [{"role": "user", "content": trainer._cut(long, trainer.SAMPLE_TEXT_CHARS)}]
