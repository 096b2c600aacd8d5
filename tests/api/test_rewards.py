"""Tenants' own reward code over REST, against a real database (SQLite and PostgreSQL) and the real sandbox
(bubblewrap): uploads checked and refused with the problem named, the catalog, deletes, tenant isolation, job
specs that name an upload, dry runs of uploads and built-ins, the per-tenant cap on checks, and stored samples."""

import hashlib
import json
import threading

import httpx
import pytest

from grpo_core.sandbox import MAX_SOURCE_BYTES, sandbox_available
from tests.api.helpers import ROWS, job_spec, jsonl, new_key, queued_messages, upload
from tests.waiting import wait_for

needs_sandbox = pytest.mark.skipif(sandbox_available() is not None, reason=f"no sandbox here: {sandbox_available()}")

PER_SAMPLE = """
def reward(prompt, completion, answer, scale=1.0):
    print("scoring", completion)
    if completion == "boom":
        raise ValueError("boom!")
    return scale * float(completion.strip() == str(answer))
"""

BATCH = """
def reward(prompts, completions, **kwargs):
    print("prompt types", sorted({type(p).__name__ for p in prompts}), "columns", sorted(kwargs))
    return [float(len(c)) for c in completions]
"""

NEEDS_THRESHOLD = """
def reward(prompt, completion, answer, threshold, bonus=0.0):
    return float(len(completion) >= threshold) + bonus
"""


def upload_reward(client, headers, source: str | bytes, filename="reward.py", **form):
    content = source.encode() if isinstance(source, str) else source
    return client.post("/v1/rewards", headers=headers, files={"file": (filename, content, "text/x-python")}, data=form)


def uploaded(client, headers, source: str, **form) -> dict:
    response = upload_reward(client, headers, source, **form)
    assert response.status_code == 201, response.text
    return response.json()


def uploads_of(client, headers) -> list[dict]:
    return [r for r in client.get("/v1/rewards", headers=headers).json()["data"] if r["kind"] == "uploaded"]


@needs_sandbox
def test_an_upload_records_its_shape_parameters_and_required_names(service, alice):
    per_sample = uploaded(service, alice, PER_SAMPLE, filename="../checks/exact.py")
    assert per_sample["id"].startswith("rwd_") and per_sample["name"] == "exact.py"
    assert (per_sample["shape"], per_sample["parameters"], per_sample["required"]) == (
        "per_sample",
        ["answer", "scale"],
        ["answer"],
    )
    assert per_sample["sha256"] == hashlib.sha256(PER_SAMPLE.encode()).hexdigest()
    assert per_sample["bytes"] == len(PER_SAMPLE.encode())
    batch = uploaded(service, alice, BATCH, name="lengths")
    assert (batch["name"], batch["shape"], batch["parameters"], batch["required"]) == ("lengths", "batch", None, [])

    stored = service.get(f"/v1/rewards/{per_sample['id']}", headers=alice).json()
    assert stored["source"] == PER_SAMPLE and stored["shape"] == "per_sample"
    catalog = service.get("/v1/rewards", headers=alice).json()["data"]
    kinds = {r["name"]: r["kind"] for r in catalog}
    assert kinds["numeric_answer"] == kinds["regex_match"] == "builtin"
    listed = {r["id"]: r for r in uploads_of(service, alice)}
    assert set(listed) == {per_sample["id"], batch["id"]}
    assert "source" not in listed[per_sample["id"]]
    assert listed[per_sample["id"]]["params_schema"]["additionalProperties"] is False
    assert set(listed[per_sample["id"]]["params_schema"]["properties"]) == {"answer", "scale"}
    assert listed[batch["id"]]["params_schema"]["additionalProperties"] is True
    assert listed[per_sample["id"]]["fields"] == ["answer"]


