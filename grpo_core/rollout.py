"""A rollout: the first half of a GRPO step, everything the policy update needs and nothing it changes.

For P prompts: sample G completions each, score them with the job's rewards, turn the rewards into group-relative
advantages, and take the log-probs the update compares against (the policy that sampled, when it is updated more
than once, and the reference policy, when beta > 0). `evaluate` shares the sample-and-score part.

Shapes: N = P x G completions, T = completion length, F = reward functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from grpo_core.algorithms import compute_group_advantages
from grpo_core.config import GRPOConfig
from grpo_core.data import render_prompt
from grpo_core.reward_process import RewardProcess
from grpo_core.rewards import RewardFunction, score_batch
from grpo_core.sampling import SampleBatch, completion_logprobs, sample_groups

ResolvedRewards = Sequence[tuple[RewardFunction, Any, float]]


@dataclass(frozen=True)
class Scores:
    rewards: torch.Tensor  # [N] weighted sum over reward functions
    per_function: torch.Tensor  # [N, F] each function's raw score
    errors: int  # completions x functions that raised and were scored 0


def score_completions(
    completions: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    rewards: ResolvedRewards,
    scorer: RewardProcess | None = None,
) -> Scores:
    """Score completion i against rows[i] with every reward; a reward that raises scores 0 and is counted.

    Each reward function scores the whole batch in one call: in `scorer`'s child process under its time limit
    (what the trainer does: RewardTimeout when a reward hangs), or in this process when scorer is None."""
    per_function = torch.zeros(len(completions), len(rewards))
    errors = 0
    for j, (fn, params, _weight) in enumerate(rewards):
        if scorer is None:
            values, failed = score_batch(fn, params, completions, rows)
        else:
            values, failed = scorer.score(j, completions, rows)
        per_function[:, j] = torch.tensor(values, dtype=per_function.dtype)
        errors += failed
    weights = torch.tensor([weight for _fn, _params, weight in rewards])
    return Scores(rewards=per_function @ weights, per_function=per_function, errors=errors)


def decode_completions(tokenizer, batch: SampleBatch) -> list[str]:
    """The text of each completion up to its first EOS, without special tokens."""
    lengths = batch.completion_mask.sum(dim=1).tolist()
    return [
        tokenizer.decode(ids[:length], skip_special_tokens=True)
        for ids, length in zip(batch.completion_ids, lengths, strict=True)
    ]


@dataclass(frozen=True)
class ScoredSamples:
    batch: SampleBatch  # N = len(rows) x group_size completions, each group adjacent
    completions: list[str]  # [N] decoded
    scores: Scores


def sample_and_score(
    model,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    rewards: ResolvedRewards,
    config: GRPOConfig,
    *,
    group_size: int,
    greedy: bool = False,
    scorer: RewardProcess | None = None,
    check_stop: Callable[[], None] | None = None,
) -> ScoredSamples:
    """Sample group_size completions for each row's prompt at the config's temperature and top_p (or greedily),
    and score each against its row (with `scorer`, see score_completions). check_stop is called before each
    decoded token and raises to abandon the sampling."""
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
    )
    completions = decode_completions(tokenizer, batch)
    scores = score_completions(completions, [row for row in rows for _ in range(group_size)], rewards, scorer)
    return ScoredSamples(batch, completions, scores)


@contextmanager
def without_dropout(model) -> Iterator[None]:
    """Run the policy as the deterministic function that samples (eval mode), restoring the mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def reference_logprobs(model, batch: SampleBatch, temperature: float) -> torch.Tensor:
    """Log-probs [N, T] under the reference policy: the same weights with the LoRA adapter switched off."""
    with torch.no_grad(), without_dropout(model), model.disable_adapter():
        return completion_logprobs(model, batch, temperature)


def sampling_policy_logprobs(model, batch: SampleBatch, temperature: float) -> torch.Tensor:
    """Log-probs [N, T] under the policy as it sampled, before any update: what later updates clip against."""
    with torch.no_grad(), without_dropout(model):
        return completion_logprobs(model, batch, temperature)


@dataclass(frozen=True)
class Rollout:
    samples: ScoredSamples
    advantages: torch.Tensor  # [N]
    old_logprobs: torch.Tensor | None  # [N, T] sampling policy; None when num_iterations = 1 (it is the current one)
    ref_logprobs: torch.Tensor | None  # [N, T] reference policy; None when beta = 0
    sampling_seconds: float

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
    scorer: RewardProcess | None = None,
    check_stop: Callable[[], None] | None = None,
) -> Rollout:
    """Sample config.group_size completions for each of `rows`, score them (with `scorer`, see score_completions),
    compute advantages, and take the log-probs the update compares against. Changes no weight, so check_stop
    (called before each decoded token and at each poll while rewards score) may raise to abandon it anywhere."""
    started = time.perf_counter()
    samples = sample_and_score(
        model, tokenizer, rows, rewards, config, group_size=config.group_size, scorer=scorer, check_stop=check_stop
    )
    sampled = time.perf_counter()
    advantages = compute_group_advantages(samples.scores.rewards, config.group_size, config.scale_rewards)
    # With one update per sample the sampling policy is the current one: its log-probs need no extra pass.
    old = sampling_policy_logprobs(model, samples.batch, config.temperature) if config.num_iterations > 1 else None
    ref = reference_logprobs(model, samples.batch, config.temperature) if config.beta > 0 else None
    return Rollout(samples, advantages, old, ref, sampling_seconds=sampled - started)
