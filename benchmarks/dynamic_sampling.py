"""Does dynamic sampling (DAPO's group filtering) help for the same wall time? Held-out reward with and without it.

    .venv/bin/python benchmarks/dynamic_sampling.py --seeds 0 1 2 --minutes 2.5

SmolLM2-135M-Instruct on single-digit addition (its sampled held-out reward starts near 0.3: many groups are all
wrong or all right, which is where dropping flat groups should matter). For each seed, one run without and one with
`dynamic_sampling`, each trained for the same wall-clock budget (the run stops at the first step boundary past it),
then evaluated on the 20 held-out pairs (sampled at temperature 1, and greedy). The two runs of a seed alternate,
so a drift in the machine's speed hits both. Prints per-run figures (steps, prompts drawn per step, flat groups
dropped) and the mean over seeds. Not a test: it prints figures, whichever way they come out.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from grpo_core import GRPOConfig, GRPOTrainer, LoraSettings, RewardSpec, TrainerCallback, arithmetic_task
from grpo_core.evaluation import evaluate


class Budget(TrainerCallback):
    """Stops the run at the first step boundary after `seconds`, and keeps the per-step figures."""

    def __init__(self, seconds: float, label: str, prompts_per_step: int):
        self.seconds, self.label, self.prompts_per_step = seconds, label, prompts_per_step
        self.started = time.perf_counter()
        self.steps: list[dict] = []

    def on_step(self, step, metrics):
        self.steps.append(metrics)
        drawn = metrics.get("prompts_drawn", self.prompts_per_step)
        print(
            f"{self.label} step {step:3d} reward {metrics['reward_mean']:.3f} "
            f"zero-std {metrics['zero_std_group_fraction']:.2f} drawn {drawn:.0f} {metrics['step_seconds']:.2f}s",
            flush=True,
        )

    def should_stop(self) -> bool:
        return time.perf_counter() - self.started > self.seconds


def run(seed: int, dynamic: bool, args, train_rows, eval_rows) -> dict:
    config = GRPOConfig(
        group_size=args.group_size,
        prompts_per_step=args.prompts_per_step,
        max_steps=100_000,  # the budget ends the run
        max_new_tokens=args.max_new_tokens,
        seed=seed,
        checkpoint_every=0,
        eval_every=0,
        dynamic_sampling=dynamic,
        max_sampling_rounds=args.max_rounds,
        lora=LoraSettings(r=16, alpha=32),
    )
    label = f"seed {seed} {'dynamic' if dynamic else 'plain  '}"
    budget = Budget(args.minutes * 60, label, args.prompts_per_step)
    rewards = [RewardSpec("numeric_answer")]
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = GRPOTrainer(
            base_model=args.model,
            train_rows=train_rows,
            rewards=rewards,
            config=config,
            output_dir=output_dir,
            callbacks=[budget],
        )
        trainer.setup()
        before = evaluate(trainer.model, trainer.tokenizer, eval_rows, trainer.rewards, config)
        started = budget.started = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - started
        after = evaluate(trainer.model, trainer.tokenizer, eval_rows, trainer.rewards, config)
    steps = budget.steps
    result = {
        "seed": seed,
        "dynamic": dynamic,
        "steps": len(steps),
        "wall": wall,
        "before": before,
        "after": after,
        "drawn_per_step": statistics.mean(m.get("prompts_drawn", args.prompts_per_step) for m in steps),
        "dropped_per_step": statistics.mean(m.get("groups_dropped", 0.0) for m in steps),
        "flat_trained": statistics.mean(m["zero_std_group_fraction"] for m in steps),
    }
    print(
        f"{label}: {len(steps)} steps in {wall:.0f}s, sampled {before['eval_reward_sampled']:.3f} -> "
        f"{after['eval_reward_sampled']:.3f}, greedy {before['eval_reward_greedy']:.3f} -> "
        f"{after['eval_reward_greedy']:.3f}, prompts drawn per step {result['drawn_per_step']:.2f}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=2.5, help="training wall time of each run")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-rounds", type=int, default=3, help="max_sampling_rounds")
    args = parser.parse_args()

    train_rows, eval_rows = arithmetic_task()
    results = [run(seed, dynamic, args, train_rows, eval_rows) for seed in args.seeds for dynamic in (False, True)]

    print(
        f"\n{args.model}, {args.minutes} min of training per run, G={args.group_size}, "
        f"P={args.prompts_per_step}, {args.max_new_tokens} new tokens, max_sampling_rounds={args.max_rounds}"
    )
    print("seed | dynamic | steps | prompts drawn/step | flat dropped/step | sampled before -> after | greedy")
    for r in results:
        print(
            f"{r['seed']:4d} | {'yes' if r['dynamic'] else 'no ':7s} | {r['steps']:5d} | {r['drawn_per_step']:18.2f} | "
            f"{r['dropped_per_step']:17.2f} | {r['before']['eval_reward_sampled']:.3f} -> "
            f"{r['after']['eval_reward_sampled']:.3f}          | {r['before']['eval_reward_greedy']:.3f} -> "
            f"{r['after']['eval_reward_greedy']:.3f}"
        )
    for dynamic in (False, True):
        chosen = [r for r in results if r["dynamic"] == dynamic]
        rise = [r["after"]["eval_reward_sampled"] - r["before"]["eval_reward_sampled"] for r in chosen]
        print(
            f"{'with' if dynamic else 'without'} dynamic sampling: sampled held-out after "
            f"{statistics.mean(r['after']['eval_reward_sampled'] for r in chosen):.3f} (rise {statistics.mean(rise):+.3f}), "
            f"greedy after {statistics.mean(r['after']['eval_reward_greedy'] for r in chosen):.3f}, "
            f"{statistics.mean(r['steps'] for r in chosen):.1f} steps"
        )


if __name__ == "__main__":
    main()
