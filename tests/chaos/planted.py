"""Steps recorded the way the worker records them, without running a worker: for each step a metrics row, a
checkpoint row and the adapter archive under the artifacts folder. Written by a child process with the service's
environment, so this test process's own settings and engine caches stay untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.chaos.harness import Service

_PLANT = """
import json, sys
from service_core import artifacts
from service_core.db import session_scope
from worker import writes

job_id, planted = sys.argv[1], {}
for step in map(int, sys.argv[2:]):
    folder = artifacts.job_dir(job_id) / "checkpoints" / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "step": step}))
    (folder / "adapter_model.safetensors").write_bytes(f"weights of {job_id} at step {step}".encode())
    path, sha256, size = artifacts.pack_adapter(folder, f"{job_id}-step-{step}")
    with session_scope() as session:
        writes.record_metrics(session, job_id=job_id, kind="train", step=step, values={"reward_mean": step / 10})
        writes.record_checkpoint(session, job_id=job_id, step=step, sha256=sha256, size=size)
    planted[step] = {"path": str(path), "sha256": sha256, "bytes": size}
print(json.dumps(planted))
"""


def plant_checkpoints(svc: Service, job_id: str, steps) -> dict[int, dict]:
    """Record `steps` of `job_id` as done (the job's status is left as it is). Returns, by step, the archive's
    path, sha256 and size."""
    done = subprocess.run(
        [sys.executable, "-c", _PLANT, job_id, *map(str, steps)],
        env=svc.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    planted = json.loads(done.stdout.strip().splitlines()[-1])
    return {int(step): {**info, "path": Path(info["path"])} for step, info in planted.items()}


def artifacts_dir(svc: Service) -> Path:
    return (Path(svc.env["GRPO_DATA_DIR"]) / "artifacts").resolve()
