"""Case 10: two tenants on a live API (SQLite and PostgreSQL), each with a dataset, a queued job and two recorded
steps (metrics, checkpoints and their archives, written as the worker writes them). Every endpoint that takes an
id is called by each tenant with the other's ids: each call must answer 404 with the same body as an id that does
not exist, nothing is cancelled, nothing downloads, and neither tenant's lists show the other's objects. Before
that, each owner reaches all of it, so the 404s come from the tenant check and not from missing data."""

import time
import uuid

import httpx
import pytest

from tests.chaos.harness import Client, figure, service
from tests.chaos.planted import plant_checkpoints

pytestmark = pytest.mark.chaos

# (kind, method, path): kind says which figure a leak would count in.
ENDPOINTS = [
    ("read", "GET", "/v1/datasets/{dataset}"),
    ("read", "GET", "/v1/jobs/{job}"),
    ("cancel", "POST", "/v1/jobs/{job}/cancel"),
    ("read", "GET", "/v1/jobs/{job}/metrics"),
    ("read", "GET", "/v1/jobs/{job}/events"),
    ("read", "GET", "/v1/jobs/{job}/checkpoints"),
    ("download", "GET", "/v1/jobs/{job}/checkpoints/{step}/adapter"),
    ("download", "GET", "/v1/jobs/{job}/adapter"),
]
STEPS = (1, 2)


def call(http: httpx.Client, method: str, path: str) -> tuple[int, bytes]:
    """Status and body; an event stream (which never ends for a queued job) is read for a second at most."""
    with http.stream(method, path, timeout=10) as response:
        body, deadline = b"", time.monotonic() + 1
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            for chunk in response.iter_raw():
                body += chunk
                if time.monotonic() > deadline or b"\n\n" in body:
                    break
        else:
            body = response.read()
        return response.status_code, body


