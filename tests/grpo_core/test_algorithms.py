import math

import pytest
import torch

from grpo_core.algorithms import (
    aggregate_token_losses,
    compute_group_advantages,
    compute_policy_loss,
    k3_kl,
    loss_normaliser,
)
from grpo_core.sampling import micro_batches

pytestmark = pytest.mark.unit


def test_advantages_of_two_right_two_wrong_are_plus_minus_0866():
    advantages = compute_group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)
    # mean 0.5, Bessel std sqrt(1/3) = 0.577: 0.5 / 0.577 = 0.866
    assert advantages.tolist() == pytest.approx([0.866, -0.866, -0.866, 0.866], abs=1e-3)


def test_all_equal_group_gives_zero_not_nan():
    advantages = compute_group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0]), group_size=3)
    assert advantages[:3].tolist() == [0.0, 0.0, 0.0]
    assert not torch.isnan(advantages).any()


def test_nan_reward_counts_as_zero():
    advantages = compute_group_advantages(torch.tensor([1.0, float("nan")]), group_size=2)
    assert advantages.tolist() == pytest.approx([0.7070, -0.7070], abs=1e-3)


def test_groups_are_normalised_separately_and_scaling_variants_differ():
    rewards = torch.tensor([2.0, 0.0, 10.0, 0.0])
    group = compute_group_advantages(rewards, 2, "group")
    none = compute_group_advantages(rewards, 2, "none")
    batch = compute_group_advantages(rewards, 2, "batch")
    assert group.tolist() == pytest.approx([0.7071, -0.7071, 0.7071, -0.7071], abs=1e-3)
    assert none.tolist() == [1.0, -1.0, 5.0, -5.0]
    assert batch.tolist() == pytest.approx((none / rewards.std()).tolist(), rel=1e-3)


def test_unknown_scaling_lists_valid_names():
    with pytest.raises(ValueError, match="batch, group, none"):
        compute_group_advantages(torch.zeros(4), 2, "rank")


def test_k3_kl_is_an_unbiased_estimate_of_the_kl_divergence():
    # Over the whole support of two distributions, the policy-weighted mean of k3 is exactly KL(policy || ref).
    policy = torch.log_softmax(torch.tensor([1.0, 0.2, -0.5, 2.0]), dim=0)
    reference = torch.log_softmax(torch.tensor([0.3, 0.9, 0.1, 1.0]), dim=0)
    exact = (policy.exp() * (policy - reference)).sum()
    assert (policy.exp() * k3_kl(policy, reference)).sum().item() == pytest.approx(exact.item(), rel=1e-6)
    # One token where the reference is 0.5 nats more likely: exp(0.5) - 0.5 - 1.
    assert k3_kl(torch.tensor([-1.5]), torch.tensor([-1.0])).item() == pytest.approx(math.exp(0.5) - 1.5)


