"""Cases 4 and 7: the API dies mid-burst; SQLite under the API and two workers writing at once."""

import random
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.chaos.harness import Client, figure, service

pytestmark = pytest.mark.chaos


def test_api_killed_during_a_burst_of_idempotent_submissions(tmp_path):
    # 200 jobs of one tenant queued at once, with no worker: past the default cap on queued jobs on purpose.
    with service(tmp_path, GRPO_MAX_QUEUED_JOBS_PER_TENANT="1000") as svc:
        svc.start_api()
        client = Client(svc)
        dataset = client.upload_arithmetic()
        headers = dict(client.http.headers)
        keys = [f"burst-{uuid.uuid4().hex}" for _ in range(200)]
        acknowledged: dict[str, str] = {}
        refused: list[str] = []  # answers a retry cannot change: the test fails on them instead of retrying forever
        retries = 0
        lock = threading.Lock()

        def submit_all(my_keys):
            nonlocal retries
            with httpx.Client(base_url=svc.base_url, headers=headers, timeout=10) as http:
                for key in my_keys:
                    while True:  # a client that retries with the same Idempotency-Key until it gets an answer
                        try:
                            response = http.post(
                                "/v1/jobs",
                                headers={"Idempotency-Key": key},
                                json={
                                    "base_model": "tiny-random-llama",
                                    "dataset_id": dataset,
                                    "rewards": [{"name": "numeric_answer"}],
                                },
                            )
                            if response.status_code == 201:
                                with lock:
                                    acknowledged[key] = response.json()["id"]
                                break
                            if 400 <= response.status_code < 500:
                                with lock:
                                    refused.append(f"{response.status_code} {response.text[:200]}")
                                break
                        except httpx.HTTPError:
                            pass
                        with lock:
                            retries += 1
                        time.sleep(0.1)

        threads = [threading.Thread(target=submit_all, args=(keys[i::8],)) for i in range(8)]
        for thread in threads:
            thread.start()
        kills = 0
        for _ in range(2):  # kill -9 the API twice mid-burst, and bring it back
            time.sleep(random.uniform(1.0, 2.5))
            svc.kill_api()
            kills += 1
            time.sleep(0.5)
            svc.start_api()
        for thread in threads:
            thread.join(timeout=300)

        engine = create_engine(svc.env["GRPO_DATABASE_URL"])
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT idempotency_key, id FROM jobs WHERE idempotency_key LIKE 'burst-%'")
            ).all()
        engine.dispose()
        stored = {}
        for key, job_id in rows:
            stored.setdefault(key, []).append(job_id)
        duplicates = sum(len(ids) - 1 for ids in stored.values())
        missing = sum(key not in stored for key in acknowledged)
        mismatched = sum(stored.get(key, [None])[0] != job_id for key, job_id in acknowledged.items())
        figure("4 API killed mid-burst", submissions=len(keys), api_kills=kills, client_retries=retries, acknowledged=len(acknowledged),
               stored=len(rows), duplicates=duplicates, acknowledged_but_missing=missing, id_mismatches=mismatched)  # fmt: skip
        assert not refused, refused
        assert len(acknowledged) == 200 and len(rows) == 200 and duplicates == missing == mismatched == 0


def test_sqlite_with_the_api_and_two_workers_writing_for_a_minute(tmp_path):
    with service(tmp_path) as svc:
        svc.start_api()
        svc.start_worker()
        svc.start_worker()
        client = Client(svc)
        dataset = client.upload_arithmetic()
        errors: list[str] = []
        submitted: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if len(submitted) < 4 or client.job(submitted[-4])["status"] != "queued":  # keep a few queued
                    submitted.append(client.submit(dataset, max_steps=4, checkpoint_every=1, eval_every=2))
                for job_id in submitted[-3:]:
                    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/metrics", f"/v1/jobs/{job_id}/checkpoints"):
                        response = client.http.get(path)
                        if response.status_code >= 500:
                            errors.append(f"{path}: {response.status_code} {response.text[:200]}")
                if len(submitted) % 5 == 0:
                    client.http.post(f"/v1/jobs/{submitted[-1]}/cancel")
            except httpx.HTTPError as error:
                errors.append(repr(error))
            time.sleep(0.05)
        for job_id in submitted:
            client.wait(job_id, timeout=300)
        logs = svc.logs()
        locked = logs.count("database is locked")
        engine = create_engine(svc.env["GRPO_DATABASE_URL"])
        with engine.connect() as connection:
            written = {
                t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                for t in ("jobs", "metrics", "checkpoints", "events")
            }
        engine.dispose()
        failed = sum(client.job(j)["status"] == "failed" for j in submitted)
        figure(
            "7 SQLite, API + 2 workers, 60 s",
            database_is_locked_errors=locked,
            server_errors=len(errors),
            jobs_failed=failed,
            rows_written=written,
        )
        assert locked == 0 and errors == [] and failed == 0
