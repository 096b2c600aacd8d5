"""Case 6: a process killed while it writes checkpoints never leaves a half-written one listed or loaded."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from grpo_core.checkpoint import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.chaos

WRITER = """
import sys, torch
from grpo_core.checkpoint import save_checkpoint
from grpo_core.models import load_base_model
from grpo_core.policy import add_lora
from grpo_core.config import LoraSettings
model, _ = load_base_model("tiny-random-llama")
model = add_lora(model, LoraSettings(r=64), seed=0)
print("ready", flush=True)
step = 0
while True:
    step += 1
    save_checkpoint(sys.argv[1], step, model, {"step": step, "padding": torch.zeros(2_000_000)})
"""


def test_kill_during_checkpoint_writes(tmp_path):
    from peft import PeftModel

    from grpo_core.models import load_base_model

    root = tmp_path / "checkpoints"
    rng = random.Random(6)
    kills, listed_bad, leftovers = 20, 0, 0
    for _ in range(kills):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))  # lands anywhere in a write: adapter, state, manifest, rename
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        for checkpoint in list_checkpoints(root):
            if read_checkpoint(checkpoint.path, verify=True) is None:
                listed_bad += 1
        leftovers = sum(1 for p in root.iterdir() if p.name.startswith(".tmp-"))
    latest = list_checkpoints(root)[-1]
    base, _ = load_base_model("tiny-random-llama")
    PeftModel.from_pretrained(base, latest.path)  # the latest listed one loads
    steps = [c.step for c in list_checkpoints(root)]
    print(
        f"\nCHAOS 6 crash mid-checkpoint: kills={kills}, complete_checkpoints={len(steps)}, "
        f"half_written_left_on_disk={leftovers}, half_written_listed={listed_bad}, latest_loads=True"
    )
    assert listed_bad == 0