def reference_loss(cur, old, ref, adv, mask, eps_low, eps_high, beta, loss_type, max_len, level="token"):
    """A direct, loop-by-loop transcription of the formula, to compare against the vectorised one. level
    "sequence" is GSPO as its paper writes it: one ratio per completion, s_i = exp(mean over its tokens of
    log pi - log pi_old), with the gradient flowing through that mean (not the token-level form the code uses).
    Rows whose mask is all 0 (truncated completions taken out of the loss) are not in the loss at all."""
    n, t = cur.shape
    token = [[None] * t for _ in range(n)]
    for i in range(n):
        if level == "sequence":
            length = sum(mask[i, j] for j in range(t))
            sequence_ratio = torch.exp(sum((cur[i, j] - old[i, j]) * mask[i, j] for j in range(t)) / max(length, 1))
        for j in range(t):
            rho = sequence_ratio if level == "sequence" else torch.exp(cur[i, j] - old[i, j])
            clipped = torch.clamp(rho, 1 - eps_low, 1 + eps_high)
            value = -torch.minimum(rho * adv[i], clipped * adv[i])
            if beta:
                d = ref[i, j] - cur[i, j]
                value = value + beta * (torch.exp(d) - d - 1)
            token[i][j] = value * mask[i, j]
    if loss_type == "grpo":
        kept = [i for i in range(n) if mask[i].sum() > 0]
        return sum(sum(token[i]) / mask[i].sum() for i in kept) / len(kept)
    total = sum(sum(row) for row in token)
    # bnpo and dapo divide by the tokens of the whole step (all of its completions, even when the loss is taken in
    # micro batches); here the batch given is the whole step, so both normalisers are mask.sum().
    if loss_type in ("bnpo", "dapo"):
        return total / mask.sum()
    return total / (n * max_len)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_loss_and_gradient_match_the_formula(loss_type, beta):
    generator = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 4, generator=generator) * 2
    ref = -torch.rand(3, 4, generator=generator) * 2
    start = old + torch.randn(3, 4, generator=generator) * 0.4  # ratios both inside and outside the band
    adv = torch.tensor([1.0, -0.5, 0.8])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)

    cur = start.clone().requires_grad_(True)
    out = compute_policy_loss(
        cur,
        old,
        ref,
        adv,
        mask,
        epsilon=0.2,
        epsilon_high=0.28,
        beta=beta,
        loss_type=loss_type,
        max_completion_length=6,
    )
    out.loss.backward()

    cur_ref = start.clone().requires_grad_(True)
    expected = reference_loss(cur_ref, old, ref, adv, mask, 0.2, 0.28, beta, loss_type, 6)
    expected.backward()

    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(cur.grad, cur_ref.grad)
    assert (cur.grad[mask == 0] == 0).all(), "padding must get no gradient"


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_gspo_sequence_level_loss_and_gradient_match_the_papers_formula(loss_type, beta):
    generator = torch.Generator().manual_seed(1)
    old = -torch.rand(4, 5, generator=generator) * 2
    ref = -torch.rand(4, 5, generator=generator) * 2
    # Per-token drift of about 0.1, so some sequence ratios leave a band of 0.05 and some stay inside.
    start = old + torch.randn(4, 5, generator=generator) * 0.1
    adv = torch.tensor([1.0, -0.5, 0.8, -1.2])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float32)

    cur = start.clone().requires_grad_(True)
    out = compute_policy_loss(
        cur, old, ref, adv, mask, epsilon=0.05, epsilon_high=0.06, beta=beta, loss_type=loss_type,
        max_completion_length=6, importance_sampling_level="sequence",
    )  # fmt: skip
    out.loss.backward()

    cur_ref = start.clone().requires_grad_(True)
    expected = reference_loss(cur_ref, old, ref, adv, mask, 0.05, 0.06, beta, loss_type, 6, level="sequence")
    expected.backward()

    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(cur.grad, cur_ref.grad)
    assert (cur.grad[mask == 0] == 0).all()
    # Every token of a completion carries its sequence's ratio, and some sequence was clipped for this to test it.
    sequence_ratio = torch.exp(((start - old) * mask).sum(1) / mask.sum(1))
    assert out.metrics["ratio_max"] == pytest.approx(sequence_ratio.max().item(), rel=1e-6)
    assert out.metrics["ratio_min"] == pytest.approx(sequence_ratio.min().item(), rel=1e-6)
    assert ((sequence_ratio < 0.95) | (sequence_ratio > 1.06)).any() and (
        (sequence_ratio > 0.95) & (sequence_ratio < 1.06)
    ).any()


def test_gspo_differs_from_token_level_ratios_and_equals_them_for_one_token_completions():
    old = torch.zeros(2, 3)
    cur = torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.1, 1.0, 1.0]]))
    adv, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 3)
    token = compute_policy_loss(cur, old, None, adv, mask, epsilon=0.2, importance_sampling_level="token")
    sequence = compute_policy_loss(cur, old, None, adv, mask, epsilon=0.2, importance_sampling_level="sequence")
    assert token.loss.item() != pytest.approx(sequence.loss.item())
    one_token = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])
    token = compute_policy_loss(cur, old, None, adv, one_token, epsilon=0.2, importance_sampling_level="token")
    sequence = compute_policy_loss(cur, old, None, adv, one_token, epsilon=0.2, importance_sampling_level="sequence")
    assert token.loss.item() == pytest.approx(sequence.loss.item())


