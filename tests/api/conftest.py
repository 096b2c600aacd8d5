import time

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import ROWS, jsonl, new_key, upload
from tests.service_env import clear_service_caches, fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request, tmp_path, monkeypatch):
    """The real app on a fresh database of each kind, with the embedded (folder) broker in tmp_path."""
    with fresh_database(request.param, tmp_path) as url:
        monkeypatch.setenv("GRPO_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("GRPO_DATABASE_URL", url)
        monkeypatch.delenv("GRPO_BROKER_URL", raising=False)
        monkeypatch.setenv("GRPO_MAX_UPLOAD_MB", "0.01")
        clear_service_caches()
        from api.main import create_app
        from service_core.db import get_engine, run_migrations

        run_migrations()
        with TestClient(create_app()) as client:
            yield client
        get_engine().dispose()
        clear_service_caches()


@pytest.fixture
def alice(service):
    return new_key("alice")


@pytest.fixture
def bob(service):
    return new_key("bob")


@pytest.fixture
def dataset_id(service, alice):
    response = upload(service, alice, jsonl(ROWS))
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
def live(service):
    """The app behind a real uvicorn in this process, on a free port, for what the TestClient cannot do: it reads
    a response to its end, and an event stream of a queued job never ends. Yields (base URL, app, server)."""
    import socket
    import threading

    import uvicorn

    from api.main import create_app

    app = create_app()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app, server
    server.should_exit = True
    thread.join(timeout=20)
    sock.close()
