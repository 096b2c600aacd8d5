"""A rollout: the first half of a GRPO step, everything the policy update needs and nothing it changes.

For P prompts: sample G completions each, score them with the job's rewards, turn the rewards into group-relative
advantages, and take the log-probs the update compares against (the policy that sampled, when it is updated more
than once, and the reference policy, when beta > 0). `evaluate` shares the sample-and-score part.

Shapes: N = P x G completions, T = completion length, F = reward functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from grpo_core.algorithms import compute_group_advantages
from grpo_core.config import GRPOConfig
from grpo_core.data import render_prompt
from grpo_core.rewards import RewardFunction
from grpo_core.sampling import SampleBatch, completion_logprobs, sample_groups

ResolvedRewards = Sequence[tuple[RewardFunction, Any, float]]


@dataclass(frozen=True)
class Scores:
    rewards: torch.Tensor  # [N] weighted sum over reward functions
    per_function: torch.Tensor  # [N, F] each function's raw score
    errors: int  # completions x functions that raised and were scored 0


def score_completions(
    completions: Sequence[str], rows: Sequence[Mapping[str, Any]], rewards: ResolvedRewards
) -> Scores:
    """Score completion i against rows[i] with every reward; a reward that raises scores 0 and is counted."""
    per_function = torch.zeros(len(completions), len(rewards))
    errors = 0
    for i, (completion, row) in enumerate(zip(completions, rows, strict=True)):
        for j, (fn, params, _weight) in enumerate(rewards):
            try:
                value = float(fn.score(completion, row, params))
                if not math.isfinite(value):
                    raise ValueError("non-finite reward")
            except Exception:
                errors += 1
                value = 0.0
            per_function[i, j] = value
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
) -> ScoredSamples:
    """Sample group_size completions for each row's prompt at the config's temperature and top_p (or greedily),
    and score each against its row."""
    batch = sample_groups(
        model,
        tokenizer,
        [render_prompt(row, tokenizer) for row in rows],
        group_size=group_size,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        greedy=greedy,
    )
    completions = decode_completions(tokenizer, batch)
    scores = score_completions(completions, [row for row in rows for _ in range(group_size)], rewards)
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
    model, tokenizer, rows: Sequence[Mapping[str, Any]], rewards: ResolvedRewards, config: GRPOConfig
) -> Rollout:
    """Sample config.group_size completions for each of `rows`, score them, compute advantages, and take the
    log-probs the update compares against. Changes no weight."""
    started = time.perf_counter()
    samples = sample_and_score(model, tokenizer, rows, rewards, config, group_size=config.group_size)
    sampled = time.perf_counter()
    advantages = compute_group_advantages(samples.scores.rewards, config.group_size, config.scale_rewards)
    # With one update per sample the sampling policy is the current one: its log-probs need no extra pass.
    old = sampling_policy_logprobs(model, samples.batch, config.temperature) if config.num_iterations > 1 else None
    ref = reference_logprobs(model, samples.batch, config.temperature) if config.beta > 0 else None
    return Rollout(samples, advantages, old, ref, sampling_seconds=sampled - started)