def test_unknown_importance_sampling_level_lists_valid_names():
    with pytest.raises(ValueError, match="sequence, token"):
        compute_policy_loss(
            torch.zeros(1, 1), None, None, torch.ones(1), torch.ones(1, 1), importance_sampling_level="x"
        )


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_masked_truncated_completions_leave_the_loss_and_its_normaliser(loss_type, level):
    """DAPO's overlong filtering: a completion whose mask row is all 0 contributes nothing, and grpo, bnpo and dapo
    normalise over the completions (tokens) left; dr_grpo keeps its constant of every sequence x max length."""
    generator = torch.Generator().manual_seed(2)
    old = -torch.rand(3, 4, generator=generator) * 2
    start = old + torch.randn(3, 4, generator=generator) * 0.3
    adv = torch.tensor([1.0, -0.5, 0.8])
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)

    cur = start.clone().requires_grad_(True)
    out = compute_policy_loss(
        cur, old, None, adv, mask, epsilon=0.2, loss_type=loss_type, max_completion_length=4,
        importance_sampling_level=level,
    )  # fmt: skip
    out.loss.backward()
    cur_ref = start.clone().requires_grad_(True)
    expected = reference_loss(cur_ref, old, None, adv, mask, 0.2, 0.2, 0.0, loss_type, 4, level=level)
    expected.backward()

    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(cur.grad, cur_ref.grad)
    assert (cur.grad[1] == 0).all()
    expected_normaliser = {"grpo": 2.0, "bnpo": 7.0, "dapo": 7.0, "dr_grpo": 12.0}[loss_type]
    assert loss_normaliser(mask, loss_type, 4).item() == expected_normaliser


def test_clipping_stops_the_gradient_outside_the_band_on_the_clipped_side():
    old = torch.zeros(1, 4)
    # ratios: 1.5 and 0.5 are outside [0.8, 1.2]; 1.1 and 0.9 inside.
    cur = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9]])).requires_grad_(True)
    mask = torch.ones(1, 4)
    out = compute_policy_loss(cur, old, None, torch.tensor([1.0]), mask, epsilon=0.2, loss_type="bnpo")
    out.loss.backward()
    # Positive advantage: ratio 1.5 is clipped (no gradient); ratio 0.5 is below the band but min() keeps the
    # unclipped term, so its gradient still flows, as the pessimistic bound intends.
    assert cur.grad[0, 0] == 0
    assert cur.grad[0, 1] != 0 and cur.grad[0, 2] != 0 and cur.grad[0, 3] != 0
    assert out.metrics["clip_fraction_high"] == pytest.approx(0.25)
    assert out.metrics["clip_fraction_low"] == 0.0

    cur_neg = cur.detach().clone().requires_grad_(True)
    out = compute_policy_loss(cur_neg, old, None, torch.tensor([-1.0]), mask, epsilon=0.2, loss_type="bnpo")
    out.loss.backward()
    assert cur_neg.grad[0, 1] == 0  # ratio 0.5 with a negative advantage: clipped
    assert cur_neg.grad[0, 0] != 0
    assert out.metrics["clip_fraction_low"] == pytest.approx(0.25)


def test_single_iteration_ratio_is_one_and_gradient_is_minus_advantage():
    cur = torch.tensor([[-0.5, -1.0]], requires_grad=True)
    out = compute_policy_loss(cur, None, None, torch.tensor([2.0]), torch.ones(1, 2), loss_type="grpo")
    out.loss.backward()
    assert out.metrics["ratio_mean"] == 1.0
    assert cur.grad.tolist() == [[-1.0, -1.0]]  # -A / tokens per sequence


def test_unknown_loss_type_lists_valid_names():
    with pytest.raises(ValueError, match="bnpo, dapo, dr_grpo, grpo"):
        aggregate_token_losses(torch.zeros(1, 1), torch.ones(1, 1), "sum", 1)


def test_empty_mask_gives_finite_loss():
    out = compute_policy_loss(torch.zeros(2, 2, requires_grad=True), None, None, torch.ones(2), torch.zeros(2, 2))
    assert math.isfinite(out.loss.item())


# --- micro batches: a step computed in chunks of completions ----------------------------------------------------

# Token losses of 3 completions (9 marks padding, which must not count) with max_new_tokens 4.
CHUNK_LOSS = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0], [4.0, 5.0, 6.0]])
CHUNK_MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)


