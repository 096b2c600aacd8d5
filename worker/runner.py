"""Runs one job: claim its lease, train with callbacks that write progress back, record the outcome.

A job comes here through a turn (run_next_job: worker/turns.py picks which tenant's job starts) or, for messages
sent before turns, by id (run_job). Either way a worker that ends a job sends a turn to its queue while jobs wait
there, so a turn consumed while their tenants were at their caps is made up as soon as a slot frees.

Celery delivers a message at least once: a worker killed mid-job leaves its message to be delivered again (or
lost, with the folder broker), and Redis redelivers a message still running past its visibility timeout. So the
database decides: a worker trains a job only after a compare-and-set claim of its lease, renews the lease from a
heartbeat thread while it trains, and writes nothing once the lease is gone. A re-run resumes from the job's last
complete checkpoint; metric and checkpoint rows are unique per (job, step), so a replayed step adds nothing.

A worker asked to shut down (SIGTERM: `grpo serve` stopping, systemd, `docker stop`) stops the job, saves a
checkpoint of its last finished step, and puts the job back in the queue for the next worker to resume.

Bounds: the heartbeat thread reads the job's cancel flag every GRPO_CANCEL_POLL_SECONDS; a cancel or SIGTERM then
abandons the step in progress within one decoded token, or one poll while rewards score (they run in child processes,
so no reward can hold this process's GIL), or after the log-prob passes if it comes during them; the optimizer
update of a step is never interrupted. A built-in or plugin reward call longer than GRPO_REWARD_TIMEOUT_SECONDS
fails the job with a reason naming the reward. A tenant's reward (its uploaded code, named by id in the job's
rewards) runs only in a sandbox of its own under the GRPO_REWARD_* limits: one of its calls (one item, or one
batch for TRL's shape) longer than GRPO_REWARD_TIMEOUT_SECONDS, or one that kills its process, fails that call's
samples and the sandbox restarts; the job fails when the sandbox dies GRPO_REWARD_MAX_RESTARTS calls in a row
without scoring, when more than GRPO_REWARD_MAX_FAILURE_FRACTION of one step's samples fail for one reward
(built-ins too), or at once when this worker cannot sandbox (unless GRPO_REWARD_ALLOW_UNSANDBOXED). Each step
stores its first GRPO_SAMPLE_GROUPS_PER_STEP groups of samples and what tenant rewards printed. Jobs train on
GRPO_DEVICE (a CUDA GPU when there is one, by default), in the dtype their hyperparameters ask for. A job whose
`processes` is above 1 trains on that many ranks this process spawns and supervises (see "a job on several
processes" below); with several ranks a cancel or shutdown takes effect at the end of the step in progress.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from sqlalchemy import select

from grpo_core import GRPOConfig, GRPOTrainer, RewardSpec, TrainerCallback, load_jsonl
from grpo_core.checkpoint import Checkpoint, ForkPoint
from grpo_core.distributed import LOCAL, RankFailed, World, is_peer_failure, run_ranks
from grpo_core.guardrails import StopWhen
from grpo_core.options import TrainerOptions
from grpo_core.rewards import is_tenant_reward
from grpo_core.sandbox import SandboxUnavailable
from grpo_core.trainer import TrainResult
from service_core import artifacts, job_state
from service_core.db import session_scope
from service_core.models import TERMINAL_STATUSES, Job, RewardCode, Tenant, utcnow
from service_core.queue import queue_for, send_turn
from service_core.settings import Settings, get_settings
from worker import leases, turns, writes
from worker import metrics as worker_metrics
from worker.leases import LeaseLost

log = logging.getLogger(__name__)

# Set once this worker process begins to shut down (worker/app.py connects it to Celery's worker_shutting_down).
shutting_down = threading.Event()


def trainer_options(settings: Settings) -> TrainerOptions:
    """How this worker trains (and runs pre-flights): its GRPO_* settings, as the trainer takes them."""
    return TrainerOptions(
        device=settings.device,
        cache_dir=settings.model_cache,
        models_file=settings.models_file,
        reward_timeout_seconds=settings.reward_timeout_seconds,
        sandbox_limits=settings.sandbox_limits(),
        max_reward_failure_fraction=settings.reward_max_failure_fraction,
        sample_groups_per_step=settings.sample_groups_per_step,
    )


class Heartbeat(threading.Thread):
    """Renews the job's lease every lease_seconds / 3 until stopped, and reads the job's cancel flag every
    cancel_poll_seconds; notes when the lease was lost and when a cancel was asked for.

    It only waits and queries the database: rewards score in a child process, so nothing in this process holds
    the GIL for long and the thread is never starved."""

    def __init__(self, job_id: str, owner: str, lease_seconds: float, cancel_poll_seconds: float = 2.0):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.job_id, self.owner, self.lease_seconds = job_id, owner, lease_seconds
        self.cancel_poll_seconds = cancel_poll_seconds
        self.stopped = threading.Event()
        self.lost = threading.Event()
        self.cancelled = threading.Event()

    def run(self) -> None:
        renew_every = self.lease_seconds / 3
        next_renewal = time.monotonic() + renew_every
        # Renewals are due every renew_every, checked at each poll: late by at most one poll, well within the lease.
        while not self.stopped.wait(min(self.cancel_poll_seconds, renew_every)):
            try:
                with session_scope() as session:
                    if time.monotonic() >= next_renewal:
                        if not leases.renew_lease(
                            session, job_id=self.job_id, owner=self.owner, lease_seconds=self.lease_seconds
                        ):
                            self.lost.set()
                            return
                        next_renewal = time.monotonic() + renew_every
                    if session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)):
                        self.cancelled.set()
            except Exception:  # a database hiccup: try again at the next poll; the lease has slack for two misses
                log.exception("lease renewal or cancel check for %s failed", self.job_id)


class DatabaseReporter(TrainerCallback):
    """Writes each step's metrics, evaluations and checkpoints to the database while this worker holds the lease,
    and tells the trainer to stop when the job was cancelled or this worker is shutting down."""

    def __init__(self, job_id: str, owner: str, heartbeat: Heartbeat, *, group_size: int):
        self.job_id, self.owner, self.heartbeat = job_id, owner, heartbeat
        self.group_size = group_size

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        with session_scope() as session:
            job = leases.held_job(session, job_id=self.job_id, owner=self.owner)
            if writes.record_metrics(session, job_id=self.job_id, kind="train", step=step, values=metrics):
                # Only with the step's first metric row, in its transaction: a step run again bills nothing twice.
                writes.record_usage(
                    session,
                    tenant_id=job.tenant_id,
                    source_id=self.job_id,
                    kind="job",
                    hardware=job.hardware,
                    figures=writes.step_usage(metrics, job.processes),
                )
            job.step = step
            job.steps_computed += 1

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        with session_scope() as session:
            leases.held_job(session, job_id=self.job_id, owner=self.owner)
            writes.record_metrics(session, job_id=self.job_id, kind="eval", step=step, values=metrics)

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        _path, sha256, size = artifacts.pack_adapter(
            checkpoint.path, artifacts.adapter_folder_name(self.job_id, checkpoint.step)
        )
        with session_scope() as session:
            leases.held_job(session, job_id=self.job_id, owner=self.owner)
            writes.record_checkpoint(session, job_id=self.job_id, step=checkpoint.step, sha256=sha256, size=size)

    def on_samples(self, step: int, samples: list[dict], outputs: dict[str, str]) -> None:
        with session_scope() as session:
            leases.held_job(session, job_id=self.job_id, owner=self.owner)
            writes.record_samples(
                session, job_id=self.job_id, step=step, samples=samples, outputs=outputs, group_size=self.group_size
            )

    def on_prompt_groups(self, step: int, groups: list[dict]) -> None:
        with session_scope() as session:
            leases.held_job(session, job_id=self.job_id, owner=self.owner)
            writes.record_prompt_groups(session, job_id=self.job_id, step=step, groups=groups)

    def on_warning(self, message: str) -> None:
        with session_scope() as session:
            leases.held_job(session, job_id=self.job_id, owner=self.owner)
            job_state.record_event(session, job_id=self.job_id, type="warning", data={"message": message})

    def should_stop(self) -> bool:
        if self.heartbeat.lost.is_set():
            raise LeaseLost(f"lease on job {self.job_id} lost")
        if shutting_down.is_set():
            return True
        with session_scope() as session:
            return leases.held_job(session, job_id=self.job_id, owner=self.owner).cancel_requested

    def stop_requested(self) -> bool:
        # Read within a step, per decoded token: flags only, set by the heartbeat thread and the SIGTERM handler.
        if self.heartbeat.lost.is_set():
            raise LeaseLost(f"lease on job {self.job_id} lost")
        return self.heartbeat.cancelled.is_set() or shutting_down.is_set()


class StepFigures(TrainerCallback):
    """Hands each step's figures, once recorded, to `observe`: this worker's Prometheus series, or (in rank 0 of a
    job on several processes) a queue the supervising worker reads them from."""

    def __init__(self, observe: Callable[[dict[str, float]], None]):
        self.observe = observe

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.observe(worker_metrics.step_figures(metrics))


def _finish(job_id: str, owner: str, status: str, error: str | None = None) -> None:
    with session_scope() as session:
        job = leases.held_job(session, job_id=job_id, owner=owner)
        job_state.set_status(session, job=job, status=status, error=error, lease_owner=None, lease_expires_at=None)


def _guardrail_outcome(result: TrainResult) -> dict[str, Any]:
    """What a guardrail decided, as the job row stores it: stopped_early (None unless one ended the run) and the
    step of the job's adapter when it is not the last checkpoint."""
    if result.stopped_by is None:
        return {"stopped_early": None, "adapter_step": None}
    best = result.adapter_step if result.adapter_step != result.final_step else None
    return {"stopped_early": result.stopped_by.to_dict(), "adapter_step": best}


