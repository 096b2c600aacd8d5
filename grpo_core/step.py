"""One GRPO step, read top to bottom: collect a rollout (sample, score, group advantages), check the rewards held,
update the policy, report the step's figures.

Rewards that fail: an item whose reward raised, timed out (tenant code), or was not a finite number scores 0, is
counted in `reward_errors/<name>`, and the step warns (on_warning) with the first error. When more than
max_reward_failure_fraction of a step's samples failed for one reward, the run ends (TooManyRewardFailures)
before that step updates anything.
"""

from __future__ import annotations

import functools
import math
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from grpo_core.algorithms import zero_std_group_fraction
from grpo_core.config import GRPOConfig
from grpo_core.distributed import LOCAL, World
from grpo_core.reward_process import RewardFailure
from grpo_core.rollout import (
    ResolvedRewards,
    Rollout,
    SamplingWork,
    Scores,
    collect_dynamic_rollout,
    collect_rollout,
    gather_scores,
)
from grpo_core.scoring import RewardScorer
from grpo_core.update import update_policy

DrawMore = Callable[[int], tuple[Sequence[Mapping[str, Any]], Sequence[int]]]


USAGE_FIGURES = ("tokens_sampled", "tokens_trained", "reward_calls", "reward_seconds")
"""The figures of a step's metrics that a tenant's usage adds up (step_metrics defines them)."""


class TooManyRewardFailures(RewardFailure):
    """More than the allowed fraction of a step's samples failed for one reward."""


def step_metrics(
    rollout: Rollout,
    updates: Sequence[dict[str, float]],
    rewards: ResolvedRewards,
    step_seconds: float,
    world: World = LOCAL,
) -> dict[str, float]:
    """What a step reports: rewards and advantages of its rollout, the last update's loss figures, completion
    lengths and timings. With several ranks, per-completion values are gathered first, so the figures are the
    whole step's; the timings are the slowest rank's.

    The work the step did, which a tenant's usage adds up (USAGE_FIGURES), is summed over ranks: tokens_sampled,
    reward_calls and reward_seconds over every sampling round (see rollout.SamplingWork; dynamic sampling's dropped
    groups included), and tokens_trained, the completion tokens of the groups the step trained on times the updates
    made on them (num_iterations): each went through a forward and backward pass that often (a completion that
    mask_truncated_completions leaves out of the loss still did)."""
    batch = rollout.batch
    scores = gather_scores(world, rollout.samples.scores)
    lengths = world.gather(batch.completion_mask.sum(dim=1).float())
    advantages = world.gather(rollout.advantages)
    truncated = world.gather(batch.truncated)
    step_seconds, sampling_seconds = world.max(step_seconds), world.max(rollout.sampling_seconds)
    work: SamplingWork = functools.reduce(operator.add, world.gather_objects(rollout.work))
    return {
        "reward_mean": scores.rewards.mean().item(),
        "reward_std": scores.rewards.std().item(),
        **{f"reward/{fn.name}": scores.per_function[:, j].mean().item() for j, (fn, _p, _w) in enumerate(rewards)},
        "reward_errors": float(scores.errors),
        **{f"reward_errors/{fn.name}": float(scores.function_errors[j]) for j, (fn, _p, _w) in enumerate(rewards)},
        "zero_std_group_fraction": zero_std_group_fraction(scores.rewards, batch.group_size),
        "advantage_mean": advantages.mean().item(),
        "advantage_std": advantages.std().item(),
        "advantage_max": advantages.max().item(),
        "advantage_min": advantages.min().item(),
        "kl": 0.0,  # replaced by the loss's figure when beta > 0
        **updates[-1],
        "completion_length_mean": lengths.mean().item(),
        "completion_length_max": lengths.max().item(),
        "truncated_fraction": truncated.float().mean().item(),
        "step_seconds": step_seconds,
        "sampling_seconds": sampling_seconds,
        "generated_tokens_per_second": lengths.sum().item() / max(sampling_seconds, 1e-9),
        "tokens_sampled": float(work.tokens_sampled),
        "tokens_trained": lengths.sum().item() * len(updates),
        "reward_calls": float(work.reward_calls),
        "reward_seconds": work.reward_seconds,
        **(rollout.dynamic.metrics() if rollout.dynamic is not None else {}),
    }


