"""grpo_core.spec is what the API validates with, without torch: it must name exactly what the engine can run, and
each catalog model's facts (linear layers, context, chat-template overhead) must be what the real model says."""

import subprocess
import sys

import pytest
import torch

from grpo_core import algorithms, models, spec
from grpo_core.data import render_prompt, summarize_dataset

pytestmark = pytest.mark.unit


def test_the_light_lists_equal_the_engine_registries():
    assert set(spec.BASE_MODELS) == set(models.CATALOG)
    assert {name: entry.description for name, entry in models.CATALOG.items()} == {
        name: model.description for name, model in spec.BASE_MODELS.items()
    }
    assert sorted(spec.LOSS_TYPES) == sorted(algorithms.LOSS_AGGREGATIONS)
    assert sorted(spec.REWARD_SCALINGS) == sorted(algorithms.REWARD_SCALINGS)


@pytest.mark.slow
def test_validation_modules_import_no_torch():
    code = (
        "import sys, grpo_core, grpo_core.spec, grpo_core.config, grpo_core.rewards, grpo_core.data\n"
        "grpo_core.GRPOConfig.from_dict({'group_size': 4, 'lora': {'r': 8}})\n"
        "grpo_core.resolve_rewards([grpo_core.RewardSpec('regex_match', params={'pattern': 'a+'})], {'answer'})\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def check_against_the_real_model(name: str) -> None:
    model, tokenizer = models.load_base_model(name)
    catalog = spec.BASE_MODELS[name]
    linears = {path.rsplit(".", 1)[-1] for path, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert set(catalog.linear_modules) == linears
    assert catalog.context_length == model.config.max_position_embeddings
    assert catalog.parameters == sum(p.numel() for p in model.parameters())
    assert catalog.has_chat_template == bool(tokenizer.chat_template)
    # What `grpo models add` would measure for this checkpoint is what the built-in entry says.
    assert models.measure_template_bytes(tokenizer) == (catalog.prompt_template_bytes, catalog.message_template_bytes)
    # The bound from a row's bytes holds for the rendered prompt's bytes (exactly, for one user turn without a
    # system turn, with a template) and so for its tokens, tokenized as the sampler does (no special tokens added).
    one_turn = [{"role": "user", "content": "What is 2 + 3?"}]
    rendered = render_prompt({"messages": one_turn}, tokenizer)
    summary = summarize_dataset([{"messages": one_turn}])
    overcount = 0 if catalog.has_chat_template else len("user") + catalog.message_template_bytes  # roles not rendered
    assert catalog.prompt_token_bound(summary.max_prompt_bytes, 1) == len(rendered.encode()) + overcount
    assert models.prompt_bound_violations(tokenizer, catalog) == []


def test_the_tiny_model_catalog_entry_matches_the_model():
    check_against_the_real_model("tiny-random-llama")


@pytest.mark.slow
def test_the_smollm2_catalog_entry_matches_the_model():
    check_against_the_real_model("smollm2-135m-instruct")


@pytest.mark.slow
def test_the_gemma3_catalog_entry_matches_the_model():
    check_against_the_real_model("gemma3-270m")
