"""One job on several processes: data-parallel GRPO over torch.distributed.

Every rank holds the same model and adapter (same seed) and trains; the step's P prompts are dealt in contiguous
blocks (`prompt_share`: rank r takes prompts r*P/W .. (r+1)*P/W - 1, the first P mod W ranks one more), so the G
completions of a prompt stay on one rank and rank order is the step's prompt order. Each rank samples, scores and
takes log-probs of its own block; the collectives make the rest what one process with the whole batch computes:

- the loss normaliser is summed over ranks (every registered normaliser adds up over completions: a sequence count
  for grpo, a token count for bnpo and dapo, N x max_new_tokens for dr_grpo), so each rank's loss is its share of
  the step's loss, and the gradients, summed over ranks after the backward, are the one-pass gradient;
- the step's rewards are gathered before the advantages (scale_rewards "batch" divides by the std of all of them;
  group and none give the same numbers either way), and before the reward-failure check, so every rank decides
  alike;
- the loss stats add up (sums) or take the extremes (min, max), and the step's metrics are computed from gathered
  per-completion values, so rank 0 reports what one process would.

A world of one process (`LOCAL`) needs no process group: every collective returns its input.
"""

from __future__ import annotations

import datetime
import functools
import operator
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from grpo_core.algorithms import LossStats

T = TypeVar("T")

# A collective that waits longer than this for another rank fails rather than hangs: a rank that died (or stalled)
# ends its peers' wait with an error. Long enough for one rank's evaluation or checkpoint while the others wait.
DEFAULT_TIMEOUT_SECONDS = 1800.0


def prompt_share(prompts: int, world_size: int, rank: int) -> slice:
    """The prompts of a step that `rank` of `world_size` takes: a contiguous block, sizes differing by at most one,
    the larger blocks first. Every rank gets at least one prompt when prompts >= world_size."""
    base, extra = divmod(prompts, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for MASTER_PORT; the ranks all run on this machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class World:
    """The processes of one job: `size` ranks, this one `rank`. With size 1 every collective is the identity."""

    size: int = 1
    rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes (metrics, events, checkpoints)."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's block of a step's prompts (see prompt_share), with `items` in step order."""
        return list(items[prompt_share(len(items), self.size, self.rank)])

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over ranks of a tensor of the same shape on each (a new tensor)."""
        if self.size == 1:
            return tensor
        total = tensor.detach().clone()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total

    def max(self, value: float) -> float:
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor.item()

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any (a stop request that all ranks must agree on)."""
        return self.max(1.0 if flag else 0.0) > 0.0

    def sum_gradients(self, parameters: Sequence[torch.Tensor]) -> None:
        """Add each parameter's .grad over ranks, in place (one flat buffer, one collective). A parameter without a
        gradient on this rank counts as zeros, so every rank joins with the same buffer size."""
        if self.size == 1 or not parameters:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        offset = 0
        for p in parameters:
            count = p.numel()
            p.grad = flat[offset : offset + count].view_as(p).clone()
            offset += count

    def sum_stats(self, stats: LossStats) -> LossStats:
        """The whole step's loss stats from each rank's: sums added, extremes taken (LossStats.__add__)."""
        if self.size == 1:
            return stats
        return functools.reduce(operator.add, self.gather_objects(stats))

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The ranks' tensors concatenated along dim 0 in rank order (their first dims may differ; the rest must
        match), on this tensor's device. Per-completion values: the step's whole batch, in step order."""
        if self.size == 1:
            return tensor
        pieces: list[torch.Tensor | None] = [None] * self.size
        torch.distributed.all_gather_object(pieces, tensor.detach().cpu())
        return torch.cat([piece for piece in pieces if piece is not None]).to(tensor.device)

    def gather_objects(self, value: T) -> list[T]:
        """Each rank's `value` (picklable), in rank order."""
        if self.size == 1:
            return [value]
        values: list[T | None] = [None] * self.size
        torch.distributed.all_gather_object(values, value)
        return values  # type: ignore[return-value]

    def offset(self, count: int) -> int:
        """Where this rank's `count` rows start in the gathered (rank-ordered) batch."""
        if self.size == 1:
            return 0
        counts = self.gather_objects(count)
        return sum(counts[: self.rank])

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()


LOCAL = World()


def init_world(
    size: int,
    rank: int,
    *,
    port: int,
    device: torch.device | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> World:
    """Join the job's process group (gloo on a CPU, nccl on CUDA) at 127.0.0.1:port and return this rank's World.
    Size 1 starts no group. The collectives that gather Python objects go through the CPU with gloo, so a CUDA run
    also needs gloo: it is opened as the default group's CPU backend ("cpu:gloo,cuda:nccl")."""
    if size == 1:
        return LOCAL
    backend = "cpu:gloo,cuda:nccl" if device is not None and device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(
        backend=backend,
        init_method=f"tcp://127.0.0.1:{port}",
        world_size=size,
        rank=rank,
        timeout=datetime.timedelta(seconds=timeout_seconds),
    )
    return World(size, rank)


def close_world(world: World) -> None:
    if world.size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class RankFailed(RuntimeError):
    """A rank of a job ended with an error or was killed; the other ranks were stopped."""


def is_peer_failure(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another rank went away (its connection closed, or the
    process group's timeout ran out waiting for it), rather than a failure of this rank's own."""
    return isinstance(error, torch.distributed.DistError) or "gloo" in str(error).lower()


def rank_device(device: torch.device, rank: int) -> torch.device:
    """The device rank `rank` computes on: GPU number `rank` for a CUDA run (one GPU per rank), the CPU otherwise."""
    return torch.device("cuda", rank) if device.type == "cuda" else device


def _rank_main(rank: int, target, size: int, port: int, device: torch.device, threads: int, args: tuple) -> None:
    import signal

    # Ctrl-C in a terminal reaches the whole process group: the supervisor decides how the ranks end (it stops them
    # after the step in progress, or kills them), so a rank does not die of it half-way through a collective.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if device.type == "cuda":
        torch.cuda.set_device(rank_device(device, rank))
    else:
        # The ranks share the machine's cores: each taking all of them would only make them wait on each other.
        torch.set_num_threads(threads)
    world = init_world(size, rank, port=port, device=device)
    try:
        target(world, rank_device(device, rank), *args)
    finally:
        close_world(world)


def run_ranks(
    target,
    args: tuple,
    processes: int,
    *,
    device: torch.device | str = "cpu",
    poll=None,
    poll_seconds: float = 1.0,
) -> None:
    """Run target(world, device, *args) in `processes` new processes (spawned: nothing of this process's state is
    inherited, CUDA included), one per rank, joined in one process group on this machine, and wait for them all.

    This process only supervises: poll(), when given, is called every poll_seconds while the ranks run (a worker
    keeps its lease and its cancel flag going in its own threads meanwhile). A rank that raises or dies (killed,
    out of memory) makes the others be terminated at once, and RankFailed is raised naming it: no rank is left
    waiting in a collective. Whatever ends the wait (poll raising too), no rank outlives this call."""
    import os

    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    device = torch.device(device)
    threads = max(1, (os.cpu_count() or 1) // processes)
    context = mp.start_processes(
        _rank_main,
        args=(target, processes, free_port(), device, threads, args),
        nprocs=processes,
        join=False,
        start_method="spawn",
    )
    try:
        while not context.join(timeout=poll_seconds):
            if poll is not None:
                poll()
    except ProcessException as error:
        raise RankFailed(f"rank {error.error_index} of {processes} failed: {_last_line(str(error))}") from None
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text