def check_reward_failures(scores: Scores, rewards: ResolvedRewards, max_fraction: float) -> None:
    """Raise TooManyRewardFailures naming the first reward that failed on more than max_fraction of the samples,
    with the count and its first error."""
    total = scores.per_function.shape[0]
    for (fn, _params, _weight), count, errors in zip(
        rewards, scores.function_errors, scores.error_messages, strict=True
    ):
        if count > max_fraction * total:
            first = next(error for error in errors if error is not None)
            raise TooManyRewardFailures(
                f"reward {fn.name!r} failed on {count} of {total} samples (more than the allowed fraction, "
                f"{max_fraction:g}); first error: {first}"
            )


def grpo_step(
    model,
    tokenizer,
    optimizer,
    scheduler,
    rows: Sequence[Mapping[str, Any]],
    rewards: ResolvedRewards,
    config: GRPOConfig,
    *,
    scorer: RewardScorer | None = None,
    check_stop: Callable[[], None] | None = None,
    max_reward_failure_fraction: float = 1.0,
    seeds: Sequence[int] | None = None,
    world: World = LOCAL,
    draw_more: DrawMore | None = None,
) -> tuple[dict[str, float], Rollout]:
    """One training step on `rows` (P prompts): collect a rollout (G completions each, scored, advantages, old
    and reference log-probs), update the policy num_iterations times. Returns the step's metrics and its rollout.

    Rewards score with `scorer` when given (see score_completions). More than max_reward_failure_fraction of the
    samples failing for one reward raises TooManyRewardFailures before any update (scoring stops at that point:
    the rest of that reward's samples are not scored). check_stop is called during the rollout (each decoded
    token, each reward poll, and once before the update) and raises to abandon the step; the update is never
    interrupted.

    seeds: one per row, the random stream each prompt samples from (see sample_groups). world: `rows` are this
    rank's share of the step; rewards, advantages, the failure check, the loss and the metrics are the whole
    step's (see grpo_core.distributed). check_stop must then not raise: a rank that left the step alone would
    leave the others waiting in a collective.

    With config.dynamic_sampling, draw_more(round) gives the rows and seeds of each sampling round after the first
    (schedule.round_rows; see rollout.collect_dynamic_rollout), and the rollout's groups are the informative ones
    found; the rollout's `rows` are then the rows it trained on."""
    started = time.perf_counter()
    rollout = collect_step_rollout(
        model,
        tokenizer,
        rows,
        rewards,
        config,
        scorer=scorer,
        check_stop=check_stop,
        max_reward_failure_fraction=max_reward_failure_fraction,
        seeds=seeds,
        world=world,
        draw_more=draw_more,
    )
    check_reward_failures(gather_scores(world, rollout.samples.scores), rewards, max_reward_failure_fraction)
    if check_stop is not None:
        check_stop()
    updates = update_policy(model, optimizer, scheduler, rollout, config, world)
    return step_metrics(rollout, updates, rewards, time.perf_counter() - started, world), rollout


def collect_step_rollout(
    model,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    rewards: ResolvedRewards,
    config: GRPOConfig,
    *,
    scorer: RewardScorer | None,
    check_stop: Callable[[], None] | None,
    max_reward_failure_fraction: float,
    seeds: Sequence[int] | None,
    world: World,
    draw_more: DrawMore | None,
) -> Rollout:
    """A step's rollout (grpo_step's arguments): sampled once, or with config.dynamic_sampling over rounds until
    enough groups are informative. Changes no weight."""
    # The whole step's limit on each rank: a rank stops scoring early only when the step as a whole is over it.
    step_rows = sum(world.gather_objects(len(rows)))
    max_failures = math.floor(max_reward_failure_fraction * step_rows * config.group_size)
    if not config.dynamic_sampling:
        return collect_rollout(
            model,
            tokenizer,
            rows,
            rewards,
            config,
            scorer=scorer,
            check_stop=check_stop,
            max_reward_failures=max_failures,
            seeds=seeds,
            world=world,
        )
    if draw_more is None:
        raise ValueError("dynamic_sampling needs draw_more: where the rows of later sampling rounds come from")
    return collect_dynamic_rollout(
        model,
        tokenizer,
        lambda round_: (rows, seeds) if round_ == 0 else draw_more(round_),
        rewards,
        config,
        scorer=scorer,
        check_stop=check_stop,
        max_reward_failures=max_failures,
    )
