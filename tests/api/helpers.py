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


def sent_turns() -> list[str]:
    """The turns waiting in the embedded broker's folder, by the queue each names (sorted): for jobs the API sends
    turns (grpo.run_next_job with the queue), never job ids. A message of another task fails here."""
    import base64

    from service_core.queue import RUN_NEXT_JOB_TASK, RUN_PREFLIGHT_TASK
    from service_core.settings import get_settings

    folder = get_settings().broker_folder / "queue"
    turns = []
    for path in folder.glob("*.msg") if folder.is_dir() else []:
        message = json.loads(path.read_bytes())
        task = message["headers"]["task"]
        if task == RUN_PREFLIGHT_TASK:
            continue
        assert task == RUN_NEXT_JOB_TASK, task
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert path.name.split(".", 1)[1] == f"{args[0]}.msg"  # sent to the queue it names
        turns.append(args[0])
    return sorted(turns)
