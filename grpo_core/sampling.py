"""Sampling groups of completions and computing their token log-probs.

Shapes: P prompts, G = group_size, N = P x G completions, L = padded prompt length, T = completion length.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from grpo_core.packed_linear import adapter_merged


@dataclass(frozen=True)
class SampleBatch:
    prompt_ids: torch.Tensor  # [N, L] left-padded, each prompt repeated G times (its group adjacent)
    prompt_mask: torch.Tensor  # [N, L] 1 for real prompt tokens
    completion_ids: torch.Tensor  # [N, T]
    completion_mask: torch.Tensor  # [N, T] 1 up to and including the first EOS, 0 after it and for padding
    truncated: torch.Tensor  # [N] bool: reached max_new_tokens without EOS
    group_size: int = 1  # G: rows i*G .. i*G+G-1 share prompt i

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    def select(self, rows: slice) -> SampleBatch:
        """Completions rows.start .. rows.stop - 1 as a batch of their own (a micro batch), padded as they are here.
        Its group_size is the largest whose blocks of rows still share one prompt, even when the slice cuts a group
        (so the log-prob passes still run each prompt once per block)."""
        start, stop, _ = rows.indices(self.completion_ids.shape[0])
        return SampleBatch(
            prompt_ids=self.prompt_ids[start:stop],
            prompt_mask=self.prompt_mask[start:stop],
            completion_ids=self.completion_ids[start:stop],
            completion_mask=self.completion_mask[start:stop],
            truncated=self.truncated[start:stop],
            group_size=math.gcd(self.group_size, start, stop - start),
        )


def concat_batches(batches: Sequence[SampleBatch], pad_id: int = 0) -> SampleBatch:
    """One batch of every row of `batches` (which share a group_size), in order. Prompts are left-padded and
    completions right-padded to the longest, with `pad_id` under a mask of 0: positions come from the masks, so
    each row computes exactly as it did in its own batch."""
    prompt_length = max(batch.prompt_ids.shape[1] for batch in batches)
    completion_length = max(batch.completion_ids.shape[1] for batch in batches)

    def pad(tensor: torch.Tensor, length: int, value: int, left: bool) -> torch.Tensor:
        missing = length - tensor.shape[1]
        return torch.nn.functional.pad(tensor, (missing, 0) if left else (0, missing), value=value)

    return SampleBatch(
        prompt_ids=torch.cat([pad(b.prompt_ids, prompt_length, pad_id, left=True) for b in batches]),
        prompt_mask=torch.cat([pad(b.prompt_mask, prompt_length, 0, left=True) for b in batches]),
        completion_ids=torch.cat([pad(b.completion_ids, completion_length, pad_id, left=False) for b in batches]),
        completion_mask=torch.cat([pad(b.completion_mask, completion_length, 0, left=False) for b in batches]),
        truncated=torch.cat([b.truncated for b in batches]),
        group_size=batches[0].group_size,
    )


def prompt_seed(seed: int, step: int, prompt: int) -> int:
    """The seed of the random stream prompt `prompt` (its index within the step's prompts) of 0-based step `step`
    samples from (sample_groups' seeds). A function of the three only, so a resumed run re-creates every stream from
    the step counter, and a prompt samples the same whichever rank of a job takes it."""
    digest = hashlib.blake2b(f"{seed}/{step}/{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def micro_batches(completions: int, micro_batch_size: int) -> list[slice]:
    """The rows of each chunk when `completions` rows are processed micro_batch_size at a time (0: all at once);
    the last chunk holds the remainder."""
    size = micro_batch_size or completions
    return [slice(start, min(start + size, completions)) for start in range(0, completions, size)]


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


class ReservedLayer(DynamicLayer):
    """A KV-cache layer that writes each new token into storage reserved for the whole sample, where the default
    layer concatenates, copying the whole cache at every decoding step (benchmarks/README.md: ablations)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.device, self.is_initialized = key_states.device, True
            batch, heads, _, _ = key_states.shape
            self.key_storage = key_states.new_empty(batch, heads, self.capacity, key_states.shape[-1])
            self.value_storage = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        end = self.length + key_states.shape[-2]
        self.key_storage[:, :, self.length : end] = key_states
        self.value_storage[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_storage[:, :, :end], self.value_storage[:, :, :end]
        return self.keys, self.values

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.key_storage = self.key_storage.repeat_interleave(repeats, dim=0)
        self.value_storage = self.value_storage.repeat_interleave(repeats, dim=0)
        self.keys, self.values = self.key_storage[:, :, : self.length], self.value_storage[:, :, : self.length]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Rotary positions that count real tokens only, so left padding does not shift them (as generate() does)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def next_tokens(
    logits: torch.Tensor, *, temperature: float, top_p: float, greedy: bool, uniform: torch.Tensor | None = None
) -> torch.Tensor:
    """One token per row of logits [R, V]: the argmax, or a draw from softmax(logits / temperature) cut to top_p.
    uniform: [R, 1] draws in [0, 1) to sample with (default: fresh ones from torch's global generator)."""
    if greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    probs = torch.softmax(logits, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs > top_p, 0.0)
    # Inverse-CDF sampling: one uniform draw per row. torch.multinomial draws one exponential per vocabulary entry
    # instead, a cost that shows in every decode step on a CPU (benchmarks/README.md: ablations).
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    if uniform is None:
        uniform = torch.rand_like(total)
    u = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    tokens = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return tokens if order is None else order.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


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
    check_stop: Callable[[], None] | None = None,
    seeds: Sequence[int] | None = None,
) -> SampleBatch:
    """Sample group_size completions for each prompt with the KV cache, stopping when every one has hit EOS.

    Each prompt is prefilled once and its KV cache copied to its G rows, rather than prefilling G copies.
    Temperature and top-p sampling, no top-k. The loss's log-probs (completion_logprobs) use the full softmax at
    the same temperature, without the top-p cut, as TRL does: with top_p < 1 the sampled distribution is the
    truncated one. greedy=True decodes the argmax (for evaluation). The loop ends once every row has ended.

    check_stop, when given, is called before each decoded token; it raises to abandon the sampling (a cancelled
    job stops within one token's forward pass, not at the end of the step). The model's mode and weights are
    restored either way.

    seeds: one per prompt. Prompt i's G rows then draw from a generator of their own seeded with seeds[i] (G
    uniforms per decoded token, finished rows included), so what a prompt samples depends on its seed and the
    policy only, not on the other prompts of the batch or their number: a step dealt across ranks samples what
    one process sampling all its prompts would. None: every row draws from torch's global generator.
    """
    was_training = model.training
    try:
        with adapter_merged(model):
            return _sample(
                model, tokenizer, prompts, group_size, max_new_tokens, temperature, top_p, greedy, check_stop, seeds
            )
    finally:
        model.train(was_training)


def _sample(
    model, tokenizer, prompts, group_size, max_new_tokens, temperature, top_p, greedy, check_stop, seeds
) -> SampleBatch:
    model.eval()
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    device = model.device
    prompt_ids, prompt_mask = encoded.input_ids.to(device), encoded.attention_mask.to(device)
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    rows = len(prompts) * group_size

    cache = Cache(layers=[ReservedLayer(prompt_ids.shape[1] + max_new_tokens) for _ in range(num_layers(model))])
    output = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=positions_from_mask(prompt_mask),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache.batch_repeat_interleave(group_size)
    logits = output.logits[:, -1].repeat_interleave(group_size, dim=0)
    attention_mask = prompt_mask.repeat_interleave(group_size, dim=0)
    # Without left padding every position is visible (tokens after an EOS are only ever seen by later tokens of
    # the same finished row), so no mask is passed: attention then takes its causal path, with no mask to build.
    unpadded = bool(prompt_mask.all())
    position = attention_mask.sum(dim=1, keepdim=True)

    completion_ids = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    eos = torch.tensor(eos_ids, device=device)
    generators = None
    if seeds is not None:
        if len(seeds) != len(prompts):
            raise ValueError(f"seeds must give one seed per prompt: {len(seeds)} seeds for {len(prompts)} prompts")
        generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
    length = 0
    for t in range(max_new_tokens):
        if check_stop is not None:
            check_stop()
        uniform = None
        if generators is not None and not greedy:
            uniform = torch.cat([torch.rand(group_size, 1, generator=g, device=device) for g in generators])
        tokens = next_tokens(logits, temperature=temperature, top_p=top_p, greedy=greedy, uniform=uniform)
        tokens = tokens.masked_fill(finished, pad_id)
        completion_ids[:, t] = tokens
        finished |= torch.isin(tokens, eos)
        length = t + 1
        if finished.all() or length == max_new_tokens:
            break
        if not unpadded:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(rows, 1)], dim=1)
        output = model(
            input_ids=tokens.unsqueeze(1),
            attention_mask=None if unpadded else attention_mask,
            position_ids=position,
            past_key_values=cache,
            use_cache=True,
        )
        position = position + 1
        logits = output.logits[:, -1]

    completion_ids = completion_ids[:, :length]
    completion_mask, truncated = completion_mask_from_eos(completion_ids, eos_ids)
    return SampleBatch(
        prompt_ids=prompt_ids.repeat_interleave(group_size, dim=0),
        prompt_mask=prompt_mask.repeat_interleave(group_size, dim=0),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        truncated=truncated,
        group_size=group_size,
    )


