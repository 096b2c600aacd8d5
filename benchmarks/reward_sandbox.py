"""What the reward sandbox costs: per-call overhead, and a training step with a built-in reward against the same
function uploaded as tenant code.

    .venv/bin/python benchmarks/reward_sandbox.py              # both parts (make bench-sandbox)
    .venv/bin/python benchmarks/reward_sandbox.py --calls-only # per-call overhead and dry runs (no model)

Per call: one batch of G=8 completions of 64 tokens' worth of text, scored by `length_target` three ways,
interleaved call by call so the machine's drift hits all three alike: in this process (the function alone), in
the trusted reward process built-ins run in (grpo_core.reward_process), and in the bubblewrap sandbox as a
tenant's upload (grpo_core.sandbox). p50 and p99 over --calls calls; the sandbox's start-up is timed apart.

Dry run: POST /v1/rewards/{id}/test with 3 items through a real `grpo api` process, against a sandbox started
and given the same 3 items directly, alternating.

Per step: SmolLM2-135M-Instruct, G=8, 64 new tokens, one prompt per step, LoRA r=8, beta 0.04 (make bench's
setting). Two trainers in one process, one scoring with the built-in `length_target`, the other with the same
function uploaded; their steps alternate (ABAB...), after one untimed warm-up step each (which also starts each
trainer's reward process or sandbox). The overhead is the difference of the medians over the built-in's median.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The tenant's version of the built-in length_target (grpo_core/rewards.py), as a user would upload it.
UPLOADED_LENGTH_TARGET = """
def reward(prompt, completion, target=200, **fields):
    return max(0.0, 1.0 - abs(len(completion) - target) / target)
"""
TARGET = 200
STORY_PROMPT = "Write a long story about a robot who learns to paint. Describe every color it discovers."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def baseline_sandbox(revision: str, folder: str):
    """grpo_core/sandbox.py as it was at `revision` (a git worktree in `folder`), imported beside today's, so both
    run interleaved in one process. Its child script comes from the same revision."""
    import importlib.util
    import subprocess

    root = Path(__file__).resolve().parent.parent
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", folder, revision], check=True,
                   capture_output=True)  # fmt: skip
    spec = importlib.util.spec_from_file_location("baseline_sandbox", Path(folder) / "grpo_core" / "sandbox.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def start_ups(factories: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds from a new sandbox to its source loaded, alternating between the factories."""
    seconds: dict[str, list[float]] = {name: [] for name in factories}
    for _ in range(repeats):
        for name, factory in factories.items():
            started = time.perf_counter()
            with factory() as sandbox:
                sandbox.start()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def per_call(calls: int, group_size: int, baseline: str | None = None) -> None:
    import subprocess
    import tempfile

    from grpo_core.sandbox import RewardSandbox

    with contextlib.ExitStack() as stack:
        old = None
        if baseline:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="grpo-baseline-"))
            old = baseline_sandbox(baseline, folder + "/tree")
            root = str(Path(__file__).resolve().parent.parent)
            stack.callback(subprocess.run, ["git", "-C", root, "worktree", "remove", "--force", folder + "/tree"])
        _per_call(calls, group_size, RewardSandbox, old, baseline)


