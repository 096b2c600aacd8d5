"""Per-prompt difficulty: a step's groups folded into per-row figures (worker/writes.py) on each database, a step
recorded again (a resumed job re-runs the steps after its checkpoint) adding nothing, and GET /v1/jobs/{id}/prompts
ordering, paging and scoping them. tests/worker/test_prompt_stats.py holds the figures of a real job against its
samples and metrics."""

import json
import math

import pytest

from tests.api.helpers import job_spec, upload

NAN = math.nan
# Row 1 is chat messages, and a blank line comes before it: rows are numbered as the trainer numbers them.
DATASET = (
    json.dumps({"prompt": "p0", "answer": 1})
    + "\n\n"
    + json.dumps({"messages": [{"role": "user", "content": "p1"}], "answer": 2})
    + "\n"
    + "".join(json.dumps({"prompt": f"p{i}", "answer": i}) + "\n" for i in (2, 3, 4))
)
STEPS = {
    # Row 0 twice in one step (dynamic sampling may draw a row again): both count, the first is its first sight.
    1: [{"row": 0, "rewards": [1, 1, 1, 1]}, {"row": 1, "rewards": [0, 1, 0, 1]}, {"row": 0, "rewards": [0, 0, 0, 0]}],
    # A reward that was not finite leaves the mean; as the trainer counts flat groups, it is 0 there.
    2: [{"row": 1, "rewards": [1, 1, 1, 0]}, {"row": 2, "rewards": [NAN, 1, 1, 1]}],
    3: [{"row": 3, "rewards": [NAN] * 4}, {"row": 1, "rewards": [1, 1, 1, 1]}],
    4: [{"row": 4, "rewards": [0, 1, 1, 0]}],
}
EXPECTED = {  # row: (times_sampled, mean_reward, zero_variance_share, first (step, reward), latest, improvement)
    0: (2, 0.5, 1.0, (1, 1.0), (1, 0.0), -1.0),
    1: (3, 0.75, 1 / 3, (1, 0.5), (3, 1.0), 0.5),
    2: (1, 1.0, 0.0, (2, 1.0), (2, 1.0), 0.0),
    3: (1, None, 1.0, (3, None), (3, None), None),
    4: (1, 0.5, 0.0, (4, 0.5), (4, 0.5), 0.0),
}


def record(job_id: str, step: int, groups) -> bool:
    from service_core.db import session_scope
    from worker import writes

    with session_scope() as session:
        return writes.record_prompt_groups(session, job_id=job_id, step=step, groups=groups)


def figures(item: dict) -> tuple:
    return (
        item["times_sampled"],
        item["mean_reward"],
        item["zero_variance_share"],
        (item["first_step"], item["first_reward"]),
        (item["latest_step"], item["latest_reward"]),
        item["improvement"],
    )


@pytest.fixture
def job_id(service, alice):
    dataset = upload(service, alice, DATASET.encode()).json()["id"]
    response = service.post("/v1/jobs", headers=alice, json=job_spec(dataset))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_steps_fold_into_per_prompt_figures_once_even_when_a_resumed_job_records_them_again(
    service, alice, job_id, monkeypatch
):
    from worker import writes

    monkeypatch.setattr(writes, "PROMPT_ROWS_PER_STATEMENT", 2)  # step 1's rows take two statements
    for step in (1, 2, 3):
        assert record(job_id, step, STEPS[step])
    # The job resumes from a checkpoint at step 1 and runs steps 2 and 3 again, drawing otherwise (dynamic sampling
    # with rewards that vary): the first run's figures stand, as its metrics and samples do.
    assert not record(job_id, 2, [{"row": 4, "rewards": [1, 0, 0, 0]}, {"row": 2, "rewards": [0, 0, 0, 0]}])
    assert not record(job_id, 3, STEPS[3])
    assert record(job_id, 4, STEPS[4])
    assert not record(job_id, 4, STEPS[4])

    page = service.get(f"/v1/jobs/{job_id}/prompts", headers=alice, params={"limit": 200}).json()
    assert page["count"] == 5
    assert {item["row"]: figures(item) for item in page["data"]} == EXPECTED  # all exact in binary (1/3 as 1 / 3)
    prompts = {item["row"]: item["prompt"] for item in page["data"]}
    assert prompts == {0: "p0", 1: [{"role": "user", "content": "p1"}], 2: "p2", 3: "p3", 4: "p4"}


def test_prompts_are_ordered_paged_and_scoped_to_the_tenant(service, alice, bob, job_id):
    for step, groups in STEPS.items():
        record(job_id, step, groups)

    def rows(**params) -> list[int]:
        response = service.get(f"/v1/jobs/{job_id}/prompts", headers=alice, params=params)
        assert response.status_code == 200, response.text
        return [item["row"] for item in response.json()["data"]]

    # Lowest mean first, highest first, largest gain first; ties by row, prompts with no finite reward last.
    assert rows() == rows(order="hardest") == [0, 4, 1, 2, 3]
    assert rows(order="easiest") == [2, 1, 0, 4, 3]
    assert rows(order="most_improved") == [1, 2, 4, 0, 3]
    assert [rows(limit=2, offset=offset) for offset in (0, 2, 4, 6)] == [[0, 4], [1, 2], [3], []]

    for params in ({"order": "slowest"}, {"limit": 201}, {"limit": 0}, {"offset": -1}):
        response = service.get(f"/v1/jobs/{job_id}/prompts", headers=alice, params=params)
        assert response.status_code == 422 and next(iter(params)) in response.json()["detail"], response.text
    assert service.get(f"/v1/jobs/{job_id}/prompts", headers=bob).status_code == 404
    assert service.get("/v1/jobs/job_" + "0" * 32 + "/prompts", headers=alice).status_code == 404
    # A job that has not trained yet has no figures.
    other = service.post("/v1/jobs", headers=bob, json=job_spec(upload(service, bob, DATASET.encode()).json()["id"]))
    assert service.get(f"/v1/jobs/{other.json()['id']}/prompts", headers=bob).json() == {"data": [], "count": 0}