def _succeed(job_id: str, owner: str, guardrail: dict[str, Any]) -> str:
    """The run ended on its own: at max_steps, or early by a guardrail (the trainer warned when it stopped, and the
    status event carries stopped_early)."""
    with session_scope() as session:
        job = leases.held_job(session, job_id=job_id, owner=owner)
        job_state.set_status(session, job=job, status="succeeded", lease_owner=None, lease_expires_at=None, **guardrail)
    return "succeeded"


def _stopped_early(job_id: str, owner: str) -> str:
    """The trainer stopped before max_steps: the job is cancelled if its user asked for that, and otherwise this
    worker is shutting down and the job goes back to the queue, to resume from the checkpoint just saved."""
    with session_scope() as session:
        job = leases.held_job(session, job_id=job_id, owner=owner)
        if job.cancel_requested or not shutting_down.is_set():
            job_state.set_status(session, job=job, status="cancelled", lease_owner=None, lease_expires_at=None)
            return "cancelled"
        # GRPO_MAX_ATTEMPTS counts workers that died under a job; this attempt ended cleanly and does not count.
        job_state.set_status(
            session,
            job=job,
            status="queued",
            lease_owner=None,
            lease_expires_at=None,
            attempt=job.attempt - 1,
            enqueued_at=utcnow(),
        )
        queue = queue_for(job.hardware, processes=job.processes)
    try:
        send_turn(queue)  # after the commit, like every send
    except Exception:  # the broker is away: the job is queued in the database, and a reconciler sends a turn later
        log.warning("job %s: broker unreachable; left queued for the reconciler", job_id, exc_info=True)
    log.info("job %s: this worker is shutting down; checkpointed and queued again", job_id)
    return "queued"


