"""The pre-flight's measurement: what the base model does on a job's first prompts, and how long the job's steps
take, on this machine (grpo_core.preflight judges the figures; the worker only loads the job and records).

Sampled from the job's model with a fresh adapter (which computes exactly what the base model does), on the
prompts and random streams the job itself would use (grpo_core.schedule), then one real step of the job timed.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from grpo_core import preflight as figures
from grpo_core.config import GRPOConfig, RewardSpec
from grpo_core.options import DEFAULT_OPTIONS, TrainerOptions
from grpo_core.rollout import SamplingWork, ScoredSamples, sample_and_score
from grpo_core.schedule import prompt_draw
from grpo_core.step import USAGE_FIGURES
from grpo_core.trainer import GRPOTrainer


def measure_preflight(
    *,
    base_model: str,
    train_rows: Sequence[Mapping[str, Any]],
    eval_rows: Sequence[Mapping[str, Any]],
    rewards: Sequence[RewardSpec],
    config: GRPOConfig,
    prompts: int,
    options: TrainerOptions = DEFAULT_OPTIONS,
    tenant_rewards: Mapping[str, str] | None = None,
    check_stop: Callable[[], None] | None = None,
    on_work: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """The pre-flight report (grpo_core.preflight.report) of a job spec on this machine (options: its device, model
    cache and reward limits). check_stop is called as a step calls it (each decoded token, each reward poll) and
    raises to end the pre-flight.

    The figures: the first `prompts` rows the job would train on (its step order, so its seed), G completions each
    at the job's temperature, sampled prompts_per_step prompts at a time as a step samples them. Then one real step
    of the job (its first: sampling, scoring, the log-prob passes and the update, dynamic sampling included), timed
    after the sampling above has warmed the model up. The adapter it trains is thrown away. Every failed reward is
    counted in the figures: none ends the pre-flight.

    on_work, once measured, gets the work it did as a step's metrics count it (grpo_core.step.USAGE_FIGURES): the
    sampling of the first prompts and the timed step together."""
    config = dataclasses.replace(config, processes=1)  # one rank's step; a job on several divides it
    options = dataclasses.replace(options, sample_groups_per_step=0, max_reward_failure_fraction=1.0)
    with tempfile.TemporaryDirectory(prefix="preflight-") as output_dir:
        trainer = GRPOTrainer(
            base_model=base_model,
            train_rows=train_rows,
            eval_rows=eval_rows,
            rewards=rewards,
            config=config,
            output_dir=output_dir,
            options=options,
            tenant_rewards=tenant_rewards,
        )
        started = time.perf_counter()
        trainer.setup()
        load_seconds = time.perf_counter() - started
        with trainer.make_scorer(check_stop) as scorer:
            started = time.perf_counter()
            sampled = sample_first_prompts(trainer, prompts, scorer, check_stop)
            seconds_per_completion = (time.perf_counter() - started) / sum(len(part.completions) for part in sampled)
            metrics, _rollout = trainer.train_step(0, scorer, check_stop)
    if on_work is not None:
        work = sum((SamplingWork.of(part) for part in sampled), SamplingWork())
        on_work({key: metrics[key] + getattr(work, key, 0) for key in USAGE_FIGURES})
    return figures.report(
        sampled_figures(sampled, [fn.name for fn, _params, _weight in trainer.rewards], config.group_size),
        max_new_tokens=config.max_new_tokens,
        seconds_per_step=metrics["step_seconds"],
        load_seconds=load_seconds,
        seconds_per_evaluation=seconds_per_completion * len(eval_rows) * (config.eval_samples_per_prompt + 1),
        evaluations=figures.evaluations_in_job(config.max_steps, config.eval_every, bool(eval_rows)),
        max_steps=config.max_steps,
    )


def sample_first_prompts(trainer: GRPOTrainer, prompts: int, scorer, check_stop) -> list[ScoredSamples]:
    """G scored completions for each of the run's first `prompts` prompts (at most the dataset), prompts_per_step
    prompts at a time, each from the random stream its position in step 0 gives it."""
    config, rows = trainer.config, trainer.train_rows
    draw = prompt_draw(config, len(rows), 0, prompts=min(prompts, len(rows)))
    per_step = config.prompts_per_step
    return [
        sample_and_score(
            trainer.model,
            trainer.tokenizer,
            [rows[i] for i in draw.indices[start : start + per_step]],
            trainer.rewards,
            config,
            group_size=config.group_size,
            scorer=scorer,
            check_stop=check_stop,
            seeds=list(draw.seeds[start : start + per_step]),
        )
        for start in range(0, len(draw.indices), per_step)
    ]


def sampled_figures(sampled: Sequence[ScoredSamples], names: list[str], group_size: int) -> figures.SampleFigures:
    """grpo_core.preflight.sample_figures of the sampled groups, in order."""
    scores = [part.scores for part in sampled]
    return figures.sample_figures(
        rewards=[value for s in scores for value in s.rewards.tolist()],
        per_function=[row for s in scores for row in s.per_function.tolist()],
        function_errors=[sum(errors) for errors in zip(*(s.function_errors for s in scores), strict=True)],
        names=names,
        lengths=[n for part in sampled for n in part.batch.completion_mask.sum(dim=1).tolist()],
        truncated=[t for part in sampled for t in part.batch.truncated.tolist()],
        group_size=group_size,
    )
