"""The models file: what it may hold, every way it can be wrong, the catalog it adds to, and `grpo models add`, which
measures a checkpoint and writes its entry."""

import shutil
import subprocess
import sys

import pytest
import yaml

from api.cli import main as grpo
from grpo_core.catalog import ModelsFileError, add_to_models_file, load_catalog, load_models_file
from grpo_core.data import render_prompt, summarize_dataset
from grpo_core.models import ModelLoadError, load_base_model, load_tokenizer, resolve_model_dir
from grpo_core.spec import BASE_MODELS

ENTRY = {
    "source": "./checkpoints/mine",
    "description": "my model",
    "context_length": 2048,
    "linear_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"],
    "parameters": 1000,
    "has_chat_template": False,
    "prompt_template_bytes": 5,
    "message_template_bytes": 1,
}


def write(path, models):
    path.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    return path


def problems(path) -> list[str]:
    with pytest.raises(ModelsFileError) as caught:
        load_models_file(path)
    return caught.value.problems


def test_a_models_file_registers_folders_and_hub_ids_beside_the_built_ins(tmp_path):
    models_file = write(
        tmp_path / "models.yaml",
        {"mine": ENTRY, "hub": {**ENTRY, "source": "someone/model", "target_modules": ["q_proj", "v_proj"]}},
    )
    catalog = load_catalog(models_file)
    assert set(catalog) == set(BASE_MODELS) | {"mine", "hub"}
    # A relative folder is read from the models file's folder; a hub id is kept as it is.
    assert catalog["mine"].source == str(tmp_path / "checkpoints" / "mine")
    assert catalog["hub"].source == "someone/model" and catalog["hub"].target_modules == ("q_proj", "v_proj")
    assert catalog["mine"].target_modules is None and catalog["mine"].chat_template is None
    assert catalog["mine"].prompt_token_bound(100, 2) == 5 + 100 + 2
    assert load_catalog(None) == BASE_MODELS


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        ({"mine": {**ENTRY, "colour": "red"}}, ["model 'mine': unknown field 'colour'"]),
        (
            {"mine": {k: v for k, v in ENTRY.items() if k not in ("parameters", "source")}},
            ["model 'mine': missing field 'source'", "model 'mine': missing field 'parameters'"],
        ),
        ({"tiny-random-llama": ENTRY}, ["model 'tiny-random-llama' is a built-in model's name; choose another"]),
        ({"a/b": ENTRY}, ["model name 'a/b' must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter"]),
        ({"mine": {**ENTRY, "context_length": "2k"}}, ["model 'mine': context_length must be a positive integer"]),
        ({"mine": {**ENTRY, "has_chat_template": "yes"}}, ["model 'mine': has_chat_template must be true or false"]),
        ({"mine": {**ENTRY, "linear_modules": []}}, ["model 'mine': linear_modules must be a non-empty list"]),
        ({"mine": {**ENTRY, "target_modules": ["c_attn"]}}, ["model 'mine': target_modules ['c_attn'] are not in"]),
        ({"mine": {**ENTRY, "chat_template": "{{ x }}"}}, ["model 'mine': it gives a chat_template, so has_chat"]),
        ({"mine": {**ENTRY, "source": "models/x/y"}}, ["model 'mine': source 'models/x/y' is neither a folder"]),
        ({"mine": [1, 2]}, ["model 'mine' must be a mapping of fields, got list"]),
    ],
    ids=["unknown", "missing", "built-in", "name", "int", "bool", "list", "targets", "template", "source", "entry"],
)
def test_every_problem_of_an_entry_is_named(tmp_path, models, expected):
    found = problems(write(tmp_path / "models.yaml", models))
    assert len(found) == len(expected)
    for problem, start in zip(found, expected, strict=True):
        assert problem.startswith(start), found


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models:\n  mine: {source: a/b}\n  mine: {source: c/d}\n", "'mine' is given twice"),
        ("models: [1, 2]\n", "'models' must map model names to entries"),
        ("models: {}\nextra: 1\n", "must be a mapping with one key, 'models'"),
        ("models: {mine: [\n", "is not valid YAML"),
    ],
    ids=["duplicate", "list", "extra key", "yaml"],
)
def test_a_malformed_file_is_a_clear_error(tmp_path, text, expected):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    assert expected in problems(path)[0]
    assert str(path) in str(ModelsFileError(path, problems(path)))


def test_a_missing_file_is_a_clear_error_and_an_empty_one_registers_nothing(tmp_path):
    assert problems(tmp_path / "nope.yaml")[0].startswith("cannot be read")
    (tmp_path / "empty.yaml").write_text("")
    assert load_catalog(tmp_path / "empty.yaml") == BASE_MODELS


def test_adding_refuses_a_taken_name_and_a_bad_file_is_left_alone(tmp_path):
    models_file = tmp_path / "models.yaml"
    mine = load_models_file(write(tmp_path / "seed.yaml", {"mine": ENTRY}))["mine"]
    add_to_models_file(models_file, "mine", mine)
    with pytest.raises(ModelsFileError, match="'mine' is already registered"):
        add_to_models_file(models_file, "mine", mine)
    add_to_models_file(models_file, "mine", mine.__class__(**{**mine.__dict__, "context_length": 4096}), replace=True)
    assert load_models_file(models_file)["mine"].context_length == 4096
    with pytest.raises(ModelsFileError, match="'smollm2-135m-instruct' is a built-in model's name"):
        add_to_models_file(models_file, "smollm2-135m-instruct", mine)
    models_file.write_text("models: {mine: [\n")
    with pytest.raises(ModelsFileError, match="not valid YAML"):
        add_to_models_file(models_file, "other", mine)
    assert models_file.read_text() == "models: {mine: [\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


