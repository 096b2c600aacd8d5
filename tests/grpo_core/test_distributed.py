"""One job on several processes (gloo on the CPU): N ranks train what one process with the whole batch trains."""

import json
import math
import multiprocessing
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from grpo_core import GRPOConfig, GRPOTrainer, LoraSettings, RewardSpec, TrainerCallback, arithmetic_task
from grpo_core.checkpoint import list_checkpoints
from grpo_core.distributed import LOCAL, RankFailed, World, prompt_share, run_ranks
from grpo_core.options import TrainerOptions

LENGTH_REWARD = [RewardSpec("length_target", params={"target": 60})]
# Each loss_type with a reward scaling: "batch" needs the whole step's rewards, so two of them take it.
VARIANTS = [("grpo", "group"), ("bnpo", "batch"), ("dapo", "none"), ("dr_grpo", "batch")]
TIMINGS = {"step_seconds", "sampling_seconds", "generated_tokens_per_second", "reward_seconds"}


def config_for(loss_type, scale_rewards, **overrides):
    values = dict(
        group_size=4,
        prompts_per_step=2,
        max_steps=3,
        max_new_tokens=8,
        checkpoint_every=0,
        beta=0.04,
        loss_type=loss_type,
        scale_rewards=scale_rewards,
        lora=LoraSettings(r=4, alpha=8),
    )
    return GRPOConfig(**{**values, **overrides})


class MetricsFile(TrainerCallback):
    """Writes each step's metrics to a JSON file (a spawned rank's way to hand them back), and counts the calls."""

    def __init__(self, path):
        self.path, self.steps = path, []

    def on_step(self, step, metrics):
        self.steps.append(metrics)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.steps))


def train(output_dir, config, world=LOCAL, callbacks=()):
    train_rows, _ = arithmetic_task()
    trainer = GRPOTrainer(
        base_model="tiny-random-llama",
        train_rows=train_rows,
        rewards=LENGTH_REWARD,
        config=config,
        output_dir=output_dir,
        callbacks=callbacks,
        options=TrainerOptions(sample_groups_per_step=0),
        world=world,
    )
    return trainer.train(resume=True)


def _train_every_variant(world, device, root):
    """A rank's work: each variant in turn; every rank writes its metrics to a file of its own."""
    for loss_type, scale_rewards in VARIANTS:
        folder = root / loss_type
        config = config_for(loss_type, scale_rewards, processes=world.size)
        train(folder, config, world, [MetricsFile(root / f"{loss_type}-{world.rank}")])


def adapter(result_dir):
    return load_file(result_dir / "adapter_model.safetensors")


def test_prompts_are_dealt_in_contiguous_blocks_that_cover_the_step():
    for prompts in range(1, 9):
        for world_size in range(1, prompts + 1):
            shares = [prompt_share(prompts, world_size, rank) for rank in range(world_size)]
            assert [i for share in shares for i in range(share.start, share.stop)] == list(range(prompts))
            sizes = [share.stop - share.start for share in shares]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_a_world_of_one_needs_no_process_group():
    assert not torch.distributed.is_initialized()
    values = torch.tensor([1.0, 2.0])
    assert LOCAL.sum(values) is values and LOCAL.gather(values) is values
    assert LOCAL.max(3.0) == 3.0 and LOCAL.any(True) and not LOCAL.any(False)
    assert LOCAL.share([1, 2, 3]) == [1, 2, 3] and LOCAL.offset(5) == 0


def test_more_processes_than_prompts_per_step_or_than_the_trainer_has_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"processes \(3\) must not exceed prompts_per_step \(2\)"):
        config_for("grpo", "group", processes=3)
    with pytest.raises(ValueError, match="processes is 2 in the config but this trainer is one of 1 processes"):
        train(tmp_path, config_for("grpo", "group", processes=2))
    with pytest.raises(ValueError, match="processes is 1 in the config but this trainer is one of 2 processes"):
        train(tmp_path, config_for("grpo", "group"), World(size=2, rank=0))


def test_two_ranks_of_one_prompt_train_the_adapter_of_one_rank_with_two(tmp_path):
    run_ranks(_train_every_variant, (tmp_path / "ranks",), 2)
    for loss_type, scale_rewards in VARIANTS:
        single_metrics = MetricsFile(tmp_path / f"single-{loss_type}")
        single = train(
            tmp_path / "single" / loss_type, config_for(loss_type, scale_rewards), callbacks=[single_metrics]
        )
        ranks_dir = tmp_path / "ranks" / loss_type
        # Rank 0 alone saved: one checkpoint folder, the final step's.
        assert [c.step for c in list_checkpoints(ranks_dir / "checkpoints")] == [3]
        expected, got = adapter(single.adapter_dir), adapter(list_checkpoints(ranks_dir / "checkpoints")[-1].path)
        assert expected.keys() == got.keys()
        assert any(value.abs().max() > 0 for name, value in got.items() if "lora_B" in name), "the adapter trained"
        for name in expected:
            assert torch.allclose(got[name], expected[name], atol=1e-5, rtol=0), (loss_type, name)
        # Rank 0 reports the whole step's figures; rank 1 reports nothing.
        assert not (tmp_path / "ranks" / f"{loss_type}-1").exists()
        rank_steps = json.loads((tmp_path / "ranks" / f"{loss_type}-0").read_text())
        assert len(rank_steps) == len(single_metrics.steps) == 3
        for mine, theirs in zip(rank_steps, single_metrics.steps, strict=True):
            assert mine.keys() == theirs.keys()
            for key in mine.keys() - TIMINGS:
                assert math.isclose(mine[key], theirs[key], rel_tol=1e-5, abs_tol=1e-6), (loss_type, key)
        assert any(steps["zero_std_group_fraction"] < 1 for steps in single_metrics.steps), "mixed groups"


def _die_as_rank_one(world, device, root):
    if world.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    train(root, config_for("grpo", "group", processes=2), world)


def test_a_rank_killed_ends_the_run_with_rank_failed_and_no_rank_left_running(tmp_path):
    with pytest.raises(RankFailed, match="rank 1 of 2 failed: process 1 terminated with signal SIGKILL"):
        run_ranks(_die_as_rank_one, (tmp_path,), 2)
    assert multiprocessing.active_children() == []
