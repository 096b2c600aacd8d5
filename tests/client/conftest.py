"""The client and the CLI against the real service (API and Celery worker processes): the running_service fixture
(tests/running_service.py), on the embedded layout only (SQLite, folder broker)."""

import pytest

from grpo_client import Client


@pytest.fixture
def api_key(running_service, request):
    return running_service.grpo("keys", "create", "--tenant", request.node.name[:60])


@pytest.fixture
def client(running_service, api_key):
    with Client(running_service.base_url, api_key) as client:
        yield client
