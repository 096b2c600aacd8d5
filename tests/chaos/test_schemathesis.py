"""Case 8: schemathesis against the live API's own OpenAPI (SQLite and PostgreSQL): no 5xx, no response that
breaks the documented schema (body, status code, content type, headers), and every /v1 call refuses a request
without the key with 401.

Schemathesis runs as its CLI (`schemathesis run`), bounded in examples per operation, seeded, one worker. Besides
the ids it makes up, half the time it is handed real ones (a dataset, a queued job with a checkpoint) through its
config's dictionaries, so the fuzz also reaches the code behind a found id, not only the 404 in front of it.
No worker runs: jobs stay queued. The event stream (SSE) is fuzzed too: schemathesis reads at most
`max-stream-events` events of a stream and then hangs up, so a queued job's never-ending stream costs one event.

Every check runs, positive_data_acceptance (ST202: a schema-valid request is not refused) included, with one
documented allowance: six operations may also answer 422 to schema-valid data, because what makes them valid is
more than a schema can say. POST /v1/datasets needs a file that is JSONL; POST /v1/jobs (and POST
/v1/jobs/preflight, which takes the same body) needs a dataset id that is
the caller's, reward params that fit the named reward and the dataset's fields, and sizes whose product (completions
per step, prompt plus completion tokens) is within the operator's limits; POST /v1/rewards needs Python source that
defines `reward`; a dry run (POST /v1/rewards/{reward}/test) needs params and item fields that fit the reward; and
GET /v1/jobs/{job_id}/samples needs an `after` cursor that is one of the job's samples. Each answers 422 with the
reasons.

All four phases run: examples, coverage, fuzzing and stateful (links inferred from the schema: a created dataset's
id fed to the job routes, and so on); the CHAOS line gives the stateful scenarios run.
"""

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.chaos.harness import Client, figure, service
from tests.chaos.planted import plant_checkpoints

pytestmark = pytest.mark.chaos

SEED = 8
EXAMPLES_PER_OPERATION = 40
RUN_TIMEOUT_SECONDS = 240  # hard bound on the whole schemathesis run, per database
SCHEMA_CODES = {f"ST1{n:02d}" for n in range(3, 12)}  # undocumented status, content type, headers, body schema
SERVER_ERROR_CODES = {"ST101", "ST102"}
AUTH_CODES = {"ST401", "ST402"}


# positive_data_acceptance's default statuses, plus 422.
SEMANTIC_422 = ", ".join(f'"{status}"' for status in ("2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"))


def schemathesis_config(dataset_id: str, job_id: str, step: int) -> str:
    return f"""
max-stream-events = 1

[dictionaries]
datasets = {{ values = ["{dataset_id}"] }}
jobs = {{ values = ["{job_id}"] }}
steps = {{ values = [{step}] }}
rewards = {{ values = ["numeric_answer"] }}

[parameters]
"path.dataset_id" = {{ dictionary = "datasets", probability = 0.5 }}
"path.job_id" = {{ dictionary = "jobs", probability = 0.5 }}
"path.step" = {{ dictionary = "steps", probability = 0.5 }}
"path.reward" = {{ dictionary = "rewards", probability = 0.5 }}
"body.dataset_id" = {{ dictionary = "datasets", probability = 0.5 }}

# Schema-valid yet refused with reasons (the module's docstring): a file that is not JSONL, a spec whose ids, reward
# params or sizes only the service can check.
[[operations]]
include-path = "/v1/datasets"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [{SEMANTIC_422}]

[[operations]]
include-path = "/v1/jobs"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [{SEMANTIC_422}]

[[operations]]
include-path = "/v1/jobs/preflight"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [{SEMANTIC_422}]

[[operations]]
include-path = "/v1/rewards"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [{SEMANTIC_422}]

[[operations]]
include-path = "/v1/rewards/{{reward}}/test"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [{SEMANTIC_422}]

[[operations]]
include-path = "/v1/jobs/{{job_id}}/samples"
include-method = "GET"
checks.positive_data_acceptance.expected-statuses = [{SEMANTIC_422}]
"""