def _per_call(calls, group_size, RewardSandbox, old, baseline) -> None:  # noqa: N803 (a class, passed in)
    from grpo_core.config import RewardSpec
    from grpo_core.reward_process import RewardProcess
    from grpo_core.rewards import resolve_rewards, score_batch

    completion = "The robot dipped its brush in cobalt and the canvas answered with a sky. " * 4  # ~64 tokens
    completions = [completion[: 250 + 10 * i] for i in range(group_size)]
    rows = [{"prompt": STORY_PROMPT}] * group_size
    prompts = [STORY_PROMPT] * group_size
    specs = [RewardSpec("length_target", params={"target": TARGET})]
    [(fn, params, _weight)] = resolve_rewards(specs)
    timings: dict[str, list[float]] = {"in process": [], "reward process": [], "sandbox": []}
    old_name = f"sandbox at {baseline}"
    if old is not None:
        timings[old_name] = []
    with (
        RewardProcess(specs, timeout_seconds=60) as trusted,
        RewardSandbox(UPLOADED_LENGTH_TARGET, timeout_seconds=60) as sandbox,
        old.RewardSandbox(UPLOADED_LENGTH_TARGET, timeout_seconds=60) if old else contextlib.nullcontext() as previous,
    ):
        if old is not None:
            previous.start()
        started = time.perf_counter()
        trusted.score(0, completions, rows)
        trusted_start = time.perf_counter() - started
        started = time.perf_counter()
        sandbox.start()
        sandbox_start = time.perf_counter() - started
        expected = score_batch(fn, params, completions, rows)[0]
        for _ in range(calls):
            started = time.perf_counter()
            score_batch(fn, params, completions, rows)
            timings["in process"].append(time.perf_counter() - started)
            started = time.perf_counter()
            trusted.score(0, completions, rows)
            timings["reward process"].append(time.perf_counter() - started)
            started = time.perf_counter()
            scored = sandbox.score(prompts, completions, rows)
            timings["sandbox"].append(time.perf_counter() - started)
            if old is not None:
                started = time.perf_counter()
                previous.score(prompts, completions, rows)
                timings[old_name].append(time.perf_counter() - started)
        got = [value for value, _error in scored.results]
        assert got == expected, f"the sandbox scored {got}, in process {expected}"
    print(f"per call: G={group_size} completions, {calls} calls each, interleaved")
    print(f"{'':22s}{'p50 ms':>10s}{'p99 ms':>10s}")
    for name, values in timings.items():
        print(f"{name:22s}{1000 * percentile(values, 50):10.3f}{1000 * percentile(values, 99):10.3f}")
    print(f"start-up: reward process {trusted_start:.3f} s, sandbox {sandbox_start:.3f} s (once per job)")
    factories = {"sandbox": lambda: RewardSandbox(UPLOADED_LENGTH_TARGET, timeout_seconds=60)}
    if old is not None:
        factories[old_name] = lambda: old.RewardSandbox(UPLOADED_LENGTH_TARGET, timeout_seconds=60)
    starts = start_ups(factories, 20)
    print("start-up to loaded source, 20 each, alternating")
    print(f"{'':22s}{'p50 ms':>10s}{'p99 ms':>10s}")
    for name, values in starts.items():
        print(f"{name:22s}{1000 * percentile(values, 50):10.1f}{1000 * percentile(values, 99):10.1f}")


def per_step(steps: int) -> None:
    from grpo_core import GRPOConfig, GRPOTrainer, LoraSettings, RewardSpec
    from grpo_core.scoring import RewardScorer
    from grpo_core.step import grpo_step

    config = GRPOConfig(
        group_size=8,
        max_new_tokens=64,
        beta=0.04,
        seed=0,
        max_steps=steps + 1,
        checkpoint_every=0,
        lora=LoraSettings(r=8, alpha=16, dropout=0.0, target_modules=("q_proj", "v_proj")),
    )
    uploaded_id = "rwd_" + "0" * 32
    arms = {
        "built-in": ([RewardSpec("length_target", params={"target": TARGET})], {}),
        "uploaded": ([RewardSpec(uploaded_id, params={"target": TARGET})], {uploaded_id: UPLOADED_LENGTH_TARGET}),
    }
    rows = [{"prompt": STORY_PROMPT}]
    trainers, scorers = {}, {}
    for name, (specs, sources) in arms.items():
        trainer = GRPOTrainer(
            base_model="smollm2-135m-instruct",
            train_rows=rows,
            rewards=specs,
            config=config,
            output_dir=".",
            tenant_rewards=sources,
        )
        trainer.setup()
        trainers[name] = trainer
        scorers[name] = RewardScorer(specs, timeout_seconds=60, tenant_sources=sources)
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    try:
        for step in range(steps + 1):
            for name, trainer in trainers.items():
                started = time.perf_counter()
                grpo_step(
                    trainer.model, trainer.tokenizer, trainer.optimizer, trainer.scheduler, rows, trainer.rewards,
                    config, scorer=scorers[name],
                )  # fmt: skip
                if step:  # the first step of each is a warm-up (and starts its reward process or sandbox)
                    seconds[name].append(time.perf_counter() - started)
    finally:
        for scorer in scorers.values():
            scorer.close()
    print(f"per step: SmolLM2-135M-Instruct, G=8, 64 new tokens, {steps} timed steps each, alternating")
    for name in arms:
        print(f"{name:10s} steps " + " ".join(f"{s:.2f}s" for s in seconds[name]))
    built_in, uploaded = statistics.median(seconds["built-in"]), statistics.median(seconds["uploaded"])
    print(
        f"median step: built-in {built_in:.3f} s, uploaded {uploaded:.3f} s, "
        f"difference {100 * (uploaded - built_in) / built_in:+.1f}% of the built-in's step"
    )


