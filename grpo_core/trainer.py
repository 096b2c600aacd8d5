"""The GRPO training loop: sample, score, advantages, loss, step, report; checkpoints and exact resume.

Each piece is a function callable alone (with a tiny model in a test); `GRPOTrainer` only wires them together
and owns the state that must survive a restart (adapter, optimizer, scheduler, RNG, step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from grpo_core.algorithms import compute_group_advantages, compute_policy_loss, zero_std_group_fraction
from grpo_core.checkpoint import (
    Checkpoint,
    capture_rng_state,
    latest_checkpoint,
    load_trainer_state,
    remove_partial_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from grpo_core.config import GRPOConfig, LoraSettings, RewardSpec
from grpo_core.data import dataset_fields, render_prompt, rows_for_step
from grpo_core.models import load_base_model
from grpo_core.packed_linear import pack_frozen_linears
from grpo_core.rewards import RewardFunction, resolve_rewards, score_completions
from grpo_core.sampling import SampleBatch, completion_logprobs, sample_groups

ResolvedRewards = list[tuple[RewardFunction, Any, float]]


class TrainerCallback:
    """Hooks the trainer calls as it goes; override what you need. Exceptions propagate and stop the run."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    def should_stop(self) -> bool:
        """Checked between steps: True ends the run cooperatively after saving a checkpoint."""
        return False


@dataclass
class TrainResult:
    final_step: int
    stopped_early: bool
    adapter_dir: Path  # the last checkpoint's folder, loadable with PeftModel.from_pretrained
    last_metrics: dict[str, float] = field(default_factory=dict)


# --- pieces -------------------------------------------------------------------------------------------------------


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
    """Wrap `model` in a fresh LoRA adapter; only the adapter weights train. The LoRA A matrices are initialised
    from `seed`, so the same seed starts from the same adapter. On a CPU the frozen base linears then compute with
    oneDNN-packed copies of their weights (grpo_core/packed_linear.py)."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    policy = get_peft_model(model, peft_lora_config(lora))
    # The base weights stay frozen from here on, so on a CPU their products can use a packed copy (faster).
    pack_frozen_linears(policy)
    return policy


def reuse_freed_memory() -> bool:
    """Ask the C library's malloc to keep freed memory for reuse instead of handing it back to the kernel.

    A step allocates and frees about a gigabyte of activations and logits. By default glibc maps each large block
    fresh and unmaps it when freed, so every step faults all of it back in: 70-90k page faults, 0.4 s of a 7 s
    step here (benchmarks/README.md). With mapping and trimming off, later steps reuse the heap with no faults,
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


def learning_rate_at(step: int, config: GRPOConfig) -> float:
    """Multiplier of the base learning rate for the update at 0-based `step`: linear warmup, then constant or
    cosine decay to 0 at max_steps."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    if config.lr_schedule == "constant":
        return 1.0
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model, config: GRPOConfig):
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_at(step, config))
    return optimizer, scheduler


def decode_completions(tokenizer, batch: SampleBatch) -> list[str]:
    """The text of each completion up to its first EOS, without special tokens."""
    lengths = batch.completion_mask.sum(dim=1).tolist()
    return [
        tokenizer.decode(ids[:length], skip_special_tokens=True)
        for ids, length in zip(batch.completion_ids, lengths, strict=True)
    ]


def reference_logprobs(model, batch: SampleBatch, temperature: float) -> torch.Tensor:
    """Log-probs under the reference policy: the same weights with the LoRA adapter switched off."""
    with torch.no_grad(), model.disable_adapter():
        return completion_logprobs(model, batch, temperature)


def grpo_step(
    model,
    tokenizer,
    optimizer,
    rows: Sequence[Mapping[str, Any]],
    rewards: ResolvedRewards,
    config: GRPOConfig,
) -> dict[str, float]:
    """One training step on `rows` (P prompts): sample G completions each, score, advantages, num_iterations
    clipped updates. Returns the step's metrics. The caller steps the learning-rate scheduler."""
    started = time.perf_counter()
    group_size = config.group_size
    prompts = [render_prompt(row, tokenizer) for row in rows]
    batch = sample_groups(
        model,
        tokenizer,
        prompts,
        group_size=group_size,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
    )
    sampled = time.perf_counter()
    group_rows = [row for row in rows for _ in range(group_size)]
    scores = score_completions(decode_completions(tokenizer, batch), group_rows, rewards)
    advantages = compute_group_advantages(scores.rewards, group_size, config.scale_rewards)

    with torch.no_grad():
        # With one update per sample the sampling policy is the current one: its log-probs need no extra pass.
        old_logprobs = completion_logprobs(model, batch, config.temperature) if config.num_iterations > 1 else None
    ref_logprobs = reference_logprobs(model, batch, config.temperature) if config.beta > 0 else None

    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for _ in range(config.num_iterations):
        logprobs = completion_logprobs(model, batch, config.temperature)
        output = compute_policy_loss(
            logprobs,
            old_logprobs,
            ref_logprobs,
            advantages,
            batch.completion_mask,
            epsilon=config.epsilon,
            epsilon_high=config.epsilon_high,
            beta=config.beta,
            loss_type=config.loss_type,
            max_completion_length=config.max_new_tokens,
        )
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm).item()
        optimizer.step()

    lengths = batch.completion_mask.sum(dim=1).float()
    generated_tokens = lengths.sum().item()
    finished = time.perf_counter()
    metrics = {
        "reward_mean": scores.rewards.mean().item(),
        "reward_std": scores.rewards.std().item(),
        **{f"reward/{fn.name}": scores.per_function[:, j].mean().item() for j, (fn, _p, _w) in enumerate(rewards)},
        "reward_errors": float(scores.errors),
        "zero_std_group_fraction": zero_std_group_fraction(scores.rewards, group_size),
        "advantage_mean": advantages.mean().item(),
        "advantage_std": advantages.std().item(),
        "advantage_max": advantages.max().item(),
        "advantage_min": advantages.min().item(),
        **output.metrics,
        "completion_length_mean": lengths.mean().item(),
        "completion_length_max": lengths.max().item(),
        "truncated_fraction": batch.truncated.float().mean().item(),
        "learning_rate": optimizer.param_groups[0]["lr"],
        "grad_norm": grad_norm,
        "step_seconds": finished - started,
        "sampling_seconds": sampled - started,
        "generated_tokens_per_second": generated_tokens / max(sampled - started, 1e-9),
    }
    if config.beta == 0:
        metrics.setdefault("kl", 0.0)
    return metrics


