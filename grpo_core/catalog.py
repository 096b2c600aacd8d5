"""The model catalog: the built-in models (`grpo_core.spec.BASE_MODELS`) plus those an operator registers in a models
file (GRPO_MODELS_FILE), importable without torch so the API checks specs against it without loading a model.

A models file is YAML:

    models:
      my-model:                      # the name a job spec uses
        source: /srv/models/my-model # a local Hugging Face checkpoint folder, or a hub id (owner/name)
        description: My fine-tuned Llama
        context_length: 4096         # the facts below are what `grpo models add` measures from the checkpoint
        linear_modules: [down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj]
        parameters: 1235814400
        has_chat_template: true
        prompt_template_bytes: 60
        message_template_bytes: 24
        target_modules: [q_proj, v_proj]   # optional: the LoRA targets of a job that names none
        chat_template: "{% for m in messages %}...{% endfor %}"  # optional: replaces the tokenizer's template

A relative `source` (starting ./ or ../) is read from the models file's folder. The API, the worker and the trainer
all read the catalog through `load_catalog`, so what the API accepts is what the worker can load.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from grpo_core.files import atomic_write
from grpo_core.spec import BASE_MODELS, BaseModelSpec

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
REQUIRED_FIELDS = (
    "source",
    "description",
    "context_length",
    "linear_modules",
    "parameters",
    "has_chat_template",
    "prompt_template_bytes",
    "message_template_bytes",
)
OPTIONAL_FIELDS = ("target_modules", "chat_template", "hardware")


class ModelsFileError(ValueError):
    """The models file cannot be read; `problems` lists each (every bad entry and field, not just the first)."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.problems = problems
        super().__init__(f"models file {path}: " + "; ".join(problems))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice: YAML would silently keep the last, so a model registered twice
    under one name would lose its first entry unnoticed."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice", key_node.start_mark
                )  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _resolve_source(source: str, folder: Path) -> str:
    """An absolute folder path, or a hub id unchanged. A path must say it is one (/, ./, ../, ~), since owner/name
    is also a relative path."""
    if source.startswith(("/", "~")):
        return str(Path(source).expanduser())
    if source.startswith(("./", "../")):
        return str((folder / source).resolve())
    if HUB_ID.fullmatch(source):
        return source
    raise ValueError(
        f"source {source!r} is neither a folder (an absolute path, or one starting ./ or ../) nor a hub id (owner/name)"
    )


