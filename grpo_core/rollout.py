"""A rollout: the first half of a GRPO step, everything the policy update needs and nothing it changes.

For P prompts: sample G completions each, score them with the job's rewards, turn the rewards into group-relative
advantages, and take the log-probs the update compares against (the policy that sampled, when it is updated more
than once, and the reference policy, when beta > 0). `evaluate` shares the sample-and-score part.

Shapes: N = P x G completions, T = completion length, F = reward functions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from grpo_core.algorithms import compute_group_advantages, zero_std_groups
from grpo_core.config import GRPOConfig
from grpo_core.data import render_prompt
from grpo_core.distributed import LOCAL, World
from grpo_core.rewards import RewardFunction, is_tenant_reward, score_items
from grpo_core.sampling import SampleBatch, completion_logprobs, concat_batches, micro_batches, sample_groups
from grpo_core.scoring import RewardScorer

ResolvedRewards = Sequence[tuple[RewardFunction, Any, float]]


@dataclass(frozen=True)
class Scores:
    rewards: torch.Tensor  # [N] weighted sum over reward functions
    per_function: torch.Tensor  # [N, F] each function's raw score
    errors: int  # completions x functions that failed (raised, timed out, not a finite number) and scored 0
    function_errors: list[int]  # [F] failed completions per function
    error_messages: list[list[str | None]]  # [F][N] why completion i failed for function j, or None
    outputs: list[str]  # [F] what each function printed while scoring (tenant code only)


def score_completions(
    completions: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    rewards: ResolvedRewards,
    scorer: RewardScorer | None = None,
    *,
    max_failures: int | None = None,
    device: torch.device | str = "cpu",
) -> Scores:
    """Score completion i against rows[i] with every reward; a failed item scores 0 and is counted, with why.

    Each reward function scores the whole batch: with `scorer` (what the trainer does: built-ins in a child process
    under its time limit, RewardTimeout when one hangs; tenant rewards in their sandboxes), or in this process when
    scorer is None (built-ins only). max_failures is passed to the scorer (see RewardScorer.score). The score
    tensors are made on `device` (the model's, so the advantages computed from them are there too)."""
    per_function = torch.zeros(len(completions), len(rewards), device=device)
    messages: list[list[str | None]] = []
    outputs: list[str] = []
    for j, (fn, params, _weight) in enumerate(rewards):
        output = ""
        if scorer is not None:
            batch = scorer.score(j, completions, rows, max_failures=max_failures)
            values, errors, output = batch.values, batch.errors, batch.output
        elif is_tenant_reward(fn.name):
            raise ValueError(f"reward {fn.name!r} is a tenant's code: it scores only with a RewardScorer (sandboxed)")
        else:
            values, errors = score_items(fn, params, completions, rows)
        per_function[:, j] = torch.tensor(values, dtype=per_function.dtype, device=device)
        messages.append(errors)
        outputs.append(output)
    weights = torch.tensor([weight for _fn, _params, weight in rewards], device=device)
    counts = [sum(error is not None for error in errors) for errors in messages]
    return Scores(per_function @ weights, per_function, sum(counts), counts, messages, outputs)


def decode_completions(tokenizer, batch: SampleBatch) -> list[str]:
    """The text of each completion up to its first EOS, without special tokens."""
    lengths = batch.completion_mask.sum(dim=1).tolist()
    # One copy to the host (from a GPU), not one per row.
    return [
        tokenizer.decode(ids[:length], skip_special_tokens=True)
        for ids, length in zip(batch.completion_ids.tolist(), lengths, strict=True)
    ]


@dataclass(frozen=True)
class ScoredSamples:
    batch: SampleBatch  # N = len(rows) x group_size completions, each group adjacent
    completions: list[str]  # [N] decoded
    scores: Scores
    reward_seconds: float = 0.0  # wall time the rewards took to score these completions


@dataclass(frozen=True)
class SamplingWork:
    """What sampling and scoring cost, the figures a tenant's usage adds up (one rank's share; sum over ranks).

    tokens_sampled: completion tokens generated, each completion up to and including its EOS (completion_mask).
    reward_calls: completions x reward functions, each (completion, function) pair one call; a TRL batch-shaped
    reward's one call counts once per completion it scores, so the figure does not depend on a reward's shape.
    reward_seconds: wall time spent scoring."""

    tokens_sampled: int = 0
    reward_calls: int = 0
    reward_seconds: float = 0.0

    @classmethod
    def of(cls, samples: ScoredSamples) -> SamplingWork:
        return cls(
            tokens_sampled=int(samples.batch.completion_mask.sum().item()),
            reward_calls=samples.scores.per_function.numel(),
            reward_seconds=samples.reward_seconds,
        )

    def __add__(self, other: SamplingWork) -> SamplingWork:
        return SamplingWork(
            self.tokens_sampled + other.tokens_sampled,
            self.reward_calls + other.reward_calls,
            self.reward_seconds + other.reward_seconds,
        )


def sample_and_score(
    model,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    rewards: ResolvedRewards,
    config: GRPOConfig,
    *,
    group_size: int,
    greedy: bool = False,
    scorer: RewardScorer | None = None,
    check_stop: Callable[[], None] | None = None,
    max_reward_failures: int | None = None,
    seeds: Sequence[int] | None = None,
) -> ScoredSamples:
    """Sample group_size completions for each row's prompt at the config's temperature and top_p (or greedily),
    and score each against its row (with `scorer` and max_reward_failures, see score_completions). check_stop is
    called before each decoded token and raises to abandon the sampling. seeds: one per row, see sample_groups."""
    batch = sample_groups(
        model,
        tokenizer,
        [render_prompt(row, tokenizer) for row in rows],
        group_size=group_size,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        greedy=greedy,
        check_stop=check_stop,
        seeds=seeds,
    )
    completions = decode_completions(tokenizer, batch)
    grouped_rows = [row for row in rows for _ in range(group_size)]
    scoring_started = time.perf_counter()
    scores = score_completions(
        completions,
        grouped_rows,
        rewards,
        scorer,
        max_failures=max_reward_failures,
        device=batch.completion_ids.device,
    )
    return ScoredSamples(batch, completions, scores, time.perf_counter() - scoring_started)


@contextmanager
def without_dropout(model) -> Iterator[None]:
    """Run the policy as the deterministic function that samples (eval mode), restoring the mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def logprobs_in_chunks(model, batch: SampleBatch, temperature: float, micro_batch_size: int = 0) -> torch.Tensor:
    """completion_logprobs [N, T] without a gradient, micro_batch_size completions per pass (0: one pass), so a
    pass holds the [micro_batch_size, T, V] logits, not [N, T, V]."""
    return torch.cat(
        [
            completion_logprobs(model, batch.select(rows), temperature)
            for rows in micro_batches(batch.completion_ids.shape[0], micro_batch_size)
        ]
    )


def reference_logprobs(model, batch: SampleBatch, temperature: float, micro_batch_size: int = 0) -> torch.Tensor:
    """Log-probs [N, T] under the reference policy: the same weights with the LoRA adapter switched off."""
    with torch.no_grad(), without_dropout(model), model.disable_adapter():
        return logprobs_in_chunks(model, batch, temperature, micro_batch_size)


def sampling_policy_logprobs(model, batch: SampleBatch, temperature: float, micro_batch_size: int = 0) -> torch.Tensor:
    """Log-probs [N, T] under the policy as it sampled, before any update: what later updates clip against."""
    with torch.no_grad(), without_dropout(model):
        return logprobs_in_chunks(model, batch, temperature, micro_batch_size)


def select_groups(samples: ScoredSamples, groups: Sequence[int]) -> ScoredSamples:
    """The completions of `groups` (indices of prompts in `samples`), in that order, with their scores."""
    size = samples.batch.group_size
    rows = [group * size + index for group in groups for index in range(size)]
    picked = torch.tensor(rows, dtype=torch.long, device=samples.batch.completion_ids.device)
    batch = samples.batch
    messages = [[errors[i] for i in rows] for errors in samples.scores.error_messages]
    counts = [sum(error is not None for error in errors) for errors in messages]
    return ScoredSamples(
        batch=SampleBatch(
            prompt_ids=batch.prompt_ids[picked],
            prompt_mask=batch.prompt_mask[picked],
            completion_ids=batch.completion_ids[picked],
            completion_mask=batch.completion_mask[picked],
            truncated=batch.truncated[picked],
            group_size=size,
        ),
        completions=[samples.completions[i] for i in rows],
        scores=Scores(
            rewards=samples.scores.rewards[picked],
            per_function=samples.scores.per_function[picked],
            errors=sum(counts),
            function_errors=counts,
            error_messages=messages,
            outputs=samples.scores.outputs,
        ),
    )


def concat_samples(parts: Sequence[ScoredSamples]) -> ScoredSamples:
    """One ScoredSamples of every part's completions, in order (see sampling.concat_batches)."""
    if len(parts) == 1:
        return parts[0]
    scores = [part.scores for part in parts]
    return ScoredSamples(
        batch=concat_batches([part.batch for part in parts]),
        completions=[completion for part in parts for completion in part.completions],
        scores=Scores(
            rewards=torch.cat([score.rewards for score in scores]),
            per_function=torch.cat([score.per_function for score in scores]),
            errors=sum(score.errors for score in scores),
            function_errors=[sum(counts) for counts in zip(*(s.function_errors for s in scores), strict=True)],
            error_messages=[
                [message for messages in per_part for message in messages]
                for per_part in zip(*(s.error_messages for s in scores), strict=True)
            ],
            outputs=["".join(outputs) for outputs in zip(*(s.outputs for s in scores), strict=True)],
        ),
    )


@dataclass(frozen=True)
class DynamicSampling:
    """What dynamic sampling did in a step: prompts sampled over how many rounds, and how many of their groups
    were dropped for giving every completion the same reward."""

    prompts_drawn: int
    groups_dropped: int
    rounds: int

    def metrics(self) -> dict[str, float]:
        return {
            "prompts_drawn": float(self.prompts_drawn),
            "groups_dropped": float(self.groups_dropped),
            "sampling_rounds": float(self.rounds),
        }


@dataclass(frozen=True)
class Rollout:
    samples: ScoredSamples
    advantages: torch.Tensor  # [N]
    old_logprobs: torch.Tensor | None  # [N, T] sampling policy; None when num_iterations = 1 (it is the current one)
    ref_logprobs: torch.Tensor | None  # [N, T] reference policy; None when beta = 0
    sampling_seconds: float
    rows: Sequence[Mapping[str, Any]] = ()  # the rows of its groups, in order
    dynamic: DynamicSampling | None = None  # set when the step sampled with dynamic_sampling
    # [R] the rewards [rows drawn x G] of each sampling round, in draw order: every group sampled, also those that
    # dynamic sampling dropped (one round without it). This rank's only.
    drawn_rewards: Sequence[torch.Tensor] = ()
    # What every round's sampling and scoring cost, dropped groups included. This rank's only.
    work: SamplingWork = SamplingWork()

    @property
    def batch(self) -> SampleBatch:
        return self.samples.batch


def collect_rollout(
    model,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    rewards: ResolvedRewards,
    config: GRPOConfig,
    *,
    scorer: RewardScorer | None = None,
    check_stop: Callable[[], None] | None = None,
    max_reward_failures: int | None = None,
    seeds: Sequence[int] | None = None,
    world: World = LOCAL,
) -> Rollout:
    """Sample config.group_size completions for each of `rows`, score them (with `scorer` and max_reward_failures,
    see score_completions), compute advantages, and take the log-probs the update compares against. Changes no weight, so check_stop
    (called before each decoded token and at each poll while rewards score) may raise to abandon it anywhere.

    seeds: one per row (see sample_groups). world: when the step's rows are dealt across ranks, `rows` are this
    rank's; the advantages are computed over the whole step's rewards (gathered), as one process would."""
    started = time.perf_counter()
    samples = sample_and_score(
        model,
        tokenizer,
        rows,
        rewards,
        config,
        group_size=config.group_size,
        scorer=scorer,
        check_stop=check_stop,
        max_reward_failures=max_reward_failures,
        seeds=seeds,
    )
    rollout = rollout_from_samples(model, samples, rows, config, time.perf_counter() - started, world=world)
    return dataclasses.replace(rollout, work=SamplingWork.of(samples))


def collect_dynamic_rollout(
    model,
    tokenizer,
    draw: Callable[[int], tuple[Sequence[Mapping[str, Any]], Sequence[int] | None]],
    rewards: ResolvedRewards,
    config: GRPOConfig,
    *,
    scorer: RewardScorer | None = None,
    check_stop: Callable[[], None] | None = None,
    max_reward_failures: int | None = None,
) -> Rollout:
    """DAPO's dynamic sampling: a rollout of config.prompts_per_step groups whose rewards are not all equal.

    draw(round) gives the rows (and their sampling seeds) of sampling round `round`: round 0 the step's own
    prompts, later rounds more. Groups whose rewards are all equal are dropped and rounds go on until the step has
    prompts_per_step informative groups (the first ones found, in order) or config.max_sampling_rounds rounds have
    run. A step short of groups after them trains on those it found; one that found none trains on round 0's
    groups, as a step without dynamic sampling would (their advantages are all 0). One process only."""
    started = time.perf_counter()
    wanted = config.prompts_per_step
    kept: list[ScoredSamples] = []
    kept_rows: list[Mapping[str, Any]] = []
    first: tuple[ScoredSamples, Sequence[Mapping[str, Any]]] | None = None
    drawn_rewards: list[torch.Tensor] = []
    drawn = dropped = rounds = 0
    work = SamplingWork()
    while len(kept_rows) < wanted and rounds < config.max_sampling_rounds:
        rows, seeds = draw(rounds)
        samples = sample_and_score(
            model,
            tokenizer,
            rows,
            rewards,
            config,
            group_size=config.group_size,
            scorer=scorer,
            check_stop=check_stop,
            max_reward_failures=max_reward_failures,
            seeds=seeds,
        )
        rounds, drawn = rounds + 1, drawn + len(rows)
        work += SamplingWork.of(samples)
        drawn_rewards.append(samples.scores.rewards)
        first = first or (samples, rows)
        flat = zero_std_groups(samples.scores.rewards, config.group_size).tolist()
        dropped += sum(flat)
        informative = [group for group, is_flat in enumerate(flat) if not is_flat][: wanted - len(kept_rows)]
        if informative:
            kept.append(select_groups(samples, informative))
            kept_rows += [rows[group] for group in informative]
    assert first is not None  # max_sampling_rounds >= 1
    samples, rows = (concat_samples(kept), kept_rows) if kept else first
    rollout = rollout_from_samples(model, samples, rows, config, time.perf_counter() - started)
    return dataclasses.replace(
        rollout, dynamic=DynamicSampling(drawn, dropped, rounds), drawn_rewards=drawn_rewards, work=work
    )


def rollout_from_samples(
    model,
    samples: ScoredSamples,
    rows: Sequence[Mapping[str, Any]],
    config: GRPOConfig,
    sampling_seconds: float,
    *,
    world: World = LOCAL,
) -> Rollout:
    """The rest of a rollout once its completions are sampled and scored: advantages (over the whole step's
    rewards, gathered across ranks) and the log-probs the update compares against."""
    local_rewards = samples.scores.rewards
    step_advantages = compute_group_advantages(world.gather(local_rewards), config.group_size, config.scale_rewards)
    start = world.offset(local_rewards.shape[0])
    advantages = step_advantages[start : start + local_rewards.shape[0]]
    # With one update per sample the sampling policy is the current one: its log-probs need no extra pass.
    old, ref = None, None
    if config.num_iterations > 1:
        old = sampling_policy_logprobs(model, samples.batch, config.temperature, config.micro_batch_size)
    if config.beta > 0:
        ref = reference_logprobs(model, samples.batch, config.temperature, config.micro_batch_size)
    return Rollout(
        samples,
        advantages,
        old,
        ref,
        sampling_seconds=sampling_seconds,
        rows=list(rows),
        drawn_rewards=[local_rewards],
    )


def gather_scores(world: World, scores: Scores) -> Scores:
    """The whole step's Scores from each rank's (rows in rank order, so in step order): what one process scoring
    every completion would hold. Every rank gets the same, so decisions taken from it (too many reward failures)
    agree."""
    if world.size == 1:
        return scores
    device = scores.rewards.device
    local = Scores(
        scores.rewards.cpu(),
        scores.per_function.cpu(),
        scores.errors,
        scores.function_errors,
        scores.error_messages,
        scores.outputs,
    )
    parts = world.gather_objects(local)
    return Scores(
        rewards=torch.cat([part.rewards for part in parts]).to(device),
        per_function=torch.cat([part.per_function for part in parts]).to(device),
        errors=sum(part.errors for part in parts),
        function_errors=[sum(counts) for counts in zip(*(part.function_errors for part in parts), strict=True)],
        error_messages=[
            [message for messages in per_rank for message in messages]
            for per_rank in zip(*(part.error_messages for part in parts), strict=True)
        ],
        outputs=["".join(outputs) for outputs in zip(*(part.outputs for part in parts), strict=True)],
    )
