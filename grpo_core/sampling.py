"""Sampling groups of completions and computing their token log-probs.

Shapes: P prompts, G = group_size, N = P x G completions, L = padded prompt length, T = completion length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SampleBatch:
    prompt_ids: torch.Tensor  # [N, L] left-padded, each prompt repeated G times (its group adjacent)
    prompt_mask: torch.Tensor  # [N, L] 1 for real prompt tokens
    completion_ids: torch.Tensor  # [N, T]
    completion_mask: torch.Tensor  # [N, T] 1 up to and including the first EOS, 0 after it and for padding
    truncated: torch.Tensor  # [N] bool: reached max_new_tokens without EOS

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)


def completion_mask_from_eos(
    completion_ids: torch.Tensor, eos_token_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask [N, T] that keeps each completion up to and including its first EOS, and truncated [N] (no EOS)."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    # Number of EOS strictly before each position: 0 means the token is still part of the answer.
    eos_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    mask = (eos_before == 0).long()
    return mask, ~is_eos.any(dim=1)


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def sample_groups(
    model,
    tokenizer,
    prompts: list[str],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
) -> SampleBatch:
    """Sample group_size completions for each prompt with the KV cache, stopping at EOS.

    Pure temperature / top-p sampling: top_k is switched off, so the distribution sampled is the one whose
    log-probs the loss uses. greedy=True decodes the argmax (for evaluation).
    """
    was_training = model.training
    model.eval()
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    eos_ids = eos_token_ids(model, tokenizer)
    sampling = (
        {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    )
    output = model.generate(
        input_ids=encoded.input_ids,
        attention_mask=encoded.attention_mask,
        max_new_tokens=max_new_tokens,
        num_return_sequences=group_size,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    model.train(was_training)
    prompt_length = encoded.input_ids.shape[1]
    completion_ids = output[:, prompt_length:]
    completion_mask, truncated = completion_mask_from_eos(completion_ids, eos_ids)
    return SampleBatch(
        prompt_ids=encoded.input_ids.repeat_interleave(group_size, dim=0),
        prompt_mask=encoded.attention_mask.repeat_interleave(group_size, dim=0),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        truncated=truncated,
    )


def selective_log_softmax(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[..., token_ids] without materialising the full [.., V] log-prob tensor.

    logits: [N, T, V]; token_ids: [N, T]. Returns [N, T]. Row by row keeps the logsumexp's temporary at [T, V].
    """
    rows = []
    for row_logits, row_ids in zip(logits, token_ids, strict=True):
        chosen = row_logits.gather(-1, row_ids.unsqueeze(-1)).squeeze(-1)
        rows.append(chosen - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)


def completion_logprobs(model, batch: SampleBatch, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob [N, T] of each completion token under `model`, with logits divided by the sampling temperature
    so the distribution matches the one sampled. Gradients flow when called outside no_grad."""
    attention_mask = batch.attention_mask
    # Positions count real tokens only, as generate() did, so left padding does not shift the rotary positions.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    completion_length = batch.completion_ids.shape[1]
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=completion_length + 1,
    ).logits[:, :-1]
    if temperature != 1.0:
        logits = logits / temperature
    return selective_log_softmax(logits.float(), batch.completion_ids)
