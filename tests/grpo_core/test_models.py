import pytest
import torch

from grpo_core.models import ModelLoadError, load_base_model, resolve_model_dir

pytestmark = pytest.mark.unit


def test_tiny_model_is_small_seeded_and_shares_the_smollm2_tokenizer(tmp_path):
    model, tokenizer = load_base_model("tiny-random-llama")
    assert model.config.hidden_size <= 64 and model.config.num_hidden_layers == 2
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer) == model.config.vocab_size
    # Built again in another cache folder from the same seed: the same weights.
    again, _ = load_base_model("tiny-random-llama", cache_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_a_local_folder_loads_and_a_bad_name_is_a_clear_error(tmp_path, tiny_model_dir):
    model, _ = load_base_model(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 2
    with pytest.raises(ModelLoadError, match="unknown base model 'gpt-7'.*smollm2-135m-instruct"):
        resolve_model_dir("gpt-7")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_dir(str(tmp_path / "empty"))


def test_an_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="could not load 'someone/no-such-model' from the Hugging Face hub"):
        load_base_model("someone/no-such-model")


@pytest.mark.slow
def test_smollm2_converts_to_a_plain_trainable_checkpoint():
    model, tokenizer = load_base_model("smollm2-135m-instruct")
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False)
    assert "5" in tokenizer.decode(out[0, ids.shape[1] :])


@pytest.mark.slow
def test_gemma3_is_assembled_from_its_chunks_and_converts_to_a_plain_checkpoint():
    model, tokenizer = load_base_model("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM" and tokenizer.chat_template is None
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    folder = resolve_model_dir("gemma3-270m")
    assert not list(folder.glob("*.gguf")), "the assembled GGUF file is deleted once converted"
    # A base model continues text; the tokenizer puts <bos> first, as Gemma was trained.
    ids = tokenizer("Monday, Tuesday, Wednesday,", return_tensors="pt").input_ids
    assert ids[0, 0] == tokenizer.bos_token_id
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1] :]).startswith(" Thursday")