def _entry_problems(name: Any, entry: Any) -> list[str]:
    """What is wrong with one entry's name and fields (types and ranges), each naming the model and the field."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        return [
            f"model name {name!r} must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ]
    if name in BASE_MODELS:
        return [f"model {name!r} is a built-in model's name; choose another"]
    if not isinstance(entry, dict):
        return [f"model {name!r} must be a mapping of fields, got {type(entry).__name__}"]
    where = f"model {name!r}"
    problems = [f"{where}: unknown field {key!r}" for key in entry if key not in REQUIRED_FIELDS + OPTIONAL_FIELDS]
    problems += [f"{where}: missing field {key!r}" for key in REQUIRED_FIELDS if key not in entry]

    def check(key: str, ok: bool, expected: str) -> None:
        if key in entry and not ok:
            problems.append(f"{where}: {key} must be {expected}, got {entry[key]!r}")

    def is_int(value: Any, low: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    def is_names(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)

    check("source", isinstance(entry.get("source"), str), "a folder path or a hub id")
    check(
        "description",
        bool(isinstance(entry.get("description"), str) and entry.get("description")),
        "a non-empty string",
    )
    check("context_length", is_int(entry.get("context_length"), 1), "a positive integer")
    check("parameters", is_int(entry.get("parameters"), 1), "a positive integer")
    check("prompt_template_bytes", is_int(entry.get("prompt_template_bytes"), 0), "an integer >= 0")
    check("message_template_bytes", is_int(entry.get("message_template_bytes"), 0), "an integer >= 0")
    check("has_chat_template", isinstance(entry.get("has_chat_template"), bool), "true or false")
    check("linear_modules", is_names(entry.get("linear_modules")), "a non-empty list of names")
    check("target_modules", is_names(entry.get("target_modules")), "a non-empty list of names")
    check("chat_template", bool(isinstance(entry.get("chat_template"), str) and entry.get("chat_template")), "a string")
    check("hardware", entry.get("hardware") in ("cpu", "gpu"), "cpu or gpu (where its jobs run by default)")
    if is_names(entry.get("linear_modules")) and is_names(entry.get("target_modules")):
        unknown = [m for m in entry["target_modules"] if m not in entry["linear_modules"]]
        if unknown:
            problems.append(f"{where}: target_modules {unknown} are not in its linear_modules")
    if entry.get("chat_template") and entry.get("has_chat_template") is False:
        problems.append(f"{where}: it gives a chat_template, so has_chat_template must be true")
    return problems


def load_models_file(path: str | Path) -> dict[str, BaseModelSpec]:
    """The models registered in a models file, by name. Raises ModelsFileError naming every problem: a missing or
    unreadable file, bad YAML, unknown or missing fields, wrong types, a name that clashes with a built-in model."""
    path = Path(path).expanduser()
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except OSError as error:
        raise ModelsFileError(path, [f"cannot be read ({error.strerror or error})"]) from None
    except UnicodeDecodeError:
        raise ModelsFileError(path, ["is not UTF-8 text"]) from None
    except yaml.YAMLError as error:
        raise ModelsFileError(path, [f"is not valid YAML: {error}".replace("\n", " ")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {"models"}:
        raise ModelsFileError(path, ["must be a mapping with one key, 'models' (name -> entry)"])
    entries = data.get("models") or {}
    if not isinstance(entries, dict):
        raise ModelsFileError(path, ["'models' must map model names to entries"])
    problems: list[str] = []
    catalog: dict[str, BaseModelSpec] = {}
    for name, entry in entries.items():
        found = _entry_problems(name, entry)
        if not found:
            try:
                source = _resolve_source(entry["source"], path.parent)
            except ValueError as error:
                found = [f"model {name!r}: {error}"]
        problems += found
        if found:
            continue
        catalog[name] = BaseModelSpec(
            description=entry["description"],
            context_length=entry["context_length"],
            linear_modules=tuple(entry["linear_modules"]),
            parameters=entry["parameters"],
            has_chat_template=entry["has_chat_template"],
            prompt_template_bytes=entry["prompt_template_bytes"],
            message_template_bytes=entry["message_template_bytes"],
            target_modules=tuple(entry["target_modules"]) if "target_modules" in entry else None,
            source=source,
            chat_template=entry.get("chat_template"),
            hardware=entry.get("hardware", "cpu"),
        )
    if problems:
        raise ModelsFileError(path, problems)
    return catalog


def models_file_from_env() -> Path | None:
    """$GRPO_MODELS_FILE, the default where a caller passes no models file (the service passes its setting)."""
    value = os.environ.get("GRPO_MODELS_FILE")
    return Path(value) if value else None


def load_catalog(models_file: str | Path | None = None) -> dict[str, BaseModelSpec]:
    """Every model a job may name: the built-ins, then the models file's entries (None: no file)."""
    return {**BASE_MODELS, **(load_models_file(models_file) if models_file else {})}


def default_target_modules(model: BaseModelSpec) -> tuple[str, ...]:
    """The LoRA target modules of a job on `model` whose spec names none."""
    from grpo_core.config import LoraSettings  # config imports spec, as this module does: no cycle, kept local

    return model.target_modules or LoraSettings().target_modules


def models_file_entry(model: BaseModelSpec) -> dict[str, Any]:
    """A catalog entry as the models file writes it (optional fields only when set)."""
    entry: dict[str, Any] = {
        "source": model.source,
        "description": model.description,
        "context_length": model.context_length,
        "linear_modules": list(model.linear_modules),
        "parameters": model.parameters,
        "has_chat_template": model.has_chat_template,
        "prompt_template_bytes": model.prompt_template_bytes,
        "message_template_bytes": model.message_template_bytes,
    }
    if model.target_modules is not None:
        entry["target_modules"] = list(model.target_modules)
    if model.chat_template is not None:
        entry["chat_template"] = model.chat_template
    return entry


def add_to_models_file(path: str | Path, name: str, model: BaseModelSpec, *, replace: bool = False) -> None:
    """Add (or with replace=True, replace) one entry in a models file, creating the file if need be. The whole file
    is checked before and after and written atomically, so a reader (the API, a worker) sees the old file or the
    new one, never half of one, and a bad entry never reaches it. Comments in the file are not kept."""
    path = Path(path).expanduser()
    entry = models_file_entry(model)
    problems = _entry_problems(name, entry)
    if problems:
        raise ModelsFileError(path, problems)
    existing: dict[str, Any] = {}
    if path.exists():
        load_models_file(path)  # a file that is already bad is reported, not overwritten
        existing = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("models") or {}
    if name in existing and not replace:
        raise ModelsFileError(path, [f"model {name!r} is already registered (replace it to change it)"])
    entries: Mapping[str, Any] = {**existing, name: entry}
    text = yaml.safe_dump({"models": dict(entries)}, sort_keys=False, allow_unicode=True, width=120)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        load_models_file(tmp)  # what is written reads back as a valid file (a relative source stays relative)