# --- `grpo models add` on real checkpoints -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_template_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model without its chat template: a base model, whose prompts are used as they are."""
    folder = tmp_path_factory.mktemp("plain") / "tiny-plain"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("chat_template.jinja"))
    return folder


def test_models_add_measures_the_checkpoint_as_the_built_in_entry_says(tmp_path, tiny_model_dir, capsys):
    models_file = tmp_path / "models.yaml"
    assert grpo(["models", "add", "tiny-copy", str(tiny_model_dir), "--models-file", str(models_file)]) == 0
    assert "tiny-copy: 1,591,456 parameters, context 1024 tokens, a chat template" in capsys.readouterr().out
    added = load_models_file(models_file)["tiny-copy"]
    built_in = BASE_MODELS["tiny-random-llama"]
    for fact in ("context_length", "linear_modules", "parameters", "has_chat_template"):
        assert getattr(added, fact) == getattr(built_in, fact), fact
    # Measured from the template: SmolLM2's default system turn and generation prompt, and <|im_start|>...<|im_end|>\n
    assert (added.prompt_template_bytes, added.message_template_bytes) == (120, 24)
    model, _ = load_base_model("tiny-random-llama")
    assert added.parameters == sum(p.numel() for p in model.parameters())
    # The worker finds it by name through the same file.
    assert resolve_model_dir("tiny-copy", models_file=models_file) == tiny_model_dir


def test_models_add_refuses_what_it_cannot_register(tmp_path, tiny_model_dir, capsys):
    models_file = tmp_path / "models.yaml"
    args = ["--models-file", str(models_file)]
    assert grpo(["models", "add", "x", str(tmp_path), *args]) == 1
    assert "holds no config.json" in capsys.readouterr().err
    assert grpo(["models", "add", "x", str(tiny_model_dir), "--target-modules", "c_attn", *args]) == 1
    assert "target modules ['c_attn'] are not linear layers" in capsys.readouterr().err
    assert grpo(["models", "add", "tiny-random-llama", str(tiny_model_dir), *args]) == 1
    assert "is a built-in model's name" in capsys.readouterr().err
    assert not models_file.exists()


def test_a_model_without_a_chat_template_gets_its_prompt_as_it_is(tmp_path, no_template_dir, capsys):
    models_file = tmp_path / "models.yaml"
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] ")
    assert grpo(["models", "add", "plain", str(no_template_dir), "--models-file", str(models_file)]) == 0
    command = ["models", "add", "templated", str(no_template_dir), "--chat-template", str(template)]
    assert grpo([*command, "--target-modules", "q_proj,v_proj", "--models-file", str(models_file)]) == 0
    catalog = load_catalog(models_file)
    plain, templated = catalog["plain"], catalog["templated"]
    assert not plain.has_chat_template and (plain.prompt_template_bytes, plain.message_template_bytes) == (0, 1)
    tokenizer = load_tokenizer("plain", models_file=models_file)
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]}
    assert render_prompt(row, tokenizer) == "Be brief.\n2+2?"
    summary = summarize_dataset([row])
    assert len(tokenizer("Be brief.\n2+2?", add_special_tokens=False)["input_ids"]) <= plain.prompt_token_bound(
        summary.max_prompt_bytes, summary.max_prompt_messages
    )
    # A template given to `grpo models add` is measured, stored in the file and used by the worker's tokenizer.
    assert templated.has_chat_template and templated.chat_template == template.read_text()
    assert (templated.prompt_template_bytes, templated.message_template_bytes) == (len("[assistant] "), 4)
    assert templated.target_modules == ("q_proj", "v_proj")
    rendered = render_prompt(row, load_tokenizer("templated", models_file=models_file))
    assert rendered == "[system] Be brief.\n[user] 2+2?\n[assistant] "
    assert len(rendered.encode()) <= templated.prompt_token_bound(summary.max_prompt_bytes, 2)


def test_models_list_shows_the_built_ins_and_the_file(tmp_path, capsys):
    models_file = write(tmp_path / "models.yaml", {"mine": ENTRY})
    assert grpo(["models", "list", "--file", str(models_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [*BASE_MODELS, "mine"]
    assert lines[-1].split("\t")[1:4] == ["1,000 parameters", "2048 tokens", "no chat template"]


def test_the_catalog_module_imports_no_torch():
    code = "import sys, grpo_core.catalog; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_a_registered_folder_missing_on_the_worker_is_a_clear_error(tmp_path):
    models_file = write(tmp_path / "models.yaml", {"mine": ENTRY})
    with pytest.raises(
        ModelLoadError, match=r"registered at .*checkpoints/mine, which is not a folder on this machine"
    ):
        resolve_model_dir("mine", models_file=models_file)


def test_the_trainer_trains_a_registered_model_by_name(tmp_path, no_template_dir):
    from grpo_core.config import GRPOConfig, LoraSettings, RewardSpec
    from grpo_core.options import TrainerOptions
    from grpo_core.trainer import GRPOTrainer

    models_file = tmp_path / "models.yaml"
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}|{% endfor %}=> ")
    command = ["models", "add", "mine", str(no_template_dir), "--chat-template", str(template)]
    assert grpo([*command, "--models-file", str(models_file)]) == 0
    config = GRPOConfig(group_size=2, max_new_tokens=4, max_steps=1, lora=LoraSettings(r=2))
    trainer = GRPOTrainer(
        base_model="mine",
        train_rows=[{"prompt": "2+2?", "answer": 4}],
        rewards=[RewardSpec("length_target", params={"target": 10})],
        config=config,
        output_dir=tmp_path / "run",
        options=TrainerOptions(models_file=models_file),
    )
    assert trainer.train().final_step == 1
    assert render_prompt({"prompt": "2+2?"}, trainer.tokenizer) == "2+2?|=> "
