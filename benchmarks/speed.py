"""Step throughput and peak memory of our GRPO step against TRL's GRPOTrainer, and how our cost grows.

    .venv/bin/python benchmarks/speed.py              # side by side with TRL at the default setting (make bench)
    .venv/bin/python benchmarks/speed.py --scaling    # ours alone: G, max_new_tokens and prompt length swept
    .venv/bin/python benchmarks/speed.py --memory     # ours alone: peak RSS of G=64 in micro batches of 8 vs G=8
    .venv/bin/python benchmarks/speed.py --baseline REV  # ours now against ours at git revision REV, alternating

Default setting: SmolLM2-135M-Instruct in fp32, LoRA r=8 on q_proj and v_proj, one prompt x G=8 completions x 64
new tokens per step, beta 0.04, no gradient checkpointing. Each trainer runs in its own process (so peak RSS is
its own), one process per round, the trainers alternating; the first step of every process is a warm-up and is
not timed. The prompt asks for a story, so both trainers nearly always generate the full max_new_tokens; the
table prints the mean completion length of each so the work compared is visible.

The roofline line divides the step's floating-point work (sampling, the reference pass, the policy pass and its
backward, counted from the model's shapes) by this machine's measured fp32 matmul rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STORY_PROMPT = "Write a long story about a robot who learns to paint. Describe every color it discovers."
FEW_SHOT_EXAMPLES = [
    ("A baker wakes before dawn", "The ovens hum in the dark while flour drifts like snow across the counter."),
    ("A lighthouse keeper sees a ship", "Far out past the rocks a single lantern swings, then vanishes in fog."),
    ("A child finds a map", "Under the loose floorboard, wrapped in oilcloth, the paper smells of salt and tar."),
    ("A train stops in a desert", "The engine sighs, and the passengers press their faces to the dusty glass."),
    ("An old dog waits at a gate", "Every evening at six he lies down by the latch and watches the road."),
    ("A musician loses her voice", "She opens her mouth on stage and only the quiet of the hall answers her."),
    ("A gardener plants the last seed", "He pats the soil twice, the way his mother did, and looks at the sky."),
    ("A pilot flies through a storm", "Rain hammers the canopy and the needles on the dials tremble and spin."),
]


def few_shot_prompt(target_tokens: int, tokenizer) -> str:
    """A few-shot story prompt of about target_tokens tokens (examples repeated until it is long enough)."""
    lines = ["Continue each story opening with one vivid sentence, as in the examples.\n"]
    i = 0
    while len(tokenizer("\n".join(lines)).input_ids) < target_tokens - 30:
        opening, sentence = FEW_SHOT_EXAMPLES[i % len(FEW_SHOT_EXAMPLES)]
        lines.append(f"Opening: {opening}.\nSentence: {sentence}\n")
        i += 1
    lines.append(f"Opening: {STORY_PROMPT}\nSentence:")
    return "\n".join(lines)


@dataclass
class Setting:
    model: str = "smollm2-135m-instruct"
    group_size: int = 8
    max_new_tokens: int = 64
    prompt: str = "short"  # short | fewshot
    beta: float = 0.04
    lora_r: int = 8
    seed: int = 0
    steps: int = 4  # timed steps per process, after one warm-up step
    micro_batch_size: int = 0


def grpo_config(setting: Setting, max_steps: int):
    from grpo_core import GRPOConfig, LoraSettings

    return GRPOConfig(
        group_size=setting.group_size,
        max_new_tokens=setting.max_new_tokens,
        beta=setting.beta,
        seed=setting.seed,
        max_steps=max_steps,
        checkpoint_every=0,
        micro_batch_size=setting.micro_batch_size,
        lora=LoraSettings(r=setting.lora_r, alpha=2 * setting.lora_r, dropout=0.0, target_modules=("q_proj", "v_proj")),
    )


REWARDS = [("length_target", {"target": 200})]  # cheap and varied across a group, so advantages are non-zero


def benchmark_row(setting: Setting, tokenizer) -> dict:
    """The dataset row: the prompt as a user would upload it (our trainer applies the chat template)."""
    return {"prompt": STORY_PROMPT if setting.prompt == "short" else few_shot_prompt(400, tokenizer)}


def rendered_row(row: dict, tokenizer) -> dict:
    """The same row with the chat template applied, as TRL gets it (TRL then uses the text as it is)."""
    from grpo_core.data import render_prompt

    rendered = render_prompt(row, tokenizer)
    return {"prompt": rendered, "prompt_tokens": len(tokenizer(rendered, add_special_tokens=False).input_ids)}


# --- one trainer in one process ------------------------------------------------------------------------------------


def run_ours(setting: Setting) -> dict:
    """Our trainer as the service runs it (GRPOTrainer.setup: model, adapter, optimizer, allocator settings),
    then grpo_step timed one call at a time."""
    from grpo_core import GRPOTrainer, RewardSpec
    from grpo_core.step import grpo_step

    config = grpo_config(setting, max_steps=setting.steps + 1)
    specs = [RewardSpec(name, params=params) for name, params in REWARDS]
    trainer = GRPOTrainer(
        base_model=setting.model, train_rows=[{"prompt": STORY_PROMPT}], rewards=specs, config=config, output_dir="."
    )
    trainer.setup()
    rows = [benchmark_row(setting, trainer.tokenizer)]
    seconds, lengths = [], []
    for _ in range(setting.steps + 1):
        started = time.perf_counter()
        metrics, _rollout = grpo_step(
            trainer.model, trainer.tokenizer, trainer.optimizer, trainer.scheduler, rows, trainer.rewards, config
        )
        seconds.append(time.perf_counter() - started)
        lengths.append(metrics["completion_length_mean"])
    prompt_tokens = rendered_row(rows[0], trainer.tokenizer)["prompt_tokens"]
    return {"seconds": seconds[1:], "lengths": lengths[1:], "prompt_tokens": prompt_tokens}


def run_trl(setting: Setting) -> dict:
    from trl_side import build_trl_trainer, step_timer

    from grpo_core import RewardSpec
    from grpo_core.models import load_tokenizer

    config = grpo_config(setting, max_steps=setting.steps + 1)
    tokenizer = load_tokenizer(setting.model)
    rows = [rendered_row(benchmark_row(setting, tokenizer), tokenizer)] * (setting.steps + 1)
    timer = step_timer()
    with tempfile.TemporaryDirectory() as output_dir:
        specs = [RewardSpec(name, params=params) for name, params in REWARDS]
        build_trl_trainer(setting.model, rows, specs, config, output_dir, [timer]).train()
    lengths = [log["completions/mean_length"] for log in timer.logs]
    return {"seconds": timer.seconds[1:], "lengths": lengths[1:], "prompt_tokens": rows[0]["prompt_tokens"]}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours_memory(setting: Setting) -> dict:
    """Our trainer's peak RSS after each phase: setup (the model's share), sampling and scoring, the reference
    pass, the update; the first step is the one measured (each later step reuses the memory the first freed)."""
    from grpo_core import GRPOTrainer, RewardSpec
    from grpo_core.algorithms import compute_group_advantages
    from grpo_core.rollout import Rollout, reference_logprobs, sample_and_score
    from grpo_core.update import update_policy

    config = grpo_config(setting, max_steps=setting.steps + 1)
    specs = [RewardSpec(name, params=params) for name, params in REWARDS]
    trainer = GRPOTrainer(
        base_model=setting.model, train_rows=[{"prompt": STORY_PROMPT}], rewards=specs, config=config, output_dir="."
    )
    trainer.setup()
    phases = {"setup": peak_rss_mb()}
    rows = [benchmark_row(setting, trainer.tokenizer)]
    seconds, lengths = [], []
    for _ in range(setting.steps + 1):
        started = time.perf_counter()
        # collect_rollout's pieces, one at a time (num_iterations is 1: no sampling-policy pass).
        samples = sample_and_score(
            trainer.model, trainer.tokenizer, rows, trainer.rewards, config, group_size=config.group_size
        )
        phases.setdefault("sampling", peak_rss_mb())
        advantages = compute_group_advantages(samples.scores.rewards, config.group_size, config.scale_rewards)
        ref = reference_logprobs(trainer.model, samples.batch, config.temperature, config.micro_batch_size)
        phases.setdefault("reference pass", peak_rss_mb())
        rollout = Rollout(samples, advantages, None, ref, sampling_seconds=0.0)
        update_policy(trainer.model, trainer.optimizer, trainer.scheduler, rollout, config)
        phases.setdefault("update", peak_rss_mb())
        seconds.append(time.perf_counter() - started)
        lengths.append(samples.batch.completion_mask.sum(dim=1).float().mean().item())
    prompt_tokens = rendered_row(rows[0], trainer.tokenizer)["prompt_tokens"]
    return {"seconds": seconds[1:], "lengths": lengths[1:], "prompt_tokens": prompt_tokens, "phases": phases}


def child_main(trainer: str, setting: Setting) -> None:
    runners = {"ours": run_ours, "trl": run_trl, "ours-memory": run_ours_memory}
    result = runners[trainer](setting)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def run_child(trainer: str, setting: Setting, tree: Path = ROOT) -> dict:
    """Run `trainer` in a process of its own, with the code of `tree` (this checkout, or a baseline's)."""
    script = tree / "benchmarks" / "speed.py"
    command = [sys.executable, str(script), "--child", trainer, "--setting", json.dumps(asdict(setting))]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    # The tree's own packages first, ahead of the editable install of this checkout.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    process = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in process.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    raise RuntimeError(f"{trainer} run failed:\n{process.stdout[-3000:]}\n{process.stderr[-5000:]}")


# --- figures -------------------------------------------------------------------------------------------------------


@dataclass
class Summary:
    seconds_per_step: float  # median
    completions_per_second: float
    tokens_per_second: float
    peak_rss_mb: float
    mean_length: float


def summarise(runs: list[dict], group_size: int) -> Summary:
    seconds = [s for run in runs for s in run["seconds"]]
    lengths = [n for run in runs for n in run["lengths"]]
    median = statistics.median(seconds)
    return Summary(
        seconds_per_step=median,
        completions_per_second=group_size / median,
        tokens_per_second=sum(n * group_size for n in lengths) / sum(seconds),
        peak_rss_mb=max(run["peak_rss_mb"] for run in runs),
        mean_length=statistics.mean(lengths),
    )


def matmul_gflops() -> float:
    """This machine's fp32 matmul rate (2048 x 2048, all threads torch uses), best of 5."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * 2048**3 / best / 1e9


@dataclass
class ModelShape:
    layers: int
    linear_params_per_layer: int  # q, k, v, o and the three MLP projections
    attention_width: int  # heads x head_dim of the queries
    embedding_params: int  # the (tied) output embedding: vocab x hidden


def model_shape(model_name: str) -> ModelShape:
    from transformers import AutoConfig

    from grpo_core.models import resolve_model_dir

    c = AutoConfig.from_pretrained(resolve_model_dir(model_name))
    head_dim = c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    return ModelShape(
        layers=c.num_hidden_layers,
        linear_params_per_layer=c.hidden_size * (2 * q + 2 * kv) + 3 * c.hidden_size * c.intermediate_size,
        attention_width=q,
        embedding_params=c.hidden_size * c.vocab_size,
    )


def passes_per_step(beta: float) -> int:
    return 1 + (1 if beta > 0 else 0) + 2  # sampling, reference (beta > 0), policy forward, backward


def step_gflop(shape: ModelShape, prompt_tokens: int, group_size: int, new_tokens: int, beta: float) -> float:
    """Floating-point work of one step, from the model's shapes: sampling (the prompt once, then G x new_tokens
    decoded tokens), the reference forward when beta > 0, the policy forward, and its backward (input gradients
    only, about one forward: the base weights are frozen and the LoRA weight gradients are negligible)."""
    completion = group_size * new_tokens
    # Attention scores and weighted values: 4 x context x q-width per token per layer, context ~ prompt + t.
    context = sum(prompt_tokens + t for t in range(new_tokens))
    attention = 4 * shape.layers * shape.attention_width * group_size * context
    one_pass = (
        2 * (prompt_tokens + completion) * shape.layers * shape.linear_params_per_layer
        + 2 * completion * shape.embedding_params
        + attention
    )
    return passes_per_step(beta) * one_pass / 1e9


def side_by_side(setting: Setting, rounds: int) -> None:
    from grpo_core.models import resolve_model_dir

    resolve_model_dir(setting.model)  # convert a catalog model here, so no child's peak RSS includes that
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    for round_index in range(rounds):
        order = ["trl", "ours"] if round_index % 2 == 0 else ["ours", "trl"]
        for trainer in order:
            started = time.perf_counter()
            runs[trainer].append(run_child(trainer, setting))
            print(
                f"round {round_index + 1}/{rounds} {trainer:4s}: steps "
                + " ".join(f"{s:.2f}s" for s in runs[trainer][-1]["seconds"])
                + f" (process {time.perf_counter() - started:.0f}s)",
                flush=True,
            )
    ours, trl = summarise(runs["ours"], setting.group_size), summarise(runs["trl"], setting.group_size)
    prompt_tokens = runs["ours"][0]["prompt_tokens"]
    print(
        f"\n{setting.model} fp32, LoRA r={setting.lora_r} q_proj/v_proj, 1 prompt ({prompt_tokens} tokens) x "
        f"G={setting.group_size} x {setting.max_new_tokens} new tokens, beta {setting.beta}, "
        f"{rounds} rounds x {setting.steps} timed steps each"
    )
    rows = [
        ("seconds per step (median)", "seconds_per_step", "{:.2f}"),
        ("completions per second", "completions_per_second", "{:.3f}"),
        ("generated tokens per second", "tokens_per_second", "{:.1f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("mean completion length", "mean_length", "{:.1f}"),
    ]
    print(f"{'':30s} {'ours':>10s} {'TRL':>10s} {'ours/TRL':>10s}")
    for label, key, fmt in rows:
        a, b = getattr(ours, key), getattr(trl, key)
        print(f"{label:30s} {fmt.format(a):>10s} {fmt.format(b):>10s} {a / b:>10.2f}")
    print_roofline(setting, prompt_tokens, ours)


def against_baseline(setting: Setting, rounds: int, revision: str) -> None:
    """Our step now against our step at git revision `revision` (checked out into a temporary folder), each in
    processes of its own, alternating, so both see the same machine: a refactor shows whether it cost speed."""
    from grpo_core.models import resolve_model_dir

    resolve_model_dir(setting.model)
    with tempfile.TemporaryDirectory(prefix="grpo-baseline-") as folder:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
        trees = {revision: Path(folder), "now": ROOT}
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for round_index in range(rounds):
            order = list(trees) if round_index % 2 == 0 else list(trees)[::-1]
            for name in order:
                runs[name].append(run_child("ours", setting, trees[name]))
                seconds = " ".join(f"{s:.2f}s" for s in runs[name][-1]["seconds"])
                print(f"round {round_index + 1}/{rounds} {name:>10s}: steps {seconds}", flush=True)
    old, new = summarise(runs[revision], setting.group_size), summarise(runs["now"], setting.group_size)
    print(f"{'':30s} {revision[:10]:>10s} {'now':>10s} {'now/then':>10s}")
    for label, key in (("seconds per step (median)", "seconds_per_step"), ("peak RSS (MB)", "peak_rss_mb")):
        a, b = getattr(old, key), getattr(new, key)
        print(f"{label:30s} {a:>10.2f} {b:>10.2f} {b / a:>10.2f}")


def read_bandwidth_gbs() -> float:
    """This machine's memory read rate: summing a 512 MB tensor, best of 5."""
    import torch

    x = torch.ones(128 * 2**20)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - started)
    return x.numel() * 4 / best / 1e9