BAD_SOURCES = [
    ("def reward(prompt, completion):\n    return 1 +* 2\n", "syntax error at line 2, column 15: invalid syntax"),
    ("x = 1\n", "the source defines no `reward` function"),
    ("def reward(text):\n    return 0.0\n", "it takes (text)"),
    ("async def reward(prompt, completion):\n    return 0.0\n", "not `async def`"),
    ("import no_such_module_here\n", "ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("raise SystemExit(3)\n", "running the source failed: SystemExit: 3"),
    (b"# caf\xe9\ndef reward(prompt, completion):\n    return 0.0\n", "not UTF-8: byte 0xe9 at offset 5"),
    (b"def reward(prompt, completion):\n    return 0.0\n\x00", "NUL character at offset"),
    ("#" * (MAX_SOURCE_BYTES + 1), f"{MAX_SOURCE_BYTES + 1} bytes; the limit is {MAX_SOURCE_BYTES} bytes (256 KiB)"),
    (
        "class reward:\n    def __init__(self, prompt, completion):\n        pass\n",
        "must be a function (def or lambda)",
    ),
    ("import os\nos._exit(3)\n", "the reward process died (exit code 3)"),
]


@needs_sandbox
@pytest.mark.parametrize(
    ("source", "message"),
    BAD_SOURCES,
    ids=[
        "syntax",
        "no reward",
        "signature",
        "async",
        "import",
        "exit",
        "not utf-8",
        "nul",
        "oversize",
        "class",
        "_exit",
    ],
)
def test_a_bad_upload_is_a_422_naming_the_problem_and_nothing_is_stored(service, alice, source, message):
    response = upload_reward(service, alice, source)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert uploads_of(service, alice) == []


def test_malformed_uploads_are_client_errors(service, alice):
    assert service.post("/v1/rewards", headers=alice, data={"name": "x"}).status_code == 422
    response = upload_reward(service, alice, "def reward(prompt, completion):\n    return 0.0\n", name="n" * 201)
    assert response.status_code == 422 and "1 to 200 printable characters, got 201" in response.json()["detail"]
    huge = upload_reward(service, alice, "#" * (2**20 + 1))  # past the 1 MiB body cap: not worth reading
    assert huge.status_code == 413 and "KiB limit" in huge.json()["detail"]
    assert uploads_of(service, alice) == []


@needs_sandbox
def test_the_upload_limit_per_tenant_is_named(service, alice, monkeypatch):
    from service_core.settings import get_settings

    monkeypatch.setenv("GRPO_MAX_REWARDS_PER_TENANT", "1")
    get_settings.cache_clear()
    uploaded(service, alice, BATCH)
    response = upload_reward(service, alice, BATCH)
    assert response.status_code == 422 and "GRPO_MAX_REWARDS_PER_TENANT is 1" in response.json()["detail"]


@needs_sandbox
def test_delete_is_refused_while_a_queued_job_uses_the_reward(service, alice, dataset_id):
    reward = uploaded(service, alice, PER_SAMPLE)["id"]
    spare = uploaded(service, alice, BATCH)["id"]
    job = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id, rewards=[{"name": reward}]))
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    refused = service.delete(f"/v1/rewards/{reward}", headers=alice)
    assert refused.status_code == 409 and job_id in refused.json()["detail"]
    assert service.get(f"/v1/rewards/{reward}", headers=alice).status_code == 200

    assert service.delete(f"/v1/rewards/{spare}", headers=alice).status_code == 204  # no job uses this one
    service.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    assert service.delete(f"/v1/rewards/{reward}", headers=alice).status_code == 204
    assert service.get(f"/v1/rewards/{reward}", headers=alice).status_code == 404
    assert service.delete(f"/v1/rewards/{reward}", headers=alice).status_code == 404
    assert uploads_of(service, alice) == []


