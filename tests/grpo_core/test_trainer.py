"""Trainer tests on tiny-random-llama: they run real sampling, scoring and updates on CPU in seconds."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from grpo_core import GRPOConfig, GRPOTrainer, LoraSettings, RewardSpec, arithmetic_task
from grpo_core.algorithms import compute_group_advantages
from grpo_core.checkpoint import list_checkpoints
from grpo_core.guardrails import StopWhen
from grpo_core.options import TrainerOptions
from grpo_core.sandbox import SandboxLimits, sandbox_available
from grpo_core.schedule import prompt_draw
from tests.grpo_core.trainer_helpers import LENGTH_REWARD, Recorder, make_trainer, tiny_config


def test_two_steps_change_lora_weights_and_leave_base_weights_bit_identical(tmp_path):
    recorder = Recorder()
    trainer = make_trainer(tmp_path, tiny_config(beta=0.04), [recorder])
    trainer.setup()
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert lora_before and all(p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" in n)

    result = trainer.train()

    assert result.final_step == 2 and len(recorder.steps) == 2
    for _, metrics in recorder.steps:
        assert torch.isfinite(torch.tensor(metrics["loss"]))
        assert metrics["zero_std_group_fraction"] < 1.0, (
            "the reward must give mixed groups for this test to mean anything"
        )
    # LoRA's B starts at zero, so the first step's policy is the reference; after one update it is not.
    assert recorder.steps[0][1]["kl"] == 0.0 and recorder.steps[1][1]["kl"] > 0.0
    params = dict(trainer.model.named_parameters())
    assert any(not torch.equal(params[n], before) for n, before in lora_before.items())
    for name, before in base_before.items():
        assert torch.equal(params[name], before), f"base weight {name} changed"
    # The final adapter is a PEFT folder.
    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert set(load_file(result.adapter_dir / "adapter_model.safetensors")) == {
        n.replace(".default", "") for n in lora_before
    }


def test_beta_zero_runs_no_reference_pass_and_beta_positive_runs_one(tmp_path, monkeypatch):
    import grpo_core.rollout as rollout_module

    calls = []
    real = rollout_module.reference_logprobs
    monkeypatch.setattr(rollout_module, "reference_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    make_trainer(tmp_path / "a", tiny_config(beta=0.0, max_steps=1)).train()
    assert calls == []
    make_trainer(tmp_path / "b", tiny_config(beta=0.1, max_steps=1)).train()
    assert calls == [1]


def test_reference_pass_uses_the_base_weights_with_the_adapter_off(tmp_path):
    from grpo_core.models import load_base_model
    from grpo_core.policy import add_lora
    from grpo_core.rollout import reference_logprobs
    from grpo_core.sampling import completion_logprobs, sample_groups

    model, tokenizer = load_base_model("tiny-random-llama")
    plain, _ = load_base_model("tiny-random-llama")
    policy = add_lora(model, LoraSettings(r=4, alpha=8), seed=0)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.fill_(0.5)  # make the adapter matter
    batch = sample_groups(policy, tokenizer, ["Hello"], group_size=2, max_new_tokens=4)
    with torch.no_grad():
        torch.testing.assert_close(reference_logprobs(policy, batch, 1.0), completion_logprobs(plain, batch))
        assert not torch.allclose(completion_logprobs(policy, batch), completion_logprobs(plain, batch))


def capture_policy_losses(monkeypatch):
    """Record the metrics of every compute_policy_loss call the trainer makes (one per optimizer update)."""
    import grpo_core.update as update_module

    calls = []
    real = update_module.compute_policy_loss

    def recording(*args, **kwargs):
        output = real(*args, **kwargs)
        calls.append(output.metrics)
        return output

    monkeypatch.setattr(update_module, "compute_policy_loss", recording)
    return calls


def test_num_iterations_above_one_clips_against_the_sampling_policy(tmp_path, monkeypatch):
    # LoRA dropout on: the sampling-policy log-probs and the update passes must still be the same function, so the
    # ratio is exactly 1 at the first update of every step, and leaves 1 once the policy has moved.
    updates = capture_policy_losses(monkeypatch)
    lora = LoraSettings(r=4, alpha=8, dropout=0.1)
    config = tiny_config(num_iterations=3, learning_rate=5e-2, max_steps=2, lora=lora)
    make_trainer(tmp_path, config).train()
    assert len(updates) == 6
    for first, *later in (updates[:3], updates[3:]):
        assert first["ratio_min"] == 1.0 and first["ratio_max"] == 1.0
        assert any(u["ratio_max"] > 1.0 or u["ratio_min"] < 1.0 for u in later)


def test_the_learning_rate_schedule_counts_optimizer_updates(tmp_path):
    # 2 steps x 3 updates, warm-up over 3 updates: the rate rises at each update, not once per step.
    trainer = make_trainer(tmp_path, tiny_config(num_iterations=3, warmup_steps=3, learning_rate=1e-3))
    trainer.setup()
    rates = []
    trainer.optimizer.register_step_pre_hook(lambda optimizer, *_: rates.append(optimizer.param_groups[0]["lr"]))
    trainer.train()
    assert rates == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


@pytest.mark.parametrize(("loss_type", "scale_rewards"), [("bnpo", "group"), ("dapo", "batch"), ("dr_grpo", "none")])
def test_each_loss_type_and_reward_scaling_trains_with_a_kl_penalty(tmp_path, loss_type, scale_rewards):
    recorder = Recorder()
    config = tiny_config(beta=0.1, loss_type=loss_type, scale_rewards=scale_rewards, learning_rate=1e-2)
    trainer = make_trainer(tmp_path, config, [recorder])
    trainer.setup()
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    (_, first), (_, second) = recorder.steps
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in (first, second))
    assert first["kl"] == 0.0 and second["kl"] > 0.0
    params = dict(trainer.model.named_parameters())
    assert all(not torch.equal(params[n], before) for n, before in lora_before.items())


def test_gspo_reaches_the_loss_and_trains(tmp_path, monkeypatch):
    import grpo_core.update as update_module

    levels = []
    real = update_module.compute_policy_loss
    monkeypatch.setattr(
        update_module,
        "compute_policy_loss",
        lambda *a, **k: levels.append(k["importance_sampling_level"]) or real(*a, **k),
    )
    config = tiny_config(importance_sampling_level="sequence", num_iterations=2, learning_rate=1e-2, max_steps=1)
    trainer = make_trainer(tmp_path, config)
    trainer.setup()
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    params = dict(trainer.model.named_parameters())
    assert all(not torch.equal(params[n], before) for n, before in lora_before.items())
    assert levels == ["sequence", "sequence"]


def test_masked_truncated_completions_train_nothing_when_every_completion_is_cut(tmp_path):
    """tiny-random-llama almost never samples EOS in 3 tokens: every completion is truncated, so with
    mask_truncated_completions the loss has no token and the adapter does not move; without it, it does."""
    moved = {}
    for masked in (False, True):
        recorder = Recorder()
        config = tiny_config(mask_truncated_completions=masked, max_new_tokens=3, max_steps=1, learning_rate=1e-2)
        trainer = make_trainer(tmp_path / str(masked), config, [recorder])
        trainer.setup()
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
        trainer.train()
        ((_, metrics),) = recorder.steps
        assert metrics["truncated_fraction"] == 1.0
        params = dict(trainer.model.named_parameters())
        moved[masked] = any(not torch.equal(params[n], p) for n, p in before.items())
        if masked:
            assert metrics["loss"] == 0.0 and metrics["grad_norm"] == 0.0
    assert moved == {False: True, True: False}


def test_same_seed_repeats_a_run_exactly(tmp_path):
    first = make_trainer(tmp_path / "a", tiny_config()).train()
    second = make_trainer(tmp_path / "b", tiny_config()).train()
    a = load_file(first.adapter_dir / "adapter_model.safetensors")
    b = load_file(second.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_a_checkpoint_gives_the_same_adapter_as_an_uninterrupted_run(tmp_path):
    config = tiny_config(max_steps=6, checkpoint_every=3, lora=LoraSettings(r=4, alpha=8, dropout=0.1), eval_every=3)
    eval_rows = arithmetic_task()[1][:3]
    straight = make_trainer(tmp_path / "straight", config, eval_rows=eval_rows).train()

    stopper = Recorder(stop_after=3)
    stopped = make_trainer(tmp_path / "stopped", config, [stopper], eval_rows=eval_rows).train()
    assert stopped.stopped_early and stopped.final_step == 3
    assert [c.step for c in list_checkpoints(tmp_path / "stopped" / "checkpoints")] == [3]

    resumer = Recorder()
    resumed = make_trainer(tmp_path / "stopped", config, [resumer], eval_rows=eval_rows).train(resume=True)
    assert [step for step, _ in resumer.steps] == [4, 5, 6]

    a = load_file(straight.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0


def test_cosine_schedule_and_warmup():
    from grpo_core.policy import learning_rate_at

    config = GRPOConfig(max_steps=10, warmup_steps=2, lr_schedule="cosine")
    assert [round(learning_rate_at(s, config), 3) for s in (0, 1, 2, 6, 10)] == [0.333, 0.667, 1.0, 0.5, 0.0]


def test_evaluation_reports_sampled_and_greedy_without_changing_training(tmp_path):
    eval_rows = arithmetic_task()[1][:2]
    recorder = Recorder()
    with_eval = make_trainer(tmp_path / "a", tiny_config(eval_every=1), [recorder], eval_rows=eval_rows).train()
    without = make_trainer(tmp_path / "b", tiny_config()).train()
    assert [step for step, _ in recorder.evals] == [0, 1, 2]
    assert set(recorder.evals[0][1]) == {"eval_reward_sampled", "eval_reward_greedy"}
    a = load_file(with_eval.adapter_dir / "adapter_model.safetensors")
    b = load_file(without.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


class WarningRecorder(Recorder):
    def __init__(self, stop_after=None):
        super().__init__(stop_after)
        self.warnings = []

    def on_warning(self, message):
        self.warnings.append(message)


def test_a_corrupt_checkpoint_is_skipped_for_the_one_before_with_a_warning(tmp_path):
    config = tiny_config(max_steps=4, checkpoint_every=1)
    straight = make_trainer(tmp_path / "straight", config).train()
    make_trainer(tmp_path / "stopped", config, [Recorder(stop_after=3)]).train()
    # The newest checkpoint's weights change on disk, same size: only its sha256 can tell.
    weights = tmp_path / "stopped" / "checkpoints" / "step-000003" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))

    resumer = WarningRecorder()
    resumed = make_trainer(tmp_path / "stopped", config, [resumer]).train(resume=True)

    assert len(resumer.warnings) == 1
    assert "step 3" in resumer.warnings[0] and "adapter_model.safetensors" in resumer.warnings[0]
    assert [step for step, _ in resumer.steps] == [3, 4]
    a = load_file(straight.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_checkpoint_saved_with_settings_that_change_training(tmp_path):
    from grpo_core.run_state import ResumeMismatch

    make_trainer(tmp_path, tiny_config(max_steps=2, checkpoint_every=1)).train()
    changed = tiny_config(max_steps=4, learning_rate=1e-3, lora=LoraSettings(r=8, alpha=8))
    with pytest.raises(ResumeMismatch, match=r"learning_rate, lora\.r"):
        make_trainer(tmp_path, changed).train(resume=True)
    # When to evaluate and checkpoint, and (with a constant schedule) how long to train, may change.
    # ... and so may the micro batch: it changes only how the step is cut to fit in memory.
    recorder = Recorder()
    same_training = tiny_config(max_steps=3, checkpoint_every=2, eval_every=5, micro_batch_size=3)
    make_trainer(tmp_path, same_training, [recorder]).train(resume=True)
    assert [step for step, _ in recorder.steps] == [3]


def test_a_checkpoint_saved_before_micro_batches_existed_resumes_with_any():
    saved = tiny_config().to_dict()
    del saved["micro_batch_size"]
    assert tiny_config(micro_batch_size=2).training_differences(saved) == []
    assert tiny_config(micro_batch_size=2, group_size=8).training_differences(saved) == ["group_size"]


# --- micro batches ----------------------------------------------------------------------------------------------

# Prompts of different lengths, so the batch is left-padded and a micro batch keeps that padding.
MIXED_ROWS = [{"prompt": "Hi"}, {"prompt": "Write a long story about a robot who learns to paint, in many colours."}]


def lora_policy():
    """tiny-random-llama with a LoRA adapter whose B is random, not zero, so every LoRA weight gets a gradient.
    Two calls give two identical policies."""
    from grpo_core.models import load_base_model
    from grpo_core.policy import add_lora

    model, tokenizer = load_base_model("tiny-random-llama")
    policy = add_lora(model, LoraSettings(r=4, alpha=8), seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return policy, tokenizer


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_an_update_in_micro_batches_has_the_one_pass_gradients_loss_and_metrics(loss_type):
    from grpo_core.data import dataset_fields
    from grpo_core.policy import make_optimizer
    from grpo_core.rewards import resolve_rewards
    from grpo_core.rollout import collect_rollout, reference_logprobs, sampling_policy_logprobs
    from grpo_core.update import update_policy

    # 2 prompts x G=5 = 10 completions: micro batches of 3 (3, 3, 3, 1) and of 4 (4, 4, 2) cut the groups.
    # Two updates, so the second clips against the sampling policy's log-probs, and a KL term. AdamW's first steps
    # move each weight by about the learning rate whatever its gradient's size, so float rounding in a gradient of
    # 1e-6 can move a weight by 1e-4 x the learning rate: the adapters are compared after steps of 1e-3.
    config = tiny_config(
        group_size=5, prompts_per_step=2, beta=0.1, num_iterations=2, loss_type=loss_type, learning_rate=1e-3
    )
    rewards = resolve_rewards(LENGTH_REWARD, dataset_fields(MIXED_ROWS))
    sampler, tokenizer = lora_policy()
    torch.manual_seed(0)
    rollout = collect_rollout(sampler, tokenizer, MIXED_ROWS, rewards, config)
    assert not rollout.batch.prompt_mask.all(), "the prompts must be left-padded"
    # Completions of every length (random weights seldom write EOS) and random advantages, so that the loss types
    # differ and every completion weighs in, whatever the reward made of these few samples.
    lengths = torch.tensor([1, 8, 3, 2, 8, 5, 1, 4, 8, 2])
    mask = (torch.arange(rollout.batch.completion_ids.shape[1]) < lengths.unsqueeze(1)).long()
    batch = dataclasses.replace(rollout.batch, completion_mask=mask * rollout.batch.completion_mask)
    rollout = dataclasses.replace(
        rollout,
        samples=dataclasses.replace(rollout.samples, batch=batch),
        advantages=torch.randn(10, generator=torch.Generator().manual_seed(2)),
        old_logprobs=sampling_policy_logprobs(sampler, batch, 1.0),
        ref_logprobs=reference_logprobs(sampler, batch, 1.0),
    )

    results = {}
    for micro_batch_size in (0, 3, 4):
        policy, _ = lora_policy()
        # The sampling-policy and reference passes in micro batches give the one-pass log-probs.
        with torch.no_grad():
            old = sampling_policy_logprobs(policy, rollout.batch, 1.0, micro_batch_size)
            ref = reference_logprobs(policy, rollout.batch, 1.0, micro_batch_size)
        torch.testing.assert_close(old, rollout.old_logprobs, rtol=0, atol=1e-6)
        torch.testing.assert_close(ref, rollout.ref_logprobs, rtol=0, atol=1e-6)

        chunked = dataclasses.replace(config, micro_batch_size=micro_batch_size)
        optimizer, scheduler = make_optimizer(policy, chunked)
        updates = update_policy(policy, optimizer, scheduler, rollout, chunked)
        lora = {name: param for name, param in policy.named_parameters() if param.requires_grad}
        # The gradient left in .grad is the second update's (clipped by the same norm in both).
        results[micro_batch_size] = (
            updates,
            {name: param.grad.clone() for name, param in lora.items()},
            {name: param.detach().clone() for name, param in lora.items()},
        )

    one_pass_updates, one_pass_grads, one_pass_weights = results[0]
    assert all(grad.abs().max() > 1e-4 for grad in one_pass_grads.values()), "every LoRA weight must get a gradient"
    assert one_pass_updates[1]["ratio_max"] > 1.0 or one_pass_updates[1]["ratio_min"] < 1.0
    for micro_batch_size in (3, 4):
        updates, grads, weights = results[micro_batch_size]
        for name in one_pass_grads:
            torch.testing.assert_close(grads[name], one_pass_grads[name], rtol=0, atol=1e-6, msg=name)
            torch.testing.assert_close(weights[name], one_pass_weights[name], rtol=0, atol=1e-6, msg=name)
        for chunked_metrics, one_pass_metrics in zip(updates, one_pass_updates, strict=True):
            assert chunked_metrics.keys() == one_pass_metrics.keys()
            assert chunked_metrics == pytest.approx(one_pass_metrics, rel=1e-5, abs=1e-6)


def test_a_run_in_micro_batches_trains_the_adapter_of_a_run_in_one_pass(tmp_path):
    # 2 prompts x G=4 in micro batches of 3 (3, 3, 2); dapo, the loss whose normaliser is the whole step's tokens.
    # The default learning rate: see the test above for why AdamW's steps are kept small here.
    config = tiny_config(beta=0.1, num_iterations=2, loss_type="dapo", max_steps=3)
    one_pass = make_trainer(tmp_path / "one", config).train()
    chunked = make_trainer(tmp_path / "micro", dataclasses.replace(config, micro_batch_size=3)).train()
    a = load_file(one_pass.adapter_dir / "adapter_model.safetensors")
    b = load_file(chunked.adapter_dir / "adapter_model.safetensors")
    assert any(tensor.abs().max() > 0 for name, tensor in a.items() if "lora_B" in name), "it must have trained"
    # 1e-5, not the one-update test's 1e-6: AdamW's first updates divide by sqrt(v), so for a gradient element near
    # zero the chunks' different summation order (about 1e-9) moves the weight by up to about 1e-6 (2.7e-6 measured).
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


class StopWithinStep(Recorder):
    """Asks for a stop once `after_steps` steps are done and the next one has decoded a few tokens: mid-step."""

    def __init__(self, after_steps):
        super().__init__()
        self.after_steps, self.checks_in_step = after_steps, 0

    def stop_requested(self):
        if len(self.steps) < self.after_steps:
            return False
        self.checks_in_step += 1
        return self.checks_in_step > 3


def test_a_stop_within_a_step_abandons_it_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path):
    config = tiny_config(max_steps=3)
    straight = make_trainer(tmp_path / "straight", config).train()

    stopper = StopWithinStep(after_steps=1)
    stopped = make_trainer(tmp_path / "stopped", config, [stopper]).train()
    assert stopped.stopped_early and stopped.final_step == 1 and [s for s, _ in stopper.steps] == [1]
    assert stopper.checks_in_step == 4  # stopped at the fourth token of step 2, not at its end
    assert [c.step for c in list_checkpoints(tmp_path / "stopped" / "checkpoints")] == [1]

    # The abandoned step left no trace, not even in the random stream: resuming gives the same adapter.
    resumed = make_trainer(tmp_path / "stopped", config).train(resume=True)
    a = load_file(straight.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_non_finite_loss_is_never_applied_and_the_run_fails_naming_the_step(tmp_path, monkeypatch):
    # An installed reward returns 1e300: finite in Python, inf as float32, so the advantages and the loss are NaN.
    # Before this check the run "succeeded" with an adapter whose weights were all NaN.
    from tests.grpo_core.hostile_rewards import install_hostile_rewards

    monkeypatch.syspath_prepend(str(install_hostile_rewards(tmp_path / "plugins")))
    train_rows, _ = arithmetic_task()
    trainer = GRPOTrainer(
        base_model="tiny-random-llama",
        train_rows=train_rows,
        rewards=[RewardSpec("huge")],
        config=tiny_config(max_steps=1),
        output_dir=tmp_path / "run",
        stop_when=StopWhen(max_non_finite_steps=1),
    )
    trainer.setup()
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    with pytest.raises(
        ArithmeticError,
        match=r"^step 1: loss is (nan|inf) \(grad norm nan\); nothing was applied; 1 steps were not finite "
        r"\(stop_when.max_non_finite_steps is 1\)$",
    ) as caught:
        trainer.train()
    params = dict(trainer.model.named_parameters())
    assert all(torch.equal(params[n], before) for n, before in lora_before.items())
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == []
    assert type(caught.value).__name__ == "NonFiniteUpdate"


def test_a_reward_that_hangs_ends_the_run_with_an_error_naming_it(tmp_path, monkeypatch):
    from grpo_core.reward_process import RewardTimeout
    from tests.grpo_core.hostile_rewards import install_hostile_rewards

    monkeypatch.syspath_prepend(str(install_hostile_rewards(tmp_path / "plugins")))
    train_rows, _ = arithmetic_task()
    trainer = GRPOTrainer(
        base_model="tiny-random-llama",
        train_rows=train_rows,
        rewards=[*LENGTH_REWARD, RewardSpec("spinning")],
        config=tiny_config(),
        output_dir=tmp_path / "run",
        options=TrainerOptions(reward_timeout_seconds=2),
    )
    with pytest.raises(RewardTimeout, match="reward 'spinning' did not return within 2 s"):
        trainer.train()
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == []


def test_an_update_that_leaves_non_finite_weights_stops_the_run_before_any_checkpoint(tmp_path):
    # A backstop no accepted spec reaches since weight_decay is bounded by 1: the config is forced past its checks,
    # so that AdamW's decay multiplies the weights by 1 - lr x 1e300 while loss and gradients stay finite.
    config = tiny_config(max_steps=1)
    object.__setattr__(config, "weight_decay", 1e300)
    trainer = make_trainer(tmp_path, config)
    with pytest.raises(ArithmeticError, match=r"^step 1: the update left adapter weights that are not finite"):
        trainer.train()
    assert list_checkpoints(tmp_path / "checkpoints") == []


# --- tenant rewards: scored in their sandboxes ------------------------------------------------------------------

needs_sandbox = pytest.mark.skipif(sandbox_available() is not None, reason="bubblewrap cannot sandbox here")

PER_SAMPLE_TENANT = """
def reward(prompt, completion, answer, bonus=0.0):
    print("answer", answer)
    return len(completion) % 5 + bonus + (1.0 if str(answer) in completion else 0.0)
