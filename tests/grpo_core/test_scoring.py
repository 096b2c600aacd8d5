"""The parts of reward scoring that run in this process, with hand numbers: RewardResults (grpo_core/reward_process.py),
and the rollout's combination of several reward functions into one reward per completion, with its per-function and
error counts (grpo_core/rollout.py). Scoring in a child process or a sandbox is tested in test_reward_process.py and
test_sandbox*.py."""

import dataclasses
import math

import pytest
import torch

from grpo_core.config import GRPOConfig, RewardSpec
from grpo_core.distributed import LOCAL, World
from grpo_core.reward_process import RewardResults
from grpo_core.rewards import RewardFunction, RewardParams, resolve_rewards, score_items
from grpo_core.rollout import (
    ScoredSamples,
    Scores,
    concat_samples,
    gather_scores,
    rollout_from_samples,
    score_completions,
    select_groups,
)
from grpo_core.sampling import SampleBatch

pytestmark = pytest.mark.unit


def constant_reward(name: str, value) -> RewardFunction:
    """A reward function that gives every completion `value` (what it returns, unchecked: NaN, a string, ...)."""
    return RewardFunction(name, f"always {value!r}", RewardParams, lambda completion, row, params: value)


def resolved(*functions_and_weights) -> list[tuple[RewardFunction, RewardParams, float]]:
    return [(fn, RewardParams(), weight) for fn, weight in functions_and_weights]


# --- RewardResults -----------------------------------------------------------------------------------------------


def test_results_give_failed_items_zero_and_keep_why():
    results = RewardResults([(1.0, None), (None, "ValueError: boom"), (-0.5, None), (None, "timed out")])
    assert results.values == [1.0, 0.0, -0.5, 0.0]
    assert results.errors == [None, "ValueError: boom", None, "timed out"]
    assert results.failures == 2
    assert (results.output, results.restarted) == ("", False)


def test_results_of_a_batch_with_no_failure():
    results = RewardResults([(0.25, None), (0.0, None)])
    assert results.values == [0.25, 0.0] and results.errors == [None, None] and results.failures == 0
    assert RewardResults([]).values == [] and RewardResults([]).failures == 0


def test_results_from_items_drop_a_failed_items_placeholder_value():
    results = RewardResults.from_items([0.7, 5.0, 0.0], [None, "KeyError: 'answer'", None])
    assert results.results == [(0.7, None), (None, "KeyError: 'answer'"), (0.0, None)]
    assert results.values == [0.7, 0.0, 0.0]  # the failed item's 5.0 is not its score
    assert results.failures == 1


def test_results_from_items_need_one_error_slot_per_value():
    with pytest.raises(ValueError):
        RewardResults.from_items([1.0, 0.0], [None])


def test_results_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RewardResults([]).output = "x"  # type: ignore[misc]


def test_score_items_results_read_the_same_through_reward_results():
    # The reward process sends score_items' pair; the parent reads it as RewardResults.
    [(fn, params, _weight)] = resolve_rewards([RewardSpec("numeric_answer")])
    results = RewardResults.from_items(
        *score_items(fn, params, ["14", "13", "14"], [{"answer": 14}, {"answer": 14}, {}])
    )
    assert results.values == [1.0, 0.0, 0.0]
    assert results.errors == [None, None, "KeyError: 'answer'"]
    assert results.failures == 1


# --- weighting several rewards into one ---------------------------------------------------------------------------


def test_two_rewards_weighted_half_and_two():
    # numeric_answer x 0.5 + format_tags x 2.0, over the four ways the two can score:
    rewards = resolve_rewards([RewardSpec("numeric_answer", weight=0.5), RewardSpec("format_tags", weight=2.0)])
    completions = ["14", "<answer>13</answer>", "<answer>14</answer>", "13"]
    scores = score_completions(completions, [{"answer": 14}] * 4, rewards)
    assert scores.per_function.tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    assert scores.rewards.tolist() == [0.5, 2.0, 2.5, 0.0]  # 1*0.5 + 0*2.0, 0*0.5 + 1*2.0, ...
    assert scores.errors == 0 and scores.function_errors == [0, 0]
    assert scores.error_messages == [[None] * 4, [None] * 4]
    assert scores.outputs == ["", ""]  # only tenant code's output is kept
    assert scores.rewards.shape == (4,) and scores.per_function.shape == (4, 2)
    assert scores.rewards.dtype == torch.float32


def test_negative_and_zero_weights():
    rewards = resolved((constant_reward("one", 1.0), -1.5), (constant_reward("three", 3.0), 0.0))
    scores = score_completions(["a", "b"], [{}, {}], rewards)
    assert scores.rewards.tolist() == [-1.5, -1.5]
    # A weight of 0 does not train, but its scores are still reported.
    assert scores.per_function.tolist() == [[1.0, 3.0], [1.0, 3.0]]


