"""`grpo train CONFIG.yaml`: run a GRPO job locally, with a progress bar, metrics.jsonl and checkpoints.

A config file:

    base_model: tiny-random-llama          # a catalog name ($GRPO_MODELS_FILE's too), a local checkpoint folder, or a hub id
    dataset: prompts.jsonl                 # a JSONL file, or builtin:arithmetic (the demo task's train split)
    eval_dataset: builtin:arithmetic-eval  # optional held-out split
    output_dir: runs/demo
    rewards:
      - {name: numeric_answer, weight: 1.0}
    hyperparameters: {group_size: 8, max_steps: 20, eval_every: 10}
    init_from: {checkpoint: runs/parent/checkpoints/step-000010, optimizer: false}  # optional: a fork

Relative paths are read relative to the config file. Rewards score in a child process, as in the service: a
reward call longer than --reward-timeout seconds (default 60) is killed and ends the run with an error naming it.
--device picks where it trains (auto: the GPU when torch sees one, else the CPU; cpu, cuda, cuda:N).
hyperparameters.processes above 1 trains on that many processes started here (one GPU each on a GPU, gloo ranks
on the CPU; grpo_core/distributed.py); rank 0 writes the metrics and the progress bar. init_from starts a run
without checkpoints of its own from another run's checkpoint folder (its adapter; with optimizer: true its AdamW
moments too), saved as this run's step 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from grpo_core.callbacks import TrainerCallback
from grpo_core.checkpoint import Checkpoint, ForkPoint, list_checkpoints
from grpo_core.config import GRPOConfig, RewardSpec
from grpo_core.data import DatasetError, arithmetic_task, load_jsonl
from grpo_core.device import check_device_name, resolve_device
from grpo_core.distributed import LOCAL, RankFailed, run_ranks
from grpo_core.models import ModelLoadError
from grpo_core.options import TrainerOptions
from grpo_core.reward_process import RewardFailure
from grpo_core.rewards import RewardSpecError
from grpo_core.trainer import GRPOTrainer
from grpo_core.update import NonFiniteUpdate

BUILTIN_DATASETS = {
    "builtin:arithmetic": lambda: arithmetic_task()[0],
    "builtin:arithmetic-eval": lambda: arithmetic_task()[1],
}


def load_dataset(reference: str, base: Path) -> list[dict[str, Any]]:
    if reference in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[reference]()
    path = Path(reference)
    return load_jsonl(path if path.is_absolute() else base / path)


class JsonlMetricsWriter(TrainerCallback):
    """Appends one JSON line per step and per evaluation. A resumed run drops the lines from the step it goes on
    from (known only at its first step: the newest checkpoint may have been skipped as corrupt), so every step
    appears once; a new run starts the file afresh."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.trim_before_first_step = resume and path.exists()
        if not self.trim_before_first_step:
            path.write_text("")

    def _write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.trim_before_first_step:
            self.trim_before_first_step = False
            lines = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] < step]
            self.path.write_text("".join(line + "\n" for line in lines))
        self._write({"step": step, "kind": "train", **metrics})

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self._write({"step": step, "kind": "eval", **metrics})


class ProgressBar(TrainerCallback):
    def __init__(self, total: int, initial: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        self.last_eval: dict[str, str] = {}

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(
            reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics.get('kl', 0.0):.4f}", **self.last_eval
        )

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.last_eval = {"eval": f"{metrics['eval_reward_sampled']:.3f}"}
        self.bar.write(
            f"step {step}: held-out reward sampled {metrics['eval_reward_sampled']:.3f}, greedy {metrics['eval_reward_greedy']:.3f}"
        )

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.bar.write(f"step {checkpoint.step}: checkpoint {checkpoint.path}")

    def on_warning(self, message: str) -> None:
        self.bar.write(f"warning: {message}")


