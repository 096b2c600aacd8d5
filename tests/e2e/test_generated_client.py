"""A client generated from the running service's /openapi.json, as a user would (openapi-python-client, the dev
extra's pin), without a single generator warning; then a tiny job driven with it alone, adapter download included."""

import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from grpo_core import arithmetic_task

pytestmark = pytest.mark.slow

PACKAGE = "grpo_service_client"


def generate_client(base_url: str, folder: Path) -> str:
    """Generate the client package into `folder` from the live schema; the generator's whole output."""
    schema = folder / "openapi.json"
    schema.write_text(httpx.get(base_url + "/openapi.json").text)
    # The generator formats what it writes with ruff (its default post hooks): the environment's own, dev extra.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "openapi_python_client", "generate", "--meta", "none"]
    done = subprocess.run(
        [*command, "--path", str(schema), "--output-path", str(folder / PACKAGE)],
        env=env, cwd=folder, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


@pytest.fixture
def generated(running_service, tmp_path, monkeypatch):
    output = generate_client(running_service.base_url, tmp_path)
    # Nothing but its progress line: no "Warning(s) encountered", no operation left out, no hook that failed.
    assert [line for line in output.splitlines() if line.strip()] == [f"Generating {tmp_path / PACKAGE}"], output
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(PACKAGE)
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


@pytest.mark.parametrize("running_service", ["embedded"], indirect=True)
def test_a_generated_client_runs_a_tiny_job_and_downloads_its_adapter(running_service, generated, tmp_path):
    from grpo_service_client.api.datasets import datasets_upload
    from grpo_service_client.api.jobs import jobs_adapter, jobs_checkpoints, jobs_create, jobs_events, jobs_get
    from grpo_service_client.api.models import models_list
    from grpo_service_client.models import (
        DatasetsUploadBody,
        ErrorBody,
        Hyperparameters,
        JobCreate,
        JobPublicStatus,
        LoraHyperparameters,
        RewardRef,
        RewardRefParams,
    )
    from grpo_service_client.types import File

    key = running_service.grpo("keys", "create", "--tenant", "generated")
    client = generated.AuthenticatedClient(base_url=running_service.base_url, token=key, timeout=httpx.Timeout(60))

    assert "tiny-random-llama" in {model.name for model in models_list.sync(client=client).data}
    rows = arithmetic_task()[0]
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    upload = DatasetsUploadBody(file=File(payload=io.BytesIO(content), file_name="sums.jsonl"))
    dataset = datasets_upload.sync(client=client, body=upload)
    assert dataset.rows == len(rows) and dataset.fields == ["answer", "prompt"]

    spec = JobCreate(
        base_model="tiny-random-llama",
        dataset_id=dataset.id,
        # Random weights never write the sum; a length reward gives mixed groups, so the adapter really trains.
        rewards=[
            RewardRef(name="length_target", params=RewardRefParams.from_dict({"target": 40})),
            RewardRef(name="numeric_answer"),
        ],
        hyperparameters=Hyperparameters(
            group_size=2, max_new_tokens=8, max_steps=2, checkpoint_every=1, lora=LoraHyperparameters(r=4)
        ),
    )
    job = jobs_create.sync(client=client, body=spec)
    assert job.status == JobPublicStatus.QUEUED and job.hyperparameters["max_steps"] == 2

    deadline = time.monotonic() + 300
    while (job := jobs_get.sync(client=client, job_id=job.id)).status != JobPublicStatus.SUCCEEDED:
        assert job.status in (JobPublicStatus.QUEUED, JobPublicStatus.RUNNING), job.error
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.3)
    assert job.progress.step == 2

    # The stream documents each event (itemSchema), which the generator leaves to the caller: the raw bytes, the
    # whole stream, as the job has ended.
    stream = jobs_events.sync_detailed(client=client, job_id=job.id)
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    events = [line for line in stream.content.decode().splitlines() if line.startswith("data")]
    assert json.loads(events[-1].removeprefix("data: "))["status"] == "succeeded"

    checkpoints = jobs_checkpoints.sync(client=client, job_id=job.id).data
    assert [c.step for c in checkpoints] == [1, 2]
    download = jobs_adapter.sync_detailed(client=client, job_id=job.id)
    archive = download.parsed.payload.read()  # a File: the binary response, not left out of the client
    assert hashlib.sha256(archive).hexdigest() == download.headers["X-Checksum-SHA256"] == checkpoints[-1].sha256
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as adapter:
        assert any(name.endswith("adapter_config.json") for name in adapter.getnames())

    # Errors parse into the typed ErrorBody, like every other answer.
    missing = jobs_get.sync(client=client, job_id="job_" + "0" * 32)
    assert isinstance(missing, ErrorBody) and "not found" in missing.detail.lower()
