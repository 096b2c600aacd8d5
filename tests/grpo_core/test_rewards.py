import subprocess
import sys
import textwrap

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

pytestmark = pytest.mark.unit


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
    assert scores.errors == 1 and scores.function_errors == [1]
    assert scores.error_messages == [[None, "KeyError: 'answer'"]]


def test_tenant_rewards_resolve_only_when_given_and_never_score_in_process():
    name = "rwd_" + "0" * 32
    with pytest.raises(RewardSpecError, match=f"unknown reward '{name}'"):
        resolve_rewards([RewardSpec(name)])
    [(fn, params, weight)] = resolve_rewards([RewardSpec(name, 2.0, {"scale": 3, "tag": "x"})], tenant_rewards={name})
    assert fn.name == name and weight == 2.0 and params.model_dump() == {"scale": 3, "tag": "x"}
    with pytest.raises(ValueError, match="scores only with a RewardScorer"):
        score_completions(["a"], [{}], [(fn, params, weight)])


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


@pytest.mark.slow
def test_regex_match_runs_in_linear_time_on_patterns_that_backtrack_for_ever_in_python_re():
    # The patterns. Python's re takes exponential time on them (for ever, holding the GIL); RE2 does not.
    # Scored in a child process with a timeout, so this test fails instead of hanging where the engine backtracks.
    code = textwrap.dedent(
        """
        import time
        from grpo_core.config import RewardSpec
        from grpo_core.rewards import resolve_rewards
        from grpo_core.rollout import score_completions

        long_answer = "word " * 20000 + "!"
        cases = [("(.+)+\\x00", long_answer, 0.0), ("(.+)+\\x00", long_answer + "\\x00", 1.0),
                 ("^(\\\\w+\\\\s?)+$", long_answer, 0.0), ("^(\\\\w+\\\\s?)+$", "word " * 20000, 1.0)]
        for pattern, answer, expected in cases:
            started = time.perf_counter()
            rewards = resolve_rewards([RewardSpec("regex_match", params={"pattern": pattern})])
            assert score_completions([answer], [{}], rewards).rewards.item() == expected, pattern
            print(f"{pattern!r}: {time.perf_counter() - started:.4f} s")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    print(done.stdout)


@pytest.mark.parametrize(
    "pattern",
    [r"(a)\1", r"(?P<x>a)(?P=x)", r"foo(?=bar)", r"(?<!x)y", r"\u0041"],
)
def test_regex_match_refuses_patterns_re2_cannot_run_and_says_why(pattern):
    with pytest.raises(RewardSpecError) as caught:
        resolve_rewards([RewardSpec("regex_match", params={"pattern": pattern})])
    (problem,) = caught.value.problems
    assert problem.startswith("reward 'regex_match': param pattern:")
    assert "RE2" in problem and "backreferences or lookaround" in problem


def test_regex_match_dot_matches_a_newline_and_full_match_anchors():
    assert score_one("regex_match", "Answer:\n42", pattern=r"Answer:.42") == 1.0
    assert score_one("regex_match", "x 42 y", pattern=r"\d+", full_match=True) == 0.0
    assert score_one("regex_match", "42", pattern=r"\d+", full_match=True) == 1.0


@pytest.mark.parametrize(
    ("weight", "problem"),
    [
        (1e300, "weight must be in [-1000, 1000], got 1e+300"),
        (-1001, "weight must be in [-1000, 1000], got -1001"),
        (float("nan"), "weight must be a finite number, got nan"),
        (True, "weight must be a finite number, got True"),
    ],
)
def test_a_weight_out_of_its_range_is_refused_without_the_api(weight, problem):
    # The command line builds RewardSpecs from YAML: the bound on RewardSpec.weight holds there as over REST, so a
    # weighted reward never overflows float32 into NaN.
    with pytest.raises(RewardSpecError) as caught:
        resolve_rewards([RewardSpec("numeric_answer", weight)])
    assert caught.value.problems == [f"reward 'numeric_answer': {problem}"]
