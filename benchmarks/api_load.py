"""Load on the hot read endpoints, and the query plans behind them.

    .venv/bin/python benchmarks/api_load.py                        # SQLite (the embedded default)
    .venv/bin/python benchmarks/api_load.py --database postgresql  # the local PostgreSQL, a fresh database

Starts `grpo api` on a fresh database, seeds one job with 10,000 metric rows the way the worker writes them,
drives GET /v1/jobs/{id} and GET /v1/jobs/{id}/metrics with wrk on loopback (no job training), and prints
requests per second and p50/p99 latency, then the database's plan for each query those endpoints run.
Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import os
import re
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
  io.write(string.format("RESULT rps=%.1f p50_ms=%.2f p99_ms=%.2f errors=%d\\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def seed(rows: int) -> tuple[str, str]:
    from api.db import run_migrations, session_scope
    from api.schemas import JobCreate
    from api.services import datasets as datasets_service
    from api.services import jobs as jobs_service
    from api.services import keys as keys_service
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

    from api.db import get_engine

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.database, Path(tmp)) as url:
        os.environ.update(GRPO_DATA_DIR=str(Path(tmp) / "data"), GRPO_DATABASE_URL=url)
        clear_service_caches()
        key, job_id = seed(args.rows)
        port = 8790
        env = {**os.environ}
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.main:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
        )
        try:
            for _ in range(100):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            script = Path(tmp) / "latency.lua"
            script.write_text(LATENCY_SCRIPT)
            print(
                f"\n{args.database}: one uvicorn process, wrk {args.connections} connections x {args.seconds} s on loopback"
            )
            print(f"{'endpoint':52s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s}")
            for path in (
                f"/v1/jobs/{job_id}",
                f"/v1/jobs/{job_id}/metrics",
                f"/v1/jobs/{job_id}/metrics?after_step=9800&limit=200",
            ):
                out = subprocess.run(
                    ["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "-s", str(script),
                     "-H", f"Authorization: Bearer {key}", f"http://127.0.0.1:{port}{path}"],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                result = dict(re.findall(r"(\w+)=([\d.]+)", out.split("RESULT", 1)[1]))
                shown = path.replace(job_id, "{id}")
                print(
                    f"GET {shown:48s} {float(result['rps']):8.0f} {float(result['p50_ms']):8.1f} {float(result['p99_ms']):8.1f} {int(result['errors']):7d}"
                )
        finally:
            api.terminate()
            api.wait()
        print(f"\nquery plans ({args.rows} metric rows):")
        for name, plan in query_plans(job_id):
            print(f"  {name}: {plan}")
        from api.db import get_engine

        get_engine().dispose()


if __name__ == "__main__":
    main()
