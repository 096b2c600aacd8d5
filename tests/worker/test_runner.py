"""The worker's job runner in-process on a real SQLite database (the Celery wrapper is exercised end to end in
tests/e2e): outcomes are recorded, finished jobs are not run again, failures carry their reason."""

import re
import threading
import time

import pytest
from sqlalchemy import func, select

from api.services import jobs as jobs_service
from grpo_core.sandbox import sandbox_available
from service_core import artifacts
from service_core.db import session_scope
from service_core.models import CheckpointRow, Job, MetricRow
from tests.service_env import clear_service_caches
from tests.waiting import wait_for
from tests.worker.helpers import cpu_queue, make_job
from worker import leases
from worker.runner import run_job


def counts(job_id):
    with session_scope() as session:
        metrics = session.scalar(select(func.count()).where(MetricRow.job_id == job_id))
        checkpoints = session.scalars(
            select(CheckpointRow.step).where(CheckpointRow.job_id == job_id).order_by(CheckpointRow.step)
        )
        return metrics, list(checkpoints)


def test_a_job_runs_to_success_and_a_second_delivery_does_nothing(tenant_and_dataset):
    job_id = make_job(*tenant_and_dataset)
    assert run_job(job_id) == "succeeded"
    assert counts(job_id) == (3, [2, 3])
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.step == 3 and job.started_at and job.finished_at and job.worker_host
        finished_at = job.finished_at
    # The same message delivered again: the job is terminal, so nothing runs and nothing is written.
    assert run_job(job_id) == "succeeded"
    with session_scope() as session:
        assert session.get(Job, job_id).finished_at == finished_at
    assert counts(job_id) == (3, [2, 3])
    assert artifacts.checkpoint_archive(job_id, 3).is_file()


def test_a_failing_job_is_marked_failed_with_its_reason(tenant_and_dataset):
    tenant_id, dataset_id = tenant_and_dataset
    job_id = make_job(tenant_id, dataset_id)
    artifacts.dataset_path(dataset_id).unlink()  # the shared store lost the file
    assert run_job(job_id) == "failed"
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.status == "failed" and "FileNotFoundError" in job.error and dataset_id in job.error


def test_a_job_cancelled_while_queued_never_trains(tenant_and_dataset):
    tenant_id, dataset_id = tenant_and_dataset
    job_id = make_job(tenant_id, dataset_id)
    with session_scope() as session:
        jobs_service.cancel_job(session, tenant_id=tenant_id, job_id=job_id)
    assert run_job(job_id) == "cancelled"
    assert counts(job_id) == (0, [])


def test_a_missing_job_is_dropped(tenant_and_dataset):
    assert run_job("job_" + "0" * 32) == "missing"


def test_a_second_delivery_backs_off_while_the_lease_is_held(tenant_and_dataset):
    job_id = make_job(*tenant_and_dataset)
    with session_scope() as session:
        assert leases.claim_job(session, job_id=job_id, owner="other-worker", lease_seconds=60, max_attempts=3) == 1
    assert run_job(job_id) == "busy"
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.attempt == 1 and job.lease_owner == "other-worker" and job.steps_computed == 0


def test_an_expired_lease_is_queued_again_and_the_rerun_resumes_from_the_checkpoint(tenant_and_dataset, monkeypatch):
    from worker import reconciler

    sent = []
    monkeypatch.setattr(reconciler, "send_turn", sent.append)  # the broker is not what this test is about
    tenant_id, dataset_id = tenant_and_dataset
    job_id = make_job(tenant_id, dataset_id, max_steps=4)
    straight_id = make_job(tenant_id, dataset_id, max_steps=4)
    assert run_job(straight_id) == "succeeded"

    # Simulate a worker that trained 3 steps (checkpoint at 2) and died: run to step 3, then age its lease.
    from worker import runner

    class StopAfterThree(runner.DatabaseReporter):
        def on_step(self, step, metrics):
            super().on_step(step, metrics)
            if step == 3:
                raise SystemExit("killed")  # not an Exception: the runner records nothing, like a kill -9

    monkeypatch.setattr(runner, "DatabaseReporter", StopAfterThree)
    with pytest.raises(SystemExit):
        run_job(job_id)
    monkeypatch.undo()
    monkeypatch.setattr(reconciler, "send_turn", sent.append)
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.status == "running" and job.step == 3
        job.lease_expires_at = job.lease_expires_at.replace(year=2000)

    assert reconciler.reconcile_once() == [cpu_queue()] == sent
    with session_scope() as session:
        assert session.get(Job, job_id).status == "queued"
    assert run_job(job_id) == "succeeded"
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert (job.attempt, job.step, job.steps_computed) == (2, 4, 3 + 2)  # steps 3 and 4 computed again
    assert counts(job_id) == (4, [2, 4])
    assert artifacts.checkpoint_archive(job_id, 4).is_file()
    from safetensors.torch import load_file

    resumed = load_file(artifacts.job_dir(job_id) / "checkpoints" / "step-000004" / "adapter_model.safetensors")
    straight = load_file(artifacts.job_dir(straight_id) / "checkpoints" / "step-000004" / "adapter_model.safetensors")
    assert all((resumed[k] == straight[k]).all() for k in straight)


