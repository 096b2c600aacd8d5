"""grpo_core: Group Relative Policy Optimization with a LoRA adapter, as plain functions over tensors.

No web, database, queue or settings code lives here: the service's worker, the `grpo train` command and the
tests all call the same pieces.
"""

from grpo_core.algorithms import aggregate_token_losses, compute_group_advantages, compute_policy_loss, k3_kl
from grpo_core.config import GRPOConfig, LoraSettings, RewardSpec
from grpo_core.data import DatasetError, arithmetic_task, load_jsonl, parse_jsonl
from grpo_core.models import CATALOG, ModelLoadError, load_base_model
from grpo_core.rewards import RewardSpecError, resolve_rewards, reward_registry, score_completions
from grpo_core.trainer import GRPOTrainer, TrainerCallback, TrainResult, evaluate, grpo_step

__all__ = [
    "CATALOG",
    "DatasetError",
    "GRPOConfig",
    "GRPOTrainer",
    "LoraSettings",
    "ModelLoadError",
    "RewardSpec",
    "RewardSpecError",
    "TrainResult",
    "TrainerCallback",
    "aggregate_token_losses",
    "arithmetic_task",
    "compute_group_advantages",
    "compute_policy_loss",
    "evaluate",
    "grpo_step",
    "k3_kl",
    "load_base_model",
    "load_jsonl",
    "parse_jsonl",
    "resolve_rewards",
    "reward_registry",
    "score_completions",
]
