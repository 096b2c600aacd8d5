import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The real API and worker processes as a fixture, shared by tests/e2e and tests/client.
pytest_plugins = ["tests.running_service"]

# Tests never reach a model hub; catalog models are built or converted locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model_dir():
    from grpo_core.models import resolve_model_dir

    return resolve_model_dir("tiny-random-llama")


@pytest.fixture
def readable_tmp_path():
    """A fresh folder that any uid may traverse and read (0755, under the system's temp folder), for what the reward
    sandbox binds: it runs as an unprivileged uid, to which pytest's root-only tmp_path is closed."""
    folder = Path(tempfile.mkdtemp(prefix="grpo-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    # `gpu` tests need a CUDA device (make gpu-check runs them); elsewhere they are reported as skipped.
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)
