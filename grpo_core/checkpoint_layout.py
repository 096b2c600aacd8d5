"""The names of a checkpoint folder's files, importable without torch: grpo_core.checkpoint writes and reads by
them, and the API (its fork check) and the artifacts store (the adapter archive) name the same files through them.

checkpoints/step-000030/      step_dir_name(30)
    adapter_config.json       ADAPTER_CONFIG   } ADAPTER_FILES: the PEFT adapter (PeftModel.from_pretrained loads
    adapter_model.safetensors ADAPTER_WEIGHTS  }   the folder); the downloadable archive holds these
    README.md                 MODEL_CARD       PEFT's save_pretrained writes it; nothing reads it back
    trainer_state.pt          TRAINER_STATE    optimizer, scheduler, RNG states, step, settings
    manifest.json             MANIFEST         sha256 and size of every other file, written last
"""

from __future__ import annotations

import re

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
MODEL_CARD = "README.md"
TRAINER_STATE = "trainer_state.pt"
MANIFEST = "manifest.json"
CHECKPOINT_FILES = (*ADAPTER_FILES, MODEL_CARD, TRAINER_STATE, MANIFEST)
"""Every file a complete checkpoint folder holds (tests/api/test_contracts.py saves a real one to hold this)."""
FORK_FILES = (MANIFEST, *ADAPTER_FILES, TRAINER_STATE)
"""What starting from a checkpoint reads (`checkpoint.load_fork_point`, with optimizer=True)."""

STEP_DIR = re.compile(r"^step-(\d{6,})$")


def step_dir_name(step: int) -> str:
    """The folder name of the checkpoint of `step`: zero-padded so that names sort as steps do."""
    return f"step-{int(step):06d}"


def step_of_dir(name: str) -> int | None:
    """The step a checkpoint folder's name says, or None when it is not a checkpoint folder's name."""
    match = STEP_DIR.match(name)
    return int(match.group(1)) if match else None
