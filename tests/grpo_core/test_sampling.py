import pytest
import torch

from grpo_core.models import load_base_model
from grpo_core.sampling import (
    completion_logprobs,
    completion_mask_from_eos,
    next_tokens,
    sample_groups,
    selective_log_softmax,
)

pytestmark = pytest.mark.unit

EOS = 2


def test_mask_keeps_tokens_through_the_first_eos_and_flags_truncation():
    ids = torch.tensor([[5, 6, EOS, 7, EOS], [5, 6, 7, 8, 9], [EOS, 1, 1, 1, 1]])
    mask, truncated = completion_mask_from_eos(ids, [EOS])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_selective_log_softmax_equals_the_full_log_softmax_gather():
    logits = torch.randn(3, 5, 11)
    ids = torch.randint(0, 11, (3, 5))
    expected = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(selective_log_softmax(logits, ids), expected)


def test_groups_are_adjacent_and_logprobs_match_a_plain_forward_pass():
    torch.manual_seed(0)
    model, tokenizer = load_base_model("tiny-random-llama")
    prompts = [
        "<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nHi<|im_end|>\n",
    ]
    batch = sample_groups(model, tokenizer, prompts, group_size=3, max_new_tokens=6, temperature=1.0)
    assert batch.completion_ids.shape[0] == 6
    assert torch.equal(batch.prompt_ids[0], batch.prompt_ids[2]) and not torch.equal(
        batch.prompt_ids[2], batch.prompt_ids[3]
    )
    # Padding is on the left, so the shorter second prompt starts with pad tokens (mask 0).
    assert batch.prompt_mask[3, 0] == 0 and batch.prompt_mask[0].all()

    logprobs = completion_logprobs(model, batch)
    # Check one unpadded sequence against a direct forward pass over its tokens.
    row = batch.input_ids[0]
    logits = model(row.unsqueeze(0)).logits[0, :-1]
    direct = (
        torch.log_softmax(logits, -1).gather(-1, row[1:].unsqueeze(-1)).squeeze(-1)[-batch.completion_ids.shape[1] :]
    )
    torch.testing.assert_close(logprobs[0], direct, rtol=1e-4, atol=1e-4)


def test_selective_log_softmax_gradient_equals_autograd_through_the_full_log_softmax():
    torch.manual_seed(1)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    ids = torch.randint(0, 11, (3, 5))
    upstream = torch.randn(3, 5)
    (selective_log_softmax(logits, ids) * upstream).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    (torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * upstream).sum().backward()
    torch.testing.assert_close(ours, logits.grad)


def tiny_policy(b_value: float | None = 0.3):
    from grpo_core.config import LoraSettings
    from grpo_core.policy import add_lora

    model, tokenizer = load_base_model("tiny-random-llama")
    policy = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0), seed=0)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, b_value)  # a non-zero adapter, so the policy differs from the base
    return policy, tokenizer


def full_sequence_logprobs(model, batch):
    """The plain computation: every row's whole sequence in one forward pass."""
    mask = batch.attention_mask
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(1) - 1).clamp(min=0),
        use_cache=False,
    ).logits[:, -batch.completion_ids.shape[1] - 1 : -1]
    return torch.log_softmax(logits.float(), -1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)


