import torch

from grpo_core.models import load_base_model
from grpo_core.sampling import completion_logprobs, completion_mask_from_eos, sample_groups, selective_log_softmax

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
