"""The client and the CLI against the real service (API and Celery worker processes): the e2e fixture, on the
embedded layout only (SQLite, folder broker); the client speaks HTTP, so the other layout adds nothing here."""

import json

import pytest

from grpo_client import Client
from tests.e2e.conftest import running_service  # noqa: F401 (a fixture)

# The e2e fixture is parametrized over both layouts; tests here take the embedded one alone.
embedded_only = pytest.mark.parametrize("running_service", ["embedded"], indirect=True)

# A tiny job, as tests/e2e/test_end_to_end.py runs them: random weights never write the sum, so a length reward
# gives groups with mixed rewards.
TINY_JOB = {
    "group_size": 2,
    "max_new_tokens": 8,
    "lora": {"r": 4},
}
TINY_REWARDS = [{"name": "length_target", "params": {"target": 40}}, {"name": "numeric_answer"}]


def write_prompts(path, rows=8):
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + 2?", "answer": i + 2}) + "\n" for i in range(rows)))
    return path


@pytest.fixture
def api_key(running_service, request):  # noqa: F811
    return running_service.grpo("keys", "create", "--tenant", request.node.name[:60])


@pytest.fixture
def client(running_service, api_key):  # noqa: F811
    with Client(running_service.base_url, api_key) as client:
        yield client
