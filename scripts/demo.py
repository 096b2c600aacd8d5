"""`make demo`: the whole product once, through the REST API, on the real SmolLM2-135M-Instruct.

Starts `grpo serve` on a fresh data folder, creates an API key, and with the Python client (grpo_client) uploads
the demo task (single-digit addition, train and held-out splits), submits a GRPO job, follows its event stream,
downloads the adapter (its sha256 checked), loads it with peft, prints the held-out reward before and after, and
stops the service it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import httpx

from grpo_client import Client
from grpo_core import arithmetic_task

HYPERPARAMETERS = {
    "group_size": 8,
    "prompts_per_step": 1,
    "learning_rate": 2e-4,
    "beta": 0.0,
    "max_new_tokens": 48,
    "checkpoint_every": 10,
    "eval_samples_per_prompt": 2,
    "lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def wait_ready(base_url: str, service: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            sys.exit(f"grpo serve exited with {service.returncode}; see its log")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit("grpo serve did not become ready in time")


def follow(client: Client, job_id: str, max_steps: int) -> None:
    """Print the job's progress from its Server-Sent Events until it finishes."""
    recent: list[float] = []
    started = time.monotonic()
    for event in client.jobs.watch(job_id):
        data = event.data
        if event.type == "status":
            print(f"[{time.monotonic() - started:5.0f}s] job {data['status']}", flush=True)
        elif event.type == "metrics" and data["kind"] == "eval":
            values = data["values"]
            print(
                f"[{time.monotonic() - started:5.0f}s] held-out reward at step {data['step']}: "
                f"sampled {values['eval_reward_sampled']:.3f}, greedy {values['eval_reward_greedy']:.3f}",
                flush=True,
            )
        elif event.type == "metrics":
            values = data["values"]
            recent = (recent + [values["reward_mean"]])[-10:]
            print(
                f"[{time.monotonic() - started:5.0f}s] step {data['step']:3d}/{max_steps}  reward {values['reward_mean']:.3f}"
                f"  (last 10 steps: {sum(recent) / len(recent):.3f})  length {values['completion_length_mean']:.0f}"
                f"  {values['step_seconds']:.1f}s/step",
                flush=True,
            )


def main() -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--data-dir", type=Path, default=Path(".grpo/demo"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    began = time.monotonic()
    # SIGTERM (a timeout, a CI runner) unwinds like Ctrl-C, so the finally below stops the service this started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    shutil.rmtree(args.data_dir, ignore_errors=True)
    env = {**os.environ, "GRPO_DATA_DIR": str(args.data_dir.resolve())}
    for name in ("GRPO_DATABASE_URL", "GRPO_BROKER_URL"):
        env.pop(name, None)  # the demo is the embedded default
    grpo = [sys.executable, "-m", "api.cli"]
    key = subprocess.run(
        [*grpo, "keys", "create", "--tenant", "demo"], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    print(f"created an API key for tenant 'demo': {key[:13]}...")

    base_url = f"http://127.0.0.1:{args.port}"
    args.data_dir.mkdir(parents=True, exist_ok=True)
    service_log = args.data_dir / "serve.log"
    print(f"starting grpo serve on {base_url} (its log: {service_log})")
    service = subprocess.Popen(
        [*grpo, "serve", "--port", str(args.port)],
        env=env,
        start_new_session=True,
        stdout=open(service_log, "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(base_url, service)
        client = Client(base_url, key)
        train_rows, eval_rows = arithmetic_task()
        train_id = client.datasets.upload(write_jsonl(args.data_dir / "train.jsonl", train_rows))["id"]
        eval_id = client.datasets.upload(write_jsonl(args.data_dir / "heldout.jsonl", eval_rows))["id"]
        print(f"uploaded {len(train_rows)} training prompts and {len(eval_rows)} held-out prompts ('What is 6 + 8?')")

        job = client.jobs.create(
            model=args.model,
            dataset=train_id,
            eval_dataset=eval_id,
            rewards=[{"name": "numeric_answer", "weight": 1.0}],
            hyperparameters={**HYPERPARAMETERS, "max_steps": args.steps, "eval_every": args.steps, "seed": args.seed},
        )
        print(f"submitted {job['id']}: {args.model}, {args.steps} steps, G={HYPERPARAMETERS['group_size']}")
        follow(client, job["id"], args.steps)

        job = client.jobs.get(job["id"])
        if job["status"] != "succeeded":
            print(f"job {job['status']}: {job['error']}")
            return 1
        download = client.jobs.download(job["id"], args.data_dir / "adapter.tar.gz")  # raises if the sha256 differs
        adapter_root = args.data_dir / "downloaded"
        with tarfile.open(download.path, mode="r:gz") as archive:
            folder = adapter_root / archive.getnames()[0].split("/")[0]
            archive.extractall(adapter_root, filter="data")
        print(
            f"downloaded the adapter ({download.bytes / 1e6:.1f} MB, sha256 {download.sha256[:16]}... verified) to {folder}"
        )

        from peft import PeftModel

        from grpo_core import load_base_model

        base, _ = load_base_model(args.model)
        PeftModel.from_pretrained(base, folder)
        print("loaded it with PeftModel.from_pretrained onto the base model")

        evals = [m for m in client.jobs.metrics(job["id"]) if m["kind"] == "eval"]
        before, after = evals[0]["values"], evals[-1]["values"]
        print()
        print(f"held-out reward ({len(eval_rows)} questions never trained on), before -> after {args.steps} steps:")
        print(f"  sampled at temperature 1: {before['eval_reward_sampled']:.3f} -> {after['eval_reward_sampled']:.3f}")
        print(f"  greedy:                   {before['eval_reward_greedy']:.3f} -> {after['eval_reward_greedy']:.3f}")
        print(f"demo wall time: {(time.monotonic() - began) / 60:.1f} min")
        return 0
    finally:
        os.killpg(service.pid, signal.SIGTERM)
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
        print("stopped the service")


if __name__ == "__main__":
    sys.exit(main())
