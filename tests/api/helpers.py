"""What the API tests share: a dataset's rows and its upload, a job spec, a tenant's key, and the embedded broker's
queue as the tests read it. Fixtures that use them live in conftest.py."""

import json

ROWS = [{"prompt": f"What is {a} + 1?", "answer": a + 1} for a in range(5)]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client, headers, content: bytes, name="prompts.jsonl"):
    return client.post("/v1/datasets", headers=headers, files={"file": (name, content, "application/jsonl")})


def job_spec(dataset, **overrides):
    spec = {
        "base_model": "tiny-random-llama",
        "dataset_id": dataset,
        "rewards": [{"name": "numeric_answer"}],
        "hyperparameters": {"group_size": 4, "max_steps": 3},
    }
    return {**spec, **overrides}


def new_key(tenant: str) -> dict[str, str]:
    from api.services import keys as keys_service
    from service_core.db import session_scope

    with session_scope() as session:
        return {"Authorization": f"Bearer {keys_service.create_api_key(session, tenant_name=tenant)}"}


def queued_messages() -> int:
    """Messages waiting in the embedded broker's folder: each is one file."""
    from service_core.settings import get_settings

    folder = get_settings().broker_folder / "queue"
    return len(list(folder.glob("*.msg"))) if folder.is_dir() else 0