@needs_sandbox
def test_another_tenants_reward_and_samples_answer_like_missing_ones(service, alice, bob, dataset_id):
    reward = uploaded(service, alice, PER_SAMPLE)["id"]
    job_id = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"]
    missing_reward, missing_job = "rwd_" + "0" * 32, "job_" + "0" * 32
    calls = [
        ("get", f"/v1/rewards/{reward}", {}),
        ("delete", f"/v1/rewards/{reward}", {}),
        ("post", f"/v1/rewards/{reward}/test", {"json": {"items": [{"prompt": "p", "completion": "c"}]}}),
        ("get", f"/v1/jobs/{job_id}/samples", {}),
    ]
    for method, path, extra in calls:
        theirs = getattr(service, method)(path, headers=bob, **extra)
        missing = getattr(service, method)(
            path.replace(reward, missing_reward).replace(job_id, missing_job), headers=bob, **extra
        )
        assert theirs.status_code == 404 == missing.status_code, (method, path)
        assert theirs.json()["detail"].replace(reward, "X").replace(job_id, "X") == missing.json()["detail"].replace(
            missing_reward, "X"
        ).replace(missing_job, "X")
    assert uploads_of(service, bob) == []

    bob_dataset = upload(service, bob, jsonl(ROWS)).json()["id"]
    for name in (reward, missing_reward):
        response = service.post("/v1/jobs", headers=bob, json=job_spec(bob_dataset, rewards=[{"name": name}]))
        assert response.status_code == 422
        assert response.json()["errors"] == [
            f"unknown reward '{name}': no reward this tenant uploaded has that id (GET /v1/rewards)"
        ]
    assert service.get(f"/v1/rewards/{reward}", headers=alice).status_code == 200  # nothing was deleted


@needs_sandbox
def test_a_job_naming_an_upload_gets_its_params_and_required_names_checked(service, alice, dataset_id):
    reward = uploaded(service, alice, NEEDS_THRESHOLD)["id"]
    anything = uploaded(service, alice, BATCH)["id"]

    def problems(*refs):
        response = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id, rewards=list(refs)))
        assert response.status_code == 422, response.text
        return response.json()["errors"]

    subject = f"reward '{reward}'"
    assert problems({"name": reward}) == [
        f"{subject}: its `reward` requires threshold, which is neither a dataset field (in every row) nor a param"
    ]
    assert problems({"name": reward, "params": {"threshold": 2, "nope": 1, "answer": 3}}) == [
        f"{subject}: param 'nope' is not a parameter of its `reward`, which accepts answer, bonus, threshold",
        f"{subject}: param 'answer' is also a dataset field; `reward` would get it twice",
    ]
    # Every problem of every reward, uploads and built-ins alike, in one answer.
    listed = problems(
        {"name": reward, "params": {"threshold": 1, "prompt": "x"}},
        {"name": anything, "params": {"not-a-name": 1, "big": "x" * 20_000}},
        {"name": anything, "params": {"not-a-name": 1}},
        {"name": "numeric_answer", "params": {"tolerance": -1}},
    )
    assert listed[0] == f"{subject}: param 'prompt' is passed by the service itself (prompt(s), completion(s))"
    assert "params are 20028 bytes as JSON; the limit is 16384" in listed[1]
    assert "param 'not-a-name' is not a Python identifier" in listed[2]
    assert "reward 'numeric_answer': param tolerance" in listed[3] and len(listed) == 4
    # NaN is not JSON (PostgreSQL's json type refuses it): named, never stored.
    nan_spec = json.dumps(job_spec(dataset_id, rewards=[{"name": anything, "params": {"x": float("nan")}}]))
    response = service.post("/v1/jobs", headers={**alice, "Content-Type": "application/json"}, content=nan_spec)
    assert response.status_code == 422 and "NaN or Infinity" in response.text, response.text
    assert queued_messages() == 0

    ok = [{"name": reward, "params": {"threshold": 2}}, {"name": anything, "params": {"anything": [1, 2]}}]
    response = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id, rewards=ok))
    assert response.status_code == 201, response.text
    assert [r["name"] for r in response.json()["rewards"]] == [reward, anything]
    all_zero = [{"name": reward, "weight": 0, "params": {"threshold": 2}}]
    assert "every weight is 0" in problems(*all_zero)[0]


