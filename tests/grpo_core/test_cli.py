"""`grpo train` as a user runs it: a real subprocess on a tiny config."""

import json
import subprocess
import sys

import torch
import yaml
from peft import PeftModel

from grpo_core.models import load_base_model

CONFIG = {
    "base_model": "tiny-random-llama",
    "dataset": "builtin:arithmetic",
    "eval_dataset": "prompts.jsonl",
    "output_dir": "out",
    "rewards": [{"name": "length_target", "params": {"target": 30}}, {"name": "numeric_answer", "weight": 0.5}],
    "hyperparameters": {
        "group_size": 2,
        "max_steps": 3,
        "max_new_tokens": 6,
        "checkpoint_every": 2,
        "eval_every": 2,
        "lora": {"r": 2},
    },
}


def run_grpo(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "grpo_core.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_train_writes_metrics_and_loadable_checkpoints_and_resumes(tmp_path):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "What is 2 + 2?", "answer": 4}\n')
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(CONFIG))

    done = run_grpo("train", "job.yaml", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3/3" in done.stderr and "reward=" in done.stderr and "kl=" in done.stderr  # the tqdm bar
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 2, 3]
    checkpoints = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert checkpoints == ["step-000002", "step-000003"]

    base, _ = load_base_model("tiny-random-llama")
    model = PeftModel.from_pretrained(base, tmp_path / "out" / "checkpoints" / "step-000003")
    assert any("lora_A" in name for name, _ in model.named_parameters())
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()

    # A longer run resumed from the finished one continues at step 4 and keeps each step once in metrics.jsonl.
    (tmp_path / "job.yaml").write_text(
        yaml.safe_dump({**CONFIG, "hyperparameters": {**CONFIG["hyperparameters"], "max_steps": 4}})
    )
    resumed = run_grpo("train", "job.yaml", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]


def test_bad_config_is_a_clear_error_not_a_traceback(tmp_path):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "What is 2 + 2?", "answer": 4}\n')
    bad = {**CONFIG, "rewards": [{"name": "os:system"}], "hyperparameters": {"group_size": 1}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(bad))
    done = run_grpo("train", "job.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "group_size must be >= 2" in done.stderr and "Traceback" not in done.stderr

    (tmp_path / "job.yaml").write_text(yaml.safe_dump({**CONFIG, "rewards": [{"name": "os:system"}]}))
    done = run_grpo("train", "job.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "unknown reward 'os:system'" in done.stderr

    (tmp_path / "job.yaml").write_text(yaml.safe_dump(CONFIG))
    done = run_grpo("train", "job.yaml", "--device", "gpu", cwd=tmp_path)
    assert done.returncode == 2 and "device must be auto, cpu, cuda or cuda:N, got 'gpu'" in done.stderr
    if not torch.cuda.is_available():
        done = run_grpo("train", "job.yaml", "--device", "cuda", cwd=tmp_path)
        assert done.returncode == 2 and "torch sees no CUDA device" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "out" / "checkpoints").exists()

    (tmp_path / "prompts.jsonl").unlink()
    done = run_grpo("train", "job.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "No such file or directory" in done.stderr and "prompts.jsonl" in done.stderr


def test_a_reward_that_hangs_stops_the_run_with_its_name_and_the_limit(tmp_path):
    import os

    from tests.grpo_core.hostile_rewards import install_hostile_rewards

    plugins = install_hostile_rewards(tmp_path / "plugins")
    hanging = {**CONFIG, "eval_dataset": None, "rewards": [{"name": "spinning"}]}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(hanging))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(plugins), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(
        [sys.executable, "-m", "grpo_core.cli", "train", "job.yaml", "--reward-timeout", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # the reward spins for ever, holding the GIL: only the limit ends this run
    )
    assert done.returncode == 1, done.stderr
    assert "reward 'spinning' did not return within 2 s" in done.stderr and "Traceback" not in done.stderr


def test_train_on_two_processes_writes_one_metrics_file_and_resumes_on_one(tmp_path):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "What is 2 + 2?", "answer": 4}\n')
    hyperparameters = {**CONFIG["hyperparameters"], "processes": 2, "prompts_per_step": 2}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({**CONFIG, "hyperparameters": hyperparameters}))

    done = run_grpo("train", "job.yaml", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    # Rank 0 alone wrote: each step and evaluation once.
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 2, 3]
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    # processes may change on resume: one process goes on from the two-process run's checkpoint.
    hyperparameters = {**hyperparameters, "processes": 1, "max_steps": 4}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({**CONFIG, "hyperparameters": hyperparameters}))
    resumed = run_grpo("train", "job.yaml", "--resume", "--device", "cpu", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