def run_schemathesis(base_url: str, key: str, workdir: Path, config: str) -> tuple[dict, list[dict], str]:
    """Run the CLI; returns its JSON report, its NDJSON events and its console output."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "schemathesis.toml").write_text(config)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(workdir / "schemathesis.toml"),
        "run",
        f"{base_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",  # nothing carried over from earlier runs: the same seed makes the same cases
        "--report",
        "json,ndjson",
        "--report-dir",
        str(workdir / "report"),
        "--no-color",
    ]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS)
    report = json.loads(next((workdir / "report").glob("*.json")).read_text())
    ndjson = next((workdir / "report").glob("*.ndjson")).read_text().splitlines()
    return report, [json.loads(line) for line in ndjson if line], done.stdout + done.stderr


def interactions(events: list[dict]):
    for event in events:
        recorder = event.get("ScenarioFinished", {}).get("recorder") or {}
        yield from (recorder.get("interactions") or {}).values()


def scenarios_by_phase(events: list[dict]) -> Counter:
    return Counter(event["ScenarioFinished"].get("phase") for event in events if "ScenarioFinished" in event)


def check_results(events: list[dict]) -> Counter:
    results: Counter = Counter()
    for event in events:
        recorder = event.get("ScenarioFinished", {}).get("recorder") or {}
        for checks in (recorder.get("checks") or {}).values():
            results.update((check["name"], check["status"]) for check in checks)
    return results


def unauthenticated_sweep(base_url: str, schema: dict, values: dict[str, str]) -> tuple[int, list]:
    """Every operation that declares the bearer scheme, called with no key, a wrong key and another scheme:
    each must answer 401 with the ErrorBody shape and WWW-Authenticate: Bearer. Returns (probes, wrong ones)."""
    probes, wrong = 0, []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if not operation.get("security"):
                continue
            url = base_url + path.format(**values)
            for headers in (
                {},
                {"Authorization": "Bearer grpo_not-a-real-key"},
                {"Authorization": "Basic Zm9vOmJhcg=="},
            ):
                probes += 1
                response = httpx.request(method.upper(), url, headers=headers, timeout=30)
                body = response.json() if response.headers.get("content-type") == "application/json" else None
                if not (
                    response.status_code == 401
                    and isinstance(body, dict)
                    and isinstance(body.get("detail"), str)
                    and isinstance(body.get("errors"), list)
                    and response.headers.get("www-authenticate") == "Bearer"
                ):
                    wrong.append((method, path, headers, response.status_code, response.text[:200]))
    return probes, wrong


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_schemathesis_finds_no_server_errors_or_schema_violations(database, tmp_path):
    with service(tmp_path, database=database) as svc:
        svc.start_api()
        key = svc.grpo("keys", "create", "--tenant", "fuzz")
        client = Client(svc, "fuzz")
        dataset_id = client.upload_arithmetic()
        job_id = client.submit(dataset_id)
        plant_checkpoints(svc, job_id, [1])

        schema = httpx.get(svc.base_url + "/openapi.json").json()
        v1_operations = [(m, p, op) for p, item in schema["paths"].items() for m, op in item.items()]
        unsecured = [f"{m.upper()} {p}" for m, p, op in v1_operations if p.startswith("/v1") and not op.get("security")]
        probes, accepted_without_key = unauthenticated_sweep(
            svc.base_url,
            schema,
            {
                "dataset_id": dataset_id,
                "job_id": job_id,
                "step": "1",
                "reward_id": "rwd_" + "0" * 32,
                "preflight_id": "pf_" + "0" * 32,
                "reward": "numeric_answer",
            },
        )

        started = time.monotonic()
        report, events, console = run_schemathesis(
            svc.base_url, key, tmp_path / "schemathesis", schemathesis_config(dataset_id, job_id, 1)
        )
        seconds = time.monotonic() - started

        failures = Counter()
        for group in report["failures"]:
            failures[group["code"]] += group["count"]
        responses_5xx = sum(1 for i in interactions(events) if (i.get("response") or {}).get("status_code", 0) >= 500)
        checks = check_results(events)
        auth_checks_run = checks[("ignored_auth", "success")] + checks[("ignored_auth", "failure")]
        server_errors = responses_5xx + sum(n for code, n in failures.items() if code in SERVER_ERROR_CODES)
        schema_violations = sum(n for code, n in failures.items() if code in SCHEMA_CODES)
        auth_failures = sum(n for code, n in failures.items() if code in AUTH_CODES)
        other_failures = sum(
            n for code, n in failures.items() if code not in SCHEMA_CODES | SERVER_ERROR_CODES | AUTH_CODES
        )
        generated = report["test_cases"]["generated"]
        scenarios = scenarios_by_phase(events)
        positive_checks = (
            checks[("positive_data_acceptance", "success")] + checks[("positive_data_acceptance", "failure")]
        )
        figure(
            f"8 schemathesis ({database})",
            cases_generated=generated,
            operations=f"{report['operations']['tested']}/{report['operations']['total']}",
            stateful_scenarios=scenarios["stateful"],
            positive_data_checks_run=positive_checks,
            server_errors_5xx=server_errors,
            schema_violations=schema_violations,
            auth_check_failures=auth_failures,
            auth_checks_run=auth_checks_run,
            other_check_failures=other_failures,
            run_errors=len(report["errors"]),
            unauthenticated_probes=probes,
            unauthenticated_not_401=len(accepted_without_key),
            v1_operations_without_security=len(unsecured),
            seconds=round(seconds, 1),
        )
        detail = f"{dict(failures)} {report['errors']}\n{console[-6000:]}\n{svc.logs()[-4000:]}"
        assert report["complete"] and generated > 0, detail
        assert all(phase["status"] != "skipped" for phase in report["phases"].values()), report["phases"]
        assert scenarios["stateful"] > 0 and positive_checks > 0, detail
        assert report["operations"]["tested"] == report["operations"]["total"] == len(v1_operations), detail
        assert server_errors == 0, detail
        assert schema_violations == 0, detail
        assert auth_failures == 0 and auth_checks_run > 0, detail
        assert other_failures == 0 and not report["errors"], detail
        assert not unsecured, unsecured
        assert probes > 0 and not accepted_without_key, accepted_without_key
        # No worker: nothing ran. Schemathesis may have cancelled the job and then deleted it (DELETE answers 404 after).
        left = client.http.get(f"/v1/jobs/{job_id}")
        assert left.status_code == 404 or left.json()["status"] in ("queued", "cancelled"), left.text
