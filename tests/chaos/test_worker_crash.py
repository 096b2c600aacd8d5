"""Case 1: kill -9 the worker at a random step; the job still succeeds, each step once, exactly."""

import hashlib
import os
import random
import signal

import pytest

from tests.chaos.harness import Client, adapter_weights, figure, job_row, service

pytestmark = pytest.mark.chaos
MAX_STEPS, CHECKPOINT_EVERY = 10, 3


@pytest.mark.parametrize("layout", ["embedded", "redis-postgresql"])
def test_kill_9_at_random_steps(layout, tmp_path, private_redis):
    database, broker = ("sqlite", None) if layout == "embedded" else ("postgresql", private_redis.url)
    with service(tmp_path, database=database, broker_url=broker) as svc:
        svc.start_api()
        supervisor = svc.start_worker()
        client = Client(svc)
        dataset = client.upload_arithmetic()

        # Steps long enough (~0.5 s alone on 2 cores) that the kill lands while the job runs.
        spec = dict(max_steps=MAX_STEPS, checkpoint_every=CHECKPOINT_EVERY, group_size=4, max_new_tokens=24)
        reference = client.submit(dataset, **spec)
        assert client.wait(reference)["status"] == "succeeded"
        expected = adapter_weights(client, reference)

        for kill_at in sorted(random.Random(os.getpid()).sample(range(1, MAX_STEPS - 2), 3)):
            job_id = client.submit(dataset, **spec)
            client.wait_step(job_id, kill_at)
            os.kill(svc.worker_pid(supervisor), signal.SIGKILL)
            job = client.wait(job_id)
            row = job_row(svc, job_id)
            recomputed = row["steps_computed"] - MAX_STEPS
            same = adapter_weights(client, job_id) == expected
            figure(
                f"1 kill -9 ({layout})",
                killed_at_step=kill_at,
                status=job["status"],
                metric_rows=len(client.train_steps(job_id)),
                attempts=row["attempt"],
                steps_recomputed=recomputed,
                adapter_equals_uninterrupted=same,
                adapter_sha256=hashlib.sha256(expected).hexdigest()[:12],
            )
            assert job["status"] == "succeeded"
            assert client.train_steps(job_id) == list(range(1, MAX_STEPS + 1))
            assert 0 <= recomputed <= CHECKPOINT_EVERY
            assert row["attempt"] == 2
            assert same