def normalised(body: bytes, *ids: str) -> bytes:
    for object_id in ids:
        body = body.replace(object_id.encode(), b"<id>")
    return body


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_no_tenant_reaches_another_tenants_objects(database, tmp_path):
    with service(tmp_path, database=database) as svc:
        svc.start_api()
        tenants = {}
        for name in ("alice", "bob"):
            client = Client(svc, name)
            dataset = client.upload_arithmetic()
            job = client.submit(dataset)
            planted = plant_checkpoints(svc, job, STEPS)
            tenants[name] = {"client": client, "dataset": dataset, "job": job, "planted": planted}

        # Owners reach every endpoint (the events stream opens with the job's "queued" status event).
        owner_failures = []
        for name, t in tenants.items():
            for kind, method, template in ENDPOINTS:
                if kind == "cancel":
                    continue  # the owner's cancel is tried last, once the matrix is done
                path = template.format(dataset=t["dataset"], job=t["job"], step=STEPS[0])
                status, body = call(t["client"].http, method, path)
                if status != 200:
                    owner_failures.append((name, path, status, body[:200]))
                elif kind == "download":
                    step = STEPS[0] if "{step}" in template else STEPS[-1]
                    if body != t["planted"][step]["path"].read_bytes():
                        owner_failures.append((name, path, "archive differs"))

        # The matrix: each tenant with the other's ids, each answer next to one for an id that does not exist.
        leaks = {"read": [], "cancel": [], "download": []}
        unlike_missing, cells = [], 0
        for caller, owner in (("bob", "alice"), ("alice", "bob")):
            http, theirs = tenants[caller]["client"].http, tenants[owner]
            missing = {"dataset": f"ds_{uuid.uuid4().hex}", "job": f"job_{uuid.uuid4().hex}"}
            for kind, method, template in ENDPOINTS:
                for step in STEPS if "{step}" in template else (None,):
                    cells += 1
                    path = template.format(dataset=theirs["dataset"], job=theirs["job"], step=step)
                    status, body = call(http, method, path)
                    missing_status, missing_body = call(
                        http, method, template.format(dataset=missing["dataset"], job=missing["job"], step=step)
                    )
                    if status != 404:
                        leaks[kind].append((caller, path, status, body[:200]))
                    if (status, normalised(body, theirs["dataset"], theirs["job"])) != (
                        missing_status,
                        normalised(missing_body, missing["dataset"], missing["job"]),
                    ):
                        unlike_missing.append((caller, path, status, body[:200], missing_status, missing_body[:200]))
            # A job spec naming the other tenant's dataset is refused exactly like one naming no dataset at all.
            for field in ("dataset_id", "eval_dataset_id"):
                cells += 1
                spec = {
                    "base_model": "tiny-random-llama",
                    "dataset_id": tenants[caller]["dataset"],
                    "rewards": [{"name": "length_target", "params": {"target": 40}}],
                    "hyperparameters": {"group_size": 2, "max_new_tokens": 8},
                }
                answers = [
                    http.post("/v1/jobs", json={**spec, field: d}) for d in (theirs["dataset"], missing["dataset"])
                ]
                if answers[0].status_code != 422:
                    leaks["read"].append((caller, f"POST /v1/jobs {field}", answers[0].status_code, answers[0].text))
                if normalised(answers[0].content, theirs["dataset"]) != normalised(
                    answers[1].content, missing["dataset"]
                ):
                    unlike_missing.append((caller, f"POST /v1/jobs {field}", answers[0].text, answers[1].text))
            # So is a fork of the other tenant's job, at a step it has a checkpoint at.
            cells += 1
            answers = [
                http.post("/v1/jobs", json={**spec, "init_from": {"job_id": job, "step": STEPS[0]}})
                for job in (theirs["job"], missing["job"])
            ]
            if answers[0].status_code != 422:
                leaks["read"].append((caller, "POST /v1/jobs init_from", answers[0].status_code, answers[0].text))
            if normalised(answers[0].content, theirs["job"]) != normalised(answers[1].content, missing["job"]):
                unlike_missing.append((caller, "POST /v1/jobs init_from", answers[0].text, answers[1].text))

        # Lists show only one's own objects.
        list_leaks = []
        for name, t in tenants.items():
            others = {o["dataset"] for n, o in tenants.items() if n != name} | {
                o["job"] for n, o in tenants.items() if n != name
            }
            listed = {d["id"] for d in t["client"].http.get("/v1/datasets").json()["data"]}
            listed |= {j["id"] for j in t["client"].http.get("/v1/jobs").json()["data"]}
            list_leaks += sorted(listed & others)
            if listed != {t["dataset"], t["job"]}:
                list_leaks.append(f"{name} lists {sorted(listed)}")

        # Nobody's job was cancelled by the other's cancel; then the owner's own cancel works.
        cancelled_by_other = [n for n, t in tenants.items() if t["client"].job(t["job"])["status"] != "queued"]
        cancelled_by_other += [n for n, t in tenants.items() if t["client"].job(t["job"])["cancel_requested"]]
        owner_cancels = [
            t["client"].http.post(f"/v1/jobs/{t['job']}/cancel").json()["status"] for t in tenants.values()
        ]

        figure(
            f"10 tenant matrix ({database})",
            matrix_size=cells,
            endpoints=len(ENDPOINTS),
            tenants=len(tenants),
            cross_tenant_reads=len(leaks["read"]),
            cross_tenant_cancels=len(leaks["cancel"]),
            cross_tenant_downloads=len(leaks["download"]),
            answers_unlike_missing_id=len(unlike_missing),
            jobs_cancelled_by_other_tenant=len(cancelled_by_other),
            list_leaks=len(list_leaks),
            owner_calls_failed=len(owner_failures),
        )
        assert not owner_failures, owner_failures
        assert not leaks["read"] and not leaks["cancel"] and not leaks["download"], leaks
        assert not unlike_missing, unlike_missing
        assert not cancelled_by_other, cancelled_by_other
        assert not list_leaks, list_leaks
        assert owner_cancels == ["cancelled", "cancelled"]