def test_a_failed_item_scores_zero_for_that_function_only_and_is_counted():
    rewards = resolve_rewards([RewardSpec("numeric_answer", weight=0.5), RewardSpec("format_tags", weight=2.0)])
    # The second row lacks "answer": numeric_answer raises there; format_tags still scores it.
    scores = score_completions(["<answer>14</answer>", "<answer>14</answer>"], [{"answer": 14}, {}], rewards)
    assert scores.per_function.tolist() == [[1.0, 1.0], [0.0, 1.0]]
    assert scores.rewards.tolist() == [2.5, 2.0]
    assert scores.errors == 1 and scores.function_errors == [1, 0]
    assert scores.error_messages == [[None, "KeyError: 'answer'"], [None, None]]


@pytest.mark.parametrize("value,written", [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")])
def test_a_non_finite_reward_is_a_failed_item_that_scores_zero(value, written):
    rewards = resolved((constant_reward("broken", value), 2.0), (constant_reward("one", 1.0), 1.0))
    scores = score_completions(["a", "b"], [{}, {}], rewards)
    assert scores.per_function.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    assert scores.rewards.tolist() == [1.0, 1.0]  # never NaN: the bad score is 0, not NaN x 2.0
    assert scores.errors == 2 and scores.function_errors == [2, 0]
    assert scores.error_messages[0] == [f"ValueError: reward returned {written}, not a finite number"] * 2


def test_a_reward_that_returns_no_number_is_a_failed_item():
    rewards = resolved((constant_reward("words", "high"), 1.0), (constant_reward("none", None), 1.0))
    scores = score_completions(["a"], [{}], rewards)
    assert scores.rewards.tolist() == [0.0]
    assert scores.function_errors == [1, 1] and scores.errors == 2
    assert scores.error_messages[0][0] == "ValueError: could not convert string to float: 'high'"
    assert scores.error_messages[1][0].startswith("TypeError: float() argument must be")


def test_numbers_of_any_kind_are_read_as_floats():
    rewards = resolved((constant_reward("int", 2), 1.0), (constant_reward("bool", True), 1.0))
    scores = score_completions(["a"], [{}], rewards)
    assert scores.per_function.tolist() == [[2.0, 1.0]] and scores.errors == 0


def test_failures_are_counted_per_function_across_completions():
    def fails_on_odd(completion, row, params):
        if int(completion) % 2:
            raise RuntimeError(f"odd {completion}")
        return 1.0

    odd = RewardFunction("even", "1 for an even number", RewardParams, fails_on_odd)
    rewards = resolved((odd, 1.0), (constant_reward("nan", math.nan), 1.0), (constant_reward("half", 0.5), 4.0))
    scores = score_completions(["0", "1", "2", "3", "5"], [{}] * 5, rewards)
    assert scores.function_errors == [3, 5, 0]
    assert scores.errors == 8
    assert scores.error_messages[0] == [None, "RuntimeError: odd 1", None, "RuntimeError: odd 3", "RuntimeError: odd 5"]
    assert scores.rewards.tolist() == [3.0, 2.0, 3.0, 2.0, 2.0]  # 1 (even) + 0 (NaN) + 0.5 x 4


# --- gathering, selecting and joining Scores -----------------------------------------------------------------------


def hand_scores() -> Scores:
    """Two prompts x G = 2 completions, F = 2 functions weighted 1 and 1; completion 3 failed function 0."""
    per_function = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    return Scores(
        rewards=per_function.sum(dim=1),
        per_function=per_function,
        errors=1,
        function_errors=[1, 0],
        error_messages=[[None, None, None, "KeyError: 'answer'"], [None] * 4],
        outputs=["out0", "out1"],
    )


def hand_samples(scores: Scores, group_size: int = 2) -> ScoredSamples:
    count = scores.rewards.shape[0]
    batch = SampleBatch(
        prompt_ids=torch.arange(count).repeat_interleave(3).view(count, 3) // group_size,
        prompt_mask=torch.ones(count, 3, dtype=torch.long),
        completion_ids=torch.arange(count * 2).view(count, 2),
        completion_mask=torch.ones(count, 2, dtype=torch.long),
        truncated=torch.zeros(count, dtype=torch.bool),
        group_size=group_size,
    )
    return ScoredSamples(batch, [f"completion {i}" for i in range(count)], scores)


def test_gather_scores_in_one_process_is_the_scores_themselves():
    scores = hand_scores()
    assert gather_scores(LOCAL, scores) is scores
    assert gather_scores(World(size=1, rank=0), scores) is scores


def test_selected_groups_carry_their_own_counts():
    samples = hand_samples(hand_scores())
    first = select_groups(samples, [0])
    assert first.scores.rewards.tolist() == [1.0, 0.0]
    assert first.scores.errors == 0 and first.scores.function_errors == [0, 0]
    assert first.scores.error_messages == [[None, None], [None, None]]
    assert first.completions == ["completion 0", "completion 1"]
    swapped = select_groups(samples, [1, 0])
    assert swapped.scores.rewards.tolist() == [2.0, 1.0, 1.0, 0.0]
    assert swapped.scores.per_function.tolist() == [[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    assert swapped.scores.errors == 1 and swapped.scores.function_errors == [1, 0]
    assert swapped.scores.error_messages[0] == [None, "KeyError: 'answer'", None, None]
    assert swapped.batch.completion_ids.tolist() == [[4, 5], [6, 7], [0, 1], [2, 3]]


def test_joined_samples_add_their_counts_and_their_outputs():
    samples = hand_samples(hand_scores())
    joined = concat_samples([select_groups(samples, [1]), select_groups(samples, [0]), select_groups(samples, [1])])
    assert joined.scores.rewards.tolist() == [2.0, 1.0, 1.0, 0.0, 2.0, 1.0]
    assert joined.scores.errors == 2 and joined.scores.function_errors == [2, 0]
    assert joined.scores.error_messages[0] == [None, "KeyError: 'answer'", None, None, None, "KeyError: 'answer'"]
    assert joined.scores.outputs == ["out0out0out0", "out1out1out1"]
    assert len(joined.completions) == 6 and joined.batch.completion_ids.shape == (6, 2)
    assert concat_samples([samples]) is samples


# --- from weighted rewards to advantages ---------------------------------------------------------------------------


def test_the_weighted_rewards_are_what_the_advantages_are_computed_from():
    # numeric_answer x 0.5 + format_tags x 0.5; the third row lacks "answer", so numeric_answer fails there and
    # scores 0: it counts as a 0 in its group, not as a NaN that would spread through the group's mean and std.
    rewards = resolve_rewards([RewardSpec("numeric_answer", weight=0.5), RewardSpec("format_tags", weight=0.5)])
    completions = ["<answer>14</answer>", "13", "<answer>14</answer>", "<answer>14</answer>"]
    rows = [{"answer": 14}, {"answer": 14}, {}, {"answer": 14}]
    scores = score_completions(completions, rows, rewards)
    assert scores.rewards.tolist() == [1.0, 0.0, 0.5, 1.0]
    assert scores.function_errors == [1, 0]
    config = GRPOConfig(group_size=4)  # num_iterations 1, beta 0: no log-prob pass, so no model is needed
    rollout = rollout_from_samples(None, hand_samples(scores, group_size=4), [{}], config, 0.0)
    # Group of 4: mean 2.5 / 4 = 0.625, deviations [0.375, -0.625, -0.125, 0.375], squares summing to 0.6875,
    # Bessel std sqrt(0.6875 / 3) = 0.478714; advantages = deviation / (std + 1e-4), 1e-4 being ADVANTAGE_EPS.
    assert rollout.advantages.tolist() == pytest.approx([0.78318, -1.30531, -0.26106, 0.78318], abs=1e-4)
    assert rollout.old_logprobs is None and rollout.ref_logprobs is None
    assert [r.tolist() for r in rollout.drawn_rewards] == [[1.0, 0.0, 0.5, 1.0]]


def test_one_correct_and_one_wrong_pair_in_a_group_of_four():
    # STYLE.md's hand numbers: rewards [1, 0, 0, 1] with G = 4 give about +-0.866 with Bessel's std.
    rewards = resolve_rewards([RewardSpec("numeric_answer")])
    scores = score_completions(["14", "13", "13", "14"], [{"answer": 14}] * 4, rewards)
    assert scores.rewards.tolist() == [1.0, 0.0, 0.0, 1.0]
    rollout = rollout_from_samples(None, hand_samples(scores, group_size=4), [{}], GRPOConfig(group_size=4), 0.0)
    assert rollout.advantages.tolist() == pytest.approx([0.866, -0.866, -0.866, 0.866], abs=1e-3)


def test_a_group_that_all_failed_has_zero_advantages_never_nan():
    rewards = resolved((constant_reward("nan", math.nan), 1.0))
    scores = score_completions(["a", "b", "c", "d"], [{}] * 4, rewards)
    assert scores.rewards.tolist() == [0.0] * 4 and scores.errors == 4
    rollout = rollout_from_samples(None, hand_samples(scores, group_size=2), [{}, {}], GRPOConfig(group_size=2), 0.0)
    assert rollout.advantages.tolist() == [0.0] * 4
