"""How long the API process takes to start and how much memory it holds, for one checkout or several side by side.

    .venv/bin/python benchmarks/api_startup.py                              # this checkout
    .venv/bin/python benchmarks/api_startup.py --repo . --repo /tmp/main    # and another one, alternating
    .venv/bin/python benchmarks/api_startup.py --importtime                 # plus where `import api.main` goes

Each repetition makes a fresh data folder, applies the migrations (not timed), then spawns `python -m api.cli api`
(what `grpo api` runs) and times spawn to the first 200 of GET /healthz. It reads VmRSS and VmHWM from
/proc/<pid>/status then, and again after a short burst of requests (a dataset upload, a job, GET /v1/jobs/{id}
and its metrics, the job list), and whether torch's shared library is mapped into the process at each point.
Repetitions alternate the checkouts; it prints every repetition and the medians.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def child_env(repo: Path, data_dir: Path | None = None) -> dict[str, str]:
    """The environment of a process of `repo`: its code first on the path, no GRPO_ setting of ours leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPO_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(repo)
    if data_dir is not None:
        env["GRPO_DATA_DIR"] = str(data_dir)
    return env


def run_in(repo: Path, code: str, data_dir: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, env=child_env(repo, data_dir), capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(f"{repo}: {result.stderr[-2000:]}")
    return result.stdout.strip()


def imports_torch(repo: Path) -> bool:
    return run_in(repo, "import api.main, sys; print('torch' in sys.modules)") == "True"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM in MiB, and whether libtorch is mapped into the process."""
    status = Path(f"/proc/{pid}/status").read_text()
    figures = {name: int(re.search(rf"{name}:\s+(\d+) kB", status).group(1)) / 1024 for name in ("VmRSS", "VmHWM")}
    figures["torch"] = float("libtorch" in Path(f"/proc/{pid}/maps").read_text())
    return figures


def burst(base: str, key: str, requests: int) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        content = b'{"prompt": "What is 2 + 2?", "answer": 4}\n'
        dataset = client.post("/v1/datasets", files={"file": ("p.jsonl", content, "application/jsonl")})
        spec = {"base_model": "tiny-random-llama", "dataset_id": dataset.json()["id"]}
        job = client.post("/v1/jobs", json={**spec, "rewards": [{"name": "numeric_answer"}]})
        job.raise_for_status()
        for index in range(requests):
            path = ("/v1/jobs/{id}", "/v1/jobs/{id}/metrics", "/v1/jobs")[index % 3]
            client.get(path.replace("{id}", job.json()["id"])).raise_for_status()


def one_start(repo: Path, requests: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        run_in(repo, "from api.cli import main; main(['migrate'])", data_dir)
        key = run_in(repo, "from api.cli import main; main(['keys', 'create', '--tenant', 'startup'])", data_dir)
        port = free_port()
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "api", "--port", str(port)],
            cwd=repo,
            env=child_env(repo, data_dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"{repo}: the API exited with {process.returncode}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
            figures = {"start_s": time.perf_counter() - started}
            figures.update({f"{name}_start": value for name, value in memory(process.pid).items()})
            burst(f"http://127.0.0.1:{port}", key, requests)
            figures.update({f"{name}_burst": value for name, value in memory(process.pid).items()})
            return figures
        finally:
            process.terminate()
            process.wait()


def import_costs(repo: Path, top: int) -> list[tuple[str, float]]:
    """Seconds of `import api.main` by top-level package (each module's own time, summed)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import api.main"],
        cwd=repo, env=child_env(repo), capture_output=True, text=True, check=True,
    )  # fmt: skip
    seconds: Counter[str] = Counter()
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            seconds[match.group(2).split(".")[0]] += int(match.group(1)) / 1e6
    return seconds.most_common(top)


HEADER = (
    f"{'checkout':28s} {'start s':>7s} {'RSS MiB':>8s} {'HWM MiB':>8s} {'torch':>5s}"
    f" {'RSS after':>9s} {'HWM after':>9s} {'torch':>5s}"
)


def row(name: str, figures: dict[str, float]) -> str:
    def torch(value: float) -> str:
        return "yes" if value >= 0.5 else "no"

    return (
        f"{name:28s} {figures['start_s']:7.2f} {figures['VmRSS_start']:8.0f} {figures['VmHWM_start']:8.0f}"
        f" {torch(figures['torch_start']):>5s} {figures['VmRSS_burst']:9.0f} {figures['VmHWM_burst']:9.0f}"
        f" {torch(figures['torch_burst']):>5s}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, action="append", help="a checkout to measure (repeatable; default: this)")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="requests in the burst after start-up")
    parser.add_argument("--importtime", action="store_true", help="also print the costliest packages to import")
    args = parser.parse_args()
    repos = {f"{repo.resolve().name}": repo.resolve() for repo in (args.repo or [REPO])}

    for name, repo in repos.items():
        commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        where = f"at {commit.stdout.strip()}" if commit.returncode == 0 else "(not a git checkout)"
        print(f"{name}: {repo} {where}; `import api.main` imports torch: {imports_torch(repo)}")
    print(
        f"\n`python -m api.cli api`, spawn to the first 200 of GET /healthz, then {args.requests} requests;"
        f" torch: libtorch mapped in the process\n      {HEADER}"
    )
    results: dict[str, list[dict[str, float]]] = {name: [] for name in repos}
    for repetition in range(args.repetitions):
        order = list(repos) if repetition % 2 == 0 else list(repos)[::-1]
        for name in order:
            results[name].append(one_start(repos[name], args.requests))
            print(f"{repetition + 1:5d} {row(name, results[name][-1])}", flush=True)
    print(f"\nmedians over {args.repetitions} repetitions\n      {HEADER}")
    for name, runs in results.items():
        print(f"      {row(name, {field: statistics.median(r[field] for r in runs) for field in runs[0]})}")

    if args.importtime:
        for name, repo in repos.items():
            costs = ", ".join(f"{package} {seconds:.2f}" for package, seconds in import_costs(repo, 12))
            print(f"\n`import api.main` in {name}, seconds by package (own time): {costs}")


if __name__ == "__main__":
    main()