@dataclasses.dataclass(frozen=True)
class JobRun:
    """What one attempt at a job trains, read from its row once the lease is held (and pickled to each rank)."""

    base_model: str
    rewards: list[RewardSpec]
    config: GRPOConfig
    train_dataset: str
    eval_dataset: str | None
    fork_point: ForkPoint | None  # a fork reads its parent's checkpoint only while it has none of its own
    stop_when: StopWhen
    tenant_rewards: dict[str, str]  # the job's tenant's own rewards it names (id -> source)
    options: TrainerOptions  # this worker's settings, as the trainer takes them
    queue: str  # the Celery queue the job waits on (service_core.queue.queue_for)
    hardware: str  # the job's hardware class and its tenant's name: the labels of this worker's usage totals
    tenant: str

    def observe_step(self, job_id: str, figures: dict[str, float]) -> None:
        """A step's figures (worker.metrics.step_figures) into this worker's Prometheus series."""
        worker_metrics.observe_step(
            job_id, figures, hardware=self.hardware, tenant=self.tenant, processes=self.config.processes
        )


def _new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_next_job(queue: str) -> str:
    """Take one turn on `queue`: start the job that is next there (worker/turns.py's order), train it to the end as
    run_job does, and return its outcome; "idle" when no job could start (none queued, each cancelled or claimed by
    another worker meanwhile, or every waiting tenant at its cap on running jobs)."""
    settings = get_settings()
    if shutting_down.is_set():
        # Taken in this worker's last poll of the broker, after it was told to stop: the turn is the next worker's.
        send_turn(queue)
        return "queued"
    owner = _new_owner()
    with session_scope() as session:
        candidates = turns.next_jobs(session, queue, settings)
    capped: set[str] = set()
    for candidate in candidates:
        if candidate.tenant_id in capped:
            continue
        run = _claim(candidate.job_id, owner, settings, turn=True)
        if run == "capped":
            capped.add(candidate.tenant_id)
        if isinstance(run, JobRun):
            # Pass the turn on while jobs still wait here: after a broker lost its messages, the one turn a
            # reconciler sends then reaches every idle worker, one after another; a turn too many ends idle.
            _offer_turn(queue)
            return _run(candidate.job_id, owner, settings, run)
    # Not a fault: a redelivered or surplus turn, a cancelled job, or every waiting tenant at its cap.
    log.info("turn on %s: no job to start", queue)
    return "idle"


def run_job(job_id: str) -> str:
    """Train job `job_id` to the end, resuming from its last checkpoint if an earlier attempt died. Returns the
    outcome: a job status ("queued" when this worker shut down first), "missing", "busy" when another worker
    holds the job's lease, or "lease-lost". Messages from before turns (grpo.run_job) come here: they skip the
    tenant's turn and cap, as they did when they were sent."""
    settings = get_settings()
    owner = _new_owner()
    run = _claim(job_id, owner, settings)
    if isinstance(run, str):
        return run
    return _run(job_id, owner, settings, run)


def _offer_turn(queue: str) -> None:
    """Send a turn to `queue` if jobs wait there. A lost send is the reconciler's to make up."""
    try:
        with session_scope() as session:
            waiting = bool(turns.waiting_on(session, queue))
        if waiting:
            send_turn(queue)
    except Exception:
        log.warning("could not offer a turn on %s; the reconciler will", queue, exc_info=True)


def _run(job_id: str, owner: str, settings: Settings, run: JobRun) -> str:
    """Train a job whose lease `owner` holds (claimed by _claim) and record its outcome. However it ends, a worker is
    free again: unless the job went back to the queue (which sent its own turn), a turn goes to its queue for the
    jobs still waiting there, since the turns sent for them may have been taken while their tenants were at their
    caps."""
    outcome = "lease-lost"
    try:
        outcome = _train_and_record(job_id, owner, settings, run)
        return outcome
    finally:
        if outcome != "queued":
            _offer_turn(run.queue)


def _train_and_record(job_id: str, owner: str, settings: Settings, run: JobRun) -> str:
    heartbeat = Heartbeat(job_id, owner, settings.lease_seconds, settings.cancel_poll_seconds)
    heartbeat.start()
    worker_metrics.job_started(job_id)
    try:
        stopped_early, guardrail = _train(job_id, owner, heartbeat, run)
        return _stopped_early(job_id, owner) if stopped_early else _succeed(job_id, owner, guardrail)
    except LeaseLost:
        log.warning("job %s: lease lost, another attempt owns it; stopping without writing", job_id)
        return "lease-lost"
    except Exception as error:
        try:
            return _record_failure(job_id, owner, error)
        except LeaseLost:
            return "lease-lost"
    finally:
        heartbeat.stopped.set()
        worker_metrics.job_stopped(job_id)


def _claim(job_id: str, owner: str, settings: Settings, *, turn: bool = False) -> JobRun | str:
    """Claim the job's lease and mark it running; returns what to train, or the outcome when there is nothing to
    train here (the job is gone, finished, cancelled, held by another worker, or this worker is stopping). With
    `turn`, the claim is also the tenant's turn (worker/turns.py take_turn): "capped" when the tenant already runs
    as many jobs as its cap allows."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return "missing"
        if job.status in TERMINAL_STATUSES:
            return job.status
        if job.cancel_requested:
            job_state.set_status(session, job=job, status="cancelled")
            return "cancelled"
        if shutting_down.is_set():
            # Taken in this worker's last poll of the broker, after it was told to stop: left for the next worker.
            send_turn(queue_for(job.hardware, processes=job.processes))
            return "queued"
        if turn and not turns.take_turn(session, tenant_id=job.tenant_id, settings=settings):
            session.rollback()  # no turn recorded: the tenant waits until one of its running jobs ends
            return "capped"
        attempt = leases.claim_job(
            session,
            job_id=job_id,
            owner=owner,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )
        if attempt is None:
            log.warning("job %s is held by another worker (or out of attempts); backing off", job_id)
            session.rollback()  # a turn that claimed nothing is not recorded as the tenant's
            return "busy"
        session.refresh(job)
        job_state.set_status(session, job=job, status="running", worker_host=socket.gethostname())
        # A tenant reward missing here (deleted since) is refused by the trainer, which names it.
        tenant_names = [r["name"] for r in job.rewards if is_tenant_reward(r["name"])]
        codes = session.scalars(
            select(RewardCode).where(RewardCode.tenant_id == job.tenant_id, RewardCode.id.in_(tenant_names))
        )
        return JobRun(
            base_model=job.base_model,
            rewards=[RewardSpec(r["name"], r["weight"], r["params"]) for r in job.rewards],
            config=GRPOConfig.from_dict(job.hyperparameters),
            train_dataset=job.dataset_id,
            eval_dataset=job.eval_dataset_id,
            fork_point=None
            if job.parent_job_id is None
            else ForkPoint(artifacts.checkpoint_dir(job.parent_job_id, job.parent_step), job.parent_optimizer),
            stop_when=StopWhen.from_dict(job.stop_when),
            tenant_rewards={code.id: code.source for code in codes},
            options=trainer_options(settings),
            queue=queue_for(job.hardware, processes=job.processes),
            hardware=job.hardware,
            tenant=session.get_one(Tenant, job.tenant_id).name,
        )


def _train(job_id: str, owner: str, heartbeat: Heartbeat, run: JobRun) -> tuple[bool, dict[str, Any]]:
    """Train on this process, or on config.processes ranks; returns whether a stop request ended the run early,
    and what a guardrail decided (_guardrail_outcome)."""
    if run.config.processes > 1:
        return _train_on_ranks(job_id, owner, heartbeat, run)
    reporter = DatabaseReporter(job_id, owner, heartbeat, group_size=run.config.group_size)
    figures = StepFigures(partial(run.observe_step, job_id))
    result = _make_trainer(job_id, run, [reporter, figures]).train(resume=True)
    return result.stopped_early, _guardrail_outcome(result)


def _record_failure(job_id: str, owner: str, error: Exception) -> str:
    """The attempt ended with `error`: a rank that died hands the job back to be resumed; anything else fails it,
    with a reason the user reads. Raises LeaseLost when the lease is no longer this worker's."""
    if isinstance(error, RankDied):
        log.warning("job %s: %s; the attempt ends and the job is queued again to resume", job_id, error)
        return _hand_to_reconciler(job_id, owner)
    if isinstance(error, SandboxUnavailable):
        # The operator's problem, not the job's input: say so in the log, and tell the user why the job failed.
        log.error("job %s uses tenant reward code, which this worker cannot sandbox: %s", job_id, error)
        reason = f"this worker cannot sandbox tenant reward code, and {error}"
    else:
        log.exception("job %s failed", job_id, exc_info=error)
        # A rank's error already reads "TypeName: message".
        reason = str(error) if isinstance(error, RankError) else f"{type(error).__name__}: {error}"
    _finish(job_id, owner, "failed", reason)
    return "failed"


def _make_trainer(
    job_id: str,
    run: JobRun,
    callbacks: list[TrainerCallback],
    world: World = LOCAL,
    device: str | torch.device | None = None,
) -> GRPOTrainer:
    """The job's trainer; device: a rank's own (one GPU each), else this worker's GRPO_DEVICE."""
    return GRPOTrainer(
        base_model=run.base_model,
        train_rows=load_jsonl(artifacts.dataset_path(run.train_dataset)),
        eval_rows=load_jsonl(artifacts.dataset_path(run.eval_dataset)) if run.eval_dataset else (),
        rewards=run.rewards,
        config=run.config,
        output_dir=artifacts.job_dir(job_id),
        callbacks=callbacks,
        options=run.options if device is None else dataclasses.replace(run.options, device=device),
        tenant_rewards=run.tenant_rewards,
        world=world,
        fork_point=run.fork_point,
        stop_when=run.stop_when,
    )


# --- a job on several processes ----------------------------------------------------------------------------------
# This process supervises: it keeps the lease and reads the cancel flag (Heartbeat) as for a job on one process,
# and spawns config.processes ranks (grpo_core.distributed.run_ranks), one GPU each on a GPU worker. The ranks learn
# of a cancel or a shutdown through `stop`, an Event this process sets; rank 0 writes metrics, events and
# checkpoints under this worker's lease, and sends back how the run ended. A rank that raises sends its error (the
# job fails with it, as on one process); a rank that dies without a word (killed, out of memory) ends the attempt:
# its peers are stopped, and the job goes back to the queue to resume from its last checkpoint, counted against
# GRPO_MAX_ATTEMPTS like a worker that died.


