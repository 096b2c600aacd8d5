"""Fair turns survive restarts: tenant a queues several jobs, tenant b then one; the worker is killed with SIGKILL
mid-job and the API killed too, both start again, and every job finishes, b's started before all of a's but the one
already running when b submitted (worker/turns.py; the turns lost with the killed processes are made up by the
reconciler and by the worker that ends a job)."""

import os
import signal
from datetime import datetime

import pytest

from tests.chaos.harness import Client, figure, service

pytestmark = pytest.mark.chaos
A_JOBS = 4


def test_turns_survive_a_killed_worker_and_api(tmp_path):
    with service(tmp_path) as svc:
        svc.start_api()
        supervisor = svc.start_worker()
        a, b = Client(svc, "tenant-a"), Client(svc, "tenant-b")
        a_dataset, b_dataset = a.upload_arithmetic(), b.upload_arithmetic()
        a_jobs = [a.submit(a_dataset, max_steps=4, checkpoint_every=2) for _ in range(A_JOBS)]
        a.wait_step(a_jobs[0], 1)  # the one worker is on a's first job
        b_job = b.submit(b_dataset, max_steps=2)

        os.kill(svc.worker_pid(supervisor), signal.SIGKILL)  # its supervisor starts it again
        svc.kill_api()
        svc.start_api()

        finished = {job_id: a.wait(job_id, timeout=600) for job_id in a_jobs}
        finished[b_job] = b.wait(b_job, timeout=600)
        started = {job_id: datetime.fromisoformat(job["started_at"]) for job_id, job in finished.items()}
        a_before_b = sum(started[job_id] < started[b_job] for job_id in a_jobs)
        figure(
            "fair turns after kill -9 of worker and API",
            statuses=sorted(job["status"] for job in finished.values()),
            a_jobs_started_before_b=a_before_b,
        )
        assert all(job["status"] == "succeeded" for job in finished.values()), finished
        assert a_before_b <= 1
