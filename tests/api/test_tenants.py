"""`grpo tenants set` and `grpo tenants list`: the operator's weights and caps for fair turns (worker/turns.py)."""

import pytest
from sqlalchemy import select

from api.cli import main as grpo
from service_core.db import session_scope
from service_core.models import Tenant
from tests.api.helpers import job_spec


def tenant(name: str) -> Tenant:
    with session_scope() as session:
        return session.scalar(select(Tenant).where(Tenant.name == name))


def test_set_changes_what_it_is_given_and_list_shows_the_limits_in_force(service, alice, dataset_id, capsys):
    fresh = tenant("alice")
    assert (fresh.weight, fresh.max_running_jobs, fresh.max_queued_jobs) == (1.0, None, None)
    assert service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).status_code == 201
    capsys.readouterr()

    assert grpo(["tenants", "set", "alice", "--weight", "2", "--max-running", "2", "--max-queued", "20"]) == 0
    assert capsys.readouterr().out.split("\n")[0].split("\t") == ["alice", "2", "2", "20", "0", "1"]
    assert grpo(["tenants", "set", "alice", "--max-running", "default"]) == 0  # the rest stays
    changed = tenant("alice")
    assert (changed.weight, changed.max_running_jobs, changed.max_queued_jobs) == (2.0, None, 20)

    capsys.readouterr()
    assert grpo(["tenants", "list"]) == 0
    header, row = capsys.readouterr().out.strip().split("\n")
    assert header.split("\t") == ["tenant", "weight", "max running", "max queued", "running", "queued"]
    assert row.split("\t") == ["alice", "2", "4 (GRPO_MAX_RUNNING_JOBS_PER_TENANT)", "20", "0", "1"]


def test_set_refuses_an_unknown_tenant_and_bad_values(service, alice, capsys):
    assert grpo(["tenants", "set", "nobody", "--weight", "2"]) == 1
    assert "tenant 'nobody' not found" in capsys.readouterr().err
    assert grpo(["tenants", "set", "alice", "--weight", "0"]) == 1
    assert "weight must be a positive number" in capsys.readouterr().err
    for bad in ("0", "-1", "many", str(2**31)):  # past the database's 32-bit INTEGER too
        with pytest.raises(SystemExit):
            grpo(["tenants", "set", "alice", "--max-queued", bad])
        assert "a whole number from 1 to 2147483647, or default" in capsys.readouterr().err
    assert tenant("alice").weight == 1.0