def test_a_job_that_keeps_losing_its_worker_fails_after_max_attempts(tenant_and_dataset, monkeypatch):
    from worker import reconciler

    monkeypatch.setattr(reconciler, "send_turn", lambda queue: None)
    job_id = make_job(*tenant_and_dataset)
    for attempt in (1, 2, 3):
        with session_scope() as session:
            assert (
                leases.claim_job(session, job_id=job_id, owner=f"w{attempt}", lease_seconds=-1, max_attempts=3)
                == attempt
            )
            session.get(Job, job_id).status = "running"  # as run_job does in the claim's transaction
        reconciler.reconcile_once()
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.status == "failed" and "gave up after 3 attempts" in job.error
        assert leases.claim_job(session, job_id=job_id, owner="w4", lease_seconds=60, max_attempts=3) is None


def test_a_queue_whose_job_waited_long_is_sent_a_turn_once(tenant_and_dataset, monkeypatch):
    from worker import reconciler

    sent = []
    monkeypatch.setattr(reconciler, "send_turn", sent.append)
    job_id = make_job(*tenant_and_dataset)
    assert reconciler.reconcile_once() == []  # just sent: leave it
    with session_scope() as session:
        job = session.get(Job, job_id)
        job.enqueued_at = job.enqueued_at.replace(year=2000)
    assert reconciler.reconcile_once() == [cpu_queue()]
    assert reconciler.reconcile_once() == []  # not again so soon


@pytest.fixture
def shutting_down():
    """The worker process's shutdown flag (Celery's worker_shutting_down sets it), cleared after the test."""
    from worker import runner

    yield runner.shutting_down
    runner.shutting_down.clear()


@pytest.fixture
def sent(monkeypatch):
    """The queues the runner sends a turn to."""
    from worker import runner

    sent: list[str] = []
    monkeypatch.setattr(runner, "send_turn", sent.append)
    return sent


def run_until_shutdown_after(job_id, step, monkeypatch, shutting_down) -> str:
    """run_job, with this worker told to shut down (as SIGTERM does, through Celery's worker_shutting_down) once
    `step` is done; then the flag is cleared, as for the next worker."""
    from worker import runner

    class ShutDownAfter(runner.DatabaseReporter):
        def on_step(self, done, metrics):
            super().on_step(done, metrics)
            if done == step:
                shutting_down.set()

    with monkeypatch.context() as patched:
        patched.setattr(runner, "DatabaseReporter", ShutDownAfter)
        outcome = run_job(job_id)
    shutting_down.clear()
    return outcome


def test_a_worker_shutting_down_checkpoints_its_job_and_queues_it_again(
    tenant_and_dataset, monkeypatch, shutting_down, sent
):
    job_id = make_job(*tenant_and_dataset, max_steps=4, checkpoint_every=0)
    assert run_until_shutdown_after(job_id, 2, monkeypatch, shutting_down) == "queued"
    assert sent == [cpu_queue()]
    with session_scope() as session:
        job = session.get(Job, job_id)
        # Lease released, and the clean stop does not use up one of GRPO_MAX_ATTEMPTS.
        assert (job.status, job.step, job.lease_owner, job.attempt) == ("queued", 2, None, 0)
    assert counts(job_id) == (2, [2])  # the checkpoint saved at the stop

    assert run_job(job_id) == "succeeded"  # the next worker
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert (job.attempt, job.step, job.steps_computed) == (1, 4, 4)  # resumed at step 2: nothing computed twice
    assert counts(job_id) == (4, [2, 4])


