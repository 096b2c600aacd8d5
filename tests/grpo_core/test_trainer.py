"""Trainer tests on tiny-random-llama: they run real sampling, scoring and updates on CPU in seconds."""

import torch
from safetensors.torch import load_file

from grpo_core import GRPOConfig, GRPOTrainer, LoraSettings, RewardSpec, TrainerCallback, arithmetic_task
from grpo_core.checkpoint import list_checkpoints

# Random weights never write the right sum, so a length reward gives the mixed groups that make a gradient.
LENGTH_REWARD = [RewardSpec("length_target", params={"target": 60})]


def tiny_config(**overrides):
    values = dict(
        group_size=4,
        prompts_per_step=2,
        max_steps=2,
        max_new_tokens=8,
        checkpoint_every=0,
        lora=LoraSettings(r=4, alpha=8),
    )
    return GRPOConfig(**{**values, **overrides})


class Recorder(TrainerCallback):
    def __init__(self, stop_after=None):
        self.steps, self.evals, self.checkpoints, self.stop_after = [], [], [], stop_after

    def on_step(self, step, metrics):
        self.steps.append((step, metrics))

    def on_eval(self, step, metrics):
        self.evals.append((step, metrics))

    def on_checkpoint(self, checkpoint):
        self.checkpoints.append(checkpoint.step)

    def should_stop(self):
        return self.stop_after is not None and len(self.steps) >= self.stop_after


def make_trainer(tmp_path, config, callbacks=(), eval_rows=()):
    train_rows, _ = arithmetic_task()
    return GRPOTrainer(
        base_model="tiny-random-llama",
        train_rows=train_rows,
        eval_rows=eval_rows,
        rewards=LENGTH_REWARD,
        config=config,
        output_dir=tmp_path,
        callbacks=callbacks,
    )


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
        assert metrics["kl"] >= 0.0
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
    from grpo_core.sampling import completion_logprobs, sample_groups
    from grpo_core.rollout import reference_logprobs
    from grpo_core.trainer import add_lora

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


def test_num_iterations_above_one_clips_against_the_sampling_policy(tmp_path):
    recorder = Recorder()
    make_trainer(tmp_path, tiny_config(num_iterations=3, learning_rate=5e-2, max_steps=1), [recorder]).train()
    metrics = recorder.steps[0][1]
    # After the first of three updates the policy moved, so the ratio left 1.
    assert metrics["ratio_max"] > 1.0 or metrics["ratio_min"] < 1.0


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
    from grpo_core.trainer import learning_rate_at

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
