"""Jobs go to the Celery queue of the hardware they need, so a CPU-only worker never takes a GPU job
(service_core/queue.py); a hardware class no worker serves is refused at submit."""

import pytest

from api.cli import worker_hardware
from tests.api.helpers import job_spec, queued_messages, sent_turns


def message_queues() -> list[str]:
    """The queue of each message waiting in the embedded broker's folder (kombu names files <id>.<queue>.msg)."""
    from service_core.settings import get_settings

    folder = get_settings().broker_folder / "queue"
    return sorted(path.name.split(".", 1)[1].removesuffix(".msg") for path in folder.glob("*.msg"))


def test_a_job_goes_to_the_queue_of_the_hardware_it_asks_for(service, alice, dataset_id):
    from service_core.settings import get_settings

    queue = get_settings().queue
    default = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id))
    assert default.status_code == 201, default.text and default.json()["hardware"] == "cpu"
    gpu = service.post("/v1/jobs", headers=alice, json={**job_spec(dataset_id), "hardware": "gpu"})
    assert gpu.status_code == 201, gpu.text
    assert gpu.json()["hardware"] == "gpu"
    assert service.get(f"/v1/jobs/{gpu.json()['id']}", headers=alice).json()["hardware"] == "gpu"
    assert message_queues() == sorted([queue, f"{queue}-gpu"]) == sent_turns()


def test_hardware_no_worker_serves_or_unknown_is_refused(service, alice, dataset_id, monkeypatch):
    from service_core.settings import get_settings

    unknown = service.post("/v1/jobs", headers=alice, json={**job_spec(dataset_id), "hardware": "tpu"})
    assert unknown.status_code == 422 and "hardware" in unknown.text
    monkeypatch.setenv("GRPO_HARDWARE_CLASSES", "cpu")
    get_settings.cache_clear()
    refused = service.post("/v1/jobs", headers=alice, json={**job_spec(dataset_id), "hardware": "gpu"})
    assert refused.status_code == 422, refused.text
    assert "this service's workers serve cpu (GRPO_HARDWARE_CLASSES)" in refused.json()["errors"][0]
    assert queued_messages() == 0


@pytest.mark.unit
def test_a_cpu_worker_consumes_only_the_cpu_queue_and_a_gpu_worker_both(monkeypatch):
    from api.cli import worker_command
    from service_core.settings import Settings

    def queues(hardware: str) -> str:
        command = worker_command(Settings(queue="q", worker_hardware=hardware))
        return command[command.index("--queues") + 1]

    assert queues("cpu") == "q"
    assert queues("gpu") == "q-gpu,q"
    assert worker_hardware("cpu") == "cpu" and worker_hardware("gpu") == "gpu"
    assert worker_hardware("auto") in {"cpu", "gpu"}
    # auto follows GRPO_DEVICE where that is set: a worker told to train on the CPU never takes a GPU job.
    assert worker_hardware("auto", "cpu") == "cpu" and worker_hardware("auto", "cuda:1") == "gpu"


@pytest.mark.unit
def test_a_gpu_job_on_several_processes_goes_to_a_worker_with_that_many_gpus():
    from api.cli import worker_command
    from service_core.queue import queue_for, worker_queues
    from service_core.settings import Settings

    assert queue_for("gpu", "q", processes=1) == "q-gpu" and queue_for("gpu", "q", processes=4) == "q-gpu-x4"
    # On the CPU any worker runs the ranks (gloo), so the count does not route.
    assert queue_for("cpu", "q", processes=4) == "q"
    assert worker_queues("gpu", "q", gpus=3) == ["q-gpu", "q-gpu-x2", "q-gpu-x3", "q"]
    assert worker_queues("gpu", "q", gpus=1) == worker_queues("gpu", "q", gpus=0) == ["q-gpu", "q"]
    assert worker_queues("cpu", "q", gpus=8) == ["q"]
    command = worker_command(Settings(queue="q", worker_hardware="gpu"), gpus=2)
    assert command[command.index("--queues") + 1] == "q-gpu,q-gpu-x2,q"


def test_a_gpu_job_on_two_processes_is_queued_for_two_gpus(service, alice, dataset_id):
    from service_core.settings import get_settings

    queue = get_settings().queue
    spec = job_spec(dataset_id)
    spec["hyperparameters"] = {**spec.get("hyperparameters", {}), "processes": 2, "prompts_per_step": 2}
    created = service.post("/v1/jobs", headers=alice, json={**spec, "hardware": "gpu"})
    assert created.status_code == 201, created.text
    assert message_queues() == [f"{queue}-gpu-x2"] == sent_turns()


def test_processes_above_the_operator_limit_or_prompts_per_step_are_refused(service, alice, dataset_id, monkeypatch):
    from service_core.settings import get_settings

    spec = job_spec(dataset_id)
    hyperparameters = spec.get("hyperparameters", {})
    monkeypatch.setenv("GRPO_MAX_PROCESSES_PER_JOB", "2")
    get_settings.cache_clear()
    over = {**spec, "hyperparameters": {**hyperparameters, "processes": 3, "prompts_per_step": 4}}
    refused = service.post("/v1/jobs", headers=alice, json=over)
    assert refused.status_code == 422, refused.text
    assert "processes: 3 is above the operator's limit of 2 (GRPO_MAX_PROCESSES_PER_JOB)" in refused.text
    uneven = {**spec, "hyperparameters": {**hyperparameters, "processes": 2, "prompts_per_step": 1}}
    refused = service.post("/v1/jobs", headers=alice, json=uneven)
    assert refused.status_code == 422, refused.text
    assert "processes (2) must not exceed prompts_per_step (1)" in refused.text
    assert queued_messages() == 0
