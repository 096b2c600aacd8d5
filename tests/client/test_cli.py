"""The `grpo` client verbs end to end, as a user runs them: subprocesses against the real API and worker, with
GRPO_API_URL and GRPO_API_KEY in the environment; exit statuses and `--json` output checked."""

import hashlib
import json
import os
import pty
import subprocess
import sys
import time

import pytest

from tests.client.helpers import TINY_REWARDS, embedded_only, write_prompts

pytestmark = [pytest.mark.slow, embedded_only]

TINY_FLAGS = ["--model", "tiny-random-llama", "--reward", 'length_target:1:{"target": 40}', "--reward",
              "numeric_answer", "--set", "group_size=2", "--set", "max_new_tokens=8", "--set", "lora.r=4"]  # fmt: skip


def grpo(running_service, api_key, *args, timeout=300):
    env = {**running_service.env, "GRPO_API_URL": running_service.base_url, "GRPO_API_KEY": api_key}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def watch_on_a_terminal(running_service, api_key, job_id) -> tuple[int, str]:
    """`grpo jobs watch` with stderr on a pseudo-terminal, as a person runs it: its exit status and what the
    terminal received."""
    env = {**running_service.env, "GRPO_API_URL": running_service.base_url, "GRPO_API_KEY": api_key}
    leader, follower = pty.openpty()
    watch = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "jobs", "watch", job_id], env=env, stdout=subprocess.DEVNULL, stderr=follower
    )
    os.close(follower)
    received = b""
    try:
        while chunk := os.read(leader, 65536):
            received += chunk
    except OSError:  # EIO: the command exited and closed the terminal
        pass
    os.close(leader)
    return watch.wait(timeout=60), received.decode()


def one_error_line(done) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def artifacts(running_service):
    from pathlib import Path

    return Path(running_service.env["GRPO_DATA_DIR"]) / "artifacts"


