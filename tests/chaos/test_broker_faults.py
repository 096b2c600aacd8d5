"""Cases 2 and 3: the broker loses messages or delivers them twice; the database keeps every job once."""

import re
import time

import pytest

from tests.chaos.harness import Client, figure, job_row, service

pytestmark = pytest.mark.chaos


def test_redis_restart_while_jobs_are_queued_and_running(tmp_path, private_redis):
    with service(tmp_path, database="postgresql", broker_url=private_redis.url) as svc:
        svc.start_api()
        svc.start_worker()
        client = Client(svc)
        dataset = client.upload_arithmetic()
        jobs = [client.submit(dataset, max_steps=6) for _ in range(4)]
        client.wait_step(jobs[0], 2)  # one running, three queued in Redis

        private_redis.kill()  # no persistence: the queued messages are gone
        time.sleep(2)
        private_redis.start()

        finished = [client.wait(job_id, timeout=300) for job_id in jobs]
        rows = [job_row(svc, job_id) for job_id in jobs]
        lost = sum(job["status"] != "succeeded" for job in finished)
        trained_twice = sum(row["attempt"] > 1 or row["steps_computed"] > 6 for row in rows)
        figure("2 Redis restart", jobs=len(jobs), jobs_lost=lost, jobs_trained_twice=trained_twice,
               metric_rows=[len(client.train_steps(j)) for j in jobs])  # fmt: skip
        assert lost == 0 and trained_twice == 0
        assert all(client.train_steps(job_id) == list(range(1, 7)) for job_id in jobs)


def test_visibility_timeout_shorter_than_the_job(tmp_path, private_redis):
    # Redis hands an unacknowledged message to another consumer once it is older than the visibility timeout
    # (10 s here), while the first worker still trains. kombu scans for such messages when a consumer starts and
    # then every 100 s or so; a second worker started after the timeout makes the redelivery happen for sure.
    with service(tmp_path, database="postgresql", broker_url=private_redis.url, GRPO_BROKER_VISIBILITY_TIMEOUT="10",
                 GRPO_LEASE_SECONDS="30") as svc:  # fmt: skip
        svc.start_api()
        svc.start_worker()
        client = Client(svc)
        dataset = client.upload_arithmetic()
        started = time.monotonic()
        job_id = client.submit(dataset, max_steps=1000)  # over a minute alone on 2 cores
        client.wait_step(job_id, 1)
        time.sleep(15)
        svc.start_worker()
        job = client.wait(job_id, timeout=900)
        took = time.monotonic() - started
        row = job_row(svc, job_id)
        # The message Redis hands on is a turn: the job it started is running, so the second delivery starts nothing
        # (nothing else waits), where a job's own message (grpo.run_job) would find the lease held and back off.
        logs = svc.logs()
        backoffs = len(re.findall(rf"job {job_id} is held by another worker", logs))
        backoffs += len(re.findall(rf"turn on {re.escape(svc.env['GRPO_QUEUE'])}: no job to start", logs))
        figure("3 visibility timeout", visibility_timeout_s=10, job_seconds=round(took), training_attempts_started=row["attempt"],
               redeliveries_backed_off=backoffs, status=job["status"], metric_rows=len(client.train_steps(job_id)))  # fmt: skip
        assert took > 3 * 10, "the job must outlast the visibility timeout for this case to mean anything"
        assert backoffs >= 1, "Redis redelivered the running job's turn at least once, and it started nothing"
        assert job["status"] == "succeeded" and row["attempt"] == 1 and row["steps_computed"] == 1000
