"""The prompt schedule (grpo_core.schedule): hand-checked draws, as the trainer, dynamic sampling and the pre-flight
use them."""

import pytest

from grpo_core.config import GRPOConfig
from grpo_core.distributed import World
from grpo_core.sampling import prompt_seed
from grpo_core.schedule import PromptDraw, drawn_indices, epoch_order, prompt_draw, round_rows

pytestmark = pytest.mark.unit


def config(**overrides):
    return GRPOConfig(**{"prompts_per_step": 4, "seed": 7, **overrides})


def test_a_draw_is_a_pure_function_of_its_arguments():
    assert prompt_draw(config(), 10, 3) == prompt_draw(config(), 10, 3)
    assert prompt_draw(config(), 10, 3, 2) == prompt_draw(config(), 10, 3, 2)
    assert prompt_draw(config(), 10, 3) != prompt_draw(config(seed=8), 10, 3)


def test_steps_walk_the_epoch_shuffles_in_order_and_cover_the_dataset():
    # 10 rows, 4 per step: steps 0-1 and half of step 2 are epoch 0's order, then epoch 1's begins.
    order0, order1 = epoch_order(10, 7, 0), epoch_order(10, 7, 1)
    steps = [prompt_draw(config(), 10, step).indices for step in range(3)]
    assert steps == [tuple(order0[0:4]), tuple(order0[4:8]), tuple(order0[8:10] + order1[0:2])]
    assert sorted(steps[0] + steps[1] + steps[2][:2]) == list(range(10))  # every row once in the first epoch
    # As the trainer drew them before the schedule was its own module (pinned: a resumed run of an older job
    # must see the same rows).
    first_steps = [prompt_draw(config(), 10, step).indices for step in range(6)]
    assert first_steps == [(0, 6, 9, 7), (5, 1, 4, 8), (3, 2, 5, 9), (0, 1, 7, 6), (8, 4, 3, 2), (5, 8, 7, 9)]


def test_round_zero_seeds_count_from_zero_and_later_rounds_after_the_earlier_ones():
    assert prompt_draw(config(), 10, 5).seeds == tuple(prompt_seed(7, 5, i) for i in range(4))
    assert prompt_draw(config(), 10, 5, 2).seeds == tuple(prompt_seed(7, 5, 8 + i) for i in range(4))


def test_later_rounds_differ_from_round_zero_and_each_other_and_leave_the_steps_alone():
    rounds = [prompt_draw(config(), 1000, 2, r) for r in range(3)]
    assert len({r.indices for r in rounds}) == 3 and len({r.seeds for r in rounds}) == 3
    assert rounds[1].indices == (676, 864, 699, 146)  # pinned, as the trainer drew them before
    assert prompt_draw(config(), 1000, 3).indices == (583, 695, 171, 432)
    rows = [{"prompt": str(i)} for i in range(1000)]
    assert round_rows(config(), rows, 2, 1) == ([rows[i] for i in rounds[1].indices], list(rounds[1].seeds))


def test_a_count_takes_the_first_prompts_of_the_stream_with_the_steps_seeds():
    # The pre-flight: the first 6 prompts a run trains on, numbered from step 0's seeds.
    draw = prompt_draw(config(), 10, 0, prompts=6)
    assert draw.indices == tuple(epoch_order(10, 7, 0)[:6])
    assert draw.seeds == tuple(prompt_seed(7, 0, i) for i in range(6))
    assert draw.indices[:4] == prompt_draw(config(), 10, 0).indices


def test_ranks_take_contiguous_blocks_that_make_up_the_step():
    draw = PromptDraw((5, 6, 7, 8, 9), (50, 60, 70, 80, 90))
    shares = [draw.share(World(size=2, rank=rank)) for rank in range(2)]
    assert shares == [PromptDraw((5, 6, 7), (50, 60, 70)), PromptDraw((8, 9), (80, 90))]
    assert draw.rows("abcdefghij") == ["f", "g", "h", "i", "j"]


def test_drawn_indices_are_this_ranks_round_zero_then_every_later_round():
    full = prompt_draw(config(), 10, 1)
    assert drawn_indices(config(), 10, 1, 1, World(size=2, rank=1)) == [full.indices[2:]]
    assert drawn_indices(config(), 10, 1, 3, World(size=1, rank=0)) == [
        full.indices,
        prompt_draw(config(), 10, 1, 1).indices,
        prompt_draw(config(), 10, 1, 2).indices,
    ]