"""

TRL_TENANT = """
def reward(prompts, completions, answer, **kwargs):
    return [len(c[0]["content"]) / (1 + len(p[-1]["content"])) + a / 100 for p, c, a in zip(prompts, completions, answer)]
"""


def _direct(source):
    namespace = {}
    exec(source, namespace)
    return namespace["reward"]


class SampleRecorder(WarningRecorder):
    def __init__(self):
        super().__init__()
        self.samples = []

    def on_samples(self, step, samples, outputs):
        assert self.steps[-1][0] == step  # after on_step
        self.samples.append((step, samples, outputs))


def tenant_trainer(tmp_path, specs, sources, callbacks=(), rows=None, **options):
    return GRPOTrainer(
        base_model="tiny-random-llama",
        train_rows=rows or arithmetic_task()[0],
        rewards=specs,
        config=tiny_config(max_steps=1),
        output_dir=tmp_path,
        callbacks=callbacks,
        tenant_rewards=sources,
        **options,
    )


@needs_sandbox
def test_tenant_rewards_score_as_direct_calls_and_samples_reach_on_samples(tmp_path):
    chat_rows = [
        {"messages": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in arithmetic_task()[0]
    ]
    sources = {"rwd_" + "a" * 32: PER_SAMPLE_TENANT, "rwd_" + "b" * 32: TRL_TENANT}
    specs = [RewardSpec("rwd_" + "a" * 32, 1.0, {"bonus": 0.5}), RewardSpec("rwd_" + "b" * 32, 2.0)]
    recorder = SampleRecorder()
    tenant_trainer(tmp_path, specs, sources, [recorder], rows=chat_rows).train()

    ((step, metrics),) = recorder.steps
    assert metrics["reward_errors"] == 0 and metrics["reward_errors/rwd_" + "a" * 32] == 0
    ((sample_step, samples, outputs),) = recorder.samples
    assert sample_step == 1 and len(samples) == 8  # both groups of the step (prompts_per_step 2, G 4)
    assert [(s["group"], s["index"]) for s in samples] == [(g, i) for g in range(2) for i in range(4)]
    per_sample, trl = _direct(PER_SAMPLE_TENANT), _direct(TRL_TENANT)
    rows_by_prompt = {r["messages"][0]["content"]: r for r in chat_rows}
    for sample in samples:
        row = rows_by_prompt[sample["prompt"][0]["content"]]
        assert sample["prompt"] == row["messages"]
        completion = sample["completion"]
        want_a = per_sample(row["messages"], completion, answer=row["answer"], bonus=0.5)
        [want_b] = trl([row["messages"]], [[{"role": "assistant", "content": completion}]], answer=[row["answer"]])
        assert sample["scores"] == {
            "rwd_" + "a" * 32: pytest.approx(want_a, rel=1e-6),
            "rwd_" + "b" * 32: pytest.approx(want_b, rel=1e-6),
        }
        assert sample["reward"] == pytest.approx(want_a + 2 * want_b, rel=1e-5)
        assert sample["errors"] == {} and isinstance(sample["advantage"], float)
    rewards = torch.tensor([s["reward"] for s in samples])
    advantages = compute_group_advantages(rewards, 4, "group")
    assert [s["advantage"] for s in samples] == pytest.approx(advantages.tolist(), abs=1e-5)
    # Only the printing reward has output: one line per sample of the step.
    assert list(outputs) == ["rwd_" + "a" * 32] and outputs["rwd_" + "a" * 32].count("answer ") == 8
    assert recorder.warnings == []


@needs_sandbox
def test_a_reward_failing_on_most_samples_ends_the_run_naming_it(tmp_path):
    from grpo_core.reward_process import RewardFailure

    name = "rwd_" + "c" * 32
    source = "def reward(prompt, completion, **fields):\n    return 1 / 0\n"
    specs = [*LENGTH_REWARD, RewardSpec(name)]
    with pytest.raises(RewardFailure, match=rf"^step 1: reward '{name}' failed on 8 of 8 samples .*ZeroDivisionError"):
        tenant_trainer(tmp_path, specs, {name: source}).train()
    assert list_checkpoints(tmp_path / "checkpoints") == []


@needs_sandbox
def test_a_built_in_failing_on_most_samples_ends_the_run_too(tmp_path):
    from grpo_core.step import TooManyRewardFailures

    rows = [{"prompt": r["prompt"], "answer": "not a number"} for r in arithmetic_task()[0]]
    with pytest.raises(TooManyRewardFailures, match=r"^step 1: reward 'numeric_answer' failed on 8 of 8 samples"):
        tenant_trainer(tmp_path, [RewardSpec("numeric_answer")], {}, rows=rows).train()


@needs_sandbox
def test_a_tenant_reward_that_hangs_on_one_item_fails_that_item_and_training_goes_on(tmp_path):
    from grpo_core.sandbox import SandboxLimits

    name = "rwd_" + "d" * 32
    # Every third call in one sandbox spins: the sandbox's /tmp (and so the count) starts empty at each restart.
    source = """
