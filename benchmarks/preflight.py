"""Pre-flight on SmolLM2-135M-Instruct through REST: three tasks whose verdicts should differ, and the estimated
duration of a job against the measured duration of the same job.

    .venv/bin/python benchmarks/preflight.py            # about 10 minutes on a laptop CPU

Starts its own API and Celery worker (SQLite and the folder broker, in a temporary folder) and, through REST:
1. pre-flights three tasks: the bundled addition task (the base model solves some single-digit sums: expect ok),
   multiplying two 4-digit numbers (it almost never does: expect too_hard), and "What is 1 + 1?" scored by a
   regex, at temperature 0.3 (it almost always answers 2: expect too_easy);
2. runs the addition job itself for --steps steps, and compares its measured duration (started_at to finished_at,
   model load included) with the addition pre-flight's estimated_job_seconds.
Prints each pre-flight's figures and verdict, then the comparison. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from grpo_core.data import arithmetic_task


def tasks(seed: int = 0) -> dict[str, tuple[list[dict], list[dict], dict]]:
    """name -> (rows, rewards, hyperparameters of its own). At temperature 1 SmolLM2-135M solves nothing every
    time (even "Reply with the word yes." only 4 times in 10), so the task it almost always solves, 1 + 1, is sampled
    at temperature 0.3, as a job that wants it so would ask."""
    rng = random.Random(seed)
    multiply = []
    for _ in range(64):
        a, b = rng.randrange(1000, 10000), rng.randrange(1000, 10000)
        multiply.append({"prompt": f"What is {a} * {b}? Reply with the number only.", "answer": a * b})
    openers = ["", "Please. ", "Hello! ", "Quick one. ", "Test: ", "Hi. ", "Now: ", "OK. "]
    easy = [{"prompt": f"{opener}What is 1 + 1?"} for opener in openers for _ in range(2)]
    return {
        "addition": (arithmetic_task()[0], [{"name": "numeric_answer"}], {}),
        "multiply-4-digit": (multiply, [{"name": "numeric_answer"}], {}),
        "one-plus-one": (
            easy,
            [{"name": "regex_match", "params": {"pattern": "\\b2\\b|(?i:two)"}}],
            {"temperature": 0.3},
        ),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(folder: Path, prompts: int) -> tuple[str, dict, list[subprocess.Popen]]:
    env = {**os.environ, "GRPO_DATA_DIR": str(folder / "data"), "GRPO_PREFLIGHT_PROMPTS": str(prompts)}
    for name in ("GRPO_DATABASE_URL", "GRPO_BROKER_URL"):
        env.pop(name, None)
    subprocess.run([sys.executable, "-m", "api.cli", "migrate"], env=env, check=True)
    port = free_port()
    logs = [open(folder / f"{name}.log", "w") for name in ("api", "worker")]
    processes = [
        subprocess.Popen([sys.executable, "-m", "api.cli", "api", "--port", str(port)], env=env, stdout=logs[0],
                         stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "-m", "api.cli", "worker"], env=env, stdout=logs[1],
                         stderr=subprocess.STDOUT),
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(base_url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the API did not start; see " + str(folder / "api.log"))
        time.sleep(0.5)
    return base_url, env, processes


def wait(client: httpx.Client, path: str) -> dict:
    while True:
        body = client.get(path).json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=10, help="the job's max_steps, pre-flighted and then run")
    parser.add_argument("--prompts", type=int, default=16, help="GRPO_PREFLIGHT_PROMPTS")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--tasks", nargs="+", choices=list(tasks()), default=list(tasks()), help="tasks to pre-flight")
    parser.add_argument("--no-job", action="store_true", help="skip running the addition job")
    args = parser.parse_args()
    if not args.no_job and "addition" not in args.tasks:
        args.tasks.append("addition")  # the job's estimate comes from its pre-flight
    hyperparameters = {
        "group_size": args.group_size,
        "prompts_per_step": args.prompts_per_step,
        "max_new_tokens": args.max_new_tokens,
        "max_steps": args.steps,
        "checkpoint_every": args.steps,
        "beta": 0.04,
    }
    with tempfile.TemporaryDirectory() as folder:
        base_url, env, processes = start_service(Path(folder), args.prompts)
        try:
            key = subprocess.run(
                [sys.executable, "-m", "api.cli", "keys", "create", "--tenant", "bench"],
                env=env, check=True, capture_output=True, text=True,
            ).stdout.strip()  # fmt: skip
            client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
            specs = {}
            for name, (rows, rewards, own) in tasks().items():
                if name not in args.tasks:
                    continue
                content = "".join(json.dumps(row) + "\n" for row in rows).encode()
                dataset = client.post("/v1/datasets", files={"file": (f"{name}.jsonl", content)}).json()
                specs[name] = {
                    "base_model": args.model,
                    "dataset_id": dataset["id"],
                    "rewards": rewards,
                    "hyperparameters": {**hyperparameters, **own},
                }
            print(f"model {args.model}, {args.prompts} prompts, hyperparameters {hyperparameters}\n", flush=True)
            results = {}
            for name, spec in specs.items():
                if name not in args.tasks:
                    continue
                created = client.post("/v1/jobs/preflight", json=spec)
                created.raise_for_status()
                preflight = wait(client, f"/v1/preflights/{created.json()['id']}")
                if preflight["status"] != "succeeded":
                    raise SystemExit(f"{name}: pre-flight {preflight['status']}: {preflight['error']}")
                result = results[name] = preflight["result"]
                print(f"== {name}: {result['verdict']}")
                print(
                    f"   reward mean {result['reward_mean']:.3f} std {result['reward_std']:.3f}; "
                    f"flat groups {result['flat_groups']}/{result['prompts']} (low {result['flat_low_groups']}, "
                    f"high {result['flat_high_groups']}); "
                    + ", ".join(f"{r['name']} mean {r['mean']:.3f} errors {r['errors']}" for r in result["rewards"])
                )
                print(
                    f"   completion length {result['completion_length_mean']:.1f} tokens, truncated "
                    f"{result['truncated_fraction']:.0%}; {result['seconds_per_step']:.2f} s/step, load "
                    f"{result['load_seconds']:.1f} s, estimate {result['estimated_job_seconds']:.1f} s"
                )
                print(f"   {result['message']}")
                for warning in result["warnings"]:
                    print(f"   warning: {warning}")
                print(flush=True)
            if args.no_job:
                return
            created = client.post("/v1/jobs", json=specs["addition"])
            created.raise_for_status()
            job = wait(client, f"/v1/jobs/{created.json()['id']}")
            if job["status"] != "succeeded":
                raise SystemExit(f"the addition job {job['status']}: {job['error']}")
            measured = (
                datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
            ).total_seconds()
            rows = client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
            steps = [row["values"]["step_seconds"] for row in rows if row["kind"] == "train"]
            estimate = results["addition"]["estimated_job_seconds"]
            print(f"== addition job, {args.steps} steps through REST")
            print(
                f"   measured {measured:.1f} s (started_at to finished_at); steps {sum(steps):.1f} s in all, "
                f"{sum(steps) / len(steps):.2f} s/step (first {steps[0]:.2f}, median {sorted(steps)[len(steps) // 2]:.2f})"
            )
            print(
                f"   pre-flight estimate {estimate:.1f} s: {100 * (estimate - measured) / measured:+.1f}% "
                f"({'within' if abs(estimate - measured) <= 0.3 * measured else 'outside'} 30%)"
            )
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    main()
