"""Jobs go to the Celery queue of the hardware they need, so a CPU-only worker never takes a GPU job
(api/queue.py); a hardware class no worker serves is refused at submit."""

from api.cli import worker_hardware
from tests.api.conftest import queued_messages
from tests.api.test_api import job_spec


def message_queues() -> list[str]:
    """The queue of each message waiting in the embedded broker's folder (kombu names files <id>.<queue>.msg)."""
    from api.settings import get_settings

    folder = get_settings().broker_folder / "queue"
    return sorted(path.name.split(".", 1)[1].removesuffix(".msg") for path in folder.glob("*.msg"))


def test_a_job_goes_to_the_queue_of_the_hardware_it_asks_for(service, alice, dataset_id):
    from api.settings import get_settings

    queue = get_settings().queue
    default = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id))
    assert default.status_code == 201, default.text and default.json()["hardware"] == "cpu"
    gpu = service.post("/v1/jobs", headers=alice, json={**job_spec(dataset_id), "hardware": "gpu"})
    assert gpu.status_code == 201, gpu.text
    assert gpu.json()["hardware"] == "gpu"
    assert service.get(f"/v1/jobs/{gpu.json()['id']}", headers=alice).json()["hardware"] == "gpu"
    assert message_queues() == sorted([queue, f"{queue}-gpu"])


def test_hardware_no_worker_serves_or_unknown_is_refused(service, alice, dataset_id, monkeypatch):
    from api.settings import get_settings

    unknown = service.post("/v1/jobs", headers=alice, json={**job_spec(dataset_id), "hardware": "tpu"})
    assert unknown.status_code == 422 and "hardware" in unknown.text
    monkeypatch.setenv("GRPO_HARDWARE_CLASSES", "cpu")
    get_settings.cache_clear()
    refused = service.post("/v1/jobs", headers=alice, json={**job_spec(dataset_id), "hardware": "gpu"})
    assert refused.status_code == 422, refused.text
    assert "this service's workers serve cpu (GRPO_HARDWARE_CLASSES)" in refused.json()["errors"][0]
    assert queued_messages() == 0


def test_a_cpu_worker_consumes_only_the_cpu_queue_and_a_gpu_worker_both(monkeypatch):
    from api.cli import worker_command
    from api.settings import Settings

    def queues(hardware: str) -> str:
        command = worker_command(Settings(queue="q", worker_hardware=hardware))
        return command[command.index("--queues") + 1]

    assert queues("cpu") == "q"
    assert queues("gpu") == "q-gpu,q"
    assert worker_hardware("cpu") == "cpu" and worker_hardware("gpu") == "gpu"
    assert worker_hardware("auto") in {"cpu", "gpu"}
    # auto follows GRPO_DEVICE where that is set: a worker told to train on the CPU never takes a GPU job.
    assert worker_hardware("auto", "cpu") == "cpu" and worker_hardware("auto", "cuda:1") == "gpu"