import os
def reward(prompt, completion, **fields):
    calls = int(open("/tmp/calls").read()) + 1 if os.path.exists("/tmp/calls") else 1
    with open("/tmp/calls", "w") as file:
        file.write(str(calls))
    while calls == 3:
        pass
    return 1.0
"""
    recorder = SampleRecorder()
    specs = [*LENGTH_REWARD, RewardSpec(name)]
    limits = SandboxLimits(timeout_seconds=2)
    result = tenant_trainer(
        tmp_path, specs, {name: source}, [recorder], options=TrainerOptions(sandbox_limits=limits)
    ).train()

    assert result.final_step == 1
    ((_, metrics),) = recorder.steps
    assert metrics["reward_errors/" + name] == 2 and metrics["reward_errors/length_target"] == 0
    ((_, samples, _outputs),) = recorder.samples
    failed = [i for i, s in enumerate(samples) if s["errors"]]
    assert failed == [2, 5]
    assert all("timed out after 2 s" in samples[i]["errors"][name] and samples[i]["scores"][name] == 0 for i in failed)
    assert all(s["scores"][name] == 1.0 for i, s in enumerate(samples) if i not in failed)
    [warning] = recorder.warnings
    assert warning.startswith(f"step 1: reward '{name}' failed on 2 of 8 samples") and "timed out" in warning


# --- dynamic sampling: groups without learning signal are dropped and more prompts drawn -------------------------

# Flat rows score 1 whatever the completion (a group with no learning signal); mixed rows score its length.
FLAT_OR_MIXED = """
def reward(prompt, completion, kind):
    return float(len(completion)) if kind == "mixed" else 1.0
