"""`make gpu-check`: what a GPU worker must show, in one run of under 10 minutes on one CUDA GPU.

1. The `gpu`-marked tests (tests/grpo_core/test_device.py): every tensor of a step on the GPU, resume on CUDA bit
   for bit, a bfloat16 base (dtype auto) with a finite loss and float32 adapter weights.
2. SmolLM2-135M-Instruct trained for --steps steps on the GPU as a worker trains it (GRPOTrainer.train, dtype
   auto, device auto): seconds per step, generated tokens per second, peak GPU memory
   (torch.cuda.max_memory_allocated, the model included).
3. The same step with TRL's GRPOTrainer in bfloat16 (transformers' generate), and with TRL generating through
   vLLM in its process (colocate mode) where vllm imports; otherwise that line says it was skipped.

One step: P=4 prompts x G=8 completions x up to 128 new tokens, LoRA r=8 on q_proj/v_proj, beta 0.04; the story
prompt of benchmarks/speed.py, scored by length, so both trainers generate nearly the full 128 tokens. The first
step of each run is a warm-up and is not timed. Ours runs with torch's deterministic kernels (the price of a
bit-exact resume on CUDA; TRL does not pay it).

Each part runs in its own process under its own time limit, so one that hangs cannot eat the others' time and
each peak memory is its own. Exit status: 0 when the tests pass and our run finishes; 1 when either does not (the
TRL runs are yardsticks: their failures are printed, not counted); 2 when this machine has no CUDA device:
nothing was checked, so it does not pass.

    .venv/bin/python benchmarks/gpu_check.py [--steps 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Seconds per part: together under 10 minutes, with the model conversion before them.
LIMITS = {"tests": 150, "ours": 120, "trl": 120, "trl-vllm": 180}


@dataclass
class Setting:
    model: str = "smollm2-135m-instruct"
    prompts_per_step: int = 4
    group_size: int = 8
    max_new_tokens: int = 128
    beta: float = 0.04
    lora_r: int = 8
    seed: int = 0
    steps: int = 20


def grpo_config(setting: Setting):
    from grpo_core import GRPOConfig, LoraSettings

    return GRPOConfig(
        group_size=setting.group_size,
        prompts_per_step=setting.prompts_per_step,
        max_new_tokens=setting.max_new_tokens,
        beta=setting.beta,
        seed=setting.seed,
        max_steps=setting.steps,
        checkpoint_every=0,
        lora=LoraSettings(r=setting.lora_r, alpha=2 * setting.lora_r, dropout=0.0, target_modules=("q_proj", "v_proj")),
    )


def gpu_memory() -> dict:
    import torch

    free, total = torch.cuda.mem_get_info()
    return {"peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20, "in_use_mb": (total - free) / 2**20}


# --- the runs, one per child process ------------------------------------------------------------------------------


def run_ours(setting: Setting) -> dict:
    """GRPOTrainer.train as the worker runs it, on device auto (the GPU) with dtype auto; each step's figures."""
    import torch
    from speed import REWARDS, STORY_PROMPT

    from grpo_core import GRPOTrainer, RewardSpec, TrainerCallback

    class Steps(TrainerCallback):
        def __init__(self):
            self.metrics: list[dict] = []

        def on_step(self, step, metrics):
            self.metrics.append(metrics)

    steps = Steps()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = GRPOTrainer(
            base_model=setting.model,
            train_rows=[{"prompt": STORY_PROMPT}] * setting.prompts_per_step,
            rewards=[RewardSpec(name, params=params) for name, params in REWARDS],
            config=grpo_config(setting),
            output_dir=output_dir,
            callbacks=[steps],
        )
        if trainer.device.type != "cuda":
            raise RuntimeError(f"device auto resolved to {trainer.device}, not a CUDA GPU")
        trainer.train()
    completions = setting.prompts_per_step * setting.group_size
    timed = steps.metrics[1:]
    return {
        "device": f"{trainer.device} ({torch.cuda.get_device_name(trainer.device)})",
        "dtype": str(trainer.dtype).removeprefix("torch."),
        "seconds": [m["step_seconds"] for m in timed],
        "tokens": [m["completion_length_mean"] * completions for m in timed],
        "sampling_tokens_per_second": statistics.mean(m["generated_tokens_per_second"] for m in timed),
        "final_loss": steps.metrics[-1]["loss"],
        **gpu_memory(),
    }