def test_a_job_cancelled_as_its_worker_shuts_down_is_cancelled(tenant_and_dataset, monkeypatch, shutting_down, sent):
    from worker import runner

    tenant_id, dataset_id = tenant_and_dataset
    job_id = make_job(tenant_id, dataset_id, max_steps=4, checkpoint_every=0)

    class CancelAndShutDownAfterOne(runner.DatabaseReporter):
        def on_step(self, step, metrics):
            super().on_step(step, metrics)
            with session_scope() as session:
                jobs_service.cancel_job(session, tenant_id=tenant_id, job_id=job_id)
            shutting_down.set()

    monkeypatch.setattr(runner, "DatabaseReporter", CancelAndShutDownAfterOne)
    assert run_job(job_id) == "cancelled"
    assert sent == []
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.step, job.lease_owner) == ("cancelled", 1, None)


def test_a_message_taken_while_the_worker_shuts_down_is_sent_on_untouched(tenant_and_dataset, shutting_down, sent):
    job_id = make_job(*tenant_and_dataset)
    shutting_down.set()
    assert run_job(job_id) == "queued"
    assert sent == [cpu_queue()]
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempt, job.lease_owner, job.steps_computed) == ("queued", 0, None, 0)


def test_a_corrupt_checkpoint_is_skipped_on_resume_with_a_warning_event(
    tenant_and_dataset, monkeypatch, shutting_down, sent
):
    from service_core.models import Event

    job_id = make_job(*tenant_and_dataset, max_steps=3, checkpoint_every=1)
    assert run_until_shutdown_after(job_id, 2, monkeypatch, shutting_down) == "queued"
    weights = artifacts.job_dir(job_id) / "checkpoints" / "step-000002" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # same size, other bytes: only the sha256 in the manifest tells
    weights.write_bytes(bytes(data))

    assert run_job(job_id) == "succeeded"
    with session_scope() as session:
        warnings = list(session.scalars(select(Event.data).where(Event.job_id == job_id, Event.type == "warning")))
        job = session.get(Job, job_id)
        assert (job.step, job.steps_computed) == (3, 4)  # steps 1, 2, then 2 again from checkpoint 1, and 3
    assert len(warnings) == 1 and "step 2" in warnings[0]["message"]


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """Misbehaving operator rewards (sleepy, spinning, ...) installed as entry points, and a setter for GRPO_
    variables that take effect at once."""
    from tests.grpo_core.hostile_rewards import install_hostile_rewards

    monkeypatch.syspath_prepend(str(install_hostile_rewards(tmp_path / "plugins")))

    def setenv(**values):
        for key, value in values.items():
            monkeypatch.setenv(f"GRPO_{key.upper()}", str(value))
        clear_service_caches()

    return setenv


def test_a_reward_that_hangs_holding_the_gil_fails_its_job_naming_it_and_the_next_job_runs(tenant_and_dataset, hostile):
    hostile(reward_timeout_seconds=2)
    job_id = make_job(*tenant_and_dataset, rewards=[{"name": "spinning"}], max_steps=1)
    assert run_job(job_id) == "failed"
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.error == "RewardTimeout: reward 'spinning' did not return within 2 s; its process was killed"
        assert job.lease_owner is None
    assert run_job(make_job(*tenant_and_dataset, max_steps=1)) == "succeeded"


def cancel_when_marked(marker, tenant_id, job_id) -> dict:
    """In a thread: cancel the job as soon as `marker` exists (its reward has started hanging); note when."""
    noted = {}

    def watch():
        while not marker.exists():
            time.sleep(0.02)
        with session_scope() as session:
            jobs_service.cancel_job(session, tenant_id=tenant_id, job_id=job_id)
        noted["cancelled_at"] = time.monotonic()

    threading.Thread(target=watch, daemon=True).start()
    return noted


