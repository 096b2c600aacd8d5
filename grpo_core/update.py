"""The update: num_iterations clipped policy-gradient steps on one rollout, and what happens when one is not finite.

An update whose loss or gradient norm is not finite raises NonFiniteUpdate before the optimizer steps; the trainer
skips that step (undoing, with an UpdateSnapshot, the earlier updates of a step of several) and fails the run at
stop_when.max_non_finite_steps such steps.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from grpo_core.algorithms import LossStats, compute_policy_loss, loss_normaliser
from grpo_core.config import GRPOConfig
from grpo_core.distributed import LOCAL, World
from grpo_core.policy import Policy
from grpo_core.rollout import Rollout, without_dropout
from grpo_core.sampling import completion_logprobs, micro_batches


class NonFiniteUpdate(ArithmeticError):
    """An update's loss or gradient norm was not finite: it was not applied. The trainer skips the step, and fails
    the run at stop_when.max_non_finite_steps such steps."""


class NonFiniteWeights(NonFiniteUpdate):
    """An update left adapter weights that are not finite: they are in the model, so the run cannot go on."""


def loss_completion_mask(batch, config: GRPOConfig) -> torch.Tensor:
    """[N, T]: the completion tokens the loss counts: every completion's, or with mask_truncated_completions only
    those of completions that ended with EOS (DAPO's overlong filtering: a cut answer is not judged on its
    ending)."""
    if not config.mask_truncated_completions:
        return batch.completion_mask
    return batch.completion_mask * (~batch.truncated).unsqueeze(1).to(batch.completion_mask.dtype)


def update_policy(
    model, optimizer, scheduler, rollout: Rollout, config: GRPOConfig, world: World = LOCAL
) -> list[dict[str, float]]:
    """config.num_iterations clipped updates on one rollout, the scheduler stepped after each. Returns each
    update's metrics: the loss's (loss, clip fractions, ratio, kl), grad_norm, and the learning rate it used.

    Each update runs config.micro_batch_size completions at a time (0: all at once), each chunk's backward adding
    to the gradient before the one optimizer step. A chunk's loss is its share of the step's: its token losses
    over the loss_type's normaliser of the whole step, so gradient, loss and metrics are the one-pass ones.

    The update passes run without dropout, like the sampling, old and reference passes: the ratio and the KL
    compare the policy with itself, so the ratio is exactly 1 before the first update (TRL's disable_dropout).

    An update whose loss or gradient norm is not finite (finite inputs can overflow float32: a reward of 1e300 is
    inf there, and inf - inf is NaN) raises NonFiniteUpdate before the optimizer steps. One that leaves non-finite
    weights all the same (a backstop: the config's bounds keep AdamW's decay finite) raises it after: the run ends
    there, so no checkpoint holds them.
    With num_iterations > 1 the updates before it were applied to the model in memory, likewise never saved.

    world: when the step is dealt across ranks, the normaliser is the whole step's (summed over ranks), each rank's
    gradient is summed over ranks before clipping, and the loss stats are the step's: every rank then applies the
    one-pass update, and they stay equal."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
    batch = rollout.batch
    loss_mask = loss_completion_mask(batch, config)
    normaliser = world.sum(loss_normaliser(loss_mask, config.loss_type, config.max_new_tokens))
    chunks = micro_batches(batch.completion_ids.shape[0], config.micro_batch_size)
    updates: list[dict[str, float]] = []
    with without_dropout(model):
        for _ in range(config.num_iterations):
            optimizer.zero_grad(set_to_none=True)
            stats: LossStats | None = None
            for rows in chunks:
                output = compute_policy_loss(
                    completion_logprobs(model, batch.select(rows), config.temperature),
                    None if rollout.old_logprobs is None else rollout.old_logprobs[rows],
                    None if rollout.ref_logprobs is None else rollout.ref_logprobs[rows],
                    rollout.advantages[rows],
                    loss_mask[rows],
                    epsilon=config.epsilon,
                    epsilon_high=config.epsilon_high,
                    beta=config.beta,
                    loss_type=config.loss_type,
                    max_completion_length=config.max_new_tokens,
                    normaliser=normaliser,
                    importance_sampling_level=config.importance_sampling_level,
                )
                output.loss.backward()
                stats = output.stats if stats is None else stats + output.stats
            assert stats is not None  # a rollout has at least one completion
            world.sum_gradients(trainable)
            stats = world.sum_stats(stats)
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm).item()
            if not (math.isfinite(stats.loss) and math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                where = f" in update {len(updates) + 1} of {config.num_iterations}" if config.num_iterations > 1 else ""
                raise NonFiniteUpdate(f"loss is {stats.loss} (grad norm {grad_norm}){where}; nothing was applied")
            learning_rate = optimizer.param_groups[0]["lr"]
            optimizer.step()
            # Finite gradients can still give non-finite weights: AdamW's decay multiplies by 1 - lr x weight_decay.
            if not all(bool(torch.isfinite(p).all()) for p in trainable):
                raise NonFiniteWeights(
                    f"the update left adapter weights that are not finite (learning rate {learning_rate:g}, "
                    f"weight_decay {config.weight_decay:g}); the run stops, and no checkpoint holds them"
                )
            scheduler.step()
            updates.append({**stats.metrics(), "grad_norm": grad_norm, "learning_rate": learning_rate})
    return updates


@dataclass(frozen=True)
class UpdateSnapshot:
    """The adapter weights, optimizer and scheduler before a step of several updates, to undo it if a later update
    is not finite (the earlier ones were applied). LoRA-sized: a few copies of the adapter."""

    weights: list[torch.Tensor]
    optimizer_state: dict
    scheduler_state: dict

    @classmethod
    def take(cls, policy: Policy) -> UpdateSnapshot:
        weights = [p.detach().clone() for p in policy.model.parameters() if p.requires_grad]
        return cls(weights, copy.deepcopy(policy.optimizer.state_dict()), policy.scheduler.state_dict())

    def restore(self, policy: Policy) -> None:
        with torch.no_grad():
            trainable = [p for p in policy.model.parameters() if p.requires_grad]
            for param, saved in zip(trainable, self.weights, strict=True):
                param.copy_(saved)
        policy.optimizer.load_state_dict(self.optimizer_state)
        policy.scheduler.load_state_dict(self.scheduler_state)