def run_trl(setting: Setting, vllm: bool) -> dict:
    from speed import REWARDS, STORY_PROMPT, rendered_row
    from trl_side import build_trl_trainer, step_timer

    from grpo_core import RewardSpec
    from grpo_core.models import load_tokenizer

    config = grpo_config(setting)
    tokenizer = load_tokenizer(setting.model)
    row = rendered_row({"prompt": STORY_PROMPT}, tokenizer)
    rows = [row] * (setting.prompts_per_step * setting.steps)
    timer = step_timer()
    specs = [RewardSpec(name, params=params) for name, params in REWARDS]
    with tempfile.TemporaryDirectory() as output_dir:
        build_trl_trainer(setting.model, rows, specs, config, output_dir, [timer], bf16=True, vllm=vllm).train()
    completions = setting.prompts_per_step * setting.group_size
    lengths = [log["completions/mean_length"] for log in timer.logs]
    return {
        "dtype": "bfloat16",
        "seconds": timer.seconds[1:],
        "tokens": [length * completions for length in lengths[1:]],
        **gpu_memory(),
    }


def child_main(kind: str, setting: Setting) -> None:
    result = run_ours(setting) if kind == "ours" else run_trl(setting, vllm=kind == "trl-vllm")
    print("RESULT " + json.dumps(result), flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_child(kind: str, setting: Setting) -> dict:
    """One run in a child process under its time limit: its RESULT, or {"error": why}."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    if kind == "trl-vllm":
        # vLLM colocated with TRL joins a torch.distributed group of one process, which needs these.
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    command = [sys.executable, __file__, "--child", kind, "--setting", json.dumps(asdict(setting))]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=LIMITS[kind], check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {LIMITS[kind]} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    return {"error": f"exit status {done.returncode}:\n{done.stderr[-3000:]}"}


# --- the check ----------------------------------------------------------------------------------------------------


def run_gpu_tests() -> bool:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", "tests"]
    print("$ " + " ".join(command[2:]), flush=True)
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8")}
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=LIMITS["tests"])
    except subprocess.TimeoutExpired:
        print(f"the gpu tests did not finish within {LIMITS['tests']} s")
        return False
    print("\n".join(done.stdout.splitlines()[-30:]))
    if done.returncode != 0:
        print(done.stderr[-2000:])
    return done.returncode == 0


def summary_line(name: str, result: dict) -> str:
    if "error" in result:
        return f"{name:22s} failed: {result['error']}"
    if "skipped" in result:
        return f"{name:22s} skipped: {result['skipped']}"
    seconds = statistics.median(result["seconds"])
    tokens_per_second = sum(result["tokens"]) / sum(result["seconds"])
    return (
        f"{name:22s} {result['dtype']:>9s} {seconds:>9.3f} {tokens_per_second:>13.0f} "
        f"{result['peak_allocated_mb']:>12.0f} {result['in_use_mb']:>12.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=Setting.steps, help="training steps per run (the first untimed)")
    parser.add_argument("--child", choices=["ours", "trl", "trl-vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is a warm-up and is not timed")
    if args.child:
        child_main(args.child, Setting(**json.loads(args.setting)))
        return 0

    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        print(
            f"gpu-check: no CUDA device here (torch {torch.__version__}, {build}: torch.cuda.is_available() is "
            "False); nothing was checked"
        )
        return 2
    started = time.perf_counter()
    print(f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    tests_passed = run_gpu_tests()

    from grpo_core.models import resolve_model_dir

    setting = Setting(steps=args.steps)
    resolve_model_dir(setting.model)  # converted once here, so no run's time or memory includes it
    results = {"ours": run_child("ours", setting), "TRL": run_child("trl", setting)}
    if importlib.util.find_spec("vllm") is None:
        results["TRL + vLLM"] = {"skipped": "vllm is not installed (pip install vllm where it installs)"}
    else:
        results["TRL + vLLM"] = run_child("trl-vllm", setting)

    ours = results["ours"]
    print(
        f"\n{setting.model}: {setting.prompts_per_step} prompts x G={setting.group_size} x up to "
        f"{setting.max_new_tokens} new tokens per step, LoRA r={setting.lora_r} q_proj/v_proj, beta {setting.beta}; "
        f"{setting.steps} steps, the first untimed" + (f"; ours on {ours['device']}" if "device" in ours else "")
    )
    print(f"{'':22s} {'dtype':>9s} {'s/step':>9s} {'gen tokens/s':>13s} {'peak MiB':>12s} {'in use MiB':>12s}")
    for name, result in results.items():
        print(summary_line(name, result))
    if "error" not in ours:
        print(
            f"ours: sampling alone {ours['sampling_tokens_per_second']:.0f} generated tokens/s; "
            f"final loss {ours['final_loss']:.4f}"
        )
    print(
        "peak MiB: torch.cuda.max_memory_allocated (vLLM's own pool is not in it); in use MiB: the device's used "
        "memory at the end, as the driver reports it"
    )
    passed = tests_passed and "error" not in ours
    print(f"\ngpu-check {'passed' if passed else 'FAILED'} in {time.perf_counter() - started:.0f} s")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
