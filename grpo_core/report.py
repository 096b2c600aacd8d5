"""What a finished step hands its callbacks besides its metrics: warnings for rewards that failed on some samples,
the groups it drew (on_prompt_groups) and its first groups of samples (on_samples)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from grpo_core.callbacks import CallbackList
from grpo_core.config import GRPOConfig
from grpo_core.data import reward_prompt
from grpo_core.distributed import World
from grpo_core.rollout import ResolvedRewards, Rollout, Scores, gather_scores
from grpo_core.schedule import drawn_indices

SAMPLE_TEXT_CHARS = 16 * 1024  # a stored sample's prompt strings and completion, and a step's output per reward


def reward_warnings(scores: Scores, rewards: ResolvedRewards) -> list[str]:
    """One message per reward that failed on some samples: the count and its first error."""
    total = scores.per_function.shape[0]
    return [
        f"reward {fn.name!r} failed on {count} of {total} samples (scored 0); first error: "
        + next(error for error in errors if error is not None)
        for (fn, _params, _weight), count, errors in zip(
            rewards, scores.function_errors, scores.error_messages, strict=True
        )
        if count
    ]


def _cut(text: str, limit: int, what: str = "") -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[{what}truncated: {len(text) - limit} more characters]"


def step_samples(
    rollout: Rollout, rows: Sequence[Mapping[str, Any]], rewards: ResolvedRewards, groups: int
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """What TrainerCallback.on_samples gets for the first `groups` groups of a rollout over `rows`: a dict per
    completion, and what each reward printed (non-empty outputs only)."""
    scores, group_size = rollout.samples.scores, rollout.batch.group_size
    names = [fn.name for fn, _params, _weight in rewards]
    samples = []
    for group, row in enumerate(rows[:groups]):
        prompt = reward_prompt(row)
        if isinstance(prompt, str):
            prompt = _cut(prompt, SAMPLE_TEXT_CHARS)
        else:
            prompt = [{**message, "content": _cut(message["content"], SAMPLE_TEXT_CHARS)} for message in prompt]
        for index in range(group_size):
            i = group * group_size + index
            samples.append(
                {
                    "group": group,
                    "index": index,
                    "prompt": prompt,
                    "completion": _cut(rollout.samples.completions[i], SAMPLE_TEXT_CHARS),
                    "reward": scores.rewards[i].item(),
                    "advantage": rollout.advantages[i].item(),
                    "scores": {name: scores.per_function[i, j].item() for j, name in enumerate(names)},
                    "errors": {
                        name: scores.error_messages[j][i]
                        for j, name in enumerate(names)
                        if scores.error_messages[j][i] is not None
                    },
                }
            )
    outputs = {
        name: _cut(output, SAMPLE_TEXT_CHARS, "output ")
        for name, output in zip(names, scores.outputs, strict=True)
        if output
    }
    return samples, outputs


def drawn_groups(
    drawn_indices: Sequence[Sequence[int]], rollout: Rollout, group_size: int, world: World
) -> list[dict[str, Any]]:
    """on_prompt_groups' list for a step: each drawn row's index with its group's rewards, over every rank (in rank
    order, so in step order). drawn_indices: this rank's row indices of each sampling round (schedule.drawn_indices),
    one list per entry of rollout.drawn_rewards."""
    local = [
        {"row": row, "rewards": rewards}
        for indices, round_rewards in zip(drawn_indices, rollout.drawn_rewards, strict=True)
        for row, rewards in zip(indices, round_rewards.view(-1, group_size).tolist(), strict=True)
    ]
    return [group for part in world.gather_objects(local) for group in part]


class StepReporter:
    """Hands each finished step to the callbacks (rank 0's; every rank calls it, since the figures are gathered
    over ranks): metrics, a warning per reward that failed on some samples, the groups it drew (on_prompt_groups),
    and its first sample_groups groups of samples (on_samples, none when 0)."""

    def __init__(
        self, callbacks: CallbackList, rewards: ResolvedRewards, config: GRPOConfig, num_rows: int, sample_groups: int
    ):
        self.callbacks, self.rewards, self.config = callbacks, rewards, config
        self.num_rows, self.sample_groups, self.world = num_rows, sample_groups, callbacks.world

    def __call__(self, step: int, metrics: dict[str, float], rollout: Rollout) -> None:
        """Report step `step` (1-based: the steps finished)."""
        world, callbacks = self.world, self.callbacks
        callbacks.on_step(step, metrics)
        for message in reward_warnings(gather_scores(world, rollout.samples.scores), self.rewards):
            callbacks.on_warning(f"step {step}: {message}")
        indices = drawn_indices(self.config, self.num_rows, step - 1, len(rollout.drawn_rewards), world)
        callbacks.on_prompt_groups(step, drawn_groups(indices, rollout, self.config.group_size, world))
        if self.sample_groups:
            samples, outputs = step_samples(rollout, list(rollout.rows), self.rewards, self.sample_groups)
            callbacks.on_samples(step, samples, outputs)