@needs_sandbox
def test_a_dry_run_of_an_upload_gives_each_score_or_error_and_the_printed_output(service, alice):
    reward = uploaded(service, alice, PER_SAMPLE)["id"]
    items = [
        {"prompt": "1 + 1?", "completion": "2", "fields": {"answer": 2}},
        {"prompt": "1 + 1?", "completion": "3", "fields": {"answer": 2}},
        {"prompt": "1 + 1?", "completion": "boom", "fields": {"answer": 2}},
    ]
    response = service.post(f"/v1/rewards/{reward}/test", headers=alice, json={"items": items, "params": {"scale": 2}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"] == [
        {"score": 2.0, "error": None},
        {"score": 0.0, "error": None},
        {"score": None, "error": "ValueError: boom!"},
    ]
    assert body["output"].splitlines() == ["scoring 2", "scoring 3", "scoring boom"]
    assert body["shape"] == "per_sample" and body["seconds"] >= 0

    batch = uploaded(service, alice, BATCH)["id"]
    chat = [{"role": "user", "content": "hi"}]
    items = [{"prompt": chat, "completion": "abc", "fields": {"answer": 1}}, {"prompt": "x", "completion": ""}]
    body = service.post(f"/v1/rewards/{batch}/test", headers=alice, json={"items": items}).json()
    # TRL's convention: a chat prompt's completion comes as [{"role": "assistant", "content": ...}] (length 1).
    assert [r["score"] for r in body["results"]] == [1.0, 0.0] and body["shape"] == "batch"
    assert body["output"].strip() == "prompt types ['list', 'str'] columns ['answer']"


@needs_sandbox
def test_a_dry_run_that_cannot_run_is_refused_naming_each_problem(service, alice, monkeypatch):
    from service_core.settings import get_settings

    reward = uploaded(service, alice, PER_SAMPLE)["id"]

    def refused(body, reward=reward):
        response = service.post(f"/v1/rewards/{reward}/test", headers=alice, json=body)
        assert response.status_code == 422, response.text
        return response.json()["errors"]

    assert refused({"items": [{"prompt": "p", "completion": "c"}]}) == [
        "params: its `reward` requires answer, which is neither a field of every item nor a param"
    ]
    errors = refused(
        {"items": [{"prompt": "", "completion": "c", "fields": {"answer": 1, "messages": []}}], "params": {"x": 1}}
    )
    assert errors == [
        "items.0.prompt: `prompt` must be a non-empty string",
        "items.0.fields: messages are passed by the service, not as fields",
        "params: param 'x' is not a parameter of its `reward`, which accepts answer, scale",
    ]
    errors = refused({"items": [{"prompt": "p", "completion": "c" * 65_537}]})
    assert "items.0.completion: String should have at most 65536 characters" in errors[0]
    assert (
        "the limit is 65536"
        in refused({"items": [{"prompt": "p", "completion": "c", "fields": {"a": "x" * 70_000}}]})[0]
    )
    monkeypatch.setenv("GRPO_MAX_REWARD_TEST_ITEMS", "2")
    get_settings.cache_clear()
    errors = refused({"items": [{"prompt": "p", "completion": "c", "fields": {"answer": 1}}] * 3})
    assert errors == ["items: 3 items, the operator's limit is 2 (GRPO_MAX_REWARD_TEST_ITEMS)"]


def test_a_dry_run_of_a_built_in_scores_in_the_reward_process(service, alice):
    items = [
        {"prompt": "1 + 1?", "completion": "It is 2.", "fields": {"answer": 2}},
        {"prompt": "1 + 1?", "completion": "It is 3.", "fields": {"answer": 2}},
        {"prompt": "1 + 1?", "completion": "It is 3.", "fields": {"answer": "not a number"}},
    ]
    response = service.post("/v1/rewards/numeric_answer/test", headers=alice, json={"items": items})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["score"] for r in body["results"]] == [1.0, 0.0, None]
    assert body["results"][2]["error"] and body["shape"] is None

    no_field = service.post(
        "/v1/rewards/numeric_answer/test", headers=alice, json={"items": [items[0] | {"fields": {}}]}
    )
    assert no_field.status_code == 422
    assert no_field.json()["errors"] == [
        "reward 'numeric_answer' needs dataset field(s) answer, which the dataset lacks"
    ]
    bad_params = {"items": items[:1], "params": {"tolerance": "wide"}}
    assert service.post("/v1/rewards/numeric_answer/test", headers=alice, json=bad_params).status_code == 422
    assert service.post("/v1/rewards/no_such_reward/test", headers=alice, json={"items": items}).status_code == 404