def upload(running_service, api_key, tmp_path) -> dict:
    done = grpo(running_service, api_key, "datasets", "upload", str(write_prompts(tmp_path / "train.jsonl")), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_upload_create_watch_download(running_service, api_key, tmp_path):
    dataset = upload(running_service, api_key, tmp_path)
    assert dataset["rows"] == 8 and dataset["fields"] == ["answer", "prompt"]

    create = ["jobs", "create", "--dataset", dataset["id"], *TINY_FLAGS, "--set", "max_steps=3"]
    done = grpo(running_service, api_key, *create, "--set", "checkpoint_every=1", "--watch")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    # Not a terminal: a plain line per event, the progress lines with step/max_steps, reward and ETA.
    progress = [line for line in done.stderr.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["1/3", "2/3", "3/3"], done.stderr
    assert all(" reward " in line and " ETA " in line for line in progress)
    assert progress[-1].endswith("ETA 0:00") and f"{job_id} succeeded" in done.stderr

    job = json.loads(grpo(running_service, api_key, "jobs", "get", job_id, "--json").stdout)
    assert job["status"] == "succeeded" and job["progress"] == {"step": 3, "max_steps": 3, "fraction": 1.0}
    assert job["hyperparameters"]["group_size"] == 2 and job["hyperparameters"]["lora"]["r"] == 4, "--set parsed"
    assert job["rewards"] == [{**TINY_REWARDS[0], "weight": 1.0}, {**TINY_REWARDS[1], "weight": 1.0, "params": {}}]
    # On a terminal: one progress line redrawn in place (bar, step, reward, ETA), the job's end on the last line.
    status, screen = watch_on_a_terminal(running_service, api_key, job_id)
    assert status == 0 and f"\r\x1b[K[{'#' * 24}] step 3/3  reward " in screen, screen
    assert screen.rstrip().endswith(f"\x1b[K{job_id} succeeded"), screen
    listed = json.loads(grpo(running_service, api_key, "jobs", "list", "--status", "succeeded", "--json").stdout)
    assert job_id in [j["id"] for j in listed]

    # watch --json on the finished job: the whole stream again, one JSON event per line, exit 0.
    done = grpo(running_service, api_key, "jobs", "watch", job_id, "--json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["data"]["status"] for e in events if e["event"] == "status"] == ["queued", "running", "succeeded"]
    assert [e["data"]["step"] for e in events if e["event"] == "metrics"] == [1, 2, 3]
    checkpoints = [e["data"] for e in events if e["event"] == "checkpoint"]
    assert [c["step"] for c in checkpoints] == [1, 2, 3]

    done = grpo(running_service, api_key, "jobs", "download", job_id, "--output", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    download = json.loads(done.stdout)
    archive = tmp_path / f"{job_id}-step-3.tar.gz"
    assert download["path"] == str(archive) and download["step"] == 3
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == download["sha256"] == checkpoints[-1]["sha256"]

    # The stored archive of step 1 changes behind the API's back: its recorded sha256 no longer matches.
    stored = artifacts(running_service) / "jobs" / job_id / "checkpoints" / "step-000001" / "adapter.tar.gz"
    stored.write_bytes(stored.read_bytes()[:-1] + bytes([stored.read_bytes()[-1] ^ 1]))
    target = tmp_path / "step1"
    target.mkdir()
    done = grpo(running_service, api_key, "jobs", "download", job_id, "--step", "1", "--output", str(target))
    assert done.returncode == 2
    assert one_error_line(done).startswith("grpo jobs download: sha256 mismatch: the API announced")
    assert list(target.iterdir()) == [], "no file, not even a partial one"


def test_a_failed_job_exits_1(running_service, api_key, tmp_path):
    dataset = upload(running_service, api_key, tmp_path)
    (artifacts(running_service) / "datasets" / f"{dataset['id']}.jsonl").unlink()  # the store lost the file
    done = grpo(running_service, api_key, "jobs", "create", "--dataset", dataset["id"], *TINY_FLAGS, "--watch")
    assert done.returncode == 1, done.stderr
    assert f"{done.stdout.strip()} failed: " in done.stderr and "FileNotFoundError" in done.stderr


def test_a_cancelled_job_exits_3(running_service, api_key, client, tmp_path):
    dataset = upload(running_service, api_key, tmp_path)
    done = grpo(running_service, api_key, "jobs", "create", "--dataset", dataset["id"], *TINY_FLAGS,
                "--set", "max_steps=500", "--set", "checkpoint_every=1000")  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    env = {**running_service.env, "GRPO_API_URL": running_service.base_url, "GRPO_API_KEY": api_key}
    watch = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "jobs", "watch", job_id],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while client.jobs.get(job_id)["progress"]["step"] < 1:
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.2)
        cancel = grpo(running_service, api_key, "jobs", "cancel", job_id)
        assert cancel.returncode == 0 and cancel.stdout.startswith(job_id), cancel.stderr
        out, err = watch.communicate(timeout=120)
    finally:
        watch.kill()
    assert watch.returncode == 3, err
    assert f"{job_id} cancelled" in err and client.jobs.get(job_id)["status"] == "cancelled"


def test_catalogs_and_errors(running_service, api_key):
    models = json.loads(grpo(running_service, api_key, "models", "list", "--json").stdout)
    assert "tiny-random-llama" in [m["name"] for m in models]
    rewards = grpo(running_service, api_key, "rewards", "list").stdout.splitlines()
    assert "numeric_answer\tbuiltin" in [line.rsplit("\t", 1)[0] for line in rewards]

    done = grpo(running_service, "grpo_not-a-key", "jobs", "list")
    assert done.returncode == 2 and one_error_line(done).startswith("grpo jobs list: ")
    assert done.stderr.strip().endswith("(HTTP 401)")
    done = grpo(running_service, api_key, "jobs", "create", "--model", "no-such-model", "--dataset", "ds_x",
                "--reward", "numeric_answer", "--set", "group_size=3")  # fmt: skip
    assert done.returncode == 2 and "unknown base_model 'no-such-model'" in one_error_line(done)
    done = grpo(running_service, api_key, "jobs", "get", "job_" + "0" * 32)
    assert done.returncode == 2 and one_error_line(done).endswith("(HTTP 404)")
    done = grpo(running_service, api_key, "jobs", "create", "--model", "m", "--dataset", "d", "--reward", "r",
                "--set", "no-equals-sign")  # fmt: skip
    assert done.returncode == 2 and "expected KEY=VALUE" in done.stderr
