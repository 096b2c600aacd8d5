"""Rewards scored in a child process: the same scores as in-process, the child kept across calls, and a time
limit that holds whatever the reward does (sleep, spin in C holding the GIL, kill its own process)."""

import time

import pytest

from grpo_core.config import RewardSpec
from grpo_core.reward_process import RewardProcess, RewardProcessDied, RewardResults, RewardTimeout
from tests.grpo_core.hostile_rewards import install_hostile_rewards


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """The misbehaving operator rewards, installed on sys.path (a spawned child gets the parent's sys.path)."""
    monkeypatch.syspath_prepend(str(install_hostile_rewards(tmp_path / "plugins")))


def test_scores_match_in_process_and_the_child_is_kept_across_calls():
    specs = [RewardSpec("numeric_answer"), RewardSpec("regex_match", params={"pattern": r"^\d+$"})]
    with RewardProcess(specs, timeout_seconds=30) as process:
        scores = process.score(0, ["14", "13", "x"], [{"answer": 14}, {"answer": 14}, {}])
        assert scores.values == [1.0, 0.0, 0.0] and scores.failures == 1
        assert scores.results[:2] == [(1.0, None), (0.0, None)] and scores.results[2][0] is None
        pid = process.pid
        assert process.score(1, ["14", "1 4"], [{}, {}]) == RewardResults([(1.0, None), (0.0, None)])
        assert process.pid == pid  # one child for the run, not one per call
    assert process.pid is None


@pytest.mark.parametrize("name", ["sleepy", "spinning"])
def test_a_reward_that_never_returns_is_killed_at_the_limit_and_named(hostile, name):
    specs = [RewardSpec(name), RewardSpec("length_target", params={"target": 2})]
    with RewardProcess(specs, timeout_seconds=2) as process:
        process.score(1, ["ab"], [{}])  # started and warm: the limit below times the reward alone
        first_pid = process.pid
        started = time.monotonic()
        with pytest.raises(RewardTimeout, match=f"reward '{name}' did not return within 2 s"):
            process.score(0, ["a completion"], [{}])
        assert time.monotonic() - started < 30  # does not hang (the limit is 2 s)
        assert process.pid is None  # killed
        # The next call starts a fresh child.
        assert process.score(1, ["ab"], [{}]).results == [(1.0, None)]
        assert process.pid not in (None, first_pid)


def test_a_stop_while_a_reward_hangs_kills_it_and_raises_the_stop(hostile):
    class Stop(Exception):
        pass

    stop_at = time.monotonic() + 1.0

    def check_stop():
        if time.monotonic() > stop_at:
            raise Stop

    with RewardProcess([RewardSpec("spinning")], timeout_seconds=600, check_stop=check_stop) as process:
        with pytest.raises(Stop):
            process.score(0, ["x"], [{}])
        assert process.pid is None
    assert time.monotonic() - stop_at < 30


def test_a_reward_that_kills_its_process_is_named_and_a_raising_one_scores_zero(hostile):
    with RewardProcess([RewardSpec("suicidal"), RewardSpec("raising")], timeout_seconds=30) as process:
        with pytest.raises(RewardProcessDied, match="reward 'suicidal' ended the process scoring it"):
            process.score(0, ["x"], [{}])
        scores = process.score(1, ["x", "y"], [{}, {}])
        assert scores.values == [0.0, 0.0] and scores.failures == 2
        assert scores.results == [(None, "RuntimeError: this reward always raises")] * 2
