"""grpo_core: Group Relative Policy Optimization with a LoRA adapter, as plain functions over tensors.

No web, database, queue or settings code lives here: the service's worker, the `grpo train` command and the
tests all call the same pieces.

Names are imported on first use (PEP 562), so `import grpo_core.config` or `grpo_core.spec` (what the API
validates specs with) never loads torch or transformers; `from grpo_core import GRPOTrainer` does.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "aggregate_token_losses": "algorithms",
    "compute_group_advantages": "algorithms",
    "compute_policy_loss": "algorithms",
    "k3_kl": "algorithms",
    "loss_normaliser": "algorithms",
    "ForkPoint": "checkpoint",
    "GRPOConfig": "config",
    "LoraSettings": "config",
    "RewardSpec": "config",
    "DatasetError": "data",
    "arithmetic_task": "data",
    "load_jsonl": "data",
    "parse_jsonl": "data",
    "CATALOG": "models",
    "ModelLoadError": "models",
    "load_base_model": "models",
    "RewardSpecError": "rewards",
    "resolve_rewards": "rewards",
    "reward_registry": "rewards",
    "score_completions": "rollout",
    "SandboxLimits": "sandbox",
    "RewardScorer": "scoring",
    "TrainerCallback": "callbacks",
    "TrainerOptions": "options",
    "PromptDraw": "schedule",
    "prompt_draw": "schedule",
    "evaluate": "evaluation",
    "grpo_step": "step",
    "GRPOTrainer": "trainer",
    "TrainResult": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'grpo_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"grpo_core.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