def dry_run(repeats: int) -> None:
    """POST /v1/rewards/{id}/test with 3 items through a real API process, beside the sandbox's own start-up plus
    the same 3 calls made directly: what the API adds to a dry run."""
    import os
    import socket
    import subprocess
    import tempfile

    import httpx

    from grpo_core.sandbox import RewardSandbox

    items = [
        {"prompt": STORY_PROMPT, "completion": "x" * n, "fields": {}} for n in (150, 200, 260)
    ]  # three completions around the target
    with tempfile.TemporaryDirectory() as data_dir, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        env = {**os.environ, "GRPO_DATA_DIR": data_dir}
        env.pop("GRPO_DATABASE_URL", None)
        cli = [sys.executable, "-m", "api.cli"]
        subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
        key = subprocess.run([*cli, "keys", "create", "--tenant", "bench"], env=env, check=True, capture_output=True,
                             text=True).stdout.strip()  # fmt: skip
        api = subprocess.Popen([*cli, "api", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"})
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the API did not start"
                time.sleep(0.2)
            files = {"file": ("length.py", UPLOADED_LENGTH_TARGET.encode())}
            reward_id = client.post("/v1/rewards", files=files).raise_for_status().json()["id"]
            api_seconds, direct_seconds = [], []
            for _ in range(repeats):
                started = time.perf_counter()
                answer = client.post(f"/v1/rewards/{reward_id}/test", json={"items": items}).raise_for_status().json()
                api_seconds.append(time.perf_counter() - started)
                started = time.perf_counter()
                with RewardSandbox(UPLOADED_LENGTH_TARGET, timeout_seconds=60) as sandbox:
                    sandbox.start()
                    direct = sandbox.score([i["prompt"] for i in items], [i["completion"] for i in items], [{}] * 3)
                direct_seconds.append(time.perf_counter() - started)
            assert [r["score"] for r in answer["results"]] == [value for value, _error in direct.results]
        finally:
            api.terminate()
            api.wait()
    print(f"dry run of 3 items, {repeats} times each, alternating")
    print(f"{'':34s}{'p50 ms':>10s}{'p99 ms':>10s}")
    for name, values in (("POST /v1/rewards/{id}/test", api_seconds), ("sandbox start + 3 calls", direct_seconds)):
        print(f"{name:34s}{1000 * percentile(values, 50):10.1f}{1000 * percentile(values, 99):10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per trainer")
    parser.add_argument("--calls-only", action="store_true")
    parser.add_argument(
        "--baseline", metavar="REV", help="also time the sandbox as it was at this git revision, interleaved"
    )
    parser.add_argument("--dry-runs", type=int, default=20, help="dry runs through the API (and direct) to time")
    args = parser.parse_args()
    per_call(args.calls, args.group_size, args.baseline)
    print()
    dry_run(args.dry_runs)
    if not args.calls_only:
        print()
        per_step(args.steps)


if __name__ == "__main__":
    main()
