"""The API process validates and serves every spec without loading the engine: no torch, no transformers."""

import json
import subprocess
import sys

APP_SESSION = r"""
import json, sys
from fastapi.testclient import TestClient
from service_core.db import run_migrations, session_scope
from api.main import app
from api.services.keys import create_api_key

run_migrations()
with session_scope() as session:
    key = create_api_key(session, tenant_name="light")
seen = {}
with TestClient(app) as client:
    client.headers["Authorization"] = f"Bearer {key}"
    seen["models"] = client.get("/v1/models").status_code
    seen["registered"] = [m["name"] for m in client.get("/v1/models").json()["data"] if not m["builtin"]]
    seen["rewards"] = client.get("/v1/rewards").status_code
    upload = client.post("/v1/datasets", files={"file": ("d.jsonl", b'{"prompt": "2+2?", "answer": 4}\n')})
    seen["upload"] = upload.status_code
    spec = {"base_model": "tiny-random-llama", "dataset_id": upload.json()["id"],
            "rewards": [{"name": "numeric_answer"}], "hyperparameters": {"group_size": 4, "loss_type": "dapo"}}
    seen["job"] = client.post("/v1/jobs", json=spec).status_code
    seen["registered_job"] = client.post("/v1/jobs", json={**spec, "base_model": "mine"}).status_code
    bad = {**spec, "hyperparameters": {"loss_type": "nope"}, "rewards": [{"name": "regex_match", "params": {}}]}
    seen["bad_job"] = client.post("/v1/jobs", json=bad).status_code
    source = b"def reward(prompt, completion, **fields):\n    return float(len(completion))\n"
    reward = client.post("/v1/rewards", files={"file": ("r.py", source)})
    seen["reward_upload"] = reward.status_code
    dry_run = {"items": [{"prompt": "2+2?", "completion": "4", "fields": {"answer": 4}}]}
    seen["reward_test"] = client.post(f"/v1/rewards/{reward.json()['id']}/test", json=dry_run).status_code
    seen["builtin_test"] = client.post("/v1/rewards/numeric_answer/test", json=dry_run).status_code
    seen["samples"] = client.get(f"/v1/jobs/{client.get('/v1/jobs').json()['data'][0]['id']}/samples").status_code
seen["engine_modules"] = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
print(json.dumps(seen))
"""


MODELS_FILE = """models:
  mine:
    source: someone/model
    description: an operator's model
    context_length: 2048
    linear_modules: [q_proj, k_proj, v_proj, o_proj]
    parameters: 1000
    has_chat_template: false
    prompt_template_bytes: 5
    message_template_bytes: 1
"""


def test_the_app_serves_and_validates_without_importing_torch(tmp_path):
    # Unsandboxed allowed: the reward uploaded here is the test's own, and the test then holds where bubblewrap
    # is missing too (where it is installed, the sandbox is used all the same).
    env = {
        "GRPO_DATA_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "GRPO_REWARD_ALLOW_UNSANDBOXED": "true",
        "GRPO_MODELS_FILE": str(tmp_path / "models.yaml"),
    }
    (tmp_path / "models.yaml").write_text(MODELS_FILE)
    done = subprocess.run([sys.executable, "-c", APP_SESSION], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "models": 200,
        "registered": ["mine"],
        "registered_job": 201,
        "rewards": 200,
        "upload": 201,
        "job": 201,
        "bad_job": 422,
        "reward_upload": 201,
        "reward_test": 200,
        "builtin_test": 200,
        "samples": 200,
        "engine_modules": [],
    }
