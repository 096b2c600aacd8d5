"""DELETE /v1/datasets/{id} and DELETE /v1/jobs/{id}, checkpoint expiry (worker/retention.py), and the storage they
free as GET /v1/usage counts it, on a real database with real files in the artifacts folder."""

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from service_core import artifacts
from service_core.db import session_scope
from service_core.job_state import set_status
from service_core.models import CheckpointRow, Job, utcnow
from tests.api.helpers import job_spec
from worker import writes
from worker.retention import expire_checkpoints, expired_checkpoints

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
ARCHIVE_BYTES = 100


def save_checkpoint(job_id: str, step: int) -> None:
    """What a worker leaves for a saved step: the checkpoint's files, its adapter archive and its row."""
    from api.services.jobs import FORK_FILES

    folder = artifacts.checkpoint_dir(job_id, step)
    folder.mkdir(parents=True)
    for name in FORK_FILES:
        (folder / name).write_bytes(b"{}")
    artifacts.checkpoint_archive(job_id, step).write_bytes(b"x" * ARCHIVE_BYTES)
    with session_scope() as session:
        writes.record_checkpoint(session, job_id=job_id, step=step, sha256="0" * 64, size=ARCHIVE_BYTES)


def finish(job_id: str, *, days_ago: float = 0, **fields) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        set_status(session, job=job, status="succeeded", **fields)
        job.finished_at = utcnow() - timedelta(days=days_ago)


def submit(service, headers, dataset_id, **overrides) -> str:
    spec = job_spec(dataset_id, hyperparameters={"group_size": 4, "max_steps": 4, "lora": LORA}, **overrides)
    response = service.post("/v1/jobs", headers=headers, json=spec)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def storage(service, headers) -> dict:
    body = service.get("/v1/usage", headers=headers).json()
    assert body["storage_bytes"] == sum(body["storage_bytes_by_kind"].values())
    return body["storage_bytes_by_kind"]


def checkpoint_steps(job_id: str) -> list[int]:
    with session_scope() as session:
        return list(session.scalars(select(CheckpointRow.step).where(CheckpointRow.job_id == job_id).order_by("step")))


def test_a_dataset_in_use_is_refused_naming_the_job_then_deleted_with_its_file(service, alice, dataset_id):
    size = service.get(f"/v1/datasets/{dataset_id}", headers=alice).json()["bytes"]
    assert storage(service, alice)["datasets"] == size
    job_id = submit(service, alice, dataset_id)

    refused = service.delete(f"/v1/datasets/{dataset_id}", headers=alice)
    assert refused.status_code == 409 and job_id in refused.json()["detail"], refused.text
    assert artifacts.dataset_path(dataset_id).is_file()

    assert service.post(f"/v1/jobs/{job_id}/cancel", headers=alice).json()["status"] == "cancelled"
    assert service.delete(f"/v1/datasets/{dataset_id}", headers=alice).status_code == 204
    assert not artifacts.dataset_path(dataset_id).exists()
    assert service.get(f"/v1/datasets/{dataset_id}", headers=alice).status_code == 404
    assert service.get("/v1/datasets", headers=alice).json()["count"] == 0
    assert storage(service, alice)["datasets"] == 0
    assert service.delete(f"/v1/datasets/{dataset_id}", headers=alice).status_code == 404
    # The finished job keeps its row and names the dataset, which reads as gone; a new job cannot use it.
    assert service.get(f"/v1/jobs/{job_id}", headers=alice).json()["dataset_id"] == dataset_id
    response = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id))
    assert response.status_code == 422 and "dataset_id" in response.text


def test_an_eval_dataset_of_a_queued_job_is_refused_too(service, alice, dataset_id):
    eval_id = service.post(
        "/v1/datasets", headers=alice, files={"file": ("e.jsonl", b'{"prompt": "1+1?", "answer": 2}\n')}
    ).json()["id"]
    job_id = submit(service, alice, dataset_id, eval_dataset_id=eval_id)
    refused = service.delete(f"/v1/datasets/{eval_id}", headers=alice)
    assert refused.status_code == 409 and job_id in refused.json()["detail"]


def test_a_queued_or_running_job_cannot_be_deleted(service, alice, dataset_id):
    job_id = submit(service, alice, dataset_id)
    refused = service.delete(f"/v1/jobs/{job_id}", headers=alice)
    assert refused.status_code == 409 and "cancel it first" in refused.json()["detail"]
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="running"))
    save_checkpoint(job_id, 1)
    refused = service.delete(f"/v1/jobs/{job_id}", headers=alice)
    assert refused.status_code == 409 and "running" in refused.json()["detail"]
    assert artifacts.checkpoint_archive(job_id, 1).is_file()


