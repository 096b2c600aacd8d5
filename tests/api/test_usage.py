"""GET /v1/usage and `grpo usage`: a tenant's usage rows (worker/writes.py record_usage) summed by day and by job over
a range of UTC days, never another tenant's."""

from datetime import date, timedelta

import pytest
from sqlalchemy import select

from api.cli import main as grpo
from service_core.db import session_scope
from service_core.models import Tenant, utcnow
from worker import writes

FIGURES = {
    "compute_seconds": 10.0,
    "tokens_sampled": 100,
    "tokens_trained": 200,
    "reward_calls": 8,
    "reward_seconds": 1.5,
}


def add_usage(tenant: str, source_id: str, day: date, hardware: str = "cpu", kind: str = "job", times: int = 1):
    with session_scope() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant))
        for _ in range(times):
            writes.record_usage(
                session,
                tenant_id=tenant_id,
                source_id=source_id,
                kind=kind,
                hardware=hardware,
                figures=FIGURES,
                day=day,
            )


@pytest.fixture
def usage(service, alice, bob):
    """alice: a cpu job over two days (two steps on the first), a gpu job and a pre-flight; bob: one job."""
    add_usage("alice", "job_a", date(2026, 3, 1), times=2)
    add_usage("alice", "job_a", date(2026, 3, 2))
    add_usage("alice", "job_g", date(2026, 3, 2), hardware="gpu")
    add_usage("alice", "pf_p", date(2026, 3, 5), kind="preflight")
    add_usage("alice", "job_old", date(2026, 1, 1))  # outside the range below
    add_usage("bob", "job_b", date(2026, 3, 2))


def test_a_tenant_reads_its_usage_by_day_and_by_job(service, alice, usage):
    response = service.get("/v1/usage", headers=alice, params={"start": "2026-03-01", "end": "2026-03-31"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["start"], body["end"]) == ("2026-03-01", "2026-03-31")
    assert [(d["day"], d["compute_seconds"], d["compute_seconds_by_hardware"]) for d in body["by_day"]] == [
        ("2026-03-01", 20.0, {"cpu": 20.0, "gpu": 0.0}),
        ("2026-03-02", 20.0, {"cpu": 10.0, "gpu": 10.0}),
        ("2026-03-05", 10.0, {"cpu": 10.0, "gpu": 0.0}),
    ]
    assert body["by_day"][0]["tokens_trained"] == 400 and body["by_day"][0]["reward_calls"] == 16
    by_job = {j["id"]: j for j in body["by_job"]}
    assert set(by_job) == {"job_a", "job_g", "pf_p"}  # job_old is outside the range, bob's never shown
    assert (by_job["job_a"]["tokens_sampled"], by_job["job_a"]["kind"], by_job["job_a"]["hardware"]) == (
        300,
        "job",
        "cpu",
    )
    assert (by_job["pf_p"]["kind"], by_job["job_g"]["compute_seconds_by_hardware"]["gpu"]) == ("preflight", 10.0)
    totals = body["totals"]
    assert totals["compute_seconds"] == 50.0 and totals["compute_seconds_by_hardware"] == {"cpu": 40.0, "gpu": 10.0}
    assert (totals["tokens_sampled"], totals["tokens_trained"], totals["reward_calls"]) == (500, 1000, 40)
    assert totals["reward_seconds"] == pytest.approx(7.5)

    one_day = service.get("/v1/usage", headers=alice, params={"start": "2026-03-02", "end": "2026-03-02"}).json()
    assert [d["day"] for d in one_day["by_day"]] == ["2026-03-02"] and one_day["totals"]["compute_seconds"] == 20.0


def test_a_tenant_never_sees_another_tenants_usage(service, alice, bob, usage):
    body = service.get("/v1/usage", headers=bob, params={"start": "2026-01-01", "end": "2026-12-31"}).json()
    assert [j["id"] for j in body["by_job"]] == ["job_b"]
    assert body["totals"]["compute_seconds"] == 10.0
    assert service.get("/v1/usage", params={"start": "2026-01-01"}).status_code == 401


def test_the_range_defaults_to_the_last_30_days_and_is_bounded(service, alice, usage):
    today = utcnow().date()
    add_usage("alice", "job_now", today)
    body = service.get("/v1/usage", headers=alice).json()
    assert (body["start"], body["end"]) == (str(today - timedelta(days=29)), str(today))
    assert [j["id"] for j in body["by_job"]] == ["job_now"]

    def refused(params):
        response = service.get("/v1/usage", headers=alice, params=params)
        assert response.status_code == 422, response.text
        return response.json()["detail"]

    assert "start (2026-03-02) is after end (2026-03-01)" in refused({"start": "2026-03-02", "end": "2026-03-01"})
    assert "at most 366" in refused({"start": "2025-01-01", "end": "2026-01-02"})
    # Only a written day: not "0" (which a date type would read as 1970-01-01), not a day that does not exist.
    assert "end" in refused({"end": "0"})
    assert "end must be a day that exists" in refused({"end": "2026-02-30"})
    # The default start never falls before the first day a date can hold.
    assert service.get("/v1/usage", headers=alice, params={"end": "0001-01-01"}).json()["start"] == "0001-01-01"
    assert (
        service.get("/v1/usage", headers=alice, params={"start": "2025-01-01", "end": "2026-01-01"}).status_code == 200
    )
    refused({"start": "March 1"})


def test_grpo_usage_prints_one_tenant_or_every_tenant(service, usage, capsys):
    capsys.readouterr()
    assert grpo(["usage", "--tenant", "alice", "--start", "2026-03-01", "--end", "2026-03-31"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "tenant alice, 2026-03-01 to 2026-03-31"
    assert lines[2].split("\t") == ["2026-03-01", "20.0", "20.0", "0.0", "200", "400", "16", "3.0"]
    assert [line.split("\t")[0] for line in lines[2:]] == [
        "2026-03-01", "2026-03-02", "2026-03-05", "total", "job", "job_a", "job_g", "pf_p", "storage now"
    ]  # fmt: skip
    assert lines[-1] == "storage now\t0 bytes (datasets 0, rewards 0, checkpoints 0)"
    assert "bob" not in "\n".join(lines)

    assert grpo(["usage", "--start", "2026-03-01", "--end", "2026-03-31"]) == 0
    out = capsys.readouterr().out
    assert "tenant alice, 2026-03-01" in out and "tenant bob, 2026-03-01" in out and "job_b" in out

    assert grpo(["usage", "--tenant", "nobody"]) == 1
    assert "tenant 'nobody' not found" in capsys.readouterr().err
    assert grpo(["usage", "--start", "2026-03-02", "--end", "2026-03-01"]) == 1
    assert "is after end" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        grpo(["usage", "--start", "yesterday"])