"""
FLAT_OR_MIXED_ID = "rwd_" + "d" * 32


def dynamic_trainer(tmp_path, rows, callbacks=(), **overrides):
    config = tiny_config(dynamic_sampling=True, max_sampling_rounds=4, **overrides)
    return GRPOTrainer(
        base_model="tiny-random-llama",
        train_rows=rows,
        rewards=[RewardSpec(FLAT_OR_MIXED_ID)],
        config=config,
        output_dir=tmp_path,
        callbacks=callbacks,
        tenant_rewards={FLAT_OR_MIXED_ID: FLAT_OR_MIXED},
        # The reward's code is the test's own: a plain child process is enough, and faster to start.
        options=TrainerOptions(sandbox_limits=SandboxLimits(allow_unsandboxed=True)),
    )


def flat_or_mixed_rows(mixed: int, flat: int) -> list[dict]:
    return [{"prompt": f"Say something, {i}", "kind": "mixed"} for i in range(mixed)] + [
        {"prompt": f"Say anything, {i}", "kind": "flat"} for i in range(flat)
    ]


class GroupRecorder(SampleRecorder):
    def __init__(self):
        super().__init__()
        self.groups = []

    def on_prompt_groups(self, step, groups):
        assert self.steps[-1][0] == step  # after on_step
        self.groups.append((step, groups))


def test_every_group_a_step_samples_reaches_on_prompt_groups_with_its_row(tmp_path):
    recorder = GroupRecorder()
    trainer = make_trainer(tmp_path, tiny_config(max_steps=2), [recorder])
    trainer.train()
    for (step, groups), (_, samples, _) in zip(recorder.groups, recorder.samples, strict=True):
        assert [group["row"] for group in groups] == list(
            prompt_draw(trainer.config, len(trainer.train_rows), step - 1).indices
        )
        assert all(len(group["rewards"]) == 4 for group in groups)
        # The samples of the same step hold the same rewards for the same rows.
        for sample in samples:
            group = groups[sample["group"]]
            assert trainer.train_rows[group["row"]]["prompt"] == sample["prompt"]
            assert group["rewards"][sample["index"]] == pytest.approx(sample["reward"])


def test_dynamic_sampling_trains_only_on_groups_with_a_learning_signal(tmp_path):
    recorder = GroupRecorder()
    rows = flat_or_mixed_rows(mixed=3, flat=9)
    dynamic_trainer(tmp_path, rows, [recorder], max_steps=3).train()
    for (_, groups), (_, metrics) in zip(recorder.groups, recorder.steps, strict=True):
        assert len(groups) == metrics["prompts_drawn"]  # the dropped groups too
        flat = [group for group in groups if len(set(group["rewards"])) == 1]
        assert len(flat) == metrics["groups_dropped"]
        assert all(rows[group["row"]]["kind"] == "flat" for group in flat)
    for (step, metrics), (_, samples, _) in zip(recorder.steps, recorder.samples, strict=True):
        assert metrics["zero_std_group_fraction"] == 0.0, step
        assert {sample["prompt"].startswith("Say something") for sample in samples} == {True}
        assert metrics["prompts_drawn"] == 2 * metrics["sampling_rounds"]
        assert metrics["groups_dropped"] <= metrics["prompts_drawn"] - 2  # the 2 kept were drawn too
    assert any(metrics["groups_dropped"] > 0 for _, metrics in recorder.steps), "the rows must give flat groups"


def test_dynamic_sampling_stops_after_max_rounds_and_trains_on_the_first_round_when_all_are_flat(tmp_path):
    recorder = SampleRecorder()
    dynamic_trainer(tmp_path, flat_or_mixed_rows(mixed=0, flat=5), [recorder], max_steps=1).train()
    ((_, metrics),) = recorder.steps
    assert metrics["sampling_rounds"] == 4 and metrics["prompts_drawn"] == 8 and metrics["groups_dropped"] == 8
    assert metrics["zero_std_group_fraction"] == 1.0 and metrics["advantage_max"] == 0.0


def test_a_step_reports_the_work_usage_adds_up(tmp_path):
    recorder = Recorder()
    make_trainer(tmp_path, tiny_config(max_steps=1, num_iterations=2), [recorder]).train()
    ((_, metrics),) = recorder.steps
    completions = 2 * 4  # prompts_per_step x group_size
    tokens = metrics["completion_length_mean"] * completions
    assert metrics["tokens_sampled"] == pytest.approx(tokens)
    assert metrics["tokens_trained"] == pytest.approx(2 * tokens)  # each token in both updates
    assert metrics["reward_calls"] == completions  # one reward function
    assert 0 < metrics["reward_seconds"] < metrics["step_seconds"]


def test_dynamic_sampling_counts_the_work_of_the_groups_it_dropped(tmp_path):
    recorder = Recorder()
    dynamic_trainer(tmp_path, flat_or_mixed_rows(mixed=1, flat=9), [recorder], max_steps=2).train()
    for _, metrics in recorder.steps:
        assert metrics["reward_calls"] == metrics["prompts_drawn"] * 4
        assert metrics["tokens_sampled"] >= metrics["tokens_trained"]
    assert any(m["tokens_sampled"] > m["tokens_trained"] for _, m in recorder.steps), "the rows must give flat groups"


def test_dynamic_sampling_resumes_exactly(tmp_path):
    rows = flat_or_mixed_rows(mixed=4, flat=8)
    straight = dynamic_trainer(tmp_path / "straight", rows, max_steps=4, checkpoint_every=2).train()
    stopped = dynamic_trainer(tmp_path / "stopped", rows, [Recorder(stop_after=2)], max_steps=4, checkpoint_every=2)
    assert stopped.train().final_step == 2
    resumed = dynamic_trainer(tmp_path / "stopped", rows, max_steps=4, checkpoint_every=2).train(resume=True)
    a = load_file(straight.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dynamic_sampling_is_refused_on_several_processes():
    with pytest.raises(ValueError, match="dynamic_sampling runs on one process"):
        tiny_config(dynamic_sampling=True, processes=2)


def test_tenant_rewards_are_refused_where_no_sandbox_can_run(tmp_path, monkeypatch):
    from grpo_core import sandbox
    from grpo_core.sandbox import SandboxUnavailable

    monkeypatch.setenv("PATH", str(tmp_path))
    sandbox.probe_sandbox.cache_clear()
    try:
        name = "rwd_" + "e" * 32
        with pytest.raises(SandboxUnavailable, match="not run unsandboxed: bubblewrap .* not installed"):
            tenant_trainer(tmp_path, [RewardSpec(name)], {name: PER_SAMPLE_TENANT})
        # A tenant reward whose source was not given is unknown, like any other name.
        from grpo_core.rewards import RewardSpecError

        with pytest.raises(RewardSpecError, match="unknown reward 'rwd_"):
            tenant_trainer(tmp_path, [RewardSpec(name)], {})
    finally:
        monkeypatch.undo()
        sandbox.probe_sandbox.cache_clear()
