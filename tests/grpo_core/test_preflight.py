import pytest

from grpo_core.preflight import evaluations_in_job, judge, report, sample_figures

pytestmark = pytest.mark.unit


def figures(rewards, group_size=4, errors=(0,), truncated=None, lengths=None):
    count = len(rewards)
    return sample_figures(
        rewards,
        [[r] for r in rewards],
        list(errors),
        ["numeric_answer"],
        lengths or [10.0] * count,
        truncated or [False] * count,
        group_size,
    )


def test_figures_from_hand_numbers():
    # Groups: [1,0,0,1] (signal), [0,0,0,0] (flat, low), [1,1,1,1] (flat, high), [0,1,0,0] (signal).
    rewards = [1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0]
    result = figures(rewards, lengths=[4.0] * 8 + [8.0] * 8, truncated=[True] * 4 + [False] * 12)
    assert result.prompts == 4 and result.group_size == 4
    assert result.reward_mean == pytest.approx(7 / 16)
    # Bessel's std of seven 1s and nine 0s: sqrt(16 x 7/16 x 9/16 / 15).
    assert result.reward_std == pytest.approx((7 * 9 / 16 / 15) ** 0.5)
    assert (result.flat_groups, result.flat_low_groups, result.flat_high_groups) == (2, 1, 1)
    assert result.flat_fraction == 0.5
    assert (result.at_lowest_fraction, result.at_highest_fraction) == (9 / 16, 7 / 16)
    assert result.completion_length_mean == 6.0
    assert result.truncated_fraction == 0.25
    assert result.rewards[0].mean == pytest.approx(7 / 16) and result.rewards[0].errors == 0


def test_groups_must_be_whole():
    with pytest.raises(ValueError, match="whole groups of 4"):
        figures([0, 1, 0])


def test_all_zero_is_too_hard_with_the_numbers():
    verdict = judge(figures([0.0] * 14 * 4 + [1, 0, 0, 0, 0, 1, 0, 0]), max_new_tokens=32)
    assert verdict.level == "too_hard"
    assert "14 of 16 groups gave every answer the same reward: training would learn from 2 prompts in 16" in (
        verdict.message
    )
    assert "raise G" in verdict.message and verdict.warnings == []


def test_every_sample_equal_and_positive_is_too_easy():
    assert judge(figures([1.0] * 32), max_new_tokens=32).level == "too_easy"
    # Every sample equal at 0: nothing earned any reward.
    assert judge(figures([0.0] * 32), max_new_tokens=32).level == "too_hard"


def test_flat_groups_split_between_ends_give_no_signal():
    # 8 groups, all flat: 4 at 0 and 4 at 1. Neither end holds two thirds of them.
    rewards = [0.0] * 16 + [1.0] * 16
    verdict = judge(figures(rewards), max_new_tokens=32)
    assert verdict.level == "no_signal"
    assert "8 of 8 groups" in verdict.message


def test_mid_level_flat_groups_give_no_signal():
    # Flat groups at 0.5, with the lowest (0) and highest (1) seen only in one mixed group.
    rewards = [0.5] * 12 + [0.0, 1.0, 0.5, 0.5]
    assert judge(figures(rewards), max_new_tokens=32).level == "no_signal"


def test_almost_every_answer_at_one_end_is_too_easy_or_too_hard_with_few_flat_groups():
    # 10 groups all right, 6 with one wrong answer each: 90 of 96 samples at the highest reward, 10 of 16 flat.
    rewards = [1.0] * 60 + [1, 1, 1, 1, 1, 0] * 6
    figures_ = figures(rewards, group_size=6)
    assert figures_.flat_fraction < 0.75 and figures_.at_highest_fraction == pytest.approx(90 / 96)
    verdict = judge(figures_, max_new_tokens=32)
    assert verdict.level == "too_easy" and verdict.message.startswith("94% of the answers got the highest reward")
    assert judge(figures([1.0 - r for r in rewards], group_size=6), max_new_tokens=32).level == "too_hard"


def test_mixed_groups_are_ok():
    rewards = [1, 0, 0, 1] * 3 + [0, 0, 0, 0]
    verdict = judge(figures(rewards), max_new_tokens=32)
    assert verdict.level == "ok"
    assert verdict.message.startswith("3 of 4 groups have answers with different rewards")


def test_many_reward_failures_decide_the_level():
    rewards = [1, 0, 0, 1] * 4
    assert judge(figures(rewards, errors=[5]), max_new_tokens=32).level == "reward_errors"  # 5 of 16 > 25%
    few = judge(figures(rewards, errors=[2]), max_new_tokens=32)
    assert few.level == "ok" and few.warnings == ["reward 'numeric_answer' failed on 2 of 16 samples (scored 0)."]


def test_truncation_warns_without_changing_the_level():
    rewards = [1, 0, 0, 1] * 4
    verdict = judge(figures(rewards, truncated=[True] * 12 + [False] * 4), max_new_tokens=16)
    assert verdict.level == "ok"
    assert verdict.warnings[0].startswith("75% of the completions were cut at max_new_tokens (16 tokens)")


def test_evaluations_and_estimate():
    assert evaluations_in_job(max_steps=10, eval_every=5, has_eval_set=True) == 3  # steps 0, 5 and 10
    assert evaluations_in_job(max_steps=10, eval_every=3, has_eval_set=True) == 5  # 0, 3, 6, 9 and 10
    assert evaluations_in_job(max_steps=10, eval_every=5, has_eval_set=False) == 0
    result = report(
        figures([1, 0, 0, 1] * 4),
        max_new_tokens=16,
        seconds_per_step=2.0,
        load_seconds=3.0,
        seconds_per_evaluation=1.5,
        evaluations=3,
        max_steps=10,
    )
    assert result["estimated_job_seconds"] == 10 * 2.0 + 3 * 1.5 + 3.0
    assert result["verdict"] == "ok" and result["message"].endswith("The job would take about 28 s on this worker.")
