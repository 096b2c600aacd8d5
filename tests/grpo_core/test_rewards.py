import pytest

from grpo_core.config import RewardSpec
from grpo_core.rewards import (
    RewardFunction,
    RewardParams,
    RewardSpecError,
    last_number,
    resolve_rewards,
)
from grpo_core.rollout import score_completions


def score_one(name, completion, row=None, **params):
    rewards = resolve_rewards([RewardSpec(name, params=params)])
    return score_completions([completion], [row or {}], rewards).rewards.item()


def test_last_number_reads_the_final_number():
    assert last_number("6 + 8 = 14.") == 14
    assert last_number("it is -3.5, not 2") == 2
    assert last_number("total: 1,234") == 1234
    assert last_number("no digits") is None


@pytest.mark.parametrize(
    "completion,expected",
    [("6 + 8 = 14.", 1.0), ("The answer is 14", 1.0), ("14, no wait, 15", 0.0), ("fourteen", 0.0)],
)
def test_numeric_answer(completion, expected):
    assert score_one("numeric_answer", completion, {"answer": 14}) == expected


def test_numeric_answer_tolerance():
    assert score_one("numeric_answer", "about 3.14", {"answer": "3.14159"}, tolerance=0.01) == 1.0
    assert score_one("numeric_answer", "about 3.14", {"answer": "3.14159"}) == 0.0


def test_exact_match_strips_and_optionally_folds_case():
    assert score_one("exact_match", "  Paris\n", {"answer": "Paris"}) == 1.0
    assert score_one("exact_match", "paris", {"answer": "Paris"}) == 0.0
    assert score_one("exact_match", "paris", {"answer": "Paris"}, case_sensitive=False) == 1.0


def test_regex_match_and_format_tags():
    assert score_one("regex_match", "Answer: 42", pattern=r"Answer: \d+") == 1.0
    assert score_one("regex_match", "Answer: 42", pattern=r"\d+", full_match=True) == 0.0
    assert score_one("format_tags", "think... <answer>42</answer>") == 1.0
    assert score_one("format_tags", "<answer>1</answer><answer>2</answer>") == 0.0
    assert score_one("format_tags", "<answer> </answer>") == 0.0


def test_length_target_falls_off_linearly():
    assert score_one("length_target", "x" * 10, target=10) == 1.0
    assert score_one("length_target", "x" * 15, target=10) == pytest.approx(0.5)
    assert score_one("length_target", "x" * 40, target=10) == 0.0
    assert score_one("length_target", "one two three", target=3, unit="words") == 1.0


def test_weighted_sum_and_per_function_scores():
    rewards = resolve_rewards([RewardSpec("numeric_answer", weight=2.0), RewardSpec("format_tags", weight=0.5)])
    scores = score_completions(["<answer>14</answer>", "13"], [{"answer": 14}] * 2, rewards)
    assert scores.rewards.tolist() == [2.5, 0.0]
    assert scores.per_function.tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_a_reward_that_raises_scores_zero_and_is_counted():
    # The row lacks "answer" for the second completion, so the reward raises KeyError there.
    rewards = resolve_rewards([RewardSpec("numeric_answer")])
    scores = score_completions(["14", "14"], [{"answer": 14}, {}], rewards)
    assert scores.rewards.tolist() == [1.0, 0.0]
    assert scores.errors == 1


def test_bad_specs_are_refused_with_every_problem_named():
    with pytest.raises(RewardSpecError) as caught:
        resolve_rewards(
            [
                RewardSpec("os:system"),
                RewardSpec("regex_match", params={"pattern": "(unclosed"}),
                RewardSpec("length_target", params={"target": 5, "colour": "red"}),
                RewardSpec("numeric_answer"),
            ],
            dataset_fields={"prompt"},
        )
    problems = caught.value.problems
    assert "unknown reward 'os:system'" in problems[0] and "numeric_answer" in problems[0]
    assert "not a valid regular expression" in problems[1]
    assert "colour" in problems[2]
    assert "needs dataset field(s) answer" in problems[3]


def test_operator_rewards_come_from_entry_points(monkeypatch):
    class Params(RewardParams):
        pass

    shout = RewardFunction("shout", "1 for all capitals", Params, lambda text, row, params: float(text.isupper()))

    class FakeEntryPoint:  # stands in for an installed distribution's entry point metadata
        name = "shout"

        def load(self):
            return shout

    import grpo_core.rewards as rewards_module

    monkeypatch.setattr(rewards_module, "entry_points", lambda group: [FakeEntryPoint()])
    assert score_completions(["HI", "hi"], [{}, {}], resolve_rewards([RewardSpec("shout")])).rewards.tolist() == [
        1.0,
        0.0,
    ]
