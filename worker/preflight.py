"""Runs one pre-flight: claim it, load the job's model as the job would, sample the base model on the first prompts
the job would train on, time one real GRPO step of the job, and store the figures and verdict
(grpo_core/preflight.py judges; this module samples, times and records).

Bounds: the pre-flight stops (and fails, saying so) once it has run GRPO_PREFLIGHT_TIMEOUT_SECONDS: the clock is
read before each decoded token and at each poll while rewards score, as a job's cancel flag is (worker/runner.py
states those bounds). A worker shutting down puts the pre-flight back in the queue. One that died under it leaves it
running past its deadline_at, and the reconciler fails it (worker/reconciler.py), so none stays running forever.
A message delivered twice runs once: the claim is a compare-and-set from queued to running.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from grpo_core import preflight as figures
from grpo_core.config import GRPOConfig, RewardSpec
from grpo_core.data import extra_rows_for_step, load_jsonl, rows_for_step
from grpo_core.rewards import is_tenant_reward
from grpo_core.rollout import sample_and_score
from grpo_core.sampling import prompt_seed
from grpo_core.scoring import RewardScorer
from grpo_core.trainer import GRPOTrainer, grpo_step
from service_core import artifacts
from service_core.db import session_scope
from service_core.models import Preflight, RewardCode, utcnow
from service_core.queue import enqueue_preflight
from service_core.settings import get_settings
from worker.runner import shutting_down

log = logging.getLogger(__name__)

# How long after its own time limit a pre-flight still counts as running: the worker's clock fires first; the
# reconciler only fails one whose worker did not (killed, or stuck in a model load).
DEADLINE_GRACE_SECONDS = 120


class PreflightStopped(Exception):
    """The pre-flight ran out of time, or its worker is shutting down."""


def measure_preflight(
    *,
    base_model: str,
    train_rows: Sequence[Mapping[str, Any]],
    eval_rows: Sequence[Mapping[str, Any]],
    rewards: Sequence[RewardSpec],
    config: GRPOConfig,
    prompts: int,
    tenant_rewards: Mapping[str, str] | None = None,
    check_stop: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The pre-flight report (grpo_core.preflight.report) of a job spec on this worker, with its settings (device,
    model cache, reward limits).

    The figures: the first `prompts` rows the job would train on (its step order, so its seed), G completions each
    at the job's temperature, sampled prompts_per_step prompts at a time as a step samples them, from the job's
    model with a fresh adapter (which computes exactly what the base model does). Then one real step of the job
    (its first: sampling, scoring, the log-prob passes and the update, dynamic sampling included), timed after the
    sampling above has warmed the model up. The adapter it trains is thrown away."""
    settings = get_settings()
    config = dataclasses.replace(config, processes=1)  # one rank's step; a job on several divides it
    with tempfile.TemporaryDirectory(prefix="preflight-") as output_dir:
        trainer = GRPOTrainer(
            base_model=base_model,
            train_rows=train_rows,
            eval_rows=eval_rows,
            rewards=rewards,
            config=config,
            output_dir=output_dir,
            cache_dir=settings.model_cache,
            models_file=settings.models_file,
            reward_timeout_seconds=settings.reward_timeout_seconds,
            tenant_rewards=tenant_rewards,
            sandbox_limits=settings.sandbox_limits(),
            sample_groups_per_step=0,
            device=settings.device,
        )
        started = time.perf_counter()
        trainer.setup()
        load_seconds = time.perf_counter() - started
        group_size, per_step = config.group_size, config.prompts_per_step
        rows = list(trainer.train_rows)
        indices = rows_for_step(len(rows), 0, min(prompts, len(rows)), config.seed)
        sampled = []
        scorer = RewardScorer(
            trainer.reward_specs,
            timeout_seconds=settings.reward_timeout_seconds,
            tenant_sources=trainer.tenant_rewards,
            limits=trainer.sandbox_limits,
            check_stop=check_stop,
        )
        with scorer:
            started = time.perf_counter()
            for start in range(0, len(indices), per_step):
                chunk = indices[start : start + per_step]
                sampled.append(
                    sample_and_score(
                        trainer.model,
                        trainer.tokenizer,
                        [rows[i] for i in chunk],
                        trainer.rewards,
                        config,
                        group_size=group_size,
                        scorer=scorer,
                        check_stop=check_stop,
                        seeds=[prompt_seed(config.seed, 0, start + i) for i in range(len(chunk))],
                    )
                )
            seconds_per_completion = (time.perf_counter() - started) / (len(indices) * group_size)
            step_indices = rows_for_step(len(rows), 0, per_step, config.seed)

            def draw_more(round_: int) -> tuple[list[Mapping[str, Any]], list[int]]:
                extra = extra_rows_for_step(len(rows), 0, round_, per_step, config.seed)
                seeds = [prompt_seed(config.seed, 0, round_ * per_step + i) for i in range(per_step)]
                return [rows[i] for i in extra], seeds

            metrics, _rollout = grpo_step(
                trainer.model,
                trainer.tokenizer,
                trainer.optimizer,
                trainer.scheduler,
                [rows[i] for i in step_indices],
                trainer.rewards,
                config,
                scorer=scorer,
                check_stop=check_stop,
                seeds=[prompt_seed(config.seed, 0, i) for i in range(per_step)],
                draw_more=draw_more,
            )
    scores = [part.scores for part in sampled]
    eval_completions = len(eval_rows) * (config.eval_samples_per_prompt + 1)  # sampled, then greedy
    sample = figures.sample_figures(
        rewards=[value for s in scores for value in s.rewards.tolist()],
        per_function=[row for s in scores for row in s.per_function.tolist()],
        function_errors=[sum(errors) for errors in zip(*(s.function_errors for s in scores), strict=True)],
        names=[fn.name for fn, _params, _weight in trainer.rewards],
        lengths=[n for part in sampled for n in part.batch.completion_mask.sum(dim=1).tolist()],
        truncated=[t for part in sampled for t in part.batch.truncated.tolist()],
        group_size=group_size,
    )
    return figures.report(
        sample,
        max_new_tokens=config.max_new_tokens,
        seconds_per_step=metrics["step_seconds"],
        load_seconds=load_seconds,
        seconds_per_evaluation=seconds_per_completion * eval_completions,
        evaluations=figures.evaluations_in_job(config.max_steps, config.eval_every, bool(eval_rows)),
        max_steps=config.max_steps,
    )


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
        result = measure_preflight(**spec, check_stop=check_stop)
    except PreflightStopped as stop:
        if shutting_down.is_set():
            _finish(preflight_id, "queued", started_at=None, deadline_at=None, worker_host=None)
            enqueue_preflight(preflight_id, hardware)
            return "queued"
        return _finish(preflight_id, "failed", error=str(stop))
    except Exception as error:
        log.exception("pre-flight %s failed", preflight_id)
        return _finish(preflight_id, "failed", error=f"{type(error).__name__}: {error}")
    return _finish(preflight_id, "succeeded", result=result)


def _finish(preflight_id: str, status: str, **values: Any) -> str:
    """Record the outcome, unless the reconciler failed the pre-flight in the meantime (it ran past deadline_at)."""
    if status != "queued":
        values["finished_at"] = utcnow()
    with session_scope() as session:
        done = session.execute(
            update(Preflight)
            .where(Preflight.id == preflight_id, Preflight.status == "running")
            .values(status=status, **values)
            .returning(Preflight.id)
            .execution_options(synchronize_session=False)
        ).first()
    return status if done is not None else "failed"