def test_the_new_calls_need_a_key(service, alice):
    calls = [
        ("post", "/v1/rewards"),
        ("get", "/v1/rewards/rwd_" + "0" * 32),
        ("delete", "/v1/rewards/rwd_" + "0" * 32),
        ("post", "/v1/rewards/numeric_answer/test"),
        ("get", "/v1/jobs/job_" + "0" * 32 + "/samples"),
    ]
    for method, path in calls:
        assert getattr(service, method)(path).status_code == 401, (method, path)
    schemas = set(service.get("/openapi.json").json()["components"]["schemas"])
    assert {
        "RewardCodePublic",
        "RewardSourcePublic",
        "RewardTestRequest",
        "RewardTestResult",
        "SamplesPublic",
    } <= schemas


SLOW_IMPORT = "import time\ntime.sleep(4)\n\ndef reward(prompt, completion, **fields):\n    return 0.0\n"


@needs_sandbox
def test_a_tenant_past_its_concurrent_checks_gets_429_and_other_tenants_do_not(service, live, monkeypatch):
    from service_core.settings import get_settings

    monkeypatch.setenv("GRPO_MAX_REWARD_CHECKS_PER_TENANT", "1")
    get_settings.cache_clear()
    base_url, app, _server = live
    alice, bob = new_key("alice"), new_key("bob")
    slots = app.state.reward_checks
    files = {"file": ("slow.py", SLOW_IMPORT.encode())}
    with httpx.Client(base_url=base_url, timeout=60) as http:
        slow: dict = {}
        thread = threading.Thread(target=lambda: slow.update(r=http.post("/v1/rewards", headers=alice, files=files)))
        thread.start()
        wait_for(lambda: slots.total == 1, "the slow upload did not take its slot")
        # While alice's check runs (its import sleeps), her next upload and dry run are refused ...
        refused = http.post("/v1/rewards", headers=alice, files={"file": ("b.py", BATCH.encode())})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
        assert "GRPO_MAX_REWARD_CHECKS_PER_TENANT" in refused.json()["detail"]
        assert "limit is 1" in refused.json()["detail"]
        dry_run = {"items": [{"prompt": "p", "completion": "c", "fields": {"answer": 1}}]}
        assert http.post("/v1/rewards/numeric_answer/test", headers=alice, json=dry_run).status_code == 429
        # (A dry run that could not run anyway is told so first: no slot is needed to say it.)
        no_answer = {"items": [{"prompt": "p", "completion": "c"}]}
        assert http.post("/v1/rewards/numeric_answer/test", headers=alice, json=no_answer).status_code == 422
        # ... and bob is not held up by her cap.
        assert http.post("/v1/rewards", headers=bob, files={"file": ("b.py", BATCH.encode())}).status_code == 201
        thread.join()
        assert slow["r"].status_code == 201, slow["r"].text
        assert slots.total == 0  # every slot came back
        assert http.post("/v1/rewards", headers=alice, files={"file": ("b.py", BATCH.encode())}).status_code == 201