def test_cancel_while_a_reward_hangs_cancels_the_job_within_the_poll_bound(tenant_and_dataset, hostile, tmp_path):
    hostile(reward_timeout_seconds=600, cancel_poll_seconds=0.2)
    tenant_id, dataset_id = tenant_and_dataset
    marker = tmp_path / "hanging"
    # 15 s per completion: before cancel could reach into a step, this job would finish its one step and succeed.
    rewards = [{"name": "sleepy", "params": {"seconds": 15, "marker": str(marker)}}]
    job_id = make_job(tenant_id, dataset_id, rewards=rewards, max_steps=1, prompts_per_step=1)
    noted = cancel_when_marked(marker, tenant_id, job_id)
    assert run_job(job_id) == "cancelled"
    latency = time.monotonic() - noted["cancelled_at"]
    print(f"cancel latency while the reward hangs: {latency:.2f} s")
    assert latency < 10  # does not wait for the reward (15 s a completion); the bound is 0.2 s + one 0.1 s poll
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.step, job.lease_owner) == ("cancelled", 0, None)


def test_a_worker_shutting_down_mid_step_checkpoints_the_last_finished_step_and_queues_the_job(
    tenant_and_dataset, hostile, tmp_path, shutting_down, sent
):
    hostile(reward_timeout_seconds=600)
    marker = tmp_path / "hanging"
    rewards = [{"name": "sleepy", "params": {"seconds": 15, "marker": str(marker)}}]
    job_id = make_job(*tenant_and_dataset, rewards=rewards, max_steps=1, prompts_per_step=1)

    def shut_down_when_marked():
        while not marker.exists():
            time.sleep(0.02)
        shutting_down.set()  # what Celery's SIGTERM handler does

    threading.Thread(target=shut_down_when_marked, daemon=True).start()
    started = time.monotonic()
    assert run_job(job_id) == "queued"
    assert time.monotonic() - started < 25  # the reward alone would take 30 s
    assert sent == [cpu_queue()]
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.step, job.steps_computed) == ("queued", 0, 0)


def test_a_job_whose_loss_is_not_finite_fails_naming_the_step_with_no_nan_checkpoint(tenant_and_dataset, hostile):
    # The installed reward returns 1e300, finite and so accepted, but inf as float32: the loss is NaN. Before, such
    # a job "succeeded" with an adapter whose weights were all NaN.
    # Each such step is skipped with a warning, and the third (stop_when.max_non_finite_steps) fails the job.
    hostile()
    job_id = make_job(*tenant_and_dataset, rewards=[{"name": "huge"}], max_steps=5, checkpoint_every=1)
    assert run_job(job_id) == "failed"
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert re.fullmatch(
            r"NonFiniteUpdate: step 3: loss is (nan|inf) \(grad norm nan\); nothing was applied; 3 steps were not "
            r"finite \(stop_when.max_non_finite_steps is 3\)",
            job.error,
        )
        skipped = session.scalars(select(MetricRow.values).where(MetricRow.job_id == job_id).order_by(MetricRow.step))
        assert [values for values in skipped] == [
            {"skipped_non_finite": 1.0, "non_finite_steps": 1.0},
            {"skipped_non_finite": 1.0, "non_finite_steps": 2.0},
        ]
    assert counts(job_id) == (2, [1, 2])  # the checkpoints of skipped steps hold the unchanged, finite adapter


def test_the_heartbeat_renews_the_lease_and_notes_a_cancel_within_its_poll(tenant_and_dataset):
    from worker.runner import Heartbeat

    tenant_id, dataset_id = tenant_and_dataset
    job_id = make_job(tenant_id, dataset_id)
    with session_scope() as session:
        assert leases.claim_job(session, job_id=job_id, owner="me", lease_seconds=0.6, max_attempts=3) == 1
        claimed_until = session.get(Job, job_id).lease_expires_at
    heartbeat = Heartbeat(job_id, "me", lease_seconds=0.6, cancel_poll_seconds=0.05)
    heartbeat.start()
    try:

        def renewed() -> bool:
            with session_scope() as session:
                return session.get(Job, job_id).lease_expires_at > claimed_until

        wait_for(renewed, "the heartbeat renewed the lease")
        assert not heartbeat.cancelled.is_set() and not heartbeat.lost.is_set()
        with session_scope() as session:
            jobs_service.cancel_job(session, tenant_id=tenant_id, job_id=job_id)
        assert heartbeat.cancelled.wait(10)
    finally:
        heartbeat.stopped.set()
        heartbeat.join()


