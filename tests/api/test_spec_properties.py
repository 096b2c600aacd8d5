"""Accepted means runnable: job specs generated around the edges of every field (each bound, just past it, the wrong
type, 2.5, "8", null, huge integers, Infinity, NaN), valid and invalid. Each refused spec gets a 4xx whose messages
each name a field; each accepted one trains one step of tiny-random-llama on the uploaded dataset, read back with
the worker's parser, without an error and with finite metrics. In-process (GRPOTrainer, not a worker) and with
small operator limits, so an accepted spec stays cheap: max_steps is forced to 1, the rest is trained as accepted.

`make test` runs the "spec" profile (a fixed set of examples, derandomized); `-m chaos` runs "spec-chaos" (more,
random). Figures: set GRPO_SPEC_FIGURES=1 and run with -s to print a SPEC line per run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpo_core.config import GRPOConfig, LoraSettings
from grpo_core.spec import BASE_MODELS
from service_core.models import MAX_INT

settings.register_profile(
    "spec",
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("spec-chaos", parent=settings.get_profile("spec"), max_examples=1000, derandomize=False)

# Small operator limits: everything the API accepts trains in well under a second.
LIMITS = {
    "group_size": 4,
    "prompts_per_step": 2,
    "completions_per_step": 6,
    "num_iterations": 2,
    "eval_samples_per_prompt": 3,
    "steps": 40,
    "lora_rank": 8,
    "new_tokens": 6,
    "prompt_tokens": 400,
    "tokens_per_step": 3000,
    "dataset_rows": 50,
    "processes_per_job": 1,  # the steps train here in one process
}
OPERATOR_LIMIT = {  # hyperparameter -> its limit above
    "group_size": "group_size",
    "prompts_per_step": "prompts_per_step",
    "num_iterations": "num_iterations",
    "eval_samples_per_prompt": "eval_samples_per_prompt",
    "max_steps": "steps",
    "lora.r": "lora_rank",
    "max_new_tokens": "new_tokens",
    "processes": "processes_per_job",
}
TRAIN_ROWS = [
    {"prompt": "What is 2 + 3?", "answer": 5, "question": "two plus three"},
    {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "7 - 4 = ?"}],
        "answer": "3",
        "question": "é 漢字 🙂",
    },
    {"prompt": "Say <answer>9</answer>", "answer": 9.0, "question": "tags"},
]
EVAL_ROWS = [{"prompt": "What is 1 + 1?", "answer": 2, "question": "q"}]
WRONG_TYPES = [2.5, "8", None, True, [1], {"a": 1}, 10**20, -(10**20), math.inf, -math.inf, math.nan]


def _fields():
    """(dotted name, dataclass field) for every hyperparameter."""
    fields = [(f.name, f) for f in dataclasses.fields(GRPOConfig) if f.name != "lora"]
    return fields + [(f"lora.{f.name}", f) for f in dataclasses.fields(LoraSettings)]


def _int_values(name, spec):
    low = spec.metadata.get("ge", spec.metadata["gt"] + 1 if "gt" in spec.metadata else -MAX_INT - 1)
    high = min(spec.metadata.get("le", MAX_INT), MAX_INT)
    if name in OPERATOR_LIMIT:
        high = min(high, LIMITS[OPERATOR_LIMIT[name]])
    inside = st.one_of(st.sampled_from([low, high]), st.integers(low, high))
    outside = st.sampled_from([low - 1, high + 1, MAX_INT, MAX_INT + 1, -MAX_INT - 2, 0, -1])
    return inside, outside


def _float_values(spec):
    meta = spec.metadata
    low = meta.get("ge", meta.get("gt"))
    high = meta.get("le", meta.get("lt"))
    edges = [0.0, -0.0, 1.0, -1.0, 1e-300, 5e-324, 1e300, -1e300, 3.4e38, 1e-8, 0.5, 2, 10**30]
    for bound in (low, high):
        if bound is not None:
            edges += [bound, math.nextafter(bound, math.inf), math.nextafter(bound, -math.inf), bound + 1, bound - 1]
    inside = st.floats(
        min_value=low if low is not None else -1e300,
        max_value=high if high is not None else 1e300,
        exclude_min="gt" in meta,
        exclude_max="lt" in meta,
        allow_nan=False,
    )
    return inside, st.sampled_from(edges)


def _values(name, spec):
    """(values inside the field's range, its edges and values past them); wrong types are drawn apart."""
    kind = str(spec.type)
    if "choices" in spec.metadata:
        return st.sampled_from(spec.metadata["choices"]), st.sampled_from(["nope", "GRPO", ""])
    if kind == "int":
        return _int_values(name, spec)
    if kind == "bool":
        return st.booleans(), st.sampled_from([0, 1, "true", None])
    if kind.startswith("float") or name == "lora.alpha":
        inside, edges = _float_values(spec)
        return (st.one_of(inside, st.none()), edges) if kind == "float | None" else (inside, edges)
    modules = list(BASE_MODELS["tiny-random-llama"].linear_modules)
    return (
        st.lists(st.sampled_from(modules), min_size=1, max_size=4),
        st.sampled_from([[], ["nope_proj"], "q_proj", [1], ["q_proj", "q_proj"], ["layers.0.self_attn.q_proj"]]),
    )


# The base every generated spec changes: within the small limits (the defaults, such as group_size 8, are not).
SMALL = {"group_size": 2, "max_new_tokens": 4, "max_steps": 3, "eval_samples_per_prompt": 2}


@st.composite
def hyperparameters(draw):
    spec, lora = dict(SMALL), {"r": 4}
    for name, field in _fields():
        if (
            draw(st.integers(0, 9)) < 9
        ):  # most fields keep their defaults (1 in 10 changes), so most specs fail on one thing at most
            continue
        inside, edges = _values(name, field)
        kind = draw(st.integers(0, 9))  # inside the range 6 in 10, an edge or past it 3 in 10, a wrong type 1 in 10
        value = draw(inside if kind < 6 else edges if kind < 9 else st.sampled_from(WRONG_TYPES))
        (lora if name.startswith("lora.") else spec)[name.removeprefix("lora.")] = value
    lora_form = draw(st.integers(0, 19))
    if lora_form == 0:
        spec["lora"] = draw(st.sampled_from([None, 5, [], "x", {}]))
    elif lora:
        spec["lora"] = lora
    if draw(st.integers(0, 29)) == 0:
        spec[draw(st.sampled_from(["max_step", "lr", "lora_r"]))] = 1
    return spec


@st.composite
def rewards(draw):
    number = st.sampled_from([0, 1, -1, 0.5, 1e300, math.inf, math.nan, "1", None, True, 10**20])
    chosen = [{"name": "numeric_answer"}]
    if draw(st.integers(0, 5)) == 0:
        chosen[0]["params"] = {
            "field": draw(st.sampled_from(["answer", "question", "prompt", "nope"])),
            "tolerance": draw(number),
        }
    if draw(st.booleans()):
        chosen.append({"name": "format_tags"})
    if draw(st.integers(0, 3)) == 0:
        chosen.append(
            {"name": "length_target", "params": {"target": draw(st.sampled_from([1, 0, 2.5, "8", MAX_INT, 10**20]))}}
        )
    for reward in chosen:
        if draw(st.integers(0, 5)) == 0:
            reward["weight"] = draw(number)
    return chosen


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The app on a fresh SQLite database with the small limits, a tenant's key and its uploaded datasets."""
    from fastapi.testclient import TestClient

    from tests.api.helpers import jsonl, new_key, upload
    from tests.service_env import clear_service_caches, fresh_database

    tmp = tmp_path_factory.mktemp("spec-properties")
    with fresh_database("sqlite", tmp) as url, pytest.MonkeyPatch.context() as env:
        env.setenv("GRPO_DATA_DIR", str(tmp / "data"))
        env.setenv("GRPO_DATABASE_URL", url)
        env.delenv("GRPO_BROKER_URL", raising=False)
        for name, value in LIMITS.items():
            env.setenv(f"GRPO_MAX_{name.upper()}", str(value))
        # Every accepted spec stays queued (no worker here): the tenant's cap on queued jobs is not what this tests.
        env.setenv("GRPO_MAX_QUEUED_JOBS_PER_TENANT", str(2**31 - 1))
        clear_service_caches()
        from api.main import create_app
        from service_core.db import get_engine, run_migrations

        run_migrations()
        with TestClient(create_app()) as client:
            key = new_key("prop")
            train = upload(client, key, jsonl(TRAIN_ROWS)).json()["id"]
            held_out = upload(client, key, jsonl(EVAL_ROWS)).json()["id"]
            yield client, key, train, held_out
        get_engine().dispose()
        clear_service_caches()


FIELD_WORDS = [name for name, _ in _fields()] + ["hyperparameters", "rewards", "reward ", "dataset_id", "base_model"]


def finite_metrics_callback():
    from grpo_core.callbacks import TrainerCallback  # torch: imported only when a spec is accepted

    class FiniteMetrics(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_step(self, step, metrics):
            self.steps.append(metrics)

    return FiniteMetrics()


def train_one_step(job: dict) -> None:
    from grpo_core.config import RewardSpec
    from grpo_core.data import load_jsonl
    from grpo_core.trainer import GRPOTrainer
    from service_core import artifacts

    config = GRPOConfig.from_dict({**job["hyperparameters"], "max_steps": 1})
    callback = finite_metrics_callback()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = GRPOTrainer(
            base_model=job["base_model"],
            train_rows=load_jsonl(artifacts.dataset_path(job["dataset_id"])),
            eval_rows=load_jsonl(artifacts.dataset_path(job["eval_dataset_id"])) if job["eval_dataset_id"] else (),
            rewards=[RewardSpec(r["name"], r["weight"], r["params"]) for r in job["rewards"]],
            config=config,
            output_dir=output_dir,
            callbacks=[callback],
        )
        result = trainer.train()
    assert result.final_step == 1 and len(callback.steps) == 1
    bad = {k: v for k, v in callback.steps[0].items() if not math.isfinite(v)}
    assert not bad, f"non-finite metrics {bad} for {json.dumps(job['hyperparameters'])}"


def check_spec(api, outcomes: Counter, hyper: dict, chosen_rewards: list, with_eval: bool) -> None:
    client, key, train, held_out = api
    spec = {
        "base_model": "tiny-random-llama",
        "dataset_id": train,
        "eval_dataset_id": held_out if with_eval else None,
        "rewards": chosen_rewards,
        "hyperparameters": hyper,
    }
    body = json.dumps(spec)  # writes Infinity and NaN as a careless client would
    response = client.post("/v1/jobs", headers={**key, "Content-Type": "application/json"}, content=body)
    assert response.status_code in (201, 422), (response.status_code, response.text, body)
    if response.status_code == 422:
        errors = response.json()["errors"]
        assert errors and all(any(word in error for word in FIELD_WORDS) for error in errors), (errors, body)
        outcomes["refused"] += 1
        return
    outcomes["accepted"] += 1
    try:
        train_one_step(response.json())
    except Exception as error:
        raise AssertionError(f"an accepted spec did not train: {body}") from error


def _figures(name: str, outcomes: Counter) -> None:
    if os.environ.get("GRPO_SPEC_FIGURES") or name == "chaos":  # make chaos prints its figures always
        print(
            ("CHAOS " if name == "chaos" else "")
            + f"SPEC {name}: {sum(outcomes.values())} specs, {outcomes['accepted']} accepted and trained one step, {outcomes['refused']} refused with a 422 naming a field"
        )


def test_every_spec_is_refused_naming_a_field_or_trains(api):
    outcomes: Counter = Counter()

    @settings(settings.get_profile("spec"))
    @given(hyper=hyperparameters(), chosen_rewards=rewards(), with_eval=st.booleans())
    def run(hyper, chosen_rewards, with_eval):
        check_spec(api, outcomes, hyper, chosen_rewards, with_eval)

    run()
    _figures("make test", outcomes)
    assert outcomes["accepted"] >= 30 and outcomes["refused"] >= 30, outcomes


@pytest.mark.chaos
def test_every_spec_is_refused_naming_a_field_or_trains_many(api):
    outcomes: Counter = Counter()

    @settings(settings.get_profile("spec-chaos"))
    @given(hyper=hyperparameters(), chosen_rewards=rewards(), with_eval=st.booleans())
    def run(hyper, chosen_rewards, with_eval):
        check_spec(api, outcomes, hyper, chosen_rewards, with_eval)

    run()
    _figures("chaos", outcomes)
