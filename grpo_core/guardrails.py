"""Guardrails: conditions on a run's own figures that end it before max_steps, checked after each step and each
evaluation. Pure: a job's `stop_when` settings and a small state (kept in checkpoints, so a resumed run decides
as an uninterrupted one would) in, a StopReason or None out. Each check is a few comparisons on numbers the step
already reported, so it costs nothing measurable next to a step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from grpo_core.config import field_problems

ADAPTER_CHOICES = ("best", "last")
EVAL_METRICS = ("eval_reward_sampled", "eval_reward_greedy")


@dataclass(frozen=True)
class StopWhen:
    """When a run ends on its own before max_steps. Every condition is off (null) unless set. A condition that fires
    ends the job `succeeded`, with `stopped_early` saying which, at which step, with the figures behind it."""

    kl_above: float | None = field(default=None, metadata={"gt": 0, "le": 1e6})
    """Stop when the step's KL to the reference (needs beta > 0) stays above this for kl_steps steps in a row."""
    kl_steps: int = field(default=3, metadata={"ge": 1, "le": 1000})
    """Consecutive steps for kl_above."""
    reward_drop: float | None = field(default=None, metadata={"gt": 0, "le": 1e6})
    """Stop when the train reward's moving average (over reward_window steps) falls more than this below the best
    moving average the run has had: a run that collapses."""
    reward_window: int = field(default=5, metadata={"ge": 1, "le": 1000})
    """Steps in the moving average of reward_drop."""
    eval_patience: int | None = field(default=None, metadata={"ge": 1, "le": 1000})
    """Early stopping: stop when eval_metric has not improved by more than eval_min_delta on its best for this many
    evaluations in a row (the one before the first step sets the first best). Needs an eval dataset and
    eval_every."""
    eval_min_delta: float = field(default=0.0, metadata={"ge": 0, "le": 1e6})
    """How much an evaluation must beat the best so far to count as an improvement."""
    eval_metric: str = field(default="eval_reward_sampled", metadata={"choices": EVAL_METRICS})
    """The held-out figure eval_patience and the best adapter go by."""
    flat_steps: int | None = field(default=None, metadata={"ge": 1, "le": 1000})
    """Stop when every group of a step gave all its completions the same reward (nothing to learn from) for this
    many steps in a row."""
    truncated_steps: int | None = field(default=None, metadata={"ge": 1, "le": 1000})
    """Stop when every completion of a step ran to max_new_tokens without ending for this many steps in a row."""
    max_non_finite_steps: int = field(default=3, metadata={"ge": 1, "le": 1000})
    """Always on: a step whose loss or gradient is not finite is skipped (nothing of it is applied); the run fails
    at this many skipped steps."""
    adapter: str = field(default="best", metadata={"choices": ADAPTER_CHOICES})
    """The job's adapter when a condition ends it and there is an eval dataset: best (the checkpoint with the best
    eval_metric, saved when that evaluation ran) or last."""

    def __post_init__(self) -> None:
        problems = field_problems(self, "stop_when.")
        if problems:
            raise ValueError("invalid stop_when: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> StopWhen:
        """From a job spec's stop_when (None: every default); unknown keys are an error."""
        data = dict(data or {})
        unknown = sorted(set(data) - {spec.name for spec in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown stop_when settings: {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def any_condition(self) -> bool:
        """Whether any condition that ends a run early is set (max_non_finite_steps fails a run, it is not one)."""
        return any(
            value is not None
            for value in (self.kl_above, self.reward_drop, self.eval_patience, self.flat_steps, self.truncated_steps)
        )


@dataclass(frozen=True)
class StopReason:
    """Why a run ended early: reason (kl_above, reward_drop, eval_patience, flat_steps, truncated_steps), the step
    it ended at, and the figures that decided it."""

    reason: str
    step: int
    values: dict[str, float]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class GuardrailState:
    """What the checks remember between steps; saved in each checkpoint (to_dict / from_dict)."""

    kl_streak: int = 0
    flat_streak: int = 0
    truncated_streak: int = 0
    recent_rewards: list[float] = field(default_factory=list)  # the last reward_window train rewards
    best_reward_average: float | None = None
    best_eval: float | None = None
    best_eval_step: int | None = None
    evals_without_improvement: int = 0
    non_finite_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GuardrailState:
        known = {spec.name for spec in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in (data or {}).items() if key in known})


def _streak(count: int, holds: bool) -> int:
    return count + 1 if holds else 0


def check_step(stop_when: StopWhen, state: GuardrailState, step: int, metrics: dict[str, float]) -> StopReason | None:
    """Update `state` with step `step`'s metrics (kl, reward_mean, zero_std_group_fraction, truncated_fraction) and
    say whether a train-side condition now ends the run."""
    kl = metrics.get("kl", 0.0)
    state.kl_streak = _streak(state.kl_streak, stop_when.kl_above is not None and kl > stop_when.kl_above)
    state.flat_streak = _streak(state.flat_streak, metrics.get("zero_std_group_fraction", 0.0) >= 1.0)
    state.truncated_streak = _streak(state.truncated_streak, metrics.get("truncated_fraction", 0.0) >= 1.0)
    reward = metrics.get("reward_mean", 0.0)
    if math.isfinite(reward):
        state.recent_rewards = [*state.recent_rewards, reward][-stop_when.reward_window :]
    average = None
    if len(state.recent_rewards) == stop_when.reward_window:
        average = sum(state.recent_rewards) / stop_when.reward_window
        if state.best_reward_average is None or average > state.best_reward_average:
            state.best_reward_average = average

    if stop_when.kl_above is not None and state.kl_streak >= stop_when.kl_steps:
        return StopReason(
            "kl_above",
            step,
            {"kl": kl, "kl_above": stop_when.kl_above, "steps": state.kl_streak},
            f"KL to the reference was above {stop_when.kl_above:g} for {state.kl_streak} steps in a row (now {kl:.4g})",
        )
    best = state.best_reward_average
    if stop_when.reward_drop is not None and average is not None and best is not None:
        if average < best - stop_when.reward_drop:
            return StopReason(
                "reward_drop",
                step,
                {"reward_average": average, "best_reward_average": best, "reward_drop": stop_when.reward_drop},
                f"the train reward's {stop_when.reward_window}-step average fell to {average:.4g}, more than "
                f"{stop_when.reward_drop:g} below its best ({best:.4g})",
            )
    if stop_when.flat_steps is not None and state.flat_streak >= stop_when.flat_steps:
        return StopReason(
            "flat_steps",
            step,
            {"zero_std_group_fraction": metrics.get("zero_std_group_fraction", 0.0), "steps": state.flat_streak},
            f"every group gave all its completions the same reward for {state.flat_streak} steps in a row: "
            "nothing is left to learn from",
        )
    if stop_when.truncated_steps is not None and state.truncated_streak >= stop_when.truncated_steps:
        return StopReason(
            "truncated_steps",
            step,
            {"truncated_fraction": metrics.get("truncated_fraction", 0.0), "steps": state.truncated_streak},
            f"every completion ran to max_new_tokens without ending for {state.truncated_streak} steps in a row",
        )
    return None


def check_eval(
    stop_when: StopWhen, state: GuardrailState, step: int, metrics: dict[str, float]
) -> tuple[bool, StopReason | None]:
    """Update `state` with the evaluation at step `step`. Returns whether it is the best so far (its adapter is
    then the one to keep), and whether eval_patience now ends the run."""
    value = metrics.get(stop_when.eval_metric)
    if value is None or not math.isfinite(value):
        return False, None
    improved = state.best_eval is None or value > state.best_eval + stop_when.eval_min_delta
    if improved:
        state.best_eval, state.best_eval_step, state.evals_without_improvement = value, step, 0
    else:
        state.evals_without_improvement += 1
    patience = stop_when.eval_patience
    if patience is not None and state.evals_without_improvement >= patience:
        return improved, StopReason(
            "eval_patience",
            step,
            {
                stop_when.eval_metric: value,
                "best": state.best_eval or 0.0,
                "best_step": float(state.best_eval_step or 0),
            },
            f"{stop_when.eval_metric} did not improve on its best ({state.best_eval:.4g} at step "
            f"{state.best_eval_step}) for {state.evals_without_improvement} evaluations",
        )
    return improved, None
