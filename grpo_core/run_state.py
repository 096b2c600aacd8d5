"""The run's state across restarts: RunState (step, guardrail state, stop reason, best adapter), saved and restored
with the adapter, optimizer, scheduler and RNG in each checkpoint, and the check that a checkpoint belongs to this
run before it is resumed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from grpo_core.checkpoint import (
    Checkpoint,
    capture_rng_state,
    changed_files,
    list_checkpoints,
    load_trainer_state,
    remove_partial_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from grpo_core.checkpoint_layout import ADAPTER_WEIGHTS
from grpo_core.config import GRPOConfig, RewardSpec
from grpo_core.device import dtype_name
from grpo_core.distributed import World
from grpo_core.guardrails import GuardrailState, StopReason
from grpo_core.policy import Policy
from grpo_core.update import NonFiniteUpdate


class ResumeMismatch(ValueError):
    """The checkpoint to resume from was saved by a run with other settings: resuming would not continue it."""


@dataclass
class RunState:
    """Where a run stands, beyond its weights: what a resumed run must pick up to go on as if never stopped."""

    step: int = 0
    """Optimizer steps finished (a skipped non-finite step counts)."""
    guardrails: GuardrailState = field(default_factory=GuardrailState)
    """The stop_when conditions' running figures, the non-finite step count and the best evaluation so far."""
    stopped_by: StopReason | None = None
    """The guardrail that ended the run: a run a guardrail ended stays ended, and resuming it trains no further."""

    @property
    def best_adapter_step(self) -> int | None:
        """The step of the best evaluation so far (its checkpoint is the run's adapter when stop_when keeps it)."""
        return self.guardrails.best_eval_step

    def count_non_finite_step(self, error: NonFiniteUpdate, limit: int) -> int:
        """Count a step skipped for an update that was not finite; the limit-th raises NonFiniteUpdate (the run
        fails). Returns the count."""
        self.guardrails.non_finite_steps += 1
        count = self.guardrails.non_finite_steps
        if count >= limit:
            raise NonFiniteUpdate(
                f"{error}; {count} steps were not finite (stop_when.max_non_finite_steps is {limit})"
            ) from None
        return count

    def to_dict(self) -> dict[str, Any]:
        # Top-level keys of the trainer state, as checkpoints have always held them, so old checkpoints resume.
        return {
            "step": self.step,
            "guardrails": self.guardrails.to_dict(),
            "stopped_by": self.stopped_by.to_dict() if self.stopped_by else None,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> RunState:
        """From a checkpoint's trainer state; one saved before guardrails existed has none of theirs."""
        stopped_by = state.get("stopped_by")
        return cls(
            step=state["step"],
            guardrails=GuardrailState.from_dict(state.get("guardrails")),
            stopped_by=StopReason(**stopped_by) if stopped_by else None,
        )


def run_settings(base_model: str, rewards: Sequence[RewardSpec], dtype: torch.dtype) -> dict[str, Any]:
    """What, besides the hyperparameters, makes a checkpoint belong to a run."""
    return {
        "base_model": base_model,
        "rewards": [{"name": s.name, "weight": s.weight, "params": dict(s.params)} for s in rewards],
        # dtype "auto" is float32 on a CPU and bfloat16 on most GPUs: what was trained is the resolved one.
        "dtype": dtype_name(dtype),
    }


def check_resumable(
    checkpoint: Checkpoint, state: dict[str, Any], config: GRPOConfig, settings: dict[str, Any]
) -> None:
    """Raise ResumeMismatch naming the hyperparameters and run settings (run_settings) the checkpoint was saved
    with that differ from this run's."""
    differences = config.training_differences(state["config"])
    # Checkpoints from before the dtype was recorded were all trained in float32.
    saved_run = {"dtype": "float32", **state.get("run", {})}
    differences += [key for key, value in settings.items() if saved_run.get(key, value) != value]
    differences = list(dict.fromkeys(differences))  # dtype can differ both as asked and as resolved
    if differences:
        raise ResumeMismatch(
            f"cannot resume from the checkpoint at step {checkpoint.step}: it was saved with other "
            f"{', '.join(differences)}; run with the settings it was saved with, or in a new output folder"
        )


class RunCheckpoints:
    """A run's checkpoint folder: each checkpoint holds the adapter, the optimizer, scheduler and RNG, the RunState,
    and the hyperparameters and run settings a resume checks. Rank 0 writes (and calls on_checkpoint); every rank
    reads the same checkpoint to resume."""

    def __init__(
        self,
        folder: Path,
        *,
        config: GRPOConfig,
        settings: dict[str, Any],
        device: torch.device,
        world: World,
        on_checkpoint: Callable[[Checkpoint], None],
    ):
        self.folder, self.config, self.settings, self.device = folder, config, settings, device
        self.world, self.on_checkpoint = world, on_checkpoint

    def clean(self) -> None:
        """Remove what a save cut short left behind, before any rank looks for a checkpoint."""
        if self.world.is_main:
            remove_partial_checkpoints(self.folder)
        self.world.barrier()

    def latest_sound(self, warn: Callable[[str], None]) -> Checkpoint | None:
        """The newest checkpoint whose every file still has the sha256 its manifest recorded; a newer one that does
        not is skipped with a warning (the disk or a copy damaged it), so training goes on from the one before."""
        for checkpoint in reversed(list_checkpoints(self.folder)):
            changed = changed_files(checkpoint)
            if not changed:
                return checkpoint
            warn(
                f"checkpoint at step {checkpoint.step} is corrupt ({', '.join(changed)} no longer match the sha256 "
                "saved with it); resuming from the checkpoint before it"
            )
        return None

    def save(self, run: RunState, policy: Policy) -> Checkpoint | None:
        """A checkpoint of `run` at run.step (None on ranks other than 0: they read the folder rank 0 writes)."""
        if not self.world.is_main:
            return None
        state = {
            **run.to_dict(),
            "optimizer": policy.optimizer.state_dict(),
            "scheduler": policy.scheduler.state_dict(),
            "rng": capture_rng_state(self.device),
            "config": self.config.to_dict(),
            "run": self.settings,
        }
        checkpoint = save_checkpoint(self.folder, run.step, policy.model, state)
        self.on_checkpoint(checkpoint)
        return checkpoint

    def restore(self, checkpoint: Checkpoint, policy: Policy) -> RunState:
        """Load `checkpoint` into `policy` (adapter, optimizer, scheduler) and the RNG, after check_resumable;
        returns its RunState."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = load_trainer_state(checkpoint)
        check_resumable(checkpoint, state, self.config, self.settings)
        set_peft_model_state_dict(policy.model, load_file(checkpoint.path / ADAPTER_WEIGHTS))
        policy.optimizer.load_state_dict(state["optimizer"])
        policy.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"], self.device)
        return RunState.from_dict(state)

    def adapter(self, last: Checkpoint | None, best_step: int | None) -> Checkpoint:
        """The run's adapter: the checkpoint of best_step when given and saved, else `last` (the newest on disk on
        ranks that saved none)."""
        checkpoints = list_checkpoints(self.folder)
        adapter = last or checkpoints[-1]
        if best_step is not None:
            adapter = next((c for c in checkpoints if c.step == best_step), adapter)
        return adapter
