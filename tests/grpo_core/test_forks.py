"""Forks: a run that starts from another run's checkpoint (GRPOTrainer's fork_point), on tiny-random-llama."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from grpo_core import ForkPoint, GRPOTrainer, LoraSettings, RewardSpec, arithmetic_task
from grpo_core.checkpoint import ForkPointUnusable, list_checkpoints, load_trainer_state, read_checkpoint
from tests.grpo_core.trainer_helpers import Recorder, make_trainer, tiny_config

ADAPTER = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A parent run of 2 steps with a checkpoint at each: its output folder."""
    folder = tmp_path_factory.mktemp("parent")
    make_trainer(folder, tiny_config(max_steps=2, checkpoint_every=1)).train()
    return folder


def fork_trainer(tmp_path, parent, step, optimizer=False, callbacks=(), **overrides):
    """A fork of `parent` at `step`, with its own reward (a shorter target) and hyperparameters."""
    train_rows, _ = arithmetic_task()
    config = tiny_config(**{"max_steps": 1, "checkpoint_every": 1, "learning_rate": 5e-5, "seed": 7, **overrides})
    return GRPOTrainer(
        base_model="tiny-random-llama",
        train_rows=train_rows,
        rewards=[RewardSpec("length_target", params={"target": 40})],
        config=config,
        output_dir=tmp_path,
        callbacks=callbacks,
        fork_point=ForkPoint(parent / "checkpoints" / f"step-{step:06d}", optimizer=optimizer),
    )


def tensors(folder):
    return load_file(folder / ADAPTER)


def assert_equal_tensors(left, right):
    assert left.keys() == right.keys() and left
    for name in left:
        assert torch.equal(left[name], right[name]), name


def differs(left, right):
    return any(not torch.equal(left[name], right[name]) for name in left)


def test_a_fork_starts_from_the_parents_adapter_bit_for_bit_and_then_trains_its_own(tmp_path, parent):
    recorder = Recorder()
    trainer = fork_trainer(tmp_path, parent, step=1, callbacks=[recorder])
    trainer.setup()
    fresh = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert all(not p.any() for p in fresh.values()), "a fresh LoRA's B is zero: loading must change it"

    result = trainer.train()

    assert result.final_step == 1 and recorder.checkpoints == [0, 1]
    assert recorder.steps[0][1]["zero_std_group_fraction"] < 1.0, "the fork's reward must give a gradient"
    own = {c.step: c.path for c in list_checkpoints(tmp_path / "checkpoints")}
    parent_step_1 = parent / "checkpoints" / "step-000001"
    assert_equal_tensors(tensors(own[0]), tensors(parent_step_1))
    assert (own[0] / ADAPTER).read_bytes() == (parent_step_1 / ADAPTER).read_bytes()
    # Not the parent's step 2, and the fork trained from its start: step 1 moved the adapter.
    assert differs(tensors(own[0]), tensors(parent / "checkpoints" / "step-000002"))
    assert differs(tensors(own[0]), tensors(own[1]))
    assert any(value.any() for name, value in tensors(own[0]).items() if "lora_B" in name), "the parent trained B"
    # Fresh optimizer by default: no moments at step 0, and the fork's own learning rate.
    state = load_trainer_state(read_checkpoint(own[0]))
    assert state["optimizer"]["state"] == {} and state["optimizer"]["param_groups"][0]["lr"] == 5e-5
    assert state["config"]["seed"] == 7 and state["run"]["rewards"][0]["params"] == {"target": 40}


def test_a_fork_with_optimizer_carries_the_parents_moments_and_keeps_its_own_learning_rate(tmp_path, parent):
    trainer = fork_trainer(tmp_path, parent, step=2, optimizer=True, max_steps=2)
    trainer.train()

    parent_state = load_trainer_state(read_checkpoint(parent / "checkpoints" / "step-000002"))["optimizer"]
    fork_state = load_trainer_state(read_checkpoint(tmp_path / "checkpoints" / "step-000000"))["optimizer"]
    assert parent_state["state"].keys() == fork_state["state"].keys() and fork_state["state"]
    for index, moments in parent_state["state"].items():
        assert moments.keys() == fork_state["state"][index].keys()
        for name, value in moments.items():
            assert torch.equal(value, fork_state["state"][index][name]), (index, name)
    assert fork_state["param_groups"][0]["lr"] == 5e-5 != parent_state["param_groups"][0]["lr"]
    # Carried moments are used: AdamW's update count goes on from the parent's 2 updates.
    after = load_trainer_state(read_checkpoint(tmp_path / "checkpoints" / "step-000001"))["optimizer"]
    assert all(float(s["step"]) == 3 for s in after["state"].values())


def test_a_resumed_fork_continues_from_its_own_checkpoints_without_the_parent(tmp_path, parent):
    uninterrupted = tmp_path / "uninterrupted"
    fork_trainer(uninterrupted, parent, step=2, max_steps=2).train()

    copy = tmp_path / "parent-copy"
    shutil.copytree(parent, copy)
    resumed = tmp_path / "resumed"
    first = fork_trainer(resumed, copy, step=2, max_steps=2, callbacks=[Recorder(stop_after=1)]).train()
    assert first.stopped_early and first.final_step == 1
    shutil.rmtree(copy)  # the parent's checkpoint is gone: the fork no longer needs it
    result = fork_trainer(resumed, copy, step=2, max_steps=2).train(resume=True)

    assert result.final_step == 2 and not result.stopped_early
    assert_equal_tensors(
        tensors(resumed / "checkpoints" / "step-000002"), tensors(uninterrupted / "checkpoints" / "step-000002")
    )


def test_a_fork_point_that_is_gone_or_of_another_shape_is_refused(tmp_path, parent):
    with pytest.raises(ForkPointUnusable, match="missing, incomplete, or changed"):
        fork_trainer(tmp_path / "gone", parent, step=5).train()
    with pytest.raises(ForkPointUnusable, match="other layers or shapes"):
        fork_trainer(tmp_path / "shape", parent, step=1, lora=LoraSettings(r=2, alpha=8)).train()
    assert list_checkpoints(tmp_path / "shape" / "checkpoints") == []


def test_grpo_train_forks_from_a_checkpoint_folder_named_in_its_config(tmp_path, parent):
    import yaml

    from grpo_core.cli import main

    config = {
        "base_model": "tiny-random-llama",
        "dataset": "builtin:arithmetic",
        "output_dir": "fork",
        "rewards": [{"name": "length_target", "params": {"target": 40}}],
        "hyperparameters": {"group_size": 2, "max_steps": 1, "max_new_tokens": 6, "lora": {"r": 4, "alpha": 8}},
        "init_from": {"checkpoint": str(parent / "checkpoints" / "step-000002")},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "job.yaml"), "--device", "cpu"]) == 0
    start = tensors(tmp_path / "fork" / "checkpoints" / "step-000000")
    assert_equal_tensors(start, tensors(parent / "checkpoints" / "step-000002"))
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({**config, "init_from": {"path": "x"}}))
    assert main(["train", str(tmp_path / "job.yaml")]) == 2