def train_command(config_path: Path, resume: bool, reward_timeout_seconds: float = 60.0, device: str = "auto") -> int:
    from grpo_core.checkpoint import latest_checkpoint

    spec = yaml.safe_load(config_path.read_text()) or {}
    base = config_path.parent
    missing = [key for key in ("base_model", "dataset", "rewards") if key not in spec]
    if missing:
        raise ValueError(f"{config_path}: missing {', '.join(missing)}")
    config = GRPOConfig.from_dict(spec.get("hyperparameters") or {})
    output_dir = Path(spec.get("output_dir", "runs/" + config_path.stem))
    output_dir = output_dir if output_dir.is_absolute() else base / output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    resume_step = 0
    if resume and (checkpoint := latest_checkpoint(output_dir / "checkpoints")):
        resume_step = checkpoint.step
    (output_dir / "config.json").write_text(
        json.dumps({**spec, "hyperparameters": config.to_dict()}, indent=2, default=str)
    )
    if config.processes > 1:
        # The ranks run in processes of their own; this one waits for them (rank 0 writes metrics and progress).
        args = (spec, base, config, output_dir, resume, resume_step, reward_timeout_seconds)
        try:
            run_ranks(_train_rank, args, config.processes, device=resolve_device(device))
        except RankFailed as error:
            print(f"grpo: training stopped: {error}", file=sys.stderr)
            return 1
        adapter_dir = list_checkpoints(output_dir / "checkpoints")[-1].path
        print(f"done: adapter in {adapter_dir}; metrics in {output_dir / 'metrics.jsonl'}")
        return 0
    callbacks = [JsonlMetricsWriter(output_dir / "metrics.jsonl", resume), ProgressBar(config.max_steps, resume_step)]
    trainer = _trainer(spec, base, config, output_dir, callbacks, reward_timeout_seconds, device)
    result = trainer.train(resume=resume)
    print(
        f"done: {result.final_step} steps; adapter in {result.adapter_dir}; metrics in {output_dir / 'metrics.jsonl'}"
    )
    return 0


def _trainer(spec, base, config, output_dir, callbacks, reward_timeout_seconds, device, world=LOCAL) -> GRPOTrainer:
    return GRPOTrainer(
        base_model=spec["base_model"],
        train_rows=load_dataset(spec["dataset"], base),
        eval_rows=load_dataset(spec["eval_dataset"], base) if spec.get("eval_dataset") else (),
        rewards=[RewardSpec(**reward) for reward in spec["rewards"]],
        config=config,
        output_dir=output_dir,
        callbacks=callbacks,
        options=TrainerOptions(device=device, reward_timeout_seconds=reward_timeout_seconds),
        world=world,
        fork_point=_fork_point(spec.get("init_from"), base),
    )


def _fork_point(init_from: Any, base: Path) -> ForkPoint | None:
    if init_from is None:
        return None
    if not isinstance(init_from, dict) or set(init_from) - {"checkpoint", "optimizer"} or "checkpoint" not in init_from:
        raise ValueError("init_from: expected {checkpoint: a checkpoint folder, optimizer: true or false}")
    return ForkPoint(base / init_from["checkpoint"], optimizer=bool(init_from.get("optimizer", False)))


def _train_rank(world, device, spec, base, config, output_dir, resume, resume_step, reward_timeout_seconds) -> None:
    """One rank of `grpo train` on several processes (spawned by run_ranks); rank 0 writes metrics and progress."""
    callbacks: list = []
    if world.is_main:
        callbacks = [
            JsonlMetricsWriter(output_dir / "metrics.jsonl", resume),
            ProgressBar(config.max_steps, resume_step),
        ]
    _trainer(spec, base, config, output_dir, callbacks, reward_timeout_seconds, device, world).train(resume=resume)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grpo", description="GRPO fine-tuning with LoRA")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run a training job from a YAML config, locally")
    train.add_argument("config", type=Path)
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    train.add_argument(
        "--reward-timeout",
        type=_positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="longest one reward function may take on one batch before the run fails (default 60)",
    )
    train.add_argument(
        "--device",
        type=_device_name,
        default="auto",
        help="where to train: auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N",
    )
    args = parser.parse_args(argv)
    try:
        return train_command(args.config, args.resume, args.reward_timeout, args.device)
    except (ValueError, OSError, ModelLoadError, DatasetError, RewardSpecError, TypeError) as error:
        # ResumeMismatch is a ValueError: it names the settings that differ from the checkpoint's.
        print(f"grpo: error: {error}", file=sys.stderr)
        return 2
    except (RewardFailure, NonFiniteUpdate) as error:
        # The run started and cannot go on: the checkpoints of the steps before stay in output_dir.
        print(f"grpo: training stopped: {error}", file=sys.stderr)
        return 1


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _device_name(text: str) -> str:
    try:
        return check_device_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


if __name__ == "__main__":
    sys.exit(main())
