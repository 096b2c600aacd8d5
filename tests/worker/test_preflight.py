"""The pre-flight runner in-process on a real SQLite database (through the API and a Celery worker: tests/e2e):
a pre-flight cannot run for ever, and a message delivered twice runs it once."""

from datetime import timedelta

from sqlalchemy import update

from api.schemas import JobCreate
from api.services import preflights as preflights_service
from service_core.db import session_scope
from service_core.models import Preflight, utcnow
from tests.service_env import clear_service_caches
from tests.worker.helpers import usage_rows
from worker.preflight import run_preflight
from worker.reconciler import reconcile_preflights


def make_preflight(tenant_id, dataset_id) -> str:
    spec = JobCreate(
        base_model="tiny-random-llama",
        dataset_id=dataset_id,
        rewards=[{"name": "length_target", "params": {"target": 40}}],
        hyperparameters={"group_size": 2, "max_new_tokens": 6, "max_steps": 3, "lora": {"r": 4}},
    )
    with session_scope() as session:
        return preflights_service.create_preflight(session, tenant_id=tenant_id, spec=spec).id


def read(preflight_id) -> Preflight:
    with session_scope() as session:
        preflight = session.get(Preflight, preflight_id)
        session.expunge(preflight)
        return preflight


def test_a_preflight_past_its_time_limit_fails_saying_so_and_runs_once(tenant_and_dataset, monkeypatch):  # noqa: F811
    monkeypatch.setenv("GRPO_PREFLIGHT_TIMEOUT_SECONDS", "0.001")
    clear_service_caches()
    preflight_id = make_preflight(*tenant_and_dataset)
    assert run_preflight(preflight_id) == "failed"
    preflight = read(preflight_id)
    assert preflight.result is None and preflight.finished_at is not None
    assert "time limit of 0.001 s (GRPO_PREFLIGHT_TIMEOUT_SECONDS)" in preflight.error
    # Delivered again: it is finished, so nothing runs.
    assert run_preflight(preflight_id) == "failed" and read(preflight_id).finished_at == preflight.finished_at
    (usage,) = usage_rows(preflight_id)  # its seconds count, though it measured nothing
    assert usage.kind == "preflight" and usage.compute_seconds > 0 and usage.tokens_sampled == 0


def test_a_preflight_succeeds_once_and_a_second_delivery_does_nothing(tenant_and_dataset):  # noqa: F811
    preflight_id = make_preflight(*tenant_and_dataset)
    assert run_preflight(preflight_id) == "succeeded"
    preflight = read(preflight_id)
    assert preflight.result["prompts"] == 6 and preflight.result["seconds_per_step"] > 0  # 6 rows, under 16
    assert run_preflight(preflight_id) == "succeeded" and read(preflight_id).finished_at == preflight.finished_at
    (usage,) = usage_rows(preflight_id)  # recorded once
    assert (usage.kind, usage.hardware, usage.tenant_id) == ("preflight", "cpu", tenant_and_dataset[0])
    # The first 6 prompts sampled, then one step of 1 prompt (prompts_per_step), G = 2 each, one reward.
    assert usage.reward_calls == (6 + 1) * 2 and usage.tokens_trained > 0 and usage.tokens_sampled > 0
    assert usage.compute_seconds > usage.reward_seconds > 0


def test_the_reconciler_fails_a_preflight_whose_worker_died_and_resends_a_lost_one(tenant_and_dataset):  # noqa: F811
    running, lost = make_preflight(*tenant_and_dataset), make_preflight(*tenant_and_dataset)
    past = utcnow() - timedelta(hours=1)
    with session_scope() as session:
        session.execute(update(Preflight).where(Preflight.id == running).values(status="running", deadline_at=past))
        session.execute(update(Preflight).where(Preflight.id == lost).values(enqueued_at=past))
    assert reconcile_preflights() == [lost]
    assert reconcile_preflights() == []  # just sent: not again so soon
    died = read(running)
    assert died.status == "failed" and "stopped without finishing" in died.error
    assert read(lost).status == "queued"
