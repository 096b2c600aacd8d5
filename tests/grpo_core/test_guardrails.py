import re

import pytest

from grpo_core.guardrails import GuardrailState, StopWhen, check_eval, check_step

pytestmark = pytest.mark.unit


def steps(stop_when, series, **fixed):
    """Feed check_step one metrics dict per value of `series` (name -> list); the first stop, or None."""
    state = GuardrailState()
    ((name, values),) = series.items()
    for step, value in enumerate(values, start=1):
        reason = check_step(stop_when, state, step, {**fixed, name: value})
        if reason is not None:
            return reason
    return None


def test_kl_above_needs_the_bound_exceeded_on_consecutive_steps():
    stop_when = StopWhen(kl_above=0.1, kl_steps=3)
    assert steps(stop_when, {"kl": [0.2, 0.2, 0.05, 0.2, 0.2]}) is None  # the streak was broken
    reason = steps(stop_when, {"kl": [0.05, 0.2, 0.3, 0.4, 0.5]})
    assert (reason.reason, reason.step, reason.values["kl"], reason.values["steps"]) == ("kl_above", 4, 0.4, 3)
    assert steps(StopWhen(), {"kl": [9.0] * 10}) is None  # off unless set


def test_reward_drop_compares_the_moving_average_with_its_best():
    stop_when = StopWhen(reward_drop=0.25, reward_window=2)
    # averages: 0.5 (best), 0.75 (best), 0.6, 0.45 (0.30 below the best: stop)
    reason = steps(stop_when, {"reward_mean": [0.5, 0.5, 1.0, 0.2, 0.7]})
    assert reason.reason == "reward_drop"
    assert reason.values["best_reward_average"] == pytest.approx(0.75)
    assert reason.values["reward_average"] == pytest.approx(0.45)
    assert reason.step == 5
    assert steps(stop_when, {"reward_mean": [0.5, 0.5, 1.0, 0.5, 0.5]}) is None  # 0.75 -> 0.5: not past 0.25


def test_flat_and_truncated_steps():
    assert steps(StopWhen(flat_steps=2), {"zero_std_group_fraction": [1.0, 0.5, 1.0, 1.0]}).step == 4
    reason = steps(StopWhen(truncated_steps=3), {"truncated_fraction": [1.0, 1.0, 1.0]})
    assert (reason.reason, reason.step) == ("truncated_steps", 3)
    assert steps(StopWhen(truncated_steps=3), {"truncated_fraction": [1.0, 0.99, 1.0, 1.0]}) is None


def test_eval_patience_counts_evaluations_without_improvement_and_remembers_the_best():
    stop_when, state = StopWhen(eval_patience=2, eval_min_delta=0.01), GuardrailState()
    results = [check_eval(stop_when, state, step, {"eval_reward_sampled": value}) for step, value in
               [(0, 0.2), (2, 0.5), (4, 0.505), (6, 0.3)]]  # fmt: skip
    assert [improved for improved, _ in results] == [True, True, False, False]
    assert [reason is None for _, reason in results] == [True, True, True, False]
    reason = results[-1][1]
    assert (reason.reason, reason.step, reason.values["best"], reason.values["best_step"]) == (
        "eval_patience", 6, 0.5, 2.0,
    )  # fmt: skip
    assert (state.best_eval, state.best_eval_step) == (0.5, 2)


def test_the_state_survives_a_round_trip_through_a_checkpoint():
    stop_when, state = StopWhen(kl_above=0.1, reward_drop=1.0), GuardrailState()
    for step in range(1, 4):
        check_step(stop_when, state, step, {"kl": 0.5, "reward_mean": step})
    assert GuardrailState.from_dict(state.to_dict()) == state


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kl_above": -1}, "stop_when.kl_above must be in (0, 1000000.0], got -1"),
        ({"kl_steps": 2.5}, "stop_when.kl_steps must be an integer, got 2.5"),
        ({"eval_patience": "3"}, 'stop_when.eval_patience must be an integer or null, got "3"'),
        ({"adapter": "first"}, "stop_when.adapter must be one of ['best', 'last'], got 'first'"),
        ({"reward_drop": float("nan")}, "stop_when.reward_drop must be a finite number or null, got NaN"),
        ({"kl_treshold": 1}, "unknown stop_when settings: kl_treshold"),
    ],
)
def test_bad_settings_are_refused_naming_them(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        StopWhen.from_dict(settings)