TENANT_REWARD = """
def reward(prompt, completion, answer, scale=1.0):
    print("scoring", prompt)
    return scale * (len(completion) % 3) + (1.0 if str(answer) in completion else 0.0)
"""


def add_tenant_reward(tenant_id, job_id, source=TENANT_REWARD, params=None) -> str:
    """Store a tenant reward as an upload would, and make the job name it besides its built-in reward."""
    import hashlib

    from service_core.models import RewardCode

    with session_scope() as session:
        code = RewardCode(
            tenant_id=tenant_id,
            name="mine.py",
            source=source,
            sha256=hashlib.sha256(source.encode()).hexdigest(),
            bytes=len(source.encode()),
            shape="per_sample",
            parameters=["answer", "scale"],
            required=["answer"],
        )
        session.add(code)
        session.flush()
        job = session.get(Job, job_id)
        job.rewards = [*job.rewards, {"name": code.id, "weight": 1.0, "params": params or {"scale": 2.0}}]
        return code.id


@pytest.mark.skipif(sandbox_available() is not None, reason="bubblewrap cannot sandbox here")
def test_a_job_with_a_tenant_reward_runs_and_stores_samples_and_output(tenant_and_dataset):
    from service_core.models import RewardOutput, SampleRow

    tenant_id, dataset_id = tenant_and_dataset
    job_id = make_job(tenant_id, dataset_id, prompts_per_step=3)
    reward_id = add_tenant_reward(tenant_id, job_id)
    assert run_job(job_id) == "succeeded"
    with session_scope() as session:
        samples = session.scalars(select(SampleRow).where(SampleRow.job_id == job_id).order_by(SampleRow.id)).all()
        outputs = session.scalars(select(RewardOutput).where(RewardOutput.job_id == job_id)).all()
        metrics = session.scalars(select(MetricRow).where(MetricRow.job_id == job_id, MetricRow.kind == "train")).all()
        # 3 steps x the first 2 groups (GRPO_SAMPLE_GROUPS_PER_STEP) x group_size 2
        assert [(s.step, s.position) for s in samples] == [(step, p) for step in (1, 2, 3) for p in range(4)]
        for sample in samples:
            data = sample.data
            assert sample.position == data["group"] * 2 + data["index"]
            answer = int(re.search(r"What is (\d+) \+ 1", data["prompt"]).group(1)) + 1
            completion = data["completion"]
            expected = 2.0 * (len(completion) % 3) + (1.0 if str(answer) in completion else 0.0)
            assert data["scores"][reward_id] == pytest.approx(expected)
            assert set(data["scores"]) == {"length_target", reward_id} and data["errors"] == {}
        assert sorted((o.step, o.reward) for o in outputs) == [(1, reward_id), (2, reward_id), (3, reward_id)]
        assert all(o.text.count("scoring What is") == 6 for o in outputs)  # every sample of the step, not just 4
        assert all(m.values[f"reward_errors/{reward_id}"] == 0 for m in metrics)


def test_a_job_with_a_tenant_reward_fails_where_no_sandbox_can_run(tenant_and_dataset, monkeypatch, tmp_path, caplog):
    from grpo_core import sandbox

    tenant_id, dataset_id = tenant_and_dataset
    job_id = make_job(tenant_id, dataset_id)
    add_tenant_reward(tenant_id, job_id)
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap to be found
    sandbox.probe_sandbox.cache_clear()
    try:
        assert run_job(job_id) == "failed"
    finally:
        monkeypatch.undo()
        sandbox.probe_sandbox.cache_clear()
    with session_scope() as session:
        error = session.get(Job, job_id).error
    assert "cannot sandbox tenant reward code" in error and "not run unsandboxed" in error and "not installed" in error
    assert any("cannot sandbox" in record.getMessage() for record in caplog.records)