def print_roofline(setting: Setting, prompt_tokens: int, ours: Summary) -> None:
    shape = model_shape(setting.model)
    new_tokens = round(ours.mean_length)
    gflop = step_gflop(shape, prompt_tokens, setting.group_size, new_tokens, setting.beta)
    rate = matmul_gflops()
    floor = gflop / rate
    print(
        f"roofline: {gflop:.0f} GFLOP per step / {rate:.0f} GFLOP/s measured fp32 matmul = {floor:.2f} s; "
        f"ours takes {ours.seconds_per_step / floor:.1f}x that"
    )
    # Decoding G rows at a time is bound by reading the weights, not by arithmetic: each of the new_tokens
    # sequential steps reads every weight once (every linear, and the tied output embedding). That floor
    # replaces the sampling pass's FLOP time.
    weight_bytes = 4 * (shape.layers * shape.linear_params_per_layer + shape.embedding_params)
    bandwidth = read_bandwidth_gbs()
    decode_floor = new_tokens * weight_bytes / (bandwidth * 1e9)
    passes = passes_per_step(setting.beta)
    combined = decode_floor + floor * (passes - 1) / passes
    print(
        f"with decoding bound by memory ({new_tokens} steps x {weight_bytes / 2**20:.0f} MiB of "
        f"weights / {bandwidth:.0f} GB/s = {decode_floor:.2f} s) plus the other passes' FLOP time: {combined:.2f} s; "
        f"ours takes {ours.seconds_per_step / combined:.1f}x that"
    )


