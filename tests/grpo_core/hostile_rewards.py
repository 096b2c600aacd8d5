"""Operator rewards that misbehave, installed as operators install rewards: a module and a dist-info folder whose
entry points (group grpo_service.rewards) name them. Put the folder on sys.path (or PYTHONPATH for a service)."""

from __future__ import annotations

import textwrap
from pathlib import Path

MODULE = """
import os, re, signal, time

from grpo_core.rewards import RewardFunction, RewardParams


class HangParams(RewardParams):
    seconds: float = 1e6  # how long `sleepy` sleeps
    marker: str | None = None  # a file created when the reward is first called: the test knows it hangs now


def _mark(params):
    if params.marker:
        open(params.marker, "a").close()


def _sleep(completion, row, params):
    _mark(params)
    time.sleep(params.seconds)
    return 1.0


def _spin(completion, row, params):
    _mark(params)
    # Python's re backtracks for ever here, in C, holding the GIL the whole time.
    return float(re.fullmatch(r"(a+)+b", "a" * 64) is not None)


def _die(completion, row, params):
    os.kill(os.getpid(), signal.SIGKILL)


def _huge(completion, row, params):
    return 1e300  # finite in Python, infinite as the float32 the trainer scores in


def _raise(completion, row, params):
    raise RuntimeError("this reward always raises")


sleepy = RewardFunction("sleepy", "sleeps", HangParams, _sleep)
spinning = RewardFunction("spinning", "spins in C holding the GIL", HangParams, _spin)
suicidal = RewardFunction("suicidal", "kills its own process", HangParams, _die)
raising = RewardFunction("raising", "raises", HangParams, _raise)
huge = RewardFunction("huge", "returns 1e300", HangParams, _huge)
"""


def install_hostile_rewards(folder: Path) -> Path:
    """Write the module and its dist-info under `folder` (created); returns folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hostile_rewards.py").write_text(textwrap.dedent(MODULE))
    dist_info = folder / "hostile_rewards-0.1.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile-rewards\nVersion: 0.1\n")
    names = ("sleepy", "spinning", "suicidal", "raising", "huge")
    (dist_info / "entry_points.txt").write_text(
        "[grpo_service.rewards]\n" + "".join(f"{name} = hostile_rewards:{name}\n" for name in names)
    )
    return folder