def test_grpo_device_takes_the_documented_forms_and_refuses_others(monkeypatch):
    from pydantic import ValidationError

    from service_core.settings import Settings

    monkeypatch.setenv("GRPO_DEVICE", "CUDA:1")
    assert Settings().device == "cuda:1"
    monkeypatch.setenv("GRPO_DEVICE", "gpu")
    with pytest.raises(ValidationError, match=r"GRPO_DEVICE: device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        Settings()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_a_worker_told_to_use_a_gpu_it_lacks_fails_the_job_saying_so(tenant_and_dataset, monkeypatch):
    # The worker process refuses to start with such a setting (worker/app.py); a job reached all the same fails
    # with the reason, before any model is loaded.
    job_id = make_job(*tenant_and_dataset)
    monkeypatch.setenv("GRPO_DEVICE", "cuda")
    clear_service_caches()
    assert run_job(job_id) == "failed"
    with session_scope() as session:
        error = session.get(Job, job_id).error
    assert "device 'cuda': torch sees no CUDA device" in error
    assert counts(job_id) == (0, [])


def test_a_job_trains_on_the_device_grpo_device_names(tenant_and_dataset, monkeypatch):
    import grpo_core

    seen = []
    real = grpo_core.GRPOTrainer

    class Spy(real):
        def setup(self):
            seen.append(self.device)
            super().setup()

    monkeypatch.setattr("worker.runner.GRPOTrainer", Spy)
    monkeypatch.setenv("GRPO_DEVICE", "cpu")
    clear_service_caches()
    job_id = make_job(*tenant_and_dataset, max_steps=1)
    assert run_job(job_id) == "succeeded"
    assert [str(device) for device in seen] == ["cpu"]


def test_a_job_on_two_processes_whose_rank_is_killed_resumes_from_its_checkpoint_and_succeeds(
    tenant_and_dataset, monkeypatch
):
    import multiprocessing
    import os
    import signal

    from worker import reconciler

    sent = []
    monkeypatch.setattr(reconciler, "send_turn", sent.append)
    job_id = make_job(*tenant_and_dataset, processes=2, prompts_per_step=2, max_steps=6)
    outcome = []
    run = threading.Thread(target=lambda: outcome.append(run_job(job_id)))
    run.start()
    while True:  # until rank 0 has recorded step 3 (after the checkpoint at step 2)
        with session_scope() as session:
            if session.get(Job, job_id).step >= 3:
                break
        time.sleep(0.05)
    ranks = multiprocessing.active_children()
    assert len(ranks) == 2
    os.kill(ranks[-1].pid, signal.SIGKILL)
    run.join()
    # The attempt ended, no rank is left, and the job went back to the queue to resume.
    assert outcome == ["queued"] and sent == [cpu_queue()] and multiprocessing.active_children() == []
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.status == "queued" and job.lease_owner is None and job.attempt == 1
    assert run_job(job_id) == "succeeded"
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.step, job.attempt) == ("succeeded", 6, 2)
    metrics, checkpoints = counts(job_id)
    assert metrics == 6 and checkpoints[-1] == 6 and 2 in checkpoints


def test_a_job_on_two_processes_cancelled_mid_run_stops_every_rank_with_a_checkpoint(tenant_and_dataset, monkeypatch):
    import multiprocessing

    from service_core.settings import get_settings

    monkeypatch.setenv("GRPO_CANCEL_POLL_SECONDS", "0.1")
    get_settings.cache_clear()
    tenant_id, dataset_id = tenant_and_dataset
    job_id = make_job(tenant_id, dataset_id, processes=2, prompts_per_step=2, max_steps=50, checkpoint_every=0)
    outcome = []
    run = threading.Thread(target=lambda: outcome.append(run_job(job_id)))
    run.start()
    while True:  # until rank 0 has recorded a step
        with session_scope() as session:
            if session.get(Job, job_id).step >= 1:
                jobs_service.cancel_job(session, tenant_id=tenant_id, job_id=job_id)
                break
        time.sleep(0.05)
    run.join()
    assert outcome == ["cancelled"] and multiprocessing.active_children() == []
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.status == "cancelled" and 1 <= job.step < 50
        step = job.step
    # The ranks agreed to stop after the same step, and rank 0 saved it.
    assert counts(job_id) == (step, [step])
    # Rank 0's step figures reached this (the supervising worker's) Prometheus series, every one.
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("grpo_worker_steps_total", {"job_id": job_id}) == step
