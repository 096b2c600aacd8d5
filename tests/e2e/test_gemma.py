"""A second real architecture through the whole service: Gemma 3 270M (a base model without a chat template, from
its GGUF chunk wheels) trains two steps over REST, and the adapter it hands back loads on the base model."""

import io
import json
import tarfile

import pytest
import torch
from peft import PeftModel

from grpo_core.models import load_base_model, resolve_model_dir
from tests.e2e.helpers import read_events

pytestmark = pytest.mark.slow

ROWS = [{"prompt": f"Question: what is {a} + {b}?\nAnswer:", "answer": a + b} for a in range(3) for b in range(3)]


@pytest.mark.parametrize("running_service", ["embedded"], indirect=True)
def test_gemma3_trains_two_steps_through_rest_and_its_adapter_loads(running_service, tmp_path):
    resolve_model_dir("gemma3-270m")  # converted once here (assembled, dequantized, checked), so the worker only loads
    client = running_service.client("gemma")
    gemma = {m["name"]: m for m in client.get("/v1/models").json()["data"]}["gemma3-270m"]
    assert (gemma["has_chat_template"], gemma["context_length"]) == (False, 32768)

    content = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
    dataset_id = client.post("/v1/datasets", files={"file": ("sums.jsonl", content)}).json()["id"]
    spec = {
        "base_model": "gemma3-270m",
        "dataset_id": dataset_id,
        # A length reward makes mixed groups from any two answers, so the adapter really trains in two steps.
        "rewards": [{"name": "length_target", "params": {"target": 40}}, {"name": "numeric_answer"}],
        "hyperparameters": {
            "group_size": 2,
            "prompts_per_step": 2,
            "max_new_tokens": 8,
            "max_steps": 2,
            "lora": {"r": 4},
        },
    }
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]

    events = read_events(client, job_id)
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["queued", "running", "succeeded"], client.get(f"/v1/jobs/{job_id}").json()["error"]
    assert [e["data"]["step"] for e in events if e["event"] == "metrics"] == [1, 2]

    download = client.get(f"/v1/jobs/{job_id}/adapter")
    assert download.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as archive:
        folder = tmp_path / archive.getnames()[0].split("/")[0]
        archive.extractall(tmp_path, filter="data")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"] and config["r"] == 4

    base, tokenizer = load_base_model("gemma3-270m")
    ids = tokenizer("Question: what is 1 + 2?\nAnswer:", return_tensors="pt").input_ids
    assert ids[0, 0] == tokenizer.bos_token_id
    with torch.no_grad():
        before = base(ids).logits
    model = PeftModel.from_pretrained(base, folder)
    trained_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert len(trained_b) == 4 * base.config.num_hidden_layers
    assert any(p.abs().sum() > 0 for p in trained_b), "LoRA B starts at zero; training moved it"
    with torch.no_grad():
        after = model(ids).logits
    assert torch.isfinite(after).all() and not torch.equal(before, after)
