"""The GRPO math: group-relative advantages, the clipped surrogate with a k3 KL penalty, loss aggregation.

Every function here is pure: tensors in, tensors (and a metrics dict) out. Shapes use
N = number of completions in the batch (prompts x group_size), T = completion length in tokens.

Variants are registered by name (`@register_reward_scaling`, `@register_loss_aggregation`,
`@register_importance_sampling`); an unknown name raises a ValueError that lists the valid ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Added to the std before dividing so a group whose rewards are all equal gives exactly zero advantage, not NaN.
ADVANTAGE_EPS = 1e-4

RewardScaling = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PartialLossSum = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LossNormaliser = Callable[[torch.Tensor, int], torch.Tensor]
LogImportanceWeights = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LossAggregation:
    """One loss_type: the loss is partial_sum(token_loss [N, T], mask [N, T]) / normaliser(mask, max_new_tokens),
    both scalars; partial_sum adds over rows, so it can be taken chunk by chunk (see loss_normaliser)."""

    partial_sum: PartialLossSum
    normaliser: LossNormaliser


REWARD_SCALINGS: dict[str, RewardScaling] = {}
LOSS_AGGREGATIONS: dict[str, LossAggregation] = {}
IMPORTANCE_SAMPLING_LEVELS: dict[str, LogImportanceWeights] = {}


def _lookup(registry: dict, name: str, what: str):
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(sorted(registry))}") from None


def register_reward_scaling(name: str):
    def decorate(fn: RewardScaling) -> RewardScaling:
        REWARD_SCALINGS[name] = fn
        return fn

    return decorate


def register_loss_aggregation(name: str, *, normaliser: LossNormaliser):
    """Register the decorated partial sum as loss_type `name`, divided by `normaliser` of the whole step."""

    def decorate(fn: PartialLossSum) -> PartialLossSum:
        LOSS_AGGREGATIONS[name] = LossAggregation(fn, normaliser)
        return fn

    return decorate


def register_importance_sampling(name: str):
    def decorate(fn: LogImportanceWeights) -> LogImportanceWeights:
        IMPORTANCE_SAMPLING_LEVELS[name] = fn
        return fn

    return decorate


# --- advantages -------------------------------------------------------------------------------------------------


@register_reward_scaling("group")
def _scale_by_group_std(grouped_rewards: torch.Tensor, centered: torch.Tensor) -> torch.Tensor:
    """Divide by each group's own std (Bessel-corrected), as in the GRPO paper."""
    return centered / (grouped_rewards.std(dim=1, keepdim=True) + ADVANTAGE_EPS)


@register_reward_scaling("batch")
def _scale_by_batch_std(grouped_rewards: torch.Tensor, centered: torch.Tensor) -> torch.Tensor:
    """Divide by the std of all rewards in the batch: groups with little spread keep small advantages."""
    return centered / (grouped_rewards.std() + ADVANTAGE_EPS)


@register_reward_scaling("none")
def _no_scaling(grouped_rewards: torch.Tensor, centered: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: only subtract the group mean; dividing by the std biases towards easy or hard prompts."""
    return centered


def compute_group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group") -> torch.Tensor:
    """Advantage of each completion relative to the other completions of its prompt.

    rewards: [N] with N = prompts x group_size, the group_size completions of a prompt adjacent.
    Returns [N]: (r_i - mean(group)) / (std(group) + eps) for scale_rewards="group". A NaN reward (a reward
    function that could not score) counts as 0. A group whose rewards are all equal gives exactly 0.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} items, got {tuple(rewards.shape)}"
        )
    scale = _lookup(REWARD_SCALINGS, scale_rewards, "scale_rewards")
    grouped = torch.nan_to_num(rewards.float(), nan=0.0).view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    return scale(grouped, centered).reshape(-1)


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N / group_size] bool: the groups whose rewards are all equal (NaN counting as 0): their advantages are all
    0, so they carry no learning signal."""
    grouped = torch.nan_to_num(rewards.float(), nan=0.0).view(-1, group_size)
    return grouped.std(dim=1) < 1e-8


def zero_std_group_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all equal: they carry no learning signal."""
    return zero_std_groups(rewards, group_size).float().mean().item()


# --- loss aggregation -------------------------------------------------------------------------------------------
# A loss_type reduces a step's [N, T] token losses to  partial_sum(token_loss, mask) / normaliser(mask). The partial
# sum adds over completions, so when a step is computed in chunks of completions (micro_batch_size), each chunk
# contributes partial_sum(its rows) / normaliser(the whole step's mask), and the chunks add up to the one-pass loss
# and gradient. Dividing each chunk by its own normaliser would not: dapo's token mean would become a mean of
# per-chunk means, weighting a chunk of short answers like one of long answers.


def _sequence_count(mask: torch.Tensor, max_completion_length: int) -> torch.Tensor:
    # The completions that have a token in the loss: every one, unless mask_truncated_completions took some out
    # (a completion always keeps at least its first token otherwise). At least 1, as for tokens.
    return (mask.sum(dim=1) > 0).sum().to(mask.dtype).clamp(min=1.0)