def test_prompt_once_logprobs_and_gradients_equal_a_forward_over_the_full_sequences():
    torch.manual_seed(0)
    policy, tokenizer = tiny_policy()
    prompts = ["<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n<|im_start|>assistant\n", "Hi there"]  # padded
    batch = sample_groups(policy, tokenizer, prompts, group_size=3, max_new_tokens=7)
    assert batch.prompt_mask[3, 0] == 0, "the second prompt must be left-padded for this test to mean anything"
    scored = batch.completion_mask.bool()
    trainable = [p for p in policy.parameters() if p.requires_grad]

    ours = completion_logprobs(policy, batch)
    ours_grads = torch.autograd.grad(ours[scored].sum(), trainable)
    plain = full_sequence_logprobs(policy, batch)
    plain_grads = torch.autograd.grad(plain[scored].sum(), trainable)

    torch.testing.assert_close(ours[scored], plain[scored], rtol=1e-4, atol=1e-4)
    for a, b in zip(ours_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert any(g.abs().sum() > 0 for g in ours_grads)


def test_sampling_stops_as_soon_as_every_row_has_ended():
    policy, tokenizer = tiny_policy()
    prompt = ["<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"]
    first = sample_groups(policy, tokenizer, prompt, group_size=2, max_new_tokens=5, greedy=True)
    assert first.completion_ids.shape == (2, 5)
    # Make the token greedy decoding picks first an end-of-sequence token: every row then ends at step one.
    policy.generation_config.eos_token_id = int(first.completion_ids[0, 0])
    ended = sample_groups(policy, tokenizer, prompt, group_size=2, max_new_tokens=5, greedy=True)
    assert ended.completion_ids.shape == (2, 1)
    assert ended.completion_mask.tolist() == [[1], [1]] and not ended.truncated.any()


def test_next_tokens_draws_from_the_softmax_and_respects_top_p():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.log().expand(40_000, -1)
    counts = torch.bincount(next_tokens(logits, temperature=1.0, top_p=1.0, greedy=False), minlength=5)
    torch.testing.assert_close(counts / counts.sum(), probs, atol=0.01, rtol=0)
    assert counts[4] == 0  # a zero-probability token is never drawn
    # top_p=0.7 keeps the smallest prefix reaching 0.7: the first two tokens, renormalised to 0.625 / 0.375.
    counts = torch.bincount(next_tokens(logits, temperature=1.0, top_p=0.7, greedy=False), minlength=5)
    torch.testing.assert_close(counts / counts.sum(), torch.tensor([0.625, 0.375, 0, 0, 0]), atol=0.01, rtol=0)
    # Temperature 2 flattens: p ~ sqrt(probs).
    flat = probs.sqrt() / probs.sqrt().sum()
    counts = torch.bincount(next_tokens(logits, temperature=2.0, top_p=1.0, greedy=False), minlength=5)
    torch.testing.assert_close(counts / counts.sum(), flat, atol=0.01, rtol=0)


def test_logprobs_at_a_temperature_are_those_of_the_distribution_the_sampler_draws_from():
    torch.manual_seed(0)
    model, tokenizer = load_base_model("tiny-random-llama")
    with torch.no_grad():  # sharpen the random model so one first token has a large share at temperature 0.5
        model.model.norm.weight.mul_(15)
    temperature = 0.5
    batch = sample_groups(
        model, tokenizer, ["<|im_start|>user\nHi<|im_end|>\n"], group_size=2000, max_new_tokens=1, temperature=0.5
    )
    first = batch.completion_ids[:, 0]
    top = torch.mode(first).values
    drawn_share = (first == top).float().mean().item()
    with torch.no_grad():
        logprobs = completion_logprobs(model, batch, temperature)[:, 0]
    model_share = logprobs[first == top].exp()
    assert torch.equal(model_share, model_share[:1].expand_as(model_share))  # one value for one token
    assert drawn_share > 0.3
    assert model_share[0].item() == pytest.approx(drawn_share, abs=0.04)
    # Without the temperature the same token is much less likely: the scaling is what makes the two agree.
    assert completion_logprobs(model, batch, 1.0)[first == top][0, 0].exp().item() < drawn_share - 0.2


def test_with_a_seed_per_prompt_a_prompt_samples_the_same_alone_or_beside_another():
    from grpo_core.sampling import prompt_seed

    model, tokenizer = load_base_model("tiny-random-llama")
    first = "<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n<|im_start|>assistant\n"
    second = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    assert len(tokenizer(first).input_ids) == len(tokenizer(second).input_ids), "no padding: same logits"
    seeds = [prompt_seed(0, 5, 0), prompt_seed(0, 5, 1)]
    options = dict(group_size=3, max_new_tokens=8)
    both = sample_groups(model, tokenizer, [first, second], seeds=seeds, **options)
    torch.manual_seed(123)  # the global generator plays no part
    alone = [
        sample_groups(model, tokenizer, [prompt], seeds=[seed], **options)
        for prompt, seed in zip([first, second], seeds, strict=True)
    ]
    for index, batch in enumerate(alone):
        length = batch.completion_ids.shape[1]
        rows = both.completion_ids[index * 3 : index * 3 + 3]
        assert torch.equal(rows[:, :length], batch.completion_ids)
        assert both.completion_mask[index * 3 : index * 3 + 3, length:].sum() == 0  # ended where it ended alone
    # The G rows of a prompt differ (one stream, G draws per token), and other seeds sample otherwise.
    assert len({tuple(row) for row in both.completion_ids.tolist()}) > 1
    other = sample_groups(model, tokenizer, [first], seeds=[prompt_seed(0, 6, 0)], **options)
    assert not torch.equal(other.completion_ids, alone[0].completion_ids)
    with pytest.raises(ValueError, match="one seed per prompt: 1 seeds for 2 prompts"):
        sample_groups(model, tokenizer, [first, second], seeds=seeds[:1], **options)
    # The seed is a function of (seed, step, prompt) alone.
    assert prompt_seed(0, 5, 0) == seeds[0] != prompt_seed(1, 5, 0)


def test_concatenated_batches_give_each_row_the_log_probs_of_its_own_batch():
    """Dynamic sampling joins groups sampled in different rounds (other prompt and completion lengths): the padding
    concat_batches adds is masked and positions come from the masks, so nothing a row computes changes."""
    from grpo_core.sampling import concat_batches

    policy, tokenizer = tiny_policy()
    short = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    long = "<|im_start|>user\nWrite a long story about a robot who paints.<|im_end|>\n<|im_start|>assistant\n"
    torch.manual_seed(0)
    first = sample_groups(policy, tokenizer, [short], group_size=2, max_new_tokens=3)
    second = sample_groups(policy, tokenizer, [long], group_size=2, max_new_tokens=7)
    joined = concat_batches([first, second])
    assert joined.prompt_ids.shape[1] == second.prompt_ids.shape[1] > first.prompt_ids.shape[1]
    assert joined.completion_ids.shape[1] == second.completion_ids.shape[1] > first.completion_ids.shape[1]
    assert joined.group_size == 2 and joined.truncated.tolist() == [*first.truncated, *second.truncated]
    with torch.no_grad():
        together = completion_logprobs(policy, joined)
        apart = [completion_logprobs(policy, batch) for batch in (first, second)]
    for rows, alone in zip((slice(0, 2), slice(2, 4)), apart, strict=True):
        length = alone.shape[1]
        mask = joined.completion_mask[rows, :length].bool()
        torch.testing.assert_close(together[rows, :length][mask], alone[mask], atol=1e-5, rtol=1e-5)
        assert joined.completion_mask[rows, length:].sum() == 0
