"""What the trainer tests share (tests/grpo_core/test_trainer.py, test_forks.py, test_device.py): a tiny config, a
trainer on tiny-random-llama with a length reward, and a callback that records what the run reports."""

from grpo_core import GRPOConfig, GRPOTrainer, LoraSettings, RewardSpec, TrainerCallback, arithmetic_task

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
