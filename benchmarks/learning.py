"""Does GRPO teach the real model? Held-out reward before and after training on the demo task, over seeds.

    .venv/bin/python benchmarks/learning.py --seeds 0 1 2 --steps 60
    .venv/bin/python benchmarks/learning.py --seeds 0 --steps 40 --set importance_sampling_level=sequence \
        --set num_iterations=2 --set epsilon=3e-4 --set epsilon_high=4e-4      # GSPO

Trains SmolLM2-135M-Instruct on single-digit addition (reward 1 when the last number is the sum) and evaluates on
the 20 held-out pairs, never trained on: sampled at temperature 1 (eval_samples_per_prompt each) and greedy.
Prints one line per evaluation and a summary table with the spread over seeds. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from grpo_core import GRPOConfig, GRPOTrainer, LoraSettings, RewardSpec, TrainerCallback, arithmetic_task


class Recorder(TrainerCallback):
    def __init__(self, seed: int):
        self.seed = seed
        self.evals: list[tuple[int, dict]] = []
        self.started = time.perf_counter()

    def on_step(self, step, metrics):
        print(
            f"seed {self.seed} step {step:3d} reward {metrics['reward_mean']:.3f} zero-std {metrics['zero_std_group_fraction']:.2f} "
            f"len {metrics['completion_length_mean']:.1f} {metrics['step_seconds']:.2f}s",
            flush=True,
        )

    def on_eval(self, step, metrics):
        self.evals.append((step, metrics))
        print(
            f"seed {self.seed} step {step:3d} EVAL sampled {metrics['eval_reward_sampled']:.3f} "
            f"greedy {metrics['eval_reward_greedy']:.3f}  t={time.perf_counter() - self.started:.0f}s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=GRPOConfig.learning_rate)
    parser.add_argument("--max-new-tokens", type=int, default=GRPOConfig.max_new_tokens)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--loss-type", default="grpo")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other GRPOConfig field (VALUE read as JSON when it parses, else as a string); repeatable",
    )
    args = parser.parse_args()
    overrides = dict(_setting(item) for item in args.set)

    train_rows, eval_rows = arithmetic_task()
    summary = []
    for seed in args.seeds:
        config = GRPOConfig(
            group_size=args.group_size,
            max_steps=args.steps,
            learning_rate=args.learning_rate,
            max_new_tokens=args.max_new_tokens,
            loss_type=args.loss_type,
            beta=0.0,
            seed=seed,
            eval_every=args.eval_every,
            checkpoint_every=0,
            lora=LoraSettings(r=args.lora_r, alpha=2 * args.lora_r),
            **overrides,
        )
        recorder = Recorder(seed)
        with tempfile.TemporaryDirectory() as output_dir:
            started = time.perf_counter()
            GRPOTrainer(
                base_model=args.model,
                train_rows=train_rows,
                eval_rows=eval_rows,
                rewards=[RewardSpec("numeric_answer")],
                config=config,
                output_dir=output_dir,
                callbacks=[recorder],
            ).train()
            wall = time.perf_counter() - started
        before, after = recorder.evals[0][1], recorder.evals[-1][1]
        summary.append((seed, before, after, wall))

    print(
        f"\n{args.model}, {args.steps} steps, G={args.group_size}, lr={args.learning_rate}, LoRA r={args.lora_r}, "
        f"{args.max_new_tokens} new tokens, held-out: {len(eval_rows)} prompts"
        + (f", {overrides}" if overrides else "")
    )
    print("seed | sampled before -> after | greedy before -> after | wall")
    for seed, before, after, wall in summary:
        print(
            f"{seed:4d} | {before['eval_reward_sampled']:.3f} -> {after['eval_reward_sampled']:.3f}"
            f"          | {before['eval_reward_greedy']:.3f} -> {after['eval_reward_greedy']:.3f}"
            f"         | {wall / 60:.1f} min"
        )
    rises = [after["eval_reward_sampled"] - before["eval_reward_sampled"] for _, before, after, _ in summary]
    spread = statistics.stdev(rises) if len(rises) > 1 else 0.0
    print(
        f"sampled rise: mean {statistics.mean(rises):+.3f}, min {min(rises):+.3f}, max {max(rises):+.3f}, stdev {spread:.3f}"
    )


def _setting(item: str) -> tuple[str, object]:
    name, _, value = item.partition("=")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


if __name__ == "__main__":
    main()
