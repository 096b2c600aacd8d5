"""Learning parity with TRL: the same task, seeds and hyperparameters, held-out reward after N steps for both.

    .venv/bin/python benchmarks/parity.py --seeds 0 1 2 --steps 40      (make bench-parity; needs the bench extra)

The task is the bundled demo (single-digit addition, reward 1 when the last number in the answer is the sum);
both trainers see the same 80 training prompts, rendered by the same chat template, and are scored by the same
reward code. Both trained policies are evaluated by the same function (grpo_core.evaluate) on the same 20
held-out prompts: sampled at temperature 1 (4 samples each) and greedy. The trainers draw their prompts and
samples from their own random streams, so the runs differ in detail; the spread over seeds says how much.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from trl_side import train_trl

from grpo_core import GRPOConfig, GRPOTrainer, LoraSettings, RewardSpec, TrainerCallback, arithmetic_task, evaluate
from grpo_core.data import dataset_fields, render_prompt
from grpo_core.models import load_tokenizer
from grpo_core.rewards import resolve_rewards

REWARDS = [RewardSpec("numeric_answer")]


class Evaluations(TrainerCallback):
    def __init__(self):
        self.results: list[dict[str, float]] = []

    def on_eval(self, step, metrics):
        self.results.append(metrics)


def run_ours(model: str, train_rows, eval_rows, config: GRPOConfig) -> tuple[dict, dict, float]:
    evaluations = Evaluations()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as output_dir:
        GRPOTrainer(
            base_model=model,
            train_rows=train_rows,
            eval_rows=eval_rows,
            rewards=REWARDS,
            config=config,
            output_dir=output_dir,
            callbacks=[evaluations],
        ).train()
    return evaluations.results[0], evaluations.results[-1], time.perf_counter() - started


def run_trl(model: str, train_rows, eval_rows, config: GRPOConfig) -> tuple[dict, float]:
    tokenizer = load_tokenizer(model)
    rendered = [{**row, "prompt": render_prompt(row, tokenizer)} for row in train_rows]
    started = time.perf_counter()
    trainer = train_trl(model, rendered, REWARDS, config)
    wall = time.perf_counter() - started
    rewards = resolve_rewards(REWARDS, dataset_fields(eval_rows))
    return evaluate(trainer.model, tokenizer, eval_rows, rewards, config), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()

    train_rows, eval_rows = arithmetic_task()
    lines = []
    for seed in args.seeds:
        config = GRPOConfig(
            max_steps=args.steps, seed=seed, eval_every=args.steps, checkpoint_every=0, lora=LoraSettings()
        )
        before, ours, ours_wall = run_ours(args.model, train_rows, eval_rows, config)
        trl, trl_wall = run_trl(args.model, train_rows, eval_rows, config)
        lines.append((seed, before, ours, trl, ours_wall, trl_wall))
        print(
            f"seed {seed}: before {before['eval_reward_sampled']:.3f}, ours {ours['eval_reward_sampled']:.3f} "
            f"({ours_wall / 60:.1f} min), TRL {trl['eval_reward_sampled']:.3f} ({trl_wall / 60:.1f} min)",
            flush=True,
        )

    config = GRPOConfig()
    print(
        f"\n{args.model}, {args.steps} steps, G={config.group_size}, lr={config.learning_rate}, beta={config.beta}, "
        f"loss {config.loss_type}, LoRA r={config.lora.r} on {'/'.join(config.lora.target_modules)}, "
        f"{config.max_new_tokens} new tokens; held-out: {len(eval_rows)} prompts"
    )
    print("seed | before: sampled / greedy | ours: sampled / greedy | TRL: sampled / greedy | train min ours / TRL")
    for seed, before, ours, trl, ours_wall, trl_wall in lines:
        print(
            f"{seed:4d} | {before['eval_reward_sampled']:.3f} / {before['eval_reward_greedy']:.2f}"
            f"          | {ours['eval_reward_sampled']:.3f} / {ours['eval_reward_greedy']:.2f}"
            f"        | {trl['eval_reward_sampled']:.3f} / {trl['eval_reward_greedy']:.2f}"
            f"       | {ours_wall / 60:.1f} / {trl_wall / 60:.1f}"
        )
    for name, index in (("ours", 2), ("TRL", 3)):
        sampled = [line[index]["eval_reward_sampled"] for line in lines]
        greedy = [line[index]["eval_reward_greedy"] for line in lines]
        spread = statistics.stdev(sampled) if len(sampled) > 1 else 0.0
        print(
            f"{name:4s}: held-out sampled mean {statistics.mean(sampled):.3f} (stdev {spread:.3f}, "
            f"min {min(sampled):.3f}), greedy mean {statistics.mean(greedy):.3f}"
        )


if __name__ == "__main__":
    main()