@torch.no_grad()
def evaluate(
    model, tokenizer, rows: Sequence[Mapping[str, Any]], rewards: ResolvedRewards, config: GRPOConfig
) -> dict[str, float]:
    """Mean reward on held-out rows: sampled (eval_samples_per_prompt each, at the training temperature) and
    greedy. Runs on its own RNG stream, so evaluating never changes what training samples next."""
    prompts = [render_prompt(row, tokenizer) for row in rows]
    results = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        for name, greedy, samples in (("sampled", False, config.eval_samples_per_prompt), ("greedy", True, 1)):
            batch = sample_groups(
                model,
                tokenizer,
                prompts,
                group_size=samples,
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                greedy=greedy,
            )
            group_rows = [row for row in rows for _ in range(samples)]
            scores = score_completions(decode_completions(tokenizer, batch), group_rows, rewards)
            results[f"eval_reward_{name}"] = scores.rewards.mean().item()
    return results


# --- the loop -------------------------------------------------------------------------------------------------------


class GRPOTrainer:
    """Runs GRPO with a LoRA adapter on `base_model` over `train_rows`, writing checkpoints to output_dir.

    The reward specs are checked against the dataset before any model is loaded.
    """

    def __init__(
        self,
        *,
        base_model: str,
        train_rows: Sequence[Mapping[str, Any]],
        rewards: Sequence[RewardSpec],
        config: GRPOConfig,
        output_dir: str | Path,
        eval_rows: Sequence[Mapping[str, Any]] = (),
        callbacks: Sequence[TrainerCallback] = (),
        cache_dir: str | Path | None = None,
    ):
        if not train_rows:
            raise ValueError("the training dataset is empty")
        self.rewards = resolve_rewards(list(rewards), dataset_fields([*train_rows, *eval_rows]))
        self.base_model = base_model
        self.train_rows = list(train_rows)
        self.eval_rows = list(eval_rows)
        self.config = config
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.callbacks = list(callbacks)
        self.cache_dir = cache_dir
        # Built by setup(): kept out of __init__ so a bad spec is refused before any model is loaded.
        self.model: Any = None
        self.tokenizer: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None

    def setup(self) -> None:
        reuse_freed_memory()
        torch.manual_seed(self.config.seed)
        base, self.tokenizer = load_base_model(self.base_model, self.cache_dir)
        self.model = add_lora(base, self.config.lora, self.config.seed)
        self.optimizer, self.scheduler = make_optimizer(self.model, self.config)

    def _restore(self, checkpoint: Checkpoint) -> int:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(checkpoint.path / "adapter_model.safetensors"))
        state = load_trainer_state(checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        return state["step"]

    def _save(self, step: int) -> Checkpoint:
        state = {
            "step": step,
            "data_position": step * self.config.prompts_per_step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(),
            "config": self.config.to_dict(),
        }
        checkpoint = save_checkpoint(self.checkpoint_dir, step, self.model, state)
        for callback in self.callbacks:
            callback.on_checkpoint(checkpoint)
        return checkpoint

    def _evaluate(self, step: int) -> None:
        if not self.eval_rows or self.config.eval_every == 0:
            return
        metrics = evaluate(self.model, self.tokenizer, self.eval_rows, self.rewards, self.config)
        for callback in self.callbacks:
            callback.on_eval(step, metrics)

    def train(self, resume: bool = False) -> TrainResult:
        """Train to max_steps. resume=True continues from the latest complete checkpoint in output_dir (from step
        0 when there is none), giving the same adapter as a run that never stopped."""
        if self.model is None:
            self.setup()
        config = self.config
        remove_partial_checkpoints(self.checkpoint_dir)
        checkpoint = latest_checkpoint(self.checkpoint_dir) if resume else None
        step = self._restore(checkpoint) if checkpoint else 0
        if step == 0:
            self._evaluate(0)
        metrics: dict[str, float] = {}
        stopped_early = False
        while step < config.max_steps:
            if any(callback.should_stop() for callback in self.callbacks):
                stopped_early = True
                break
            indices = rows_for_step(len(self.train_rows), step, config.prompts_per_step, config.seed)
            metrics = grpo_step(
                self.model, self.tokenizer, self.optimizer, [self.train_rows[i] for i in indices], self.rewards, config
            )
            self.scheduler.step()
            step += 1
            for callback in self.callbacks:
                callback.on_step(step, metrics)
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.max_steps:
                checkpoint = self._save(step)
            if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
                self._evaluate(step)
        if checkpoint is None or checkpoint.step != step:
            checkpoint = self._save(step)
        if not stopped_early:
            self._evaluate(step)
        return TrainResult(step, stopped_early, checkpoint.path, metrics)
