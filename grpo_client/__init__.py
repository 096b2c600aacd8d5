"""A small typed Python client of grpo-service's REST API (httpx and the standard library only).

    from grpo_client import Client

    with Client("http://127.0.0.1:8000", key) as client:
        dataset = client.datasets.upload("train.jsonl")
        job = client.jobs.create(model="tiny-random-llama", dataset=dataset["id"], rewards=["numeric_answer"],
                                 hyperparameters={"max_steps": 20})
        for event in client.jobs.watch(job["id"]):   # resumes with Last-Event-ID if the connection drops
            print(event.type, event.data)
        client.jobs.download(job["id"], "adapter.tar.gz")   # sha256 checked against the API's

The `grpo` command's client verbs (grpo_client/cli.py) are built on it.
"""

from grpo_client.client import ApiError, ChecksumMismatch, Client, StreamLost, parse_events
from grpo_client.types import (
    TERMINAL_STATUSES,
    Checkpoint,
    Dataset,
    Download,
    Event,
    Job,
    JobChild,
    JobReward,
    Metric,
    Model,
    Reward,
    RewardRef,
    StoppedEarly,
)

__all__ = [
    "TERMINAL_STATUSES",
    "ApiError",
    "Checkpoint",
    "ChecksumMismatch",
    "Client",
    "Dataset",
    "Download",
    "Event",
    "Job",
    "JobChild",
    "JobReward",
    "Metric",
    "Model",
    "Reward",
    "RewardRef",
    "StoppedEarly",
    "StreamLost",
    "parse_events",
]
