"""Resumable checkpoints: a folder per step, visible only once complete.

checkpoints/step-000030/
    adapter_config.json, adapter_model.safetensors   the PEFT adapter (PeftModel.from_pretrained loads the folder)
    README.md                                        PEFT's model card
    trainer_state.pt                                 optimizer, scheduler, RNG states (a GPU's too), step, settings
    manifest.json                                    sha256 and size of every other file, written last

The names live in grpo_core.checkpoint_layout, which the API and the artifacts store import without torch.

Written into a hidden temp folder, each file fsynced, then renamed into place: a crash mid-write leaves the
previous checkpoint as the latest, and a folder without a valid manifest is never listed. Listing checks sizes
only (cheap); a resume also checks every sha256 (`changed_files`) before it trusts a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo_core.checkpoint_layout import ADAPTER_WEIGHTS, MANIFEST, TRAINER_STATE, step_dir_name
from grpo_core.checkpoint_layout import STEP_DIR as _STEP_DIR
from grpo_core.files import TEMP_PREFIX, atomic_write


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every random stream a step draws from: torch's CPU generator, Python's, numpy's, and on a CUDA `device`
    that device's generator (sampling draws there). Other GPUs are left alone: touching them would start a CUDA
    context on each."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Put back what capture_rng_state took. The CUDA state goes to `device` when both are there: a checkpoint
    saved on a CPU (or before CUDA states were saved) leaves a GPU's generator as seeded, and a GPU checkpoint
    resumed on a CPU has no generator to restore it to."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(root: Path, step: int, model, trainer_state: dict[str, Any]) -> Checkpoint:
    """Save the adapter and trainer_state for `step` under root/step-NNNNNN atomically (a re-run of the same
    step replaces it whole)."""
    final = Path(root) / step_dir_name(step)
    with atomic_write(final) as tmp:
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True)
        torch.save(trainer_state, tmp / TRAINER_STATE)
        files = {
            path.relative_to(tmp).as_posix(): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            for path in sorted(p for p in tmp.rglob("*") if p.is_file())
        }
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=2))
    return Checkpoint(step, final)


def _manifest_files(path: Path) -> dict[str, dict[str, Any]] | None:
    """The manifest's files when the folder is a complete checkpoint by name, step and file sizes, else None."""
    match = _STEP_DIR.match(path.name)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not match or manifest.get("step") != int(match.group(1)):
        return None
    for name, info in files.items():
        file = path / name
        if not file.is_file() or file.stat().st_size != info["bytes"]:
            return None
    return files


def changed_files(checkpoint: Checkpoint) -> list[str]:
    """Files of the checkpoint whose sha256 differs from the one its manifest recorded at save time."""
    files = _manifest_files(checkpoint.path) or {}
    return [name for name, info in files.items() if sha256_file(checkpoint.path / name) != info["sha256"]]


def read_checkpoint(path: Path, verify: bool = False) -> Checkpoint | None:
    """The checkpoint in `path`, or None when it is incomplete (no manifest, or a file missing or cut short), or,
    with verify=True, when a file's sha256 differs from its manifest's."""
    path = Path(path)
    files = _manifest_files(path)
    if files is None:
        return None
    checkpoint = Checkpoint(int(_STEP_DIR.match(path.name).group(1)), path)  # type: ignore[union-attr]
    if verify and changed_files(checkpoint):
        return None
    return checkpoint


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Complete checkpoints under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = (read_checkpoint(p) for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))
    return sorted((c for c in found if c is not None), key=lambda c: c.step)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def remove_partial_checkpoints(root: Path) -> int:
    """Delete temp folders a crash left mid-write (never listed, only taking space). Call it only while no
    other process writes checkpoints into root (the trainer holds the job's lease). Returns how many."""
    root = Path(root)
    partial = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(TEMP_PREFIX)] if root.is_dir() else []
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return len(partial)


def load_trainer_state(checkpoint: Checkpoint) -> dict[str, Any]:
    # weights_only=False: the file holds Python RNG tuples and numpy state; it is one we wrote ourselves.
    # map_location: a GPU run's optimizer state loads on any machine; load_state_dict moves it to the parameters.
    return torch.load(checkpoint.path / TRAINER_STATE, weights_only=False, map_location="cpu")


@dataclass(frozen=True)
class ForkPoint:
    """Another run's checkpoint folder that a run starts from (a fork): its adapter weights, and with
    optimizer=True its AdamW moments too. The caller names the folder; nothing here knows whose it is."""

    path: Path
    optimizer: bool = False


class ForkPointUnusable(ValueError):
    """The checkpoint to fork from is missing, incomplete, changed since it was saved, or of another shape."""


def load_fork_point(model, optimizer, fork: ForkPoint) -> None:
    """Load the fork point's adapter weights into `model`'s LoRA (bit for bit), and with fork.optimizer its AdamW
    state into `optimizer`. Only the per-weight state (moments, update count) is carried: the learning rate,
    weight decay and schedule stay the forking run's own. Raises ForkPointUnusable when the checkpoint cannot be
    trusted or its tensors are not the shape of this model's adapter."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    checkpoint = read_checkpoint(Path(fork.path), verify=True)
    if checkpoint is None:
        raise ForkPointUnusable(
            f"the checkpoint to start from ({Path(fork.path).name}) is missing, incomplete, or changed since it was "
            "saved"
        )
    weights = load_file(checkpoint.path / ADAPTER_WEIGHTS)
    own = get_peft_model_state_dict(model)
    if {k: v.shape for k, v in weights.items()} != {k: v.shape for k, v in own.items()}:
        raise ForkPointUnusable(
            f"the adapter at step {checkpoint.step} has other layers or shapes than this run's LoRA "
            "(base model, lora.r and lora.target_modules must be the ones it was trained with)"
        )
    set_peft_model_state_dict(model, weights)
    if not fork.optimizer:
        return
    saved = load_trainer_state(checkpoint)["optimizer"]
    fresh = optimizer.state_dict()
    shapes = [p.shape for group in optimizer.param_groups for p in group["params"]]
    moments = {index: state["exp_avg"].shape for index, state in saved["state"].items()}
    if any(index >= len(shapes) or shape != shapes[index] for index, shape in moments.items()):
        raise ForkPointUnusable(f"the optimizer state at step {checkpoint.step} does not fit this run's adapter")
    optimizer.load_state_dict({"state": saved["state"], "param_groups": fresh["param_groups"]})
