"""The prompt schedule: which training rows a step samples, in which sampling round, and from which random streams.

A pure function of (config, dataset size, step, round): no state, so a resumed run, a rank of several, dynamic
sampling's later rounds and the pre-flight all draw exactly what an uninterrupted single-process run draws.

Round 0 of step s takes positions s x prompts_per_step onwards of a stream of per-epoch shuffles of the rows, so
consecutive steps walk the dataset an epoch at a time. Later rounds (dynamic sampling only) draw prompts_per_step
rows at random, with replacement, from a stream of the seed, step and round, so they never move the rows of later
steps. Each prompt samples from a stream of its own, sampling.prompt_seed(seed, step, index), its index counted
across rounds (round r's prompts come after r x prompts_per_step others).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from grpo_core.config import GRPOConfig
from grpo_core.distributed import World, prompt_share
from grpo_core.sampling import prompt_seed

Row = TypeVar("Row")


@dataclass(frozen=True)
class PromptDraw:
    """The prompts of one sampling round of one step."""

    indices: tuple[int, ...]
    """[P] indices into the training rows, in draw order."""
    seeds: tuple[int, ...]
    """[P] the seed of each prompt's sampling stream (sample_groups' seeds)."""

    def share(self, world: World) -> PromptDraw:
        """The contiguous block of these prompts that `world`'s rank samples (distributed.prompt_share)."""
        block = prompt_share(len(self.indices), world.size, world.rank)
        return PromptDraw(self.indices[block], self.seeds[block])

    def rows(self, rows: Sequence[Row]) -> list[Row]:
        """The drawn rows of `rows`."""
        return [rows[i] for i in self.indices]


def epoch_order(num_rows: int, seed: int, epoch: int) -> list[int]:
    """A shuffled order of row indices, a pure function of (seed, epoch) so a resumed run sees the same data."""
    order = list(range(num_rows))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def round_indices(num_rows: int, step: int, round_: int, count: int, seed: int) -> list[int]:
    """Row indices for dynamic sampling's round `round_` (1, 2, ...) of step `step`: `count` rows drawn at random
    (with replacement) from a stream of the seed, the step and the round only, so a resumed run draws the same and
    the rows of later steps do not move."""
    rng = random.Random(f"dynamic-sampling/{seed}/{step}/{round_}")
    return [rng.randrange(num_rows) for _ in range(count)]


def epoch_positions(num_rows: int, start: int, count: int, seed: int) -> list[int]:
    """Row indices at positions start .. start + count - 1 of the stream of per-epoch shuffles (epoch_order)."""
    orders: dict[int, list[int]] = {}  # a step spans at most a few epochs: shuffle each once, not once per prompt
    indices = []
    for position in range(start, start + count):
        epoch, offset = divmod(position, num_rows)
        if epoch not in orders:
            orders[epoch] = epoch_order(num_rows, seed, epoch)
        indices.append(orders[epoch][offset])
    return indices


def prompt_draw(
    config: GRPOConfig, num_rows: int, step: int, round_: int = 0, *, prompts: int | None = None
) -> PromptDraw:
    """The prompts of sampling round `round_` of 0-based step `step` over a dataset of num_rows rows.

    prompts: round 0's count, config.prompts_per_step unless given (the pre-flight samples the first `prompts` of
    the run's stream with step `step`'s seeds; later rounds always draw prompts_per_step)."""
    per_step = config.prompts_per_step
    if round_ == 0:
        count = per_step if prompts is None else prompts
        indices = epoch_positions(num_rows, step * per_step, count, config.seed)
    else:
        indices = round_indices(num_rows, step, round_, per_step, config.seed)
    first = round_ * per_step
    seeds = [prompt_seed(config.seed, step, first + i) for i in range(len(indices))]
    return PromptDraw(tuple(indices), tuple(seeds))


def round_rows(
    config: GRPOConfig, rows: Sequence[Mapping[str, Any]], step: int, round_: int
) -> tuple[list[Mapping[str, Any]], list[int]]:
    """The rows and seeds of sampling round `round_` of step `step`: what dynamic sampling's draw_more gives."""
    draw = prompt_draw(config, len(rows), step, round_)
    return draw.rows(rows), list(draw.seeds)


def drawn_indices(config: GRPOConfig, num_rows: int, step: int, rounds: int, world: World) -> list[tuple[int, ...]]:
    """The row indices this rank sampled in each of the first `rounds` rounds of step `step`: round 0's share of
    the step's prompts, then each later round's (dynamic sampling runs on one process)."""
    first = prompt_draw(config, num_rows, step).share(world).indices
    return [first, *(prompt_draw(config, num_rows, step, r).indices for r in range(1, rounds))]
