"""Runs one pre-flight: claim it, load its row, measure it with this worker's settings
(grpo_core.preflight_measure: sample the base model on the first prompts the job would train on, time one real GRPO
step of the job; grpo_core.preflight judges), and record the figures and verdict.

Bounds: the pre-flight stops (and fails, saying so) once it has run GRPO_PREFLIGHT_TIMEOUT_SECONDS: the clock is
read before each decoded token and at each poll while rewards score, as a job's cancel flag is (worker/runner.py
states those bounds). A worker shutting down puts the pre-flight back in the queue. One that died under it leaves it
running past its deadline_at, and the reconciler fails it (worker/reconciler.py), so none stays running forever.
A message delivered twice runs once: the claim is a compare-and-set from queued to running.

Usage: each run records what it used once, with its outcome (a run a shutdown puts back counts too: it used the
machine): its wall-clock seconds measuring as compute_seconds, and the sampling, training and scoring figures of a
measurement that finished (one that failed or stopped records its seconds only).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from grpo_core.config import GRPOConfig, RewardSpec
from grpo_core.data import load_jsonl
from grpo_core.preflight_measure import measure_preflight
from grpo_core.rewards import is_tenant_reward
from service_core import artifacts
from service_core.db import session_scope
from service_core.models import Preflight, RewardCode, Tenant, utcnow
from service_core.queue import enqueue_preflight
from service_core.settings import get_settings
from worker import metrics as worker_metrics
from worker import writes
from worker.runner import shutting_down, trainer_options

log = logging.getLogger(__name__)

# How long after its own time limit a pre-flight still counts as running: the worker's clock fires first; the
# reconciler only fails one whose worker did not (killed, or stuck in a model load).
DEADLINE_GRACE_SECONDS = 120


class PreflightStopped(Exception):
    """The pre-flight ran out of time, or its worker is shutting down."""


def run_preflight(preflight_id: str) -> str:
    """Run pre-flight `preflight_id` to its end; returns its status, "missing", or "busy" (another delivery of its
    message has it)."""
    settings = get_settings()
    with session_scope() as session:
        preflight = session.get(Preflight, preflight_id)
        if preflight is None:
            log.warning("pre-flight %s does not exist; dropping the message", preflight_id)
            return "missing"
        if preflight.status != "queued":
            return preflight.status if preflight.status != "running" else "busy"
        if shutting_down.is_set():
            enqueue_preflight(preflight_id, preflight.hardware)  # left for the next worker
            return "queued"
        now = utcnow()
        claimed = session.execute(
            update(Preflight)
            .where(Preflight.id == preflight_id, Preflight.status == "queued")
            .values(
                status="running",
                started_at=now,
                worker_host=socket.gethostname(),
                deadline_at=now + timedelta(seconds=settings.preflight_timeout_seconds + DEADLINE_GRACE_SECONDS),
            )
            .returning(Preflight.id)
            .execution_options(synchronize_session=False)
        ).first()
        if claimed is None:
            return "busy"
        tenant_names = [r["name"] for r in preflight.rewards if is_tenant_reward(r["name"])]
        codes = session.scalars(
            select(RewardCode).where(RewardCode.tenant_id == preflight.tenant_id, RewardCode.id.in_(tenant_names))
        )
        spec = {
            "base_model": preflight.base_model,
            "train_rows": load_jsonl(artifacts.dataset_path(preflight.dataset_id)),
            "eval_rows": load_jsonl(artifacts.dataset_path(preflight.eval_dataset_id))
            if preflight.eval_dataset_id
            else [],
            "rewards": [RewardSpec(r["name"], r["weight"], r["params"]) for r in preflight.rewards],
            "config": GRPOConfig.from_dict(preflight.hyperparameters),
            "prompts": preflight.prompts,
            "tenant_rewards": {code.id: code.source for code in codes},
        }
        hardware = preflight.hardware
        usage = Usage(preflight_id, preflight.tenant_id, session.get_one(Tenant, preflight.tenant_id).name, hardware)

    timeout = settings.preflight_timeout_seconds
    deadline = time.monotonic() + timeout

    def check_stop() -> None:
        if shutting_down.is_set():
            raise PreflightStopped("this worker is shutting down")
        if time.monotonic() > deadline:
            raise PreflightStopped(
                f"the pre-flight ran past its time limit of {timeout:g} s (GRPO_PREFLIGHT_TIMEOUT_SECONDS)"
            )

    try:
        result = measure_preflight(
            **spec, options=trainer_options(settings), check_stop=check_stop, on_work=usage.figures.update
        )
    except PreflightStopped as stop:
        if shutting_down.is_set():
            _finish(usage, "queued", started_at=None, deadline_at=None, worker_host=None)
            enqueue_preflight(preflight_id, hardware)
            return "queued"
        return _finish(usage, "failed", error=str(stop))
    except Exception as error:
        log.exception("pre-flight %s failed", preflight_id)
        return _finish(usage, "failed", error=f"{type(error).__name__}: {error}")
    return _finish(usage, "succeeded", result=result)


@dataclasses.dataclass
class Usage:
    """What one run of a pre-flight used, from its claim on: recorded once, with its outcome."""

    preflight_id: str
    tenant_id: str
    tenant_name: str  # the label of this worker's usage totals
    hardware: str
    started: float = dataclasses.field(default_factory=time.monotonic)
    figures: dict[str, float] = dataclasses.field(default_factory=dict)  # measure_preflight's on_work

    def totals(self) -> dict[str, float]:
        # One process: the measurement runs the job's step on one rank (measure_preflight).
        return {**self.figures, "compute_seconds": time.monotonic() - self.started}


def _finish(usage: Usage, status: str, **values: Any) -> str:
    """Record the outcome and the run's usage, unless the reconciler failed the pre-flight in the meantime (it ran
    past deadline_at): then neither is, as for a worker that died under it."""
    if status != "queued":
        values["finished_at"] = utcnow()
    figures = usage.totals()
    with session_scope() as session:
        done = session.execute(
            update(Preflight)
            .where(Preflight.id == usage.preflight_id, Preflight.status == "running")
            .values(status=status, **values)
            .returning(Preflight.id)
            .execution_options(synchronize_session=False)
        ).first()
        if done is not None:
            writes.record_usage(
                session,
                tenant_id=usage.tenant_id,
                source_id=usage.preflight_id,
                kind="preflight",
                hardware=usage.hardware,
                figures=figures,
            )
    if done is not None:
        worker_metrics.observe_usage(figures, hardware=usage.hardware, tenant=usage.tenant_name)
    return status if done is not None else "failed"