def _token_count(mask: torch.Tensor, max_completion_length: int) -> torch.Tensor:
    # At least 1: a step whose every completion is empty has a loss of 0, not NaN.
    return mask.sum().clamp(min=1.0)


def _sequences_times_max_length(mask: torch.Tensor, max_completion_length: int) -> torch.Tensor:
    return mask.new_tensor(float(mask.shape[0] * max_completion_length))


@register_loss_aggregation("grpo", normaliser=_sequence_count)
def _sum_of_sequence_means(token_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's tokens, summed over sequences; over the step's sequence count, the GRPO paper's
    mean of sequence means: short answers weigh more per token."""
    return ((token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).sum()


@register_loss_aggregation("bnpo", normaliser=_token_count)
def _token_sum(token_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over completion tokens; over the step's token count, a mean in which every token weighs the same."""
    return (token_loss * mask).sum()


@register_loss_aggregation("dapo", normaliser=_token_count)
def _dapo_token_sum(token_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DAPO: sum over completion tokens; over the token count of the whole generation batch (every completion of
    the step). The same as bnpo here, where every loss_type normalises over the whole step; TRL's bnpo divides each
    micro batch by its own tokens instead, which makes its gradient depend on the micro batch size."""
    return (token_loss * mask).sum()


@register_loss_aggregation("dr_grpo", normaliser=_sequences_times_max_length)
def _dr_grpo_token_sum(token_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: sum over completion tokens; over a constant, the step's sequences x max_new_tokens: no length
    bias."""
    return (token_loss * mask).sum()


def loss_normaliser(completion_mask: torch.Tensor, loss_type: str, max_completion_length: int) -> torch.Tensor:
    """What loss_type divides a step's summed token losses by, from completion_mask [N, T] of every completion the
    step trains on (not one chunk's). Returns a scalar tensor: the sequence count N (grpo), the completion tokens
    (bnpo, dapo; at least 1), or N x max_completion_length (dr_grpo)."""
    aggregation = _lookup(LOSS_AGGREGATIONS, loss_type, "loss_type")
    return aggregation.normaliser(completion_mask.float(), max_completion_length)


def aggregate_token_losses(
    token_loss: torch.Tensor,
    completion_mask: torch.Tensor,
    loss_type: str,
    max_completion_length: int,
    normaliser: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Reduce a [N, T] matrix of per-token losses to a scalar, counting only tokens where completion_mask is 1.

    normaliser: the whole step's loss_normaliser when these N rows are one chunk of a step's completions: the
    result is then the chunk's share of the step's loss, and the shares of its chunks add up to it. None: the
    rows are the whole step."""
    aggregation = _lookup(LOSS_AGGREGATIONS, loss_type, "loss_type")
    mask = completion_mask.to(token_loss.dtype)
    if normaliser is None:
        normaliser = aggregation.normaliser(mask, max_completion_length)
    return aggregation.partial_sum(token_loss, mask) / normaliser


# --- importance sampling -----------------------------------------------------------------------------------------
# The ratio rho between the policy being trained and the one that sampled, per token. "token" is GRPO's: each token
# its own ratio. "sequence" is GSPO's (Zheng et al. 2025): one ratio per completion, the geometric mean of its token
# ratios, clipped as one.


@register_importance_sampling("token")
def _token_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log rho_{i,t} = log pi(y_t) - log pi_old(y_t)."""
    return logprobs - old_logprobs


@register_importance_sampling("sequence")
def _sequence_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO-token: log s_{i,t} = sg[log s_i] + log pi(y_t) - sg[log pi(y_t)], with log s_i the mean over the
    completion's tokens of log pi - log pi_old (its length-normalised sequence ratio). Every token of a completion
    has the value s_i, so the clip acts per sequence, and each token's gradient is s_i times its own log-prob's: the
    paper's token-level form, whose gradient equals GSPO's when a completion's tokens share one advantage (here
    always) and the loss averages a completion's tokens (loss_type grpo)."""
    sequence = ((logprobs - old_logprobs) * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(
        min=1.0
    )
    return sequence.detach() + logprobs - logprobs.detach()


# --- the policy loss --------------------------------------------------------------------------------------------


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate exp(ref - cur) - (ref - cur) - 1: non-negative, 0 when equal."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


@dataclass(frozen=True)
class LossStats:
    """The sums behind a loss's metrics, over the completion tokens of a batch. Kept as sums (and extremes), not
    means, so the stats of a step's chunks add up (`+`) to those of the whole step and give its one-pass metrics."""

    loss: float  # the batch's loss: its share of the step's loss when it is one chunk of the step
    tokens: float  # completion tokens counted
    clipped_low: float  # tokens whose ratio fell below 1 - epsilon with a negative advantage
    clipped_high: float  # tokens whose ratio rose above 1 + epsilon_high with a positive advantage
    ratio_sum: float
    ratio_min: float  # inf when no token counts
    ratio_max: float  # -inf when no token counts
    kl_sum: float | None  # None when beta = 0

    def __add__(self, other: LossStats) -> LossStats:
        kl_sum = None if self.kl_sum is None or other.kl_sum is None else self.kl_sum + other.kl_sum
        return LossStats(
            loss=self.loss + other.loss,
            tokens=self.tokens + other.tokens,
            clipped_low=self.clipped_low + other.clipped_low,
            clipped_high=self.clipped_high + other.clipped_high,
            ratio_sum=self.ratio_sum + other.ratio_sum,
            ratio_min=min(self.ratio_min, other.ratio_min),
            ratio_max=max(self.ratio_max, other.ratio_max),
            kl_sum=kl_sum,
        )

    def metrics(self) -> dict[str, float]:
        """loss, clip_fraction_low/high (of the completion tokens), ratio_mean/min/max (1 with no tokens), and kl
        (mean per token) when beta > 0."""
        tokens = max(self.tokens, 1.0)
        metrics = {"kl": self.kl_sum / tokens} if self.kl_sum is not None else {}
        metrics.update(
            loss=self.loss,
            clip_fraction_low=self.clipped_low / tokens,
            clip_fraction_high=self.clipped_high / tokens,
            ratio_mean=self.ratio_sum / self.tokens if self.tokens else 1.0,
            ratio_min=self.ratio_min if self.tokens else 1.0,
            ratio_max=self.ratio_max if self.tokens else 1.0,
        )
        return metrics


@dataclass(frozen=True)
class PolicyLossOutput:
    loss: torch.Tensor  # scalar, differentiable
    stats: LossStats

    @property
    def metrics(self) -> dict[str, float]:
        return self.stats.metrics()


def compute_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    normaliser: torch.Tensor | float | None = None,
    importance_sampling_level: str = "token",
) -> PolicyLossOutput:
    """Clipped surrogate plus beta times the k3 KL to the reference, aggregated over completion tokens.

    logprobs: [N, T] token log-probs under the policy being trained (carries the gradient).
    old_logprobs: [N, T] under the policy that sampled; None means it is the current one (num_iterations = 1),
        so the ratio is exactly 1 and only the gradient of the log-probs acts.
    ref_logprobs: [N, T] under the reference policy; needed when beta > 0, ignored when beta = 0.
    advantages: [N], one per completion, broadcast over its tokens.
    completion_mask: [N, T], 1 for tokens that count (up to and including EOS), 0 for padding.
    max_completion_length: the T used by loss_type "dr_grpo" (defaults to T).
    normaliser: when the N rows are one chunk of a step, loss_normaliser() of the whole step's completion mask:
        the loss is then the chunk's share, and the chunks' losses, gradients and stats add up to the step's.
        None: the N rows are the whole step.
    importance_sampling_level: "token" (rho = exp(logprobs - old_logprobs) per token) or "sequence" (GSPO: one
        length-normalised ratio per completion; see _sequence_log_ratio).

    Per token: -min(rho * A, clip(rho, 1 - epsilon, 1 + epsilon_high) * A) + beta * KL.
    """
    log_importance_weights = _lookup(IMPORTANCE_SAMPLING_LEVELS, importance_sampling_level, "importance_sampling_level")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    mask = completion_mask.to(logprobs.dtype)

    ratio = torch.exp(log_importance_weights(logprobs, old_logprobs, mask))
    clipped_ratio = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon_high)
    adv = advantages.unsqueeze(1)
    token_loss = -torch.min(ratio * adv, clipped_ratio * adv)

    kl = None
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = k3_kl(logprobs, ref_logprobs)
        token_loss = token_loss + beta * kl

    loss = aggregate_token_losses(
        token_loss, mask, loss_type, max_completion_length or logprobs.shape[1], normaliser=normaliser
    )

    with torch.no_grad():
        # A token is clipped when the ratio left the band on the side where the clip removes its gradient.
        low_clipped = (ratio < 1.0 - epsilon) & (adv < 0)
        high_clipped = (ratio > 1.0 + epsilon_high) & (adv > 0)
        counted = mask.bool()
        ratio = ratio.detach()
        sums = [
            loss.detach(),
            mask.sum(),
            (low_clipped * mask).sum(),
            (high_clipped * mask).sum(),
            (ratio * mask).sum(),
            ratio.masked_fill(~counted, math.inf).min(),
            ratio.masked_fill(~counted, -math.inf).max(),
            (kl.detach() * mask).sum() if kl is not None else mask.new_zeros(()),
        ]
        # One transfer for all of them (one device sync on a GPU, not eight).
        loss_value, tokens, low, high, ratio_sum, ratio_min, ratio_max, kl_sum = torch.stack(
            [value.float() for value in sums]
        ).tolist()
    stats = LossStats(
        loss_value, tokens, low, high, ratio_sum, ratio_min, ratio_max, kl_sum if kl is not None else None
    )
    return PolicyLossOutput(loss=loss, stats=stats)
