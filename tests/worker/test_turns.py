"""Fair turns (worker/turns.py): which tenant's job a turn starts. The order itself as a pure function, then turns
taken by worker/runner.py run_next_job on a real (SQLite) database, with training replaced by a note of the job
started (the jobs stay running, as they would while they train)."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from api.services import datasets as datasets_service
from api.services import keys as keys_service
from api.services import tenants as tenants_service
from service_core.db import session_scope
from service_core.models import Job, Tenant
from service_core.settings import get_settings
from tests.worker.helpers import cpu_queue, make_job
from worker import leases, runner, turns
from worker.turns import Share, Waiting, turn_order

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def waiting(tenant: str, *minutes: int) -> list[Waiting]:
    return [Waiting(f"{tenant}{minute}", tenant, T0 + timedelta(minutes=minute)) for minute in minutes]


def share(running=0, weight=1.0, max_running=4, last_turn_minute=None) -> Share:
    last = None if last_turn_minute is None else T0 + timedelta(minutes=last_turn_minute)
    return Share(weight=weight, running=running, max_running=max_running, last_turn_at=last)


@pytest.mark.unit
def test_the_tenant_with_fewest_running_per_weight_goes_first_then_its_oldest_job():
    jobs = waiting("a", *range(20)) + waiting("b", 30)
    order = turn_order(jobs, {"a": share(running=1, last_turn_minute=5), "b": share()})
    assert [job.job_id for job in order[:3]] == ["b30", "a0", "a1"]
    # Weight 2 with two running stands level with weight 1 and one running; the tie goes to the turn longest ago.
    shares = {"a": share(running=2, weight=2, last_turn_minute=9), "b": share(running=1, last_turn_minute=8)}
    assert turn_order(jobs, shares)[0].job_id == "b30"
    shares["b"] = share(running=1, last_turn_minute=10)
    assert turn_order(jobs, shares)[0].job_id == "a0"


@pytest.mark.unit
def test_a_tenant_never_served_goes_before_one_served_and_equal_tenants_by_their_oldest_job():
    jobs = waiting("a", 3) + waiting("b", 1) + waiting("c", 2)
    order = turn_order(jobs, {"a": share(), "b": share(last_turn_minute=0), "c": share()})
    assert [job.job_id for job in order] == ["c2", "a3", "b1"]


@pytest.mark.unit
def test_a_tenant_at_its_cap_offers_nothing_and_one_below_only_its_room():
    jobs = waiting("a", 1, 2, 3) + waiting("b", 4, 5, 6)
    order = turn_order(jobs, {"a": share(running=2, max_running=2), "b": share(running=1, max_running=3)})
    assert [job.job_id for job in order] == ["b4", "b5"]
    assert turn_order(waiting("a", 1), {"a": share(running=5, max_running=4)}) == []
    assert turn_order([], {}) == []


@pytest.mark.unit
def test_each_tenants_first_job_comes_before_any_tenants_second():
    jobs = waiting("a", 1, 2, 3) + waiting("b", 4, 5)
    order = turn_order(jobs, {"a": share(), "b": share(running=1)})
    assert [job.job_id for job in order] == ["a1", "b4", "a2", "b5", "a3"]


# --- turns on a real database ------------------------------------------------------------------------------------


@pytest.fixture
def tenants(tenant_and_dataset):
    """Tenants a and b, each with a dataset: {name: (tenant id, dataset id)}."""
    first_id, first_dataset = tenant_and_dataset
    with session_scope() as session:
        session.get(Tenant, first_id).name = "a"
        keys_service.create_api_key(session, tenant_name="b")
        second_id = session.scalar(select(Tenant.id).where(Tenant.name == "b"))
        rows = b'{"prompt": "What is 1 + 1?", "answer": 2}\n'
        second_dataset = datasets_service.create_dataset(session, tenant_id=second_id, name="d.jsonl", content=rows).id
    return {"a": (first_id, first_dataset), "b": (second_id, second_dataset)}


@pytest.fixture
def started(monkeypatch):
    """The jobs turns start, in order; each is left running (claimed, marked running) instead of training."""
    jobs: list[str] = []

    def note(job_id, owner, settings, run):
        jobs.append(job_id)
        return "running"

    monkeypatch.setattr(runner, "_run", note)
    monkeypatch.setattr(runner, "send_turn", lambda queue: None)
    return jobs


def set_tenant(name: str, **limits) -> None:
    with session_scope() as session:
        tenants_service.set_tenant(session, name=name, **limits)


def finish(job_id: str) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        job.status, job.lease_owner, job.lease_expires_at = "succeeded", None, None


def test_with_twenty_of_a_queued_b_s_one_job_starts_as_soon_as_a_worker_is_free(tenants, started):
    a_jobs = [make_job(*tenants["a"]) for _ in range(20)]
    assert runner.run_next_job(cpu_queue()) == "running"  # the one worker takes a's first job
    b_job = make_job(*tenants["b"])  # then b submits one
    finish(a_jobs[0])  # the job running now ends
    assert runner.run_next_job(cpu_queue()) == "running"
    assert started == [a_jobs[0], b_job]
    # Then a's jobs, oldest first, as turns come.
    finish(b_job)
    runner.run_next_job(cpu_queue())
    assert started[-1] == a_jobs[1]


def test_b_goes_first_while_a_job_of_a_still_runs_on_another_worker(tenants, started):
    a_jobs = [make_job(*tenants["a"]) for _ in range(5)]
    runner.run_next_job(cpu_queue())
    b_job = make_job(*tenants["b"])
    runner.run_next_job(cpu_queue())
    runner.run_next_job(cpu_queue())
    assert started == [a_jobs[0], b_job, a_jobs[1]]


def test_a_tenant_of_weight_two_runs_two_jobs_for_the_others_one(tenants, started):
    set_tenant("a", weight=2, max_running=10)
    set_tenant("b", max_running=10)
    a_jobs = {make_job(*tenants["a"]) for _ in range(8)}
    b_jobs = {make_job(*tenants["b"]) for _ in range(8)}
    for turn in range(1, 7):
        runner.run_next_job(cpu_queue())
        if turn % 3 == 0:
            assert (len(a_jobs & set(started)), len(b_jobs & set(started))) == (2 * turn // 3, turn // 3)


def test_a_tenant_at_its_running_cap_is_skipped_and_a_turn_with_nothing_to_start_is_idle(tenants, started):
    set_tenant("a", max_running=1)
    a_jobs = [make_job(*tenants["a"]) for _ in range(3)]
    assert runner.run_next_job(cpu_queue()) == "running"
    assert runner.run_next_job(cpu_queue()) == "idle"  # a has one running, its cap; b has nothing queued
    b_job = make_job(*tenants["b"])
    runner.run_next_job(cpu_queue())
    assert started == [a_jobs[0], b_job]
    with session_scope() as session:
        assert session.get(Job, a_jobs[1]).status == "queued"
    finish(a_jobs[0])  # a slot of a's frees: its next job may start
    runner.run_next_job(cpu_queue())
    assert started[-1] == a_jobs[1]
    # The service's default cap holds where the tenant has none of its own.
    set_tenant("b", max_running=tenants_service.DEFAULT)
    assert get_settings().max_running_jobs_per_tenant == 4


def test_a_turn_on_an_empty_or_cancelled_queue_is_idle_and_records_no_turn(tenants, started):
    assert runner.run_next_job(cpu_queue()) == "idle"
    job_id = make_job(*tenants["a"])
    with session_scope() as session:
        session.get(Job, job_id).cancel_requested = True
    assert runner.run_next_job(cpu_queue()) == "idle"
    assert runner.run_next_job("another-queue") == "idle"
    with session_scope() as session:
        assert session.scalar(select(Tenant.last_turn_at).where(Tenant.name == "a")) is None
    assert started == []


def test_a_claim_lost_to_another_worker_takes_the_next_candidate(tenants, started, monkeypatch):
    first = make_job(*tenants["a"])
    second = make_job(*tenants["b"])
    chosen = turns.next_jobs

    def another_worker_claims_the_first(session, queue, settings):
        order = chosen(session, queue, settings)
        with session_scope() as other:  # between this worker's choice and its claim
            leases.claim_job(other, job_id=order[0].job_id, owner="other", lease_seconds=60, max_attempts=3)
        return order

    monkeypatch.setattr(turns, "next_jobs", another_worker_claims_the_first)
    assert runner.run_next_job(cpu_queue()) == "running"
    assert started == [second]
    with session_scope() as session:
        assert session.get(Job, first).lease_owner == "other"


def test_a_turn_records_the_tenants_turn_and_a_finished_job_offers_a_turn_while_jobs_wait(tenants, monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(runner, "send_turn", sent.append)
    monkeypatch.setattr(runner, "_train_and_record", lambda job_id, owner, settings, run: "succeeded")
    first, _second = make_job(*tenants["a"]), make_job(*tenants["a"])
    assert runner.run_next_job(cpu_queue()) == "succeeded"
    with session_scope() as session:
        assert session.scalar(select(Tenant.last_turn_at).where(Tenant.name == "a")) is not None
        assert session.get(Job, first).status == "running"  # what _train_and_record would have finished
    # Passed on at the claim (a job still waits) and again at the end.
    assert sent == [cpu_queue(), cpu_queue()]
    finish(first)
    sent.clear()
    assert runner.run_next_job(cpu_queue()) == "succeeded"
    assert sent == []  # nothing waits after the second: no turn passed on


def test_a_turn_taken_while_the_worker_shuts_down_is_passed_on(tenants, started, monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(runner, "send_turn", sent.append)
    make_job(*tenants["a"])
    runner.shutting_down.set()
    try:
        assert runner.run_next_job(cpu_queue()) == "queued"
    finally:
        runner.shutting_down.clear()
    assert sent == [cpu_queue()] and started == []
