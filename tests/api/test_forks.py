"""Forks at submit: POST /v1/jobs with init_from, its validation, and the lineage both jobs show.

The parent's checkpoints are recorded as a worker records them (worker.writes) with their files in the artifacts
folder; tests/e2e/test_forks.py trains real ones."""

import shutil

import pytest

from tests.api.helpers import job_spec

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def save_checkpoint(job_id: str, step: int) -> None:
    """What a worker leaves for a saved step: the checkpoint folder's files and the checkpoint row."""
    from api.services.jobs import FORK_FILES
    from service_core import artifacts
    from service_core.db import session_scope
    from worker import writes

    folder = artifacts.checkpoint_dir(job_id, step)
    folder.mkdir(parents=True)
    for name in FORK_FILES:
        (folder / name).write_bytes(b"{}")
    with session_scope() as session:
        writes.record_checkpoint(session, job_id=job_id, step=step, sha256="0" * 64, size=2)


@pytest.fixture
def parent(service, alice, dataset_id):
    """One of alice's jobs with checkpoints at steps 2 and 4."""
    spec = job_spec(dataset_id, hyperparameters={"group_size": 4, "max_steps": 4, "lora": LORA})
    response = service.post("/v1/jobs", headers=alice, json=spec)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    save_checkpoint(job_id, 2)
    save_checkpoint(job_id, 4)
    return job_id


def fork_spec(dataset_id, parent, step=2, lora=LORA, **init):
    return job_spec(
        dataset_id,
        rewards=[{"name": "length_target", "params": {"target": 30}}],
        hyperparameters={"group_size": 2, "max_steps": 3, "learning_rate": 1e-4, "lora": lora},
        init_from={"job_id": parent, "step": step, **init},
    )


def test_a_fork_shows_its_lineage_and_its_parent_lists_it(service, alice, dataset_id, parent):
    response = service.post("/v1/jobs", headers=alice, json=fork_spec(dataset_id, parent, optimizer=True))
    assert response.status_code == 201, response.text
    fork = response.json()
    assert (fork["parent_job_id"], fork["parent_step"], fork["parent_optimizer"]) == (parent, 2, True)
    assert fork["children"] == [] and fork["children_count"] == 0
    assert fork["rewards"][0]["name"] == "length_target" and fork["hyperparameters"]["learning_rate"] == 1e-4
    other = service.post("/v1/jobs", headers=alice, json=fork_spec(dataset_id, parent, step=4)).json()
    assert other["parent_optimizer"] is False

    shown = service.get(f"/v1/jobs/{parent}", headers=alice).json()
    assert shown["parent_job_id"] is None and shown["parent_step"] is None
    assert shown["children"] == [
        {"id": fork["id"], "step": 2, "status": "queued"},
        {"id": other["id"], "step": 4, "status": "queued"},
    ]
    assert shown["children_count"] == 2
    assert service.get(f"/v1/jobs/{fork['id']}", headers=alice).json() == fork
    listed = {job["id"]: job for job in service.get("/v1/jobs", headers=alice).json()["data"]}
    assert listed[fork["id"]]["parent_job_id"] == parent and listed[parent]["children"] is None
    # A fork of a fork: its step-0 checkpoint (the parent's adapter) is a step like any other.
    save_checkpoint(fork["id"], 0)
    grandchild = service.post("/v1/jobs", headers=alice, json=fork_spec(dataset_id, fork["id"], step=0))
    assert grandchild.status_code == 201, grandchild.text
    assert service.get(f"/v1/jobs/{fork['id']}", headers=alice).json()["children_count"] == 1


def test_the_children_listed_are_bounded_and_counted(service, alice, dataset_id, parent, monkeypatch):
    from api.services import jobs as jobs_service

    monkeypatch.setattr(jobs_service, "CHILDREN_SHOWN", 2)
    monkeypatch.setattr(jobs_service, "_CHILDREN", jobs_service._CHILDREN.limit(2))
    forks = [service.post("/v1/jobs", headers=alice, json=fork_spec(dataset_id, parent)).json()["id"] for _ in "abc"]
    shown = service.get(f"/v1/jobs/{parent}", headers=alice).json()
    assert [child["id"] for child in shown["children"]] == forks[:2] and shown["children_count"] == 3


def refused(service, headers, spec) -> list[str]:
    response = service.post("/v1/jobs", headers=headers, json=spec)
    assert response.status_code == 422, response.text
    return response.json()["errors"] or [response.json()["detail"]]


