"""Each step optimization measured on its own: the phase it speeds up, with and without it.

    .venv/bin/python benchmarks/ablations.py

Default setting of speed.py (SmolLM2-135M-Instruct fp32, LoRA r=8 on q_proj/v_proj, 1 story prompt x G=8 x 64
new tokens). The "before" versions live here, not in grpo_core: transformers' generate(), a forward pass over
the G full sequences, autograd's log_softmax-then-gather, torch.multinomial, plain nn.Linear products. Each line
is the median of --repeats runs of that phase alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from grpo_core.config import LoraSettings
from grpo_core.data import render_prompt
from grpo_core.models import load_base_model
from grpo_core.packed_linear import PackedLinear, adapter_merged
from grpo_core.policy import add_lora
from grpo_core.rollout import reference_logprobs
from grpo_core.sampling import (
    _sample,
    completion_logprobs,
    completion_mask_from_eos,
    eos_token_ids,
    next_tokens,
    sample_groups,
    selective_log_softmax,
)

PROMPT = "Write a long story about a robot who learns to paint. Describe every color it discovers."
G, NEW_TOKENS = 8, 64


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def unpacked(model):
    """The same model with plain nn.Linear products (what add_lora gives without packing)."""
    for module in model.modules():
        if isinstance(module, PackedLinear):
            module.__class__ = nn.Linear
    return model


def repacked(model):
    for module in model.modules():
        if type(module) is nn.Linear and not module.weight.requires_grad:
            module.__class__ = PackedLinear
            module.reset_packing()
    return model


@torch.no_grad()
def generate_sample(model, tokenizer, prompt: str):
    """The sampler before: transformers' generate() with G return sequences (the prompt prefilled G times)."""
    model.eval()
    encoded = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    eos = eos_token_ids(model, tokenizer)
    output = model.generate(
        **encoded,
        max_new_tokens=NEW_TOKENS,
        num_return_sequences=G,
        do_sample=True,
        top_k=0,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    return completion_mask_from_eos(output[:, encoded.input_ids.shape[1] :], eos)


def full_sequence_logprobs(model, batch):
    """The log-prob pass before: all G full sequences, then autograd's log_softmax and gather."""
    mask = batch.attention_mask
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(1) - 1).clamp(min=0),
        use_cache=False,
        logits_to_keep=batch.completion_ids.shape[1] + 1,
    ).logits[:, :-1]
    rows = [
        row.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(row, -1)
        for row, ids in zip(logits.float(), batch.completion_ids, strict=True)
    ]
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    r = args.repeats

    base, tokenizer = load_base_model("smollm2-135m-instruct")
    model = add_lora(base, LoraSettings(r=8, alpha=16, target_modules=("q_proj", "v_proj")), seed=0)
    prompt = render_prompt({"prompt": PROMPT}, tokenizer)
    results: list[tuple[str, str, float]] = []

    def record(phase: str, variant: str, seconds: float) -> None:
        results.append((phase, variant, seconds))
        print(f"{phase:34s} {variant:58s} {seconds * 1000:9.1f} ms", flush=True)

    # --- sampling -----------------------------------------------------------------------------------------------
    unpacked(model)
    record(
        "sample 8 x 64",
        "generate(), num_return_sequences=8",
        median_seconds(lambda: generate_sample(model, tokenizer, prompt), r),
    )
    sample_args = (model, tokenizer, [prompt], G, NEW_TOKENS, 1.0, 1.0, False)
    record(
        "sample 8 x 64",
        "+ own loop: prompt prefilled once, reserved KV cache",
        median_seconds(lambda: _sample(*sample_args), r),
    )
    repacked(model)
    record("sample 8 x 64", "+ oneDNN-packed frozen linears", median_seconds(lambda: _sample(*sample_args), r))
    with adapter_merged(model):
        record(
            "sample 8 x 64",
            "+ LoRA merged into the packed q/v weights",
            median_seconds(lambda: _sample(*sample_args), r),
        )

    logits = torch.randn(G, 49152)
    probs = torch.softmax(logits, -1)
    record("draw one token for 8 rows", "torch.multinomial", median_seconds(lambda: torch.multinomial(probs, 1), 20))
    record(
        "draw one token for 8 rows",
        "inverse CDF (next_tokens, incl. softmax)",
        median_seconds(lambda: next_tokens(logits, temperature=1.0, top_p=1.0, greedy=False), 20),
    )

    # --- log-prob passes -----------------------------------------------------------------------------------------
    batch = sample_groups(model, tokenizer, [prompt], group_size=G, max_new_tokens=NEW_TOKENS)
    model.train()

    def forward_backward(fn):
        def run():
            logprobs = fn(model, batch)
            (logprobs * batch.completion_mask).sum().backward()
            model.zero_grad(set_to_none=True)

        return run

    def reference(fn):
        def run():
            with torch.no_grad(), model.disable_adapter():
                fn(model, batch)

        return run

    unpacked(model)
    record(
        "policy forward + backward",
        "full sequences, autograd log-softmax",
        median_seconds(forward_backward(full_sequence_logprobs), r),
    )
    record("reference forward", "full sequences", median_seconds(reference(full_sequence_logprobs), r))
    record(
        "policy forward + backward",
        "+ prompt once per group, fused log-softmax grad",
        median_seconds(forward_backward(completion_logprobs), r),
    )
    record("reference forward", "+ prompt once per group", median_seconds(reference(completion_logprobs), r))
    repacked(model)
    record(
        "policy forward + backward",
        "+ oneDNN-packed frozen linears",
        median_seconds(forward_backward(completion_logprobs), r),
    )
    record(
        "reference forward",
        "+ oneDNN-packed frozen linears",
        median_seconds(lambda: reference_logprobs(model, batch, 1.0), r),
    )

    big = torch.randn(G, NEW_TOKENS, 49152, requires_grad=True)
    ids = torch.randint(0, 49152, (G, NEW_TOKENS))

    def autograd_version():  # the code before: per row, gather minus logsumexp, differentiated by autograd
        rows = [
            row.gather(-1, i.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(row, -1)
            for row, i in zip(big, ids, strict=True)
        ]
        torch.stack(rows).sum().backward()
        big.grad = None

    def fused_version():
        selective_log_softmax(big, ids).sum().backward()
        big.grad = None

    record(
        "log-prob of chosen token, fwd+bwd",
        "gather minus logsumexp, autograd backward",
        median_seconds(autograd_version, r),
    )
    record(
        "log-prob of chosen token, fwd+bwd",
        "selective_log_softmax (hand-written backward)",
        median_seconds(fused_version, r),
    )


if __name__ == "__main__":
    main()