class RankDied(RuntimeError):
    """A rank of a job on several processes died without raising (killed, out of memory)."""


class StopFlag(TrainerCallback):
    """A rank's view of the supervisor's stop request (a cancel, the worker shutting down)."""

    def __init__(self, stop):
        self.stop = stop

    def should_stop(self) -> bool:
        return self.stop.is_set()

    def stop_requested(self) -> bool:
        return self.stop.is_set()


class _Flags:
    """What DatabaseReporter reads from its heartbeat, in a rank: the supervisor's events."""

    def __init__(self, lost, cancelled):
        self.lost, self.cancelled = lost, cancelled


def _rank_train(world: World, device, job_id, owner, run: JobRun, stop, lost, outcomes, figures) -> None:
    """One rank of a job (spawned by run_ranks): train, and on rank 0 report how it ended through `outcomes`."""
    callbacks: list[TrainerCallback] = [StopFlag(stop)]
    if world.is_main:
        flags = _Flags(lost, stop)
        callbacks.append(DatabaseReporter(job_id, owner, flags, group_size=run.config.group_size))  # type: ignore[arg-type]
        callbacks.append(StepFigures(figures.put))
    try:
        result = _make_trainer(job_id, run, callbacks, world, device).train(resume=True)
    except BaseException as error:
        # A collective that failed because a peer died is that death's echo, not this job's error.
        if not is_peer_failure(error):
            outcomes.put(("error", type(error).__name__, str(error)))
        raise
    if world.is_main:
        outcomes.put(("done", result.stopped_early, _guardrail_outcome(result)))


def _train_on_ranks(job_id: str, owner: str, heartbeat: Heartbeat, run: JobRun) -> tuple[bool, dict[str, Any]]:
    """Run the job on config.processes ranks; returns whether a stop request ended it early, and
    _guardrail_outcome of rank 0's result. Raises LeaseLost when the lease
    went (the ranks are killed first), RankDied when a rank died, and a rank's own error when one raised."""
    import torch.multiprocessing as mp

    from grpo_core.device import resolve_device

    context = mp.get_context("spawn")
    stop, lost, outcomes = context.Event(), context.Event(), context.SimpleQueue()
    figures = context.SimpleQueue()  # rank 0's step figures, for this process's metrics (each a few bytes)

    def observe_figures() -> None:
        while not figures.empty():
            run.observe_step(job_id, figures.get())

    def supervise() -> None:
        observe_figures()
        if heartbeat.lost.is_set():
            lost.set()
            raise LeaseLost(f"lease on job {job_id} lost")
        if heartbeat.cancelled.is_set() or shutting_down.is_set():
            stop.set()

    device = resolve_device(get_settings().device)
    args = (job_id, owner, run, stop, lost, outcomes, figures)
    try:
        run_ranks(_rank_train, args, run.config.processes, device=device, poll=supervise)
    except RankFailed as failure:
        observe_figures()
        errors = []
        while not outcomes.empty():
            outcome = outcomes.get()
            if outcome[0] == "error":
                errors.append(outcome)
        if not errors:
            raise RankDied(str(failure)) from None
        _kind, name, message = errors[0]
        if name == "LeaseLost":
            raise LeaseLost(message) from None
        raise RankError(f"{name}: {message}") from None
    observe_figures()
    _kind, stopped_early, guardrail = outcomes.get()
    return bool(stopped_early), guardrail


class RankError(RuntimeError):
    """A rank of a job on several processes raised: the message is its error's."""


def _hand_to_reconciler(job_id: str, owner: str) -> str:
    """End this attempt as a worker that died would, without waiting for the lease to run out: expire the lease now
    and let the reconciler queue the job again (or fail it once it has used GRPO_MAX_ATTEMPTS)."""
    from datetime import timedelta

    from worker.reconciler import reconcile_once

    with session_scope() as session:
        job = leases.held_job(session, job_id=job_id, owner=owner)
        job.lease_expires_at = utcnow() - timedelta(seconds=1)
    reconcile_once()
    with session_scope() as session:
        job = session.get(Job, job_id)
        return job.status if job is not None else "missing"
