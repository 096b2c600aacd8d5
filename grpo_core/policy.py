"""The policy a run trains: a LoRA adapter on the frozen base model, its AdamW optimizer and learning-rate schedule,
and the process settings a training process wants (reuse_freed_memory). Built once by GRPOTrainer.setup."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpo_core.config import GRPOConfig, LoraSettings
from grpo_core.models import load_base_model
from grpo_core.packed_linear import pack_frozen_linears


@dataclass
class Policy:
    """What a step trains: the adapted model, its tokenizer, and the optimizer and scheduler of its LoRA weights."""

    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def load_policy(
    base_model: str,
    config: GRPOConfig,
    device: torch.device,
    dtype: torch.dtype,
    *,
    cache_dir: str | Path | None = None,
    models_file: str | Path | None = None,
) -> Policy:
    """The base model in `dtype` on `device` with a fresh LoRA adapter (from config.seed), and its optimizer."""
    if device.type == "cpu":
        reuse_freed_memory()  # a CPU run's activations come from malloc; a GPU's do not
    torch.manual_seed(config.seed)  # seeds every CUDA device's generator too
    base, tokenizer = load_base_model(base_model, cache_dir, dtype=dtype, models_file=models_file)
    model = add_lora(base.to(device), config.lora, config.seed)
    optimizer, scheduler = make_optimizer(model, config)
    return Policy(model, tokenizer, optimizer, scheduler)


def peft_lora_config(lora: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


def add_lora(model, lora: LoraSettings, seed: int):
    """Wrap `model` in a fresh LoRA adapter; only the adapter weights train, in float32 whatever the base's dtype.
    The LoRA A matrices are initialised from `seed`, so the same seed starts from the same adapter. On a CPU the
    frozen float32 base linears then compute with oneDNN-packed copies of their weights
    (grpo_core/packed_linear.py)."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    policy = get_peft_model(model, peft_lora_config(lora))
    # A bfloat16 base keeps float32 adapter weights, so AdamW's state is float32 too: bfloat16's 8-bit mantissa
    # rounds an update smaller than 1/256 of a weight to nothing, and AdamW's steps are about learning_rate in
    # size. peft computes the LoRA branch in the adapter's dtype and casts the result back to the base's.
    for param in policy.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    # The base weights stay frozen from here on, so on a CPU their products can use a packed copy (faster).
    pack_frozen_linears(policy)
    return policy


def reuse_freed_memory() -> bool:
    """Ask the C library's malloc to keep freed memory for reuse instead of handing it back to the kernel.

    A step allocates and frees about a gigabyte of activations and logits. By default glibc maps each large block
    fresh and unmaps it when freed, so every step faults all of it back in (benchmarks/README.md has the count
    and its cost). With mapping and trimming off, later steps reuse the heap with no faults,
    and the peak RSS measured no higher. Process-wide, so the trainer's setup calls it: its process trains (a
    worker, `grpo train`). Returns False where there is no glibc mallopt."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


# Learning-rate schedules by the name GRPOConfig.lr_schedule takes (config.LR_SCHEDULES, held equal by a test):
# each maps the progress through the updates after warmup, 0 to 1, to a multiplier of the base rate.
LR_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda progress: 1.0,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))),
}


def learning_rate_at(update: int, config: GRPOConfig) -> float:
    """Multiplier of the base learning rate for the 0-based optimizer update `update`. Updates are counted as TRL
    counts them: num_iterations per step, so a run makes max_steps x num_iterations of them. Linear warmup over
    warmup_steps updates, then the schedule: constant, or cosine decay to 0 at the last update."""
    if update < config.warmup_steps:
        return (update + 1) / (config.warmup_steps + 1)
    total_updates = config.max_steps * config.num_iterations
    progress = (update - config.warmup_steps) / max(1, total_updates - config.warmup_steps)
    return LR_SCHEDULES[config.lr_schedule](progress)


def make_optimizer(model, config: GRPOConfig):
    """AdamW over the trainable (LoRA) weights, and a scheduler to step once per optimizer update."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: learning_rate_at(update, config))
    return optimizer, scheduler