def test_deleting_a_finished_job_frees_its_folder_and_storage(service, alice, dataset_id):
    job_id = submit(service, alice, dataset_id)
    save_checkpoint(job_id, 2)
    save_checkpoint(job_id, 4)
    finish(job_id)
    before = storage(service, alice)
    assert before["checkpoints"] == 2 * ARCHIVE_BYTES

    assert service.delete(f"/v1/jobs/{job_id}", headers=alice).status_code == 204
    assert not artifacts.job_dir(job_id).exists()
    assert checkpoint_steps(job_id) == []
    assert storage(service, alice) == {**before, "checkpoints": 0}
    assert service.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 404
    assert service.get(f"/v1/jobs/{job_id}/checkpoints", headers=alice).status_code == 404
    assert service.get(f"/v1/jobs/{job_id}/adapter", headers=alice).status_code == 404
    assert job_id not in [job["id"] for job in service.get("/v1/jobs", headers=alice).json()["data"]]
    assert service.delete(f"/v1/jobs/{job_id}", headers=alice).status_code == 404


def test_a_forks_parent_checkpoint_is_kept_by_expiry_and_by_delete_while_the_fork_waits(service, alice, dataset_id):
    parent = submit(service, alice, dataset_id)
    for step in (1, 2, 4):
        save_checkpoint(parent, step)
    finish(parent, days_ago=30)
    fork = submit(
        service, alice, dataset_id, init_from={"job_id": parent, "step": 2}, rewards=[{"name": "numeric_answer"}]
    )

    refused = service.delete(f"/v1/jobs/{parent}", headers=alice)
    assert refused.status_code == 409 and fork in refused.json()["detail"], refused.text
    # Step 1 expires; 2 is where the fork starts, 4 the parent's adapter.
    assert expire_checkpoints() == [(parent, 1)]
    assert checkpoint_steps(parent) == [2, 4]
    assert not artifacts.checkpoint_dir(parent, 1).exists() and artifacts.checkpoint_archive(parent, 2).is_file()

    save_checkpoint(fork, 0)  # the fork has copied the parent's adapter: the parent may go
    assert service.delete(f"/v1/jobs/{parent}", headers=alice).status_code == 204
    assert service.get(f"/v1/jobs/{fork}", headers=alice).json()["parent_job_id"] == parent


def test_expiry_keeps_the_adapter_and_removes_the_rest_after_the_retention(service, alice, dataset_id):
    last, best = submit(service, alice, dataset_id), submit(service, alice, dataset_id)
    for job_id in (last, best):
        for step in (1, 2, 3):
            save_checkpoint(job_id, step)
    finish(last)
    finish(best, adapter_step=2)  # a guardrail chose the best evaluation's checkpoint
    assert expire_checkpoints() == []  # finished just now
    assert storage(service, alice)["checkpoints"] == 6 * ARCHIVE_BYTES

    with session_scope() as session:
        session.execute(update(Job).values(finished_at=utcnow() - timedelta(days=8)))
    assert sorted(expire_checkpoints()) == sorted([(last, 1), (last, 2), (best, 1), (best, 3)])
    assert (checkpoint_steps(last), checkpoint_steps(best)) == ([3], [2])
    assert [p.name for p in (artifacts.job_dir(last) / "checkpoints").iterdir()] == [
        artifacts.checkpoint_dir(last, 3).name
    ]
    assert artifacts.checkpoint_archive(best, 2).is_file()
    assert storage(service, alice)["checkpoints"] == 2 * ARCHIVE_BYTES
    assert expire_checkpoints() == []  # nothing left to do: a second worker's pass is harmless
    assert service.get(f"/v1/jobs/{best}/adapter", headers=alice).headers["X-Checkpoint-Step"] == "2"


def test_a_retention_of_0_keeps_every_checkpoint(service, alice, dataset_id, monkeypatch):
    job_id = submit(service, alice, dataset_id)
    save_checkpoint(job_id, 1)
    save_checkpoint(job_id, 2)
    finish(job_id, days_ago=365)
    monkeypatch.setenv("GRPO_CHECKPOINT_RETENTION_DAYS", "0")
    from service_core import settings

    settings.get_settings.cache_clear()
    assert expire_checkpoints() == []
    assert checkpoint_steps(job_id) == [1, 2]


@pytest.mark.unit
def test_the_adapter_is_the_last_checkpoint_or_the_one_a_guardrail_chose():
    rows = [("a", 1, None), ("a", 3, None), ("a", 2, None), ("b", 1, 1), ("b", 2, 1), ("c", 5, None)]
    assert expired_checkpoints(rows) == [("a", 1), ("a", 2), ("b", 2)]


def test_another_tenant_gets_404(service, alice, bob, dataset_id):
    job_id = submit(service, alice, dataset_id)
    finish(job_id)
    assert service.delete(f"/v1/datasets/{dataset_id}", headers=bob).status_code == 404
    assert service.delete(f"/v1/jobs/{job_id}", headers=bob).status_code == 404
    assert service.delete("/v1/jobs/not-an-id", headers=bob).status_code == 404
    assert artifacts.dataset_path(dataset_id).is_file()
    assert service.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200
    assert storage(service, bob) == {"datasets": 0, "rewards": 0, "checkpoints": 0}
