"""Evaluation on held-out rows, and what it decides for a run: whether it is the best so far (its adapter then kept)
and whether eval_patience ends the run (grpo_core.guardrails)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from grpo_core.callbacks import CallbackList
from grpo_core.config import GRPOConfig
from grpo_core.device import forked_rng
from grpo_core.distributed import World
from grpo_core.guardrails import GuardrailState, StopReason, StopWhen, check_eval
from grpo_core.policy import Policy
from grpo_core.rollout import ResolvedRewards, sample_and_score
from grpo_core.scoring import RewardScorer


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    rewards: ResolvedRewards,
    config: GRPOConfig,
    *,
    scorer: RewardScorer | None = None,
    check_stop: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Mean reward on held-out rows: sampled (eval_samples_per_prompt each, at the training temperature) and
    greedy. Runs on its own RNG streams (the CPU's and the model's GPU's), so evaluating never changes what
    training samples next. scorer and check_stop as for step.grpo_step."""
    results = {}
    with forked_rng(model.device):
        torch.manual_seed(config.seed + 1)
        for name, greedy, samples in (("sampled", False, config.eval_samples_per_prompt), ("greedy", True, 1)):
            scored = sample_and_score(
                model,
                tokenizer,
                rows,
                rewards,
                config,
                group_size=samples,
                greedy=greedy,
                scorer=scorer,
                check_stop=check_stop,
            )
            results[f"eval_reward_{name}"] = scored.scores.rewards.mean().item()
    return results


class Evaluator:
    """A run's evaluations: rank 0 evaluates and reports (on_eval), every rank calls it at the same points and gets
    the same verdict. Nothing happens without eval rows and config.eval_every."""

    def __init__(
        self,
        rows: Sequence[Mapping[str, Any]],
        rewards: ResolvedRewards,
        config: GRPOConfig,
        stop_when: StopWhen,
        *,
        world: World,
        callbacks: CallbackList,
    ):
        self.rows, self.rewards, self.config, self.stop_when = list(rows), rewards, config, stop_when
        self.world, self.callbacks = world, callbacks
        self.last_step: int | None = None  # the step of the last evaluation (reset at each train())

    @property
    def enabled(self) -> bool:
        return bool(self.rows) and self.config.eval_every > 0

    @property
    def keeps_best(self) -> bool:
        """Whether the best evaluation's adapter is kept (saved when it ran), to be the run's adapter should a
        guardrail end it."""
        return self.stop_when.adapter == "best" and self.stop_when.any_condition and self.enabled

    def __call__(
        self, policy: Policy, step: int, guardrails: GuardrailState, scorer: RewardScorer
    ) -> tuple[bool, StopReason | None]:
        """Evaluate `policy` at `step` and check the eval-side guardrail (updating `guardrails`). Returns whether it
        was the best evaluation so far and whether eval_patience ends the run, both agreed by every rank."""
        if not self.enabled:
            return False, None
        improved, reason = False, None
        if self.world.is_main:
            metrics = evaluate(
                policy.model,
                policy.tokenizer,
                self.rows,
                self.rewards,
                self.config,
                scorer=scorer,
                check_stop=self.callbacks.check_stop,
            )
            self.callbacks.on_eval(step, metrics)
            improved, reason = check_eval(self.stop_when, guardrails, step, metrics)
        self.last_step = step
        if self.world.size > 1:
            improved, reason = self.world.gather_objects((improved, reason))[0]
        return improved, reason