def test_samples_page_by_cursor_with_the_outputs_of_their_steps(service, alice, bob, dataset_id):
    from service_core.db import session_scope
    from service_core.models import RewardOutput, SampleRow

    job_id = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"]
    with session_scope() as session:
        # Written out of order: the pages still come in (step, position) order.
        for step in (2, 1):
            for position in range(4):
                data = {
                    "group": position // 2,
                    "index": position % 2,
                    "prompt": f"prompt {step}",
                    "completion": f"completion {step}.{position}",
                    "reward": 1.0 * position,
                    "advantage": position - 1.5,
                    "scores": {"numeric_answer": 1.0 * position},
                    "errors": {"rwd_x": "ValueError: no"} if position == 3 else {},
                }
                session.add(SampleRow(job_id=job_id, step=step, position=position, data=data))
        session.add(RewardOutput(job_id=job_id, step=1, reward="rwd_x", text="printed at step 1"))
        session.add(RewardOutput(job_id=job_id, step=2, reward="rwd_x", text="printed at step 2"))

    def page(**params):
        response = service.get(f"/v1/jobs/{job_id}/samples", headers=alice, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    first = page(limit=3)
    assert [(s["step"], s["position"]) for s in first["data"]] == [(1, 0), (1, 1), (1, 2)]
    assert first["outputs"] == {"1": {"rwd_x": "printed at step 1"}}
    assert first["data"][1] | {"id": 0} == {
        "id": 0,
        "step": 1,
        "position": 1,
        "group": 0,
        "index": 1,
        "prompt": "prompt 1",
        "completion": "completion 1.1",
        "reward": 1.0,
        "advantage": -0.5,
        "scores": {"numeric_answer": 1.0},
        "errors": {},
    }
    second = page(limit=3, after=first["next_cursor"])
    assert [(s["step"], s["position"]) for s in second["data"]] == [(1, 3), (2, 0), (2, 1)]
    assert second["data"][0]["errors"] == {"rwd_x": "ValueError: no"}
    assert set(second["outputs"]) == {"1", "2"}
    last = page(limit=3, after=second["next_cursor"])
    assert [(s["step"], s["position"]) for s in last["data"]] == [(2, 2), (2, 3)] and last["next_cursor"] is None

    only_two = page(step=2)
    assert [s["position"] for s in only_two["data"]] == [0, 1, 2, 3] and only_two["next_cursor"] is None
    assert only_two["outputs"] == {"2": {"rwd_x": "printed at step 2"}}
    assert page(step=9) == {"data": [], "outputs": {}, "next_cursor": None}
    stranger = service.get(f"/v1/jobs/{job_id}/samples", headers=alice, params={"after": 10**6})
    assert stranger.status_code == 422 and "not the id of a sample" in stranger.json()["detail"]
    assert service.get(f"/v1/jobs/{job_id}/samples", headers=alice, params={"limit": 101}).status_code == 422
    assert service.get(f"/v1/jobs/{job_id}/samples", headers=bob).status_code == 404


def test_without_a_sandbox_uploads_are_a_503_unless_the_operator_allows_unsandboxed_code(service, alice, monkeypatch):
    from grpo_core.sandbox import probe_sandbox
    from service_core.settings import get_settings

    monkeypatch.setenv("PATH", "/nonexistent")  # no bwrap to be found: what a host without bubblewrap answers
    probe_sandbox.cache_clear()
    try:
        response = upload_reward(service, alice, BATCH)
        assert response.status_code == 503, response.text
        assert "bubblewrap (`bwrap`) is not installed" in response.json()["detail"]
        assert uploads_of(service, alice) == []
        monkeypatch.setenv("GRPO_REWARD_ALLOW_UNSANDBOXED", "true")
        get_settings.cache_clear()
        assert upload_reward(service, alice, BATCH).status_code == 201
    finally:
        monkeypatch.undo()
        probe_sandbox.cache_clear()
        get_settings.cache_clear()


@needs_sandbox
def test_without_a_cgroup_uploads_are_a_503_and_healthz_says_refused_unless_the_operator_allows_it(
    service, alice, monkeypatch
):
    from service_core.settings import get_settings

    monkeypatch.setenv("GRPO_SANDBOX_CGROUP", "off")  # what a host with no cgroup to give a sandbox answers
    get_settings.cache_clear()
    try:
        response = upload_reward(service, alice, BATCH)
        assert response.status_code == 503, response.text
        assert "not run without a cgroup" in response.json()["detail"]
        assert "GRPO_REWARD_ALLOW_WITHOUT_CGROUP" in response.json()["detail"]
        assert uploads_of(service, alice) == []
        assert service.get("/healthz").json()["sandbox"]["level"] == "refused"
        monkeypatch.setenv("GRPO_REWARD_ALLOW_WITHOUT_CGROUP", "true")
        get_settings.cache_clear()
        assert upload_reward(service, alice, BATCH).status_code == 201
        assert service.get("/healthz").json()["sandbox"]["level"] == "without_cgroup"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_odd_reward_ids_and_names_are_404s(service, alice):
    item = {"items": [{"prompt": "p", "completion": "c"}]}
    for path in ("/v1/rewards/a%00b", "/v1/rewards/rwd_..%2f..%2fetc", "/v1/rewards/rwd_" + "g" * 32):
        for method, extra in (("get", {}), ("delete", {}), ("post", {"json": item})):
            target = path + "/test" if method == "post" else path
            response = getattr(service, method)(target, headers=alice, **extra)
            assert response.status_code == 404 and response.json()["errors"] == [], (method, target)
    assert service.post("/v1/rewards/%00/test", headers=alice, json=item).status_code == 404
