"""The packed-weight linear layers compute what nn.Linear computes, forward and input gradient, and never touch
the weights they pack."""

import pytest
import torch
from torch import nn

from grpo_core.packed_linear import PackedLinear, adapter_merged, pack_frozen_linears, packing_available

pytestmark = [pytest.mark.unit, pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN")]


def test_packed_linear_matches_nn_linear_in_value_and_input_gradient():
    torch.manual_seed(0)
    plain = nn.Linear(24, 40).requires_grad_(False)
    packed = nn.Sequential(nn.Linear(24, 40)).requires_grad_(False)
    packed[0].load_state_dict(plain.state_dict())
    assert pack_frozen_linears(packed) == 1 and isinstance(packed[0], PackedLinear)

    for shape in [(8, 24), (2, 5, 24)]:
        x = torch.randn(*shape, requires_grad=True)
        upstream = torch.randn(*shape[:-1], 40)
        (packed(x) * upstream).sum().backward()
        ours = x.grad.clone()
        x.grad = None
        (plain(x) * upstream).sum().backward()
        torch.testing.assert_close(packed(x), plain(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours, x.grad, rtol=1e-5, atol=1e-5)


def test_a_weight_changed_in_place_is_packed_again():
    layer = nn.Sequential(nn.Linear(8, 8)).requires_grad_(False)
    pack_frozen_linears(layer)
    x = torch.randn(3, 8)
    layer(x)
    with torch.no_grad():
        layer[0].weight.mul_(2)
    torch.testing.assert_close(layer(x), x @ layer[0].weight.T + layer[0].bias)


def test_a_trainable_linear_keeps_its_gradient():
    layer = nn.Sequential(nn.Linear(8, 8))
    pack_frozen_linears(layer)
    layer(torch.randn(3, 8)).sum().backward()
    assert layer[0].weight.grad is not None and layer[0].weight.grad.abs().sum() > 0


def test_merged_adapter_gives_the_policy_logits_and_leaves_every_weight_unchanged():
    from grpo_core.config import LoraSettings
    from grpo_core.models import load_base_model
    from grpo_core.policy import add_lora

    model, _ = load_base_model("tiny-random-llama")
    policy = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0), seed=0)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    ids = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        expected = policy(input_ids=ids).logits
        with adapter_merged(policy):
            merged = policy(input_ids=ids).logits
        with policy.disable_adapter():
            base = policy(input_ids=ids).logits
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4)
    with adapter_merged(policy), pytest.raises(RuntimeError, match="no_grad"):
        policy(input_ids=ids)  # a pass that records gradients would train nothing in there
    assert not torch.allclose(base, expected, atol=1e-3), "the adapter must matter for this test to mean anything"
    assert all(torch.equal(p, before[n]) for n, p in policy.named_parameters())