def scaling(base: Setting) -> None:
    from grpo_core.models import resolve_model_dir

    resolve_model_dir(base.model)
    sweeps = [
        ("group_size", [2, 4, 8, 16, 32]),
        ("max_new_tokens", [32, 64, 128, 256]),
        ("prompt", ["short", "fewshot"]),
    ]
    print(
        f"ours alone; default G={base.group_size}, {base.max_new_tokens} new tokens, short prompt; one value changed a row"
    )
    print(
        f"{'setting':24s} {'prompt tok':>10s} {'s/step':>8s} {'s/completion':>13s} {'peak RSS MB':>12s} {'mean len':>9s}"
    )
    for field_name, values in sweeps:
        for value in values:
            setting = Setting(**{**asdict(base), field_name: value})
            result = run_child("ours", setting)
            summary = summarise([result], setting.group_size)
            print(
                f"{field_name}={value!s:14s} {result['prompt_tokens']:>10d} {summary.seconds_per_step:>8.2f} "
                f"{summary.seconds_per_step / setting.group_size:>13.3f} {summary.peak_rss_mb:>12.0f} {summary.mean_length:>9.1f}",
                flush=True,
            )


def memory(base: Setting) -> None:
    """Peak RSS of today's default step (G=8 in one pass) beside G=64 in micro batches of 8, and G=64 in one pass."""
    from grpo_core.models import resolve_model_dir

    resolve_model_dir(base.model)
    settings = [
        ("G=8, one pass", Setting(**{**asdict(base), "group_size": 8, "micro_batch_size": 0})),
        ("G=64, micro batch 8", Setting(**{**asdict(base), "group_size": 64, "micro_batch_size": 8})),
        ("G=64, one pass", Setting(**{**asdict(base), "group_size": 64, "micro_batch_size": 0})),
    ]
    print(
        f"ours alone, {base.model} fp32, {base.max_new_tokens} new tokens, beta {base.beta}; peak RSS (MB) of the "
        "process after each phase of its first step"
    )
    print(
        f"{'setting':22s} {'setup':>7s} {'sampling':>9s} {'ref pass':>9s} {'update':>7s} {'peak':>7s} "
        f"{'s/step':>7s} {'mean len':>9s}"
    )
    for label, setting in settings:
        result = run_child("ours-memory", setting)
        phases = result["phases"]
        summary = summarise([result], setting.group_size)
        print(
            f"{label:22s} {phases['setup']:>7.0f} {phases['sampling']:>9.0f} {phases['reference pass']:>9.0f} "
            f"{phases['update']:>7.0f} {result['peak_rss_mb']:>7.0f} {summary.seconds_per_step:>7.2f} "
            f"{summary.mean_length:>9.1f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=Setting.group_size)
    parser.add_argument("--max-new-tokens", type=int, default=Setting.max_new_tokens)
    parser.add_argument("--prompt", choices=["short", "fewshot"], default=Setting.prompt)
    parser.add_argument("--beta", type=float, default=Setting.beta)
    parser.add_argument("--lora-r", type=int, default=Setting.lora_r)
    parser.add_argument("--seed", type=int, default=Setting.seed)
    parser.add_argument("--steps", type=int, default=Setting.steps, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per trainer, alternating")
    parser.add_argument("--scaling", action="store_true", help="sweep G, max_new_tokens and prompt length (ours)")
    parser.add_argument(
        "--memory", action="store_true", help="peak RSS of G=64 in micro batches of 8 beside G=8 in one pass (ours)"
    )
    parser.add_argument("--baseline", metavar="REV", help="ours now against ours at this git revision, alternating")
    parser.add_argument("--child", choices=["ours", "trl", "ours-memory"], help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, Setting(**json.loads(args.setting)))
        return
    setting = Setting(
        group_size=args.group_size,
        max_new_tokens=args.max_new_tokens,
        prompt=args.prompt,
        beta=args.beta,
        lora_r=args.lora_r,
        seed=args.seed,
        steps=args.steps,
    )
    if args.scaling:
        scaling(setting)
    elif args.memory:
        memory(setting)
    elif args.baseline:
        against_baseline(setting, args.rounds, args.baseline)
    else:
        side_by_side(setting, args.rounds)


if __name__ == "__main__":
    main()
