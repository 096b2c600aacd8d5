"""GET /v1/models and job specs on the operator's own models (GRPO_MODELS_FILE, written by `grpo models add`)."""

import shutil

import pytest

from api.cli import main as grpo
from tests.api.helpers import job_spec, jsonl, upload


@pytest.fixture(scope="module")
def models_file(tiny_model_dir, tmp_path_factory):
    """A models file with the tiny model registered twice by `grpo models add`: as it is (chat template), and
    without its chat template, with LoRA on q_proj and v_proj only by default."""
    folder = tmp_path_factory.mktemp("models")
    plain = folder / "tiny-plain"
    shutil.copytree(tiny_model_dir, plain, ignore=shutil.ignore_patterns("chat_template.jinja"))
    path = folder / "models.yaml"
    assert grpo(["models", "add", "tiny-copy", str(tiny_model_dir), "--models-file", str(path)]) == 0
    command = ["models", "add", "tiny-plain", str(plain), "--description", "no template", "--models-file", str(path)]
    assert grpo([*command, "--target-modules", "q_proj", "v_proj"]) == 0
    return path


@pytest.fixture
def with_models_file(service, models_file, monkeypatch):
    from service_core.settings import get_settings

    monkeypatch.setenv("GRPO_MODELS_FILE", str(models_file))
    get_settings.cache_clear()
    yield models_file
    get_settings.cache_clear()


def test_models_lists_each_model_with_its_facts(service, alice):
    models = {m["name"]: m for m in service.get("/v1/models", headers=alice).json()["data"]}
    assert set(models) == {"smollm2-135m-instruct", "gemma3-270m", "tiny-random-llama"}
    tiny = models["tiny-random-llama"]
    assert (tiny["parameters"], tiny["context_length"], tiny["has_chat_template"], tiny["builtin"]) == (
        1_591_456,
        1024,
        True,
        True,
    )
    assert tiny["default_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    gemma = models["gemma3-270m"]
    assert (gemma["parameters"], gemma["context_length"], gemma["has_chat_template"]) == (268_098_176, 32768, False)


def test_a_registered_model_is_listed_and_a_job_on_it_runs_with_its_lora_targets(service, alice, with_models_file):
    models = {m["name"]: m for m in service.get("/v1/models", headers=alice).json()["data"]}
    assert models["tiny-plain"] == {
        "name": "tiny-plain",
        "description": "no template",
        "context_length": 1024,
        "linear_modules": ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj", "v_proj"],
        "parameters": 1_591_456,
        "has_chat_template": False,
        "default_target_modules": ["q_proj", "v_proj"],
        "builtin": False,
    }
    assert models["tiny-copy"]["has_chat_template"] and not models["tiny-copy"]["builtin"]
    dataset = upload(service, alice, jsonl([{"prompt": "What is 2 + 3?", "answer": 5}])).json()["id"]
    job = service.post("/v1/jobs", headers=alice, json=job_spec(dataset, base_model="tiny-plain"))
    assert job.status_code == 201, job.text
    assert job.json()["hyperparameters"]["lora"]["target_modules"] == ["q_proj", "v_proj"]
    chosen = {"group_size": 4, "lora": {"target_modules": ["o_proj"]}}
    job = service.post(
        "/v1/jobs", headers=alice, json=job_spec(dataset, base_model="tiny-plain", hyperparameters=chosen)
    )
    assert job.json()["hyperparameters"]["lora"]["target_modules"] == ["o_proj"]
    unknown = service.post("/v1/jobs", headers=alice, json=job_spec(dataset, base_model="tiny-other"))
    assert unknown.status_code == 422
    assert "unknown base_model 'tiny-other'; valid: gemma3-270m, smollm2-135m-instruct, tiny-copy, tiny-plain" in (
        unknown.text
    )


@pytest.mark.parametrize(
    ("model", "bound"),
    [
        ("tiny-copy", 120 + 24 + len("user") + 700),  # the chat template's bytes, measured by `grpo models add`
        ("tiny-plain", 0 + 1 + len("user") + 700),  # no template: the prompt as it is (its role counted, for margin)
    ],
)
def test_a_prompt_past_a_registered_models_context_is_refused(service, alice, with_models_file, model, bound):
    dataset = upload(service, alice, jsonl([{"prompt": "x" * 700, "answer": 1}])).json()["id"]
    too_long = {"group_size": 2, "max_new_tokens": 1024 - bound + 1}
    response = service.post(
        "/v1/jobs", headers=alice, json=job_spec(dataset, base_model=model, hyperparameters=too_long)
    )
    assert response.status_code == 422
    assert (
        f"dataset_id {dataset}: its longest prompt (at most {bound} tokens, bounded by its UTF-8 bytes) plus "
        f"hyperparameters.max_new_tokens {1024 - bound + 1} is 1025, more than {model}'s context of 1024 tokens"
    ) in response.json()["errors"][0]
    fits = {"group_size": 2, "max_new_tokens": 1024 - bound}
    response = service.post("/v1/jobs", headers=alice, json=job_spec(dataset, base_model=model, hyperparameters=fits))
    assert response.status_code == 201, response.text


def test_the_file_is_read_again_when_it_changes_and_a_broken_edit_keeps_the_models(
    service, alice, with_models_file, tmp_path, tiny_model_dir, monkeypatch
):
    from service_core.settings import get_settings

    path = tmp_path / "models.yaml"
    shutil.copy(with_models_file, path)
    monkeypatch.setenv("GRPO_MODELS_FILE", str(path))
    get_settings.cache_clear()
    names = lambda: {m["name"] for m in service.get("/v1/models", headers=alice).json()["data"]}  # noqa: E731
    assert {"tiny-copy", "tiny-plain"} <= names() and "tiny-new" not in names()
    assert grpo(["models", "add", "tiny-new", str(tiny_model_dir), "--models-file", str(path)]) == 0
    assert "tiny-new" in names()
    path.write_text("models: {broken: [\n")
    assert {"tiny-copy", "tiny-plain", "tiny-new"} <= names()


def test_the_api_does_not_start_on_a_bad_models_file(service, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from grpo_core.catalog import ModelsFileError
    from service_core.settings import get_settings

    path = tmp_path / "models.yaml"
    path.write_text("models:\n  tiny-random-llama: {source: a/b}\n")
    monkeypatch.setenv("GRPO_MODELS_FILE", str(path))
    get_settings.cache_clear()
    with pytest.raises(ModelsFileError, match="'tiny-random-llama' is a built-in model's name"):
        with TestClient(create_app()):
            pass
    get_settings.cache_clear()
