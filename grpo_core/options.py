"""TrainerOptions: how this machine runs a training job, apart from the job's own hyperparameters (GRPOConfig).

The service's worker builds one from its settings (worker/runner.py trainer_options), the `grpo train` command from its flags, and
tests and benchmarks use the defaults. Frozen, so a trainer and its parts read the same values all run long.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from grpo_core.sandbox import SandboxLimits

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TrainerOptions:
    device: str | torch.device = "auto"
    """Where the run computes (grpo_core.device.resolve_device: auto, cpu, cuda, cuda:N)."""
    cache_dir: str | Path | None = None
    """Where downloaded base models are kept (None: the Hugging Face default)."""
    models_file: str | Path | None = None
    """An operator's model catalog added to the built-in one (grpo_core.catalog)."""
    reward_timeout_seconds: float = 60.0
    """Longest one built-in or plugin reward call may take before the run fails with RewardTimeout."""
    sandbox_limits: SandboxLimits | None = None
    """Limits of a tenant reward's sandbox; None: the defaults, with reward_timeout_seconds per call."""
    max_reward_failure_fraction: float = 0.5
    """A step where more than this fraction of the samples failed for one reward ends the run."""
    sample_groups_per_step: int = 2
    """How many groups of each step go to TrainerCallback.on_samples (0: none)."""

    @property
    def sandbox(self) -> SandboxLimits:
        """The tenant rewards' sandbox limits as they apply."""
        return self.sandbox_limits or SandboxLimits(timeout_seconds=self.reward_timeout_seconds)


DEFAULT_OPTIONS = TrainerOptions()
"""The defaults: what tests, benchmarks and a plain GRPOTrainer use."""
