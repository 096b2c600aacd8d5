"""TRL's GRPOTrainer set up to do the same work as ours: the same converted checkpoint, the same rendered prompts,
the same reward code and the same hyperparameters. Used by speed.py and parity.py; needs the `bench` extra.

Settings that TRL defaults differently from us and that would change the work are set explicitly: fp32 (TRL
defaults to bf16; bf16=True asks for it, as our dtype auto does on a GPU), no gradient checkpointing (TRL defaults
to on), constant learning rate, top_k off, one optimisation pass per generation batch. vllm=True generates with
vLLM inside the trainer's process (TRL's colocate mode: one process, sharing the GPU).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from grpo_core import GRPOConfig
from grpo_core.models import load_tokenizer, resolve_model_dir
from grpo_core.policy import peft_lora_config
from grpo_core.rewards import resolve_rewards
from grpo_core.rollout import score_completions


def reward_function(specs, rows: Sequence[Mapping[str, Any]]) -> Callable[..., list[float]]:
    """Our reward code behind TRL's reward-function signature (completions plus the dataset's columns)."""
    from grpo_core.data import dataset_fields

    fields = dataset_fields(rows)
    resolved = resolve_rewards(list(specs), fields)

    def reward(completions: list[str], **kwargs) -> list[float]:
        # TRL passes the dataset's columns as lists alongside other keywords (trainer_state, completion_ids).
        columns = {key: kwargs[key] for key in fields if isinstance(kwargs.get(key), list)}
        batch_rows = [{key: values[i] for key, values in columns.items()} for i in range(len(completions))]
        return score_completions(completions, batch_rows, resolved).rewards.tolist()

    reward.__name__ = "reward"
    return reward


def build_trl_trainer(
    model_name: str,
    rows: Sequence[Mapping[str, Any]],
    rewards,
    config: GRPOConfig,
    output_dir: str,
    callbacks: Sequence[Any] = (),
    *,
    bf16: bool = False,
    vllm: bool = False,
):
    """A TRL GRPOTrainer over `rows` (each with a `prompt` already rendered by our chat template)."""
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer as TRLTrainer

    model_dir = resolve_model_dir(model_name, None)
    tokenizer = load_tokenizer(model_name, None)
    # Colocated vLLM takes a fixed share of the GPU for its weights and KV cache, beside the training model.
    vllm_args = {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3} if vllm else {}
    args = TRLConfig(
        output_dir=output_dir,
        per_device_train_batch_size=config.group_size * config.prompts_per_step,
        num_generations=config.group_size,
        max_completion_length=config.max_new_tokens,
        beta=config.beta,
        epsilon=config.epsilon,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=0,
        num_iterations=config.num_iterations,
        max_steps=config.max_steps,
        seed=config.seed,
        bf16=bf16,
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False,
        model_init_kwargs={"dtype": torch.bfloat16 if bf16 else torch.float32},
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **vllm_args,
    )
    return TRLTrainer(
        model=str(model_dir),
        reward_funcs=[reward_function(rewards, rows)],
        args=args,
        train_dataset=Dataset.from_list([dict(row) for row in rows]),
        processing_class=tokenizer,
        peft_config=peft_lora_config(config.lora),  # the same adapter settings as ours
        callbacks=list(callbacks),
    )


def step_timer():
    """A transformers TrainerCallback recording each optimizer step's wall time and TRL's logged metrics."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self.logs: list[dict[str, float]] = []
            self._started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._started)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.logs.append(dict(logs))

    return StepTimer()


def train_trl(model_name, rows, rewards, config: GRPOConfig, callbacks: Sequence[Any] = ()):
    """Train with TRL for config.max_steps; returns the trainer (its .model is the PEFT-wrapped policy)."""
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trl_trainer(model_name, rows, rewards, config, output_dir, callbacks)
        trainer.train()
    return trainer