def test_another_tenants_job_is_refused_exactly_like_one_that_does_not_exist(service, alice, bob, parent):
    from tests.api.helpers import ROWS, jsonl, upload

    bobs_dataset = upload(service, bob, jsonl(ROWS)).json()["id"]
    missing = "job_" + "0" * 32
    theirs = refused(service, bob, fork_spec(bobs_dataset, parent))
    unknown = refused(service, bob, fork_spec(bobs_dataset, missing))
    assert theirs == [f"init_from.job_id: job {parent!r} not found"]
    assert unknown == [f"init_from.job_id: job {missing!r} not found"]
    assert refused(service, bob, fork_spec(bobs_dataset, "../../etc")) == [
        "init_from.job_id: job '../../etc' not found"
    ]
    assert service.get(f"/v1/jobs/{parent}", headers=alice).json()["children_count"] == 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"step": 3}, "init_from.step: job {parent} has no checkpoint at step 3; it has checkpoints at steps 2, 4"),
        ({"base_model": "smollm2-135m-instruct"}, "base_model: 'smollm2-135m-instruct' is not the parent job's"),
        ({"lora": {**LORA, "r": 8}}, "hyperparameters.lora.r: 8 is not the parent job's 4"),
        ({"lora": {**LORA, "alpha": 16}}, "hyperparameters.lora.alpha: 16 is not the parent job's 8"),
        (
            {"lora": {**LORA, "target_modules": ["q_proj"]}},
            "hyperparameters.lora.target_modules: ['q_proj'] is not the parent job's ['q_proj', 'v_proj']",
        ),
        # The model's default targets are not the parent's: a fork names the parent's LoRA settings.
        ({"lora": None}, "hyperparameters.lora.r: 16 is not the parent job's 4"),
    ],
)
def test_a_fork_the_parents_adapter_does_not_fit_is_refused(service, alice, dataset_id, parent, change, expected):
    change = dict(change)  # the parameters are shared by both databases' runs
    spec = fork_spec(dataset_id, parent, step=change.pop("step", 2), lora=change.pop("lora", LORA))
    if spec["hyperparameters"]["lora"] is None:
        del spec["hyperparameters"]["lora"]
    spec.update(change)
    errors = refused(service, alice, spec)
    assert any(error.startswith(expected.format(parent=parent)) for error in errors), errors
    assert service.get(f"/v1/jobs/{parent}", headers=alice).json()["children_count"] == 0


def test_a_fork_whose_checkpoint_files_are_gone_is_refused(service, alice, dataset_id, parent):
    from service_core import artifacts

    shutil.rmtree(artifacts.checkpoint_dir(parent, 2))
    assert refused(service, alice, fork_spec(dataset_id, parent)) == [
        f"init_from.step: the files of job {parent}'s checkpoint at step 2 are gone from the artifacts store; "
        "fork another step"
    ]
    (artifacts.checkpoint_dir(parent, 4) / "trainer_state.pt").unlink()  # one file missing is as unusable
    assert "are gone" in refused(service, alice, fork_spec(dataset_id, parent, step=4))[0]


def test_a_job_without_checkpoints_cannot_be_forked_yet(service, alice, dataset_id):
    job = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"]
    errors = refused(service, alice, fork_spec(dataset_id, job, lora={"r": 16}))
    assert errors == [f"init_from.step: job {job} has no checkpoint at step 2; it has saved no checkpoint yet"]


@pytest.mark.parametrize(
    "init_from",
    [
        {"step": 2},
        {"job_id": "x", "step": -1},
        {"job_id": "x", "step": "2"},
        {"job_id": "x", "step": 2, "optimizer": "yes"},
        {"job_id": "x", "step": 2, "weights": True},
        {"job_id": "x" * 41, "step": 2},
    ],
)
def test_a_malformed_init_from_is_a_422_naming_it(service, alice, dataset_id, init_from):
    response = service.post("/v1/jobs", headers=alice, json={**job_spec(dataset_id), "init_from": init_from})
    assert response.status_code == 422 and "init_from" in response.text


def test_a_fork_counts_its_step_0_checkpoint_against_the_operators_limit(service, alice, dataset_id, parent):
    from service_core.settings import get_settings

    limit = get_settings().max_checkpoints_per_job
    spec = fork_spec(dataset_id, parent)
    spec["hyperparameters"].update(max_steps=limit, checkpoint_every=1)
    assert any("GRPO_MAX_CHECKPOINTS_PER_JOB" in error for error in refused(service, alice, spec))
    spec["hyperparameters"].update(max_steps=limit - 1)
    assert service.post("/v1/jobs", headers=alice, json=spec).status_code == 201


def test_an_idempotency_key_reused_for_another_fork_is_a_409(service, alice, dataset_id, parent):
    headers = {**alice, "Idempotency-Key": "fork-1"}
    first = service.post("/v1/jobs", headers=headers, json=fork_spec(dataset_id, parent))
    again = service.post("/v1/jobs", headers=headers, json=fork_spec(dataset_id, parent))
    assert first.status_code == 201 and again.status_code == 201 and again.json() == first.json()
    other = service.post("/v1/jobs", headers=headers, json=fork_spec(dataset_id, parent, step=4))
    assert other.status_code == 409 and "init_from" in other.json()["detail"]
