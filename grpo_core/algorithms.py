"""The GRPO math: group-relative advantages, the clipped surrogate with a k3 KL penalty, loss aggregation.

Every function here is pure: tensors in, tensors (and a metrics dict) out. Shapes use
N = number of completions in the batch (prompts x group_size), T = completion length in tokens.

Variants are registered by name (`@register_reward_scaling`, `@register_loss_aggregation`); an unknown name
raises a ValueError that lists the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Added to the std before dividing so a group whose rewards are all equal gives exactly zero advantage, not NaN.
ADVANTAGE_EPS = 1e-4

RewardScaling = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LossAggregation = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]

REWARD_SCALINGS: dict[str, RewardScaling] = {}
LOSS_AGGREGATIONS: dict[str, LossAggregation] = {}


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


def register_loss_aggregation(name: str):
    def decorate(fn: LossAggregation) -> LossAggregation:
        LOSS_AGGREGATIONS[name] = fn
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


def zero_std_group_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all equal: they carry no learning signal."""
    grouped = torch.nan_to_num(rewards.float(), nan=0.0).view(-1, group_size)
    return (grouped.std(dim=1) < 1e-8).float().mean().item()


# --- loss aggregation -------------------------------------------------------------------------------------------


@register_loss_aggregation("grpo")
def _mean_of_sequence_means(token_loss: torch.Tensor, mask: torch.Tensor, max_completion_length: int) -> torch.Tensor:
    """Mean over each sequence's tokens, then over sequences (the GRPO paper): short answers weigh more per token."""
    return ((token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).mean()


@register_loss_aggregation("bnpo")
def _token_mean(token_loss: torch.Tensor, mask: torch.Tensor, max_completion_length: int) -> torch.Tensor:
    """Mean over every completion token of the batch: each token weighs the same."""
    return (token_loss * mask).sum() / mask.sum().clamp(min=1.0)


@register_loss_aggregation("dapo")
def _dapo_token_mean(token_loss: torch.Tensor, mask: torch.Tensor, max_completion_length: int) -> torch.Tensor:
    """DAPO: token mean over the whole generation batch. On one process this equals bnpo; across processes the
    normaliser would be the global token count."""
    return (token_loss * mask).sum() / mask.sum().clamp(min=1.0)


@register_loss_aggregation("dr_grpo")
def _constant_normaliser(token_loss: torch.Tensor, mask: torch.Tensor, max_completion_length: int) -> torch.Tensor:
    """Dr. GRPO: sum over tokens divided by a constant (sequences x max_new_tokens): no length bias."""
    return (token_loss * mask).sum() / (token_loss.shape[0] * max_completion_length)


def aggregate_token_losses(
    token_loss: torch.Tensor, completion_mask: torch.Tensor, loss_type: str, max_completion_length: int
) -> torch.Tensor:
    """Reduce a [N, T] matrix of per-token losses to a scalar, counting only tokens where completion_mask is 1."""
    return _lookup(LOSS_AGGREGATIONS, loss_type, "loss_type")(
        token_loss, completion_mask.to(token_loss.dtype), max_completion_length
    )


# --- the policy loss --------------------------------------------------------------------------------------------


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate exp(ref - cur) - (ref - cur) - 1: non-negative, 0 when equal."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


@dataclass(frozen=True)
class PolicyLossOutput:
    loss: torch.Tensor  # scalar, differentiable
    metrics: dict[str, float]


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
) -> PolicyLossOutput:
    """Clipped surrogate plus beta times the k3 KL to the reference, aggregated over completion tokens.

    logprobs: [N, T] token log-probs under the policy being trained (carries the gradient).
    old_logprobs: [N, T] under the policy that sampled; None means it is the current one (num_iterations = 1),
        so the ratio is exactly 1 and only the gradient of the log-probs acts.
    ref_logprobs: [N, T] under the reference policy; needed when beta > 0, ignored when beta = 0.
    advantages: [N], one per completion, broadcast over its tokens.
    completion_mask: [N, T], 1 for tokens that count (up to and including EOS), 0 for padding.
    max_completion_length: the T used by loss_type "dr_grpo" (defaults to T).

    Per token: -min(rho * A, clip(rho, 1 - epsilon, 1 + epsilon_high) * A) + beta * KL, with
    rho = exp(logprobs - old_logprobs).
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    mask = completion_mask.to(logprobs.dtype)
    token_count = mask.sum().clamp(min=1.0)

    ratio = torch.exp(logprobs - old_logprobs)
    clipped_ratio = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon_high)
    adv = advantages.unsqueeze(1)
    token_loss = -torch.min(ratio * adv, clipped_ratio * adv)

    metrics: dict[str, float] = {}
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = k3_kl(logprobs, ref_logprobs)
        token_loss = token_loss + beta * kl
        metrics["kl"] = ((kl * mask).sum() / token_count).item()

    loss = aggregate_token_losses(token_loss, mask, loss_type, max_completion_length or logprobs.shape[1])

    with torch.no_grad():
        # A token is clipped when the ratio left the band on the side where the clip removes its gradient.
        low_clipped = (ratio < 1.0 - epsilon) & (adv < 0)
        high_clipped = (ratio > 1.0 + epsilon_high) & (adv > 0)
        masked_ratio = ratio[mask.bool()]
        metrics.update(
            loss=loss.item(),
            clip_fraction_low=((low_clipped * mask).sum() / token_count).item(),
            clip_fraction_high=((high_clipped * mask).sum() / token_count).item(),
            ratio_mean=masked_ratio.mean().item() if masked_ratio.numel() else 1.0,
            ratio_min=masked_ratio.min().item() if masked_ratio.numel() else 1.0,
            ratio_max=masked_ratio.max().item() if masked_ratio.numel() else 1.0,
        )
    return PolicyLossOutput(loss=loss, metrics=metrics)
