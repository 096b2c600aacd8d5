"""Load on the hot read endpoints against a minimal FastAPI app, and the query plans behind them.

    .venv/bin/python benchmarks/api_load.py                        # SQLite (the embedded default)
    .venv/bin/python benchmarks/api_load.py --database postgresql  # the local PostgreSQL, a fresh database
    .venv/bin/python benchmarks/api_load.py --other /tmp/before    # and another checkout's API, side by side

Seeds a fresh database (our migrations; one job with 10,000 metric rows, written the way the worker writes them),
then starts, under the same uvicorn settings, our API and `minimal_app.py` (the same job read written the plain
way) on that database, plus the API of each `--other` checkout. wrk drives GET /v1/jobs/{id} on each app in turn,
alternating the order over rounds, then our metrics pages; it prints requests per second and p50/p99 latency per
round and their medians, ours over the minimal app's, then the database's plan for each query those endpoints run.
Needs wrk (Debian: apt-get install wrk).
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
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.service_env import clear_service_caches, fresh_database  # noqa: E402

LATENCY_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d rps=%.1f p50_ms=%.2f p99_ms=%.2f errors=%d\\n",
    summary.requests, summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def seed(rows: int) -> tuple[str, str]:
    from api.schemas import JobCreate
    from api.services import datasets as datasets_service
    from api.services import jobs as jobs_service
    from api.services import keys as keys_service
    from service_core.db import run_migrations, session_scope
    from worker import writes

    run_migrations()
    with session_scope() as session:
        key = keys_service.create_api_key(session, tenant_name="load")
        tenant_id = session.execute(__import__("sqlalchemy").text("SELECT id FROM tenants")).scalar()
        dataset = datasets_service.create_dataset(
            session, tenant_id=tenant_id, name="d.jsonl", content=b'{"prompt": "2+2?", "answer": 4}\n'
        )
        spec = JobCreate(base_model="tiny-random-llama", dataset_id=dataset.id, rewards=[{"name": "numeric_answer"}])
        job, _ = jobs_service.create_job(session, tenant_id=tenant_id, spec=spec, idempotency_key=None)
        job_id = job.id
    values = {
        name: 0.5 for name in ("reward_mean", "reward_std", "loss", "kl", "grad_norm", "learning_rate", "step_seconds")
    }
    for start in range(1, rows + 1, 1000):
        with session_scope() as session:
            for step in range(start, min(start + 1000, rows + 1)):
                writes.record_metrics(session, job_id=job_id, kind="train", step=step, values=values)
    return key, job_id


def query_plans(job_id: str) -> list[tuple[str, str]]:
    from sqlalchemy import text

    from service_core.db import get_engine

    engine = get_engine()
    sqlite = engine.dialect.name == "sqlite"
    explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
    queries = {
        "key lookup (a key unseen for 30 s)": "SELECT key_hash, tenant_id FROM api_keys WHERE prefix = 'grpo_abcdefgh'",
        "job by id and tenant": f"SELECT * FROM jobs WHERE id = '{job_id}' AND tenant_id = 'x'",
        "metric steps page": f"SELECT step FROM metrics WHERE job_id = '{job_id}' AND step > 5000 GROUP BY step ORDER BY step LIMIT 201",
        "metric rows page": f"SELECT * FROM metrics WHERE job_id = '{job_id}' AND step > 5000 AND step <= 5200 ORDER BY step, kind DESC",
        "events after id": f"SELECT * FROM events WHERE job_id = '{job_id}' AND id > 100 ORDER BY id LIMIT 500",
    }
    plans = []
    with engine.connect() as connection:
        for name, sql in queries.items():
            rows = connection.execute(text(explain + sql)).all()
            plans.append((name, " | ".join(str(row[-1]) for row in rows)))
    return plans


UVICORN_SETTINGS = [
    "--workers",
    "1",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--log-level",
    "warning",
    "--no-access-log",
]
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    # Other people's servers share this machine: never assume a fixed port is ours.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(target: str, port: int, pythonpath: Path) -> subprocess.Popen:
    """`uvicorn target` on `port`, importing from the checkout at `pythonpath` (its working directory too: uvicorn
    puts that first on sys.path), under the settings every app here shares."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "uvicorn", target, "--port", str(port), *UVICORN_SETTINGS]
    process = subprocess.Popen(command, env=env, cwd=pythonpath)
    for _ in range(300):
        if process.poll() is not None:
            raise SystemExit(f"{target} ({pythonpath}) exited with {process.returncode}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{target} did not answer on port {port}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(url: str, key: str, script: Path, connections: int, seconds: int, pid: int) -> dict[str, float]:
    """wrk's figures for `url`, plus the server's CPU milliseconds per request (steadier than req/s on a
    machine others share: it counts the work, not the waiting for a core)."""
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
         "-H", f"Authorization: Bearer {key}", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result = {name: float(value) for name, value in re.findall(r"(\w+)=([\d.]+)", out.split("RESULT", 1)[1])}
    result["cpu_ms"] = 1000 * (cpu_seconds(pid) - cpu_before) / max(result["requests"], 1)
    return result


HEADER = f"{'app':18s} {'endpoint':52s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'CPU ms/req':>10s} {'errors':>6s}"


def row(app: str, path: str, result: dict[str, float]) -> str:
    return (
        f"{app:18s} {'GET ' + path:52s} {result['rps']:7.0f} {result['p50_ms']:7.1f} {result['p99_ms']:7.1f}"
        f" {result['cpu_ms']:10.3f} {int(result['errors']):6d}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--minimal-async",
        action="store_true",
        help="add minimal_app.py's async variant (aiosqlite; needs aiosqlite and greenlet installed)",
    )
    parser.add_argument(
        "--other", type=Path, action="append", default=[], help="another checkout whose API joins the comparison"
    )
    parser.add_argument("--no-metrics", action="store_true", help="drive GET /v1/jobs/{id} only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.database, Path(tmp)) as url:
        os.environ.update(GRPO_DATA_DIR=str(Path(tmp) / "data"), GRPO_DATABASE_URL=url)
        clear_service_caches()
        key, job_id = seed(args.rows)
        apps = {"ours": ("api.main:app", REPO), "minimal": ("benchmarks.minimal_app:app", REPO)}
        if args.minimal_async:
            apps["minimal async"] = ("benchmarks.minimal_app:async_app", REPO)
        for other in args.other:
            apps[f"ours@{other.name}"] = ("api.main:app", other.resolve())
        processes: dict[str, subprocess.Popen] = {}
        ports = {}
        try:
            for name, (target, pythonpath) in apps.items():
                ports[name] = free_port()
                processes[name] = start_app(target, ports[name], pythonpath)
            script = Path(tmp) / "latency.lua"
            script.write_text(LATENCY_SCRIPT)
            print(
                f"\n{args.database}: one uvicorn process per app ({' '.join(UVICORN_SETTINGS)}), wrk {args.connections}"
                f" connections x {args.seconds} s on loopback, {args.rounds} rounds alternating the order"
            )
            paths = {"job": f"/v1/jobs/{job_id}", "metrics": f"/v1/jobs/{job_id}/metrics",
                     "metrics tail": f"/v1/jobs/{job_id}/metrics?after_step=9800&limit=200"}  # fmt: skip
            runs = [(name, "job") for name in apps]
            if not args.no_metrics:
                runs += [
                    (name, page) for name in apps if name.startswith("ours") for page in ("metrics", "metrics tail")
                ]
            results: dict[tuple[str, str], list[dict[str, float]]] = {run: [] for run in runs}
            print(f"{'round':>5s} {HEADER}")
            for round_index in range(args.rounds):
                for name, endpoint in runs if round_index % 2 == 0 else runs[::-1]:
                    path = paths[endpoint]
                    result = drive(
                        f"http://127.0.0.1:{ports[name]}{path}",
                        key,
                        script,
                        args.connections,
                        args.seconds,
                        processes[name].pid,
                    )
                    results[name, endpoint].append(result)
                    print(f"{round_index + 1:5d} {row(name, path.replace(job_id, '{id}'), result)}")
        finally:
            for process in processes.values():
                process.terminate()
                process.wait()

        print(f"\nmedians over {args.rounds} rounds\n      {HEADER}")
        medians = {}
        for (name, endpoint), rounds in results.items():
            medians[name, endpoint] = {field: statistics.median(r[field] for r in rounds) for field in rounds[0]}
            print(f"      {row(name, paths[endpoint].replace(job_id, '{id}'), medians[name, endpoint])}")
        minimal = medians["minimal", "job"]
        for name in apps:
            if name.startswith("ours"):
                ours = medians[name, "job"]
                print(
                    f"GET /v1/jobs/{{id}}, {name} / minimal: req/s {ours['rps'] / minimal['rps']:.2f}x,"
                    f" p99 {ours['p99_ms']:.1f} vs {minimal['p99_ms']:.1f} ms,"
                    f" CPU per request {ours['cpu_ms'] / minimal['cpu_ms']:.2f}x"
                )

        print(f"\nquery plans ({args.rows} metric rows):")
        for name, plan in query_plans(job_id):
            print(f"  {name}: {plan}")
        from service_core.db import get_engine

        get_engine().dispose()


if __name__ == "__main__":
    main()
