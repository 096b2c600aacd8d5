"""TrainerCallback, the hooks a run reports through, and how the trainer calls them (CallbackList).

Stopping mid-step: a callback's stop_requested() is read before each decoded token, at each poll of the reward
processes while rewards score, and between the rollout and the update. When it says stop, the step in progress is
abandoned (its RNG draws undone) and the run ends as if should_stop() had said so before it: a checkpoint of the last finished
step is saved. The update itself (the optimizer steps of a step) is never interrupted, so no checkpoint holds a
half-updated adapter. A stop therefore takes effect within one decoded token's forward pass, or one poll while
rewards score, or, when it arrives during the log-prob passes, after them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpo_core.checkpoint import Checkpoint
from grpo_core.distributed import World


class TrainerCallback:
    """Hooks the trainer calls as it goes; override what you need. Exceptions propagate and stop the run."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    def on_warning(self, message: str) -> None:
        """Something the user should know that did not stop the run (a corrupt checkpoint skipped on resume, a step
        where a reward failed on some samples)."""

    def on_samples(self, step: int, samples: list[dict[str, Any]], outputs: dict[str, str]) -> None:
        """After on_step: the step's first sample_groups_per_step groups, one dict per completion: {"group",
        "index" (within the group), "prompt" (the row's prompt string or messages), "completion", "reward" (the
        weighted sum), "advantage", "scores": {reward: value}, "errors": {reward: message} (failed ones only)}.
        outputs: reward name -> what it printed during the step (tenant rewards that printed anything). Strings
        are cut at report.SAMPLE_TEXT_CHARS with a marker."""

    def on_prompt_groups(self, step: int, groups: list[dict[str, Any]]) -> None:
        """After on_step: every group the step sampled, in draw order (with dynamic_sampling also those it dropped,
        and those of every round), one dict each: {"row": the row's index in train_rows, "rewards": [G weighted
        rewards]}. What per-prompt difficulty is built from."""

    def should_stop(self) -> bool:
        """Checked between steps: True ends the run cooperatively after saving a checkpoint."""
        return False

    def stop_requested(self) -> bool:
        """Checked often while a step runs (before each decoded token, at each poll while rewards score): read a
        flag here, nothing slower. True abandons the step in progress and ends the run as should_stop() does."""
        return False


class StepAbandoned(Exception):
    """A callback's stop_requested() said stop while a step was collecting its rollout; nothing was applied."""


class CallbackList:
    """A run's callbacks as the trainer calls them: every rank reads the stop hooks; only rank 0 calls the ones that
    write (on_step, on_eval, on_checkpoint, on_warning, on_samples, on_prompt_groups).

    With several ranks a stop requested mid-step is noted and acted on when the ranks next agree (between steps):
    a rank that left a step alone would leave the others waiting in a collective."""

    def __init__(self, callbacks: Sequence[TrainerCallback], world: World):
        self.callbacks = list(callbacks)
        self.writers = self.callbacks if world.is_main else []
        self.world = world
        self.stop_seen = False  # a stop requested mid-step on a rank of several, acted on between steps

    def check_stop(self) -> None:
        """Within a step: raise StepAbandoned when a callback asks to stop (on one process)."""
        if any(callback.stop_requested() for callback in self.callbacks):
            if self.world.size > 1:
                self.stop_seen = True
                return
            raise StepAbandoned("stop requested")

    def stop_agreed(self) -> bool:
        """Between steps: whether any rank was asked to stop (every rank gets the same answer)."""
        stop = self.stop_seen or any(callback.should_stop() for callback in self.callbacks)
        return self.world.any(stop)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        for callback in self.writers:
            callback.on_step(step, metrics)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        for callback in self.writers:
            callback.on_eval(step, metrics)

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        for callback in self.writers:
            callback.on_checkpoint(checkpoint)

    def on_warning(self, message: str) -> None:
        for callback in self.writers:
            callback.on_warning(message)

    def on_samples(self, step: int, samples: list[dict[str, Any]], outputs: dict[str, str]) -> None:
        for callback in self.writers:
            callback.on_samples(step, samples, outputs)

    def on_prompt_groups(self, step: int, groups: list[dict[str, Any]]) -> None:
        for callback in self.writers:
            callback.on_prompt_groups(step, groups)
