"""What the end-to-end tests share: the arithmetic dataset uploaded, a tiny job submitted, and a job's events read
to the end of its stream, all over HTTP against the running service (tests/running_service.py)."""

import json

from grpo_core import arithmetic_task


def upload_arithmetic(client) -> str:
    rows = arithmetic_task()[0]
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    response = client.post("/v1/datasets", files={"file": ("arithmetic.jsonl", content)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def submit(client, dataset_id, **hyperparameters) -> str:
    spec = {
        "base_model": "tiny-random-llama",
        "dataset_id": dataset_id,
        # Random weights never write the sum; a length reward gives mixed groups, so the adapter really trains.
        "rewards": [{"name": "length_target", "params": {"target": 40}}, {"name": "numeric_answer"}],
        "hyperparameters": {"group_size": 2, "max_new_tokens": 8, "lora": {"r": 4}, **hyperparameters},
    }
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def read_events(client, job_id, last_event_id=None):
    """Follow the job's Server-Sent Events until the server ends the stream (the job finished)."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id else {}
    events, current = [], {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=300) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "data" in current:
                    events.append({**current, "data": json.loads(current["data"])})
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = value
    return events