@pytest.mark.parametrize(
    ("loss_type", "normaliser", "first_two", "last_one"),
    [
        # sequence means 1.5, 3 and 5 over 3 sequences
        ("grpo", 3.0, (1.5 + 3.0) / 3, 5.0 / 3),
        # 21 over the step's 6 tokens; a chunk's own token mean would give 6 / 3 + 15 / 3 = 7
        ("bnpo", 6.0, 6.0 / 6, 15.0 / 6),
        ("dapo", 6.0, 6.0 / 6, 15.0 / 6),
        # over 3 sequences x max_new_tokens 4
        ("dr_grpo", 12.0, 6.0 / 12, 15.0 / 12),
    ],
)
def test_a_chunk_contributes_its_partial_sum_over_the_whole_steps_normaliser(
    loss_type, normaliser, first_two, last_one
):
    assert loss_normaliser(CHUNK_MASK, loss_type, 4).item() == normaliser
    whole = aggregate_token_losses(CHUNK_LOSS, CHUNK_MASK, loss_type, 4)
    head = aggregate_token_losses(CHUNK_LOSS[:2], CHUNK_MASK[:2], loss_type, 4, normaliser=normaliser)
    tail = aggregate_token_losses(CHUNK_LOSS[2:], CHUNK_MASK[2:], loss_type, 4, normaliser=normaliser)
    assert head.item() == pytest.approx(first_two) and tail.item() == pytest.approx(last_one)
    assert (head + tail).item() == pytest.approx(whole.item(), rel=1e-6)


def test_an_empty_step_normalises_by_one_token_not_zero():
    assert loss_normaliser(torch.zeros(2, 3), "dapo", 3).item() == 1.0


def test_micro_batches_cover_every_row_once_the_last_holding_the_rest():
    assert micro_batches(10, 3) == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    assert micro_batches(8, 0) == [slice(0, 8)]
    assert micro_batches(4, 8) == [slice(0, 4)]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("micro_batch_size", [3, 4])
def test_chunks_add_up_to_the_one_pass_loss_gradient_and_metrics(loss_type, micro_batch_size):
    # N = 10 completions in chunks of 3 (3, 3, 3, 1) or 4 (4, 4, 2), sequences of every length, ratios on both
    # sides of the band, and a KL term.
    generator = torch.Generator().manual_seed(1)
    n, t = 10, 6
    old = -torch.rand(n, t, generator=generator) * 2
    ref = -torch.rand(n, t, generator=generator) * 2
    start = old + torch.randn(n, t, generator=generator) * 0.4
    advantages = torch.randn(n, generator=generator)
    lengths = torch.tensor([1, 6, 3, 2, 6, 5, 1, 4, 6, 2])
    mask = (torch.arange(t) < lengths.unsqueeze(1)).float()
    options = dict(epsilon=0.2, epsilon_high=0.28, beta=0.1, loss_type=loss_type, max_completion_length=8)

    whole = start.clone().requires_grad_(True)
    one_pass = compute_policy_loss(whole, old, ref, advantages, mask, **options)
    one_pass.loss.backward()

    chunked = start.clone().requires_grad_(True)
    normaliser = loss_normaliser(mask, loss_type, 8)
    stats = None
    for rows in micro_batches(n, micro_batch_size):
        out = compute_policy_loss(
            chunked[rows], old[rows], ref[rows], advantages[rows], mask[rows], normaliser=normaliser, **options
        )
        out.loss.backward()
        stats = out.stats if stats is None else stats + out.stats

    torch.testing.assert_close(chunked.grad, whole.grad, rtol=0, atol=1e-6)
    metrics, expected = stats.metrics(), one_pass.metrics
    assert (
        set(metrics)
        == set(expected)
        == {
            "loss",
            "kl",
            "clip_fraction_low",
            "clip_fraction_high",
            "ratio_mean",
            "ratio_min",
            "ratio_max",
        }
    )
    assert metrics == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert 0 < expected["clip_fraction_low"] < 1 and 0 < expected["clip_fraction_high"] < 1
    assert expected["ratio_min"] < 0.8 and expected["ratio_max"] > 1.28


def test_a_chunk_with_no_completion_tokens_leaves_the_metrics_of_the_others():
    cur = torch.log(torch.tensor([[1.5, 0.5], [1.0, 1.0]]))
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    options = dict(loss_type="bnpo", normaliser=loss_normaliser(mask, "bnpo", 2))
    first = compute_policy_loss(cur[:1], torch.zeros(1, 2), None, torch.tensor([1.0]), mask[:1], **options)
    empty = compute_policy_loss(cur[1:], torch.zeros(1, 2), None, torch.tensor([1.0]), mask[1:], **options)
    assert empty.metrics["ratio_min"] == 1.0 and empty.metrics["loss"] == 0.0
    combined = (first.stats + empty.stats).metrics()
    assert combined == first.metrics
    assert combined["ratio_min"] == pytest.approx(0.5) and combined["ratio_max"] == pytest.approx(1.5)