def num_layers(model) -> int:
    return model.config.get_text_config(decoder=True).num_hidden_layers


class _SelectiveLogSoftmax(torch.autograd.Function):
    """log_softmax(logits).gather(token_ids), with a hand-written backward: grad x (one_hot - softmax), written
    straight into one [N, T, V] buffer. Autograd's version of gather-minus-logsumexp builds a zero-filled scatter
    buffer, the softmax and their sum: three full-vocabulary tensors where one does."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        # Row by row, so logsumexp's temporary stays at [T, V].
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        chosen = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(logits, token_ids, lse)
        return chosen - lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, token_ids, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for i in range(logits.shape[0]):
            torch.sub(logits[i], lse[i].unsqueeze(-1), out=grad_logits[i])
            grad_logits[i].exp_().mul_(-grad[i].unsqueeze(-1))
        grad_logits.scatter_add_(-1, token_ids.unsqueeze(-1), grad.unsqueeze(-1))
        return grad_logits, None


def selective_log_softmax(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[..., token_ids] without materialising the full [.., V] log-prob tensor.

    logits: [N, T, V]; token_ids: [N, T]. Returns [N, T]."""
    return _SelectiveLogSoftmax.apply(logits, token_ids)


def completion_logprobs(model, batch: SampleBatch, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob [N, T] of each completion token under `model`, with logits divided by the sampling temperature
    so the distribution matches the one sampled. Gradients flow when called outside no_grad.

    The prompt is run once per group and its KV cache (with its autograd graph) repeated to the group's G rows;
    then the completions run on top of it. This is the same computation as a forward pass over the G full
    sequences, gradient included, without repeating the prompt's work G times.
    """
    group_size = batch.group_size
    prompt_mask = batch.prompt_mask[::group_size]
    cache = DynamicCache()
    prompt_output = model(
        input_ids=batch.prompt_ids[::group_size],
        attention_mask=prompt_mask,
        position_ids=positions_from_mask(prompt_mask),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    # The prompt's last logits predict each row's first completion token; scored on their own, so the [N, T, V]
    # logits are never concatenated (a copy of the largest tensor of the pass, and again in backward).
    first = prompt_output.logits.repeat_interleave(group_size, dim=0)
    logprobs = [selective_log_softmax(scale(first, temperature), batch.completion_ids[:, :1])]
    completion_length = batch.completion_ids.shape[1]
    if completion_length > 1:
        cache.batch_repeat_interleave(group_size)
        # The last completion token predicts nothing we score, so it is not fed.
        attention_mask = batch.attention_mask[:, :-1]
        start = batch.prompt_mask.sum(dim=1, keepdim=True)
        completion_output = model(
            input_ids=batch.completion_ids[:, :-1],
            attention_mask=attention_mask,
            position_ids=start + torch.arange(completion_length - 1, device=start.device),
            past_key_values=cache,
            use_cache=True,
        )
        logprobs.append(
            selective_log_softmax(scale(completion_output.logits, temperature), batch.completion_ids[:, 1:])
        )
    return torch.cat(logprobs, dim=1)


def scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature
