"""Runs one job: re-read it by id, skip it if it is finished, train with callbacks that write progress back."""

from __future__ import annotations

import logging
import socket

from api import artifacts, services
from api.db import session_scope
from api.models import TERMINAL_STATUSES, Job
from api.settings import get_settings
from grpo_core import GRPOConfig, GRPOTrainer, RewardSpec, TrainerCallback, load_jsonl
from grpo_core.checkpoint import Checkpoint

log = logging.getLogger(__name__)


class DatabaseReporter(TrainerCallback):
    """Writes each step's metrics, evaluations and checkpoints to the database as the trainer goes, and tells it
    to stop when the job was cancelled."""

    def __init__(self, job_id: str):
        self.job_id = job_id

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        with session_scope() as session:
            services.record_metrics(session, job_id=self.job_id, kind="train", step=step, values=metrics)
            session.get(Job, self.job_id).step = step

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        with session_scope() as session:
            services.record_metrics(session, job_id=self.job_id, kind="eval", step=step, values=metrics)

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        _path, sha256, size = artifacts.pack_adapter(checkpoint.path, f"{self.job_id}-step-{checkpoint.step}")
        with session_scope() as session:
            services.record_checkpoint(session, job_id=self.job_id, step=checkpoint.step, sha256=sha256, size=size)

    def should_stop(self) -> bool:
        with session_scope() as session:
            return bool(session.get(Job, self.job_id).cancel_requested)


def run_job(job_id: str) -> str:
    """Train job `job_id` to the end (resuming from its last checkpoint if it ran before); returns its status."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return "missing"
        if job.status in TERMINAL_STATUSES:
            return job.status
        if job.cancel_requested:
            services.set_status(session, job=job, status="cancelled")
            return "cancelled"
        services.set_status(session, job=job, status="running", worker_host=socket.gethostname())
        spec = {
            "base_model": job.base_model,
            "rewards": [RewardSpec(r["name"], r["weight"], r["params"]) for r in job.rewards],
            "config": GRPOConfig.from_dict(job.hyperparameters),
            "train": job.dataset_id,
            "eval": job.eval_dataset_id,
        }
    try:
        trainer = GRPOTrainer(
            base_model=spec["base_model"],
            train_rows=load_jsonl(artifacts.dataset_path(spec["train"])),
            eval_rows=load_jsonl(artifacts.dataset_path(spec["eval"])) if spec["eval"] else (),
            rewards=spec["rewards"],
            config=spec["config"],
            output_dir=artifacts.job_dir(job_id),
            callbacks=[DatabaseReporter(job_id)],
            cache_dir=get_settings().model_cache,
        )
        result = trainer.train(resume=True)
    except Exception as error:
        log.exception("job %s failed", job_id)
        with session_scope() as session:
            job = session.get(Job, job_id)
            services.set_status(session, job=job, status="failed", error=f"{type(error).__name__}: {error}")
        return "failed"
    status = "cancelled" if result.stopped_early else "succeeded"
    with session_scope() as session:
        services.set_status(session, job=session.get(Job, job_id), status=status)
    return status
