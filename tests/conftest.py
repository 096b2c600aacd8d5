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


def _refuse(what: str):
    def refused(*args, **kwargs):
        # pytest.fail raises a BaseException, so no `except Exception` in the code under test can swallow it.
        pytest.fail(
            f"a unit test may not {what}: mark the test slow, or take the module out of the unit tier "
            "(the unit marker, tests/conftest.py)",
            pytrace=False,
        )

    return refused


@pytest.fixture(autouse=True)
def _unit_tests_stay_in_this_process(request, monkeypatch):
    """Keeps the unit tier honest: a test marked `unit` (and not `slow`) that starts a process (which is how a server,
    a worker or a browser starts too) or connects to a server (Redis, PostgreSQL, any socket) fails at once, in
    `make unit` and in `make test` alike, instead of making the quick tier slow or dependent on services."""
    node = request.node
    if not node.get_closest_marker("unit") or node.get_closest_marker("slow"):
        return
    import multiprocessing.process
    import socket
    import subprocess

    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse("start a process (subprocess)"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refuse("start a process (multiprocessing)"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _refuse(f"start a process (os.{name})"))
    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, _refuse("connect a socket to a server"))
    # libpq connects from C, past the socket module.
    import psycopg

    monkeypatch.setattr(psycopg.Connection, "connect", _refuse("connect to PostgreSQL"))
    monkeypatch.setattr(psycopg, "connect", _refuse("connect to PostgreSQL"))


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
