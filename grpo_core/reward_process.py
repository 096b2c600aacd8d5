"""Scoring rewards in a child process, under a time limit that holds whatever the reward does.

A reward is code the training process cannot trust to return: an operator's plugin may sleep, wait on a socket,
or spin in C holding the GIL (Python's `re` backtracking does), and a thread in the same process can neither stop
it nor, while the GIL is held, even run. So the trainer scores in a child process: one call per reward function
per batch, the parent waiting in short polls. Past `timeout_seconds` the child is killed (SIGKILL needs no
cooperation) and RewardTimeout names the reward and the limit; the next call starts a new child. A reward that
raises still scores 0 and is counted, as in-process (`grpo_core.rewards.score_batch`).

The child is a fresh interpreter (`python -c`, as multiprocessing's "spawn" starts one, never a fork of a process
with torch threads, and unlike spawn it never re-runs the parent's main script), given the parent's sys.path and
talking over a socket pair with multiprocessing's Connection. It imports no torch and lives across steps, so a
step pays one message per reward function, not a start. It ignores SIGINT and SIGTERM (its parent decides when it
ends) and, on Linux, is killed when the thread that started it ends, so a parent killed with SIGKILL leaves no
reward spinning behind it.

This module imports no torch: the child imports it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from grpo_core.config import RewardSpec

# What the child runs: it needs the parent's sys.path before it can import grpo_core (or the installed rewards).
_BOOTSTRAP = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "connection = Connection(int(sys.argv[1]))\n"
    "sys.path[:] = connection.recv()\n"
    "from grpo_core.reward_process import serve\n"
    "serve(connection, int(sys.argv[2]))\n"
)


class RewardFailure(RuntimeError):
    """A reward could not be scored at all (it hung, or it ended its process): the run cannot go on."""


class RewardTimeout(RewardFailure):
    """A reward did not return within the time limit; its process was killed."""


class RewardProcessDied(RewardFailure):
    """The process scoring a reward ended while scoring (the reward killed it, or the kernel did)."""


class RewardProcess:
    """Scores batches of completions with `specs`' reward functions in a child process.

    score(index, completions, rows) runs reward function `index` (the order of `specs`) over the batch and returns
    (scores, error count) as `score_batch` does; score_items returns (scores, per-item error or None) as
    `score_items` does. `check_stop`, when given, is called at every poll (every
    `poll_seconds`) while the parent waits; it raises to abandon the call, and the child is then killed (it may be
    the one hanging). Use as a context manager, or call close(), so the child does not outlive its user.
    """

    def __init__(
        self,
        specs: Sequence[RewardSpec],
        *,
        timeout_seconds: float,
        check_stop: Callable[[], None] | None = None,
        poll_seconds: float = 0.1,
        start_timeout_seconds: float = 60.0,
    ):
        self.specs = list(specs)
        self.timeout_seconds = timeout_seconds
        self.check_stop = check_stop
        self.poll_seconds = poll_seconds
        # Starting takes an interpreter, imports and the installed rewards' entry points: slow on a busy machine.
        self.start_timeout_seconds = max(start_timeout_seconds, timeout_seconds)
        self._process: subprocess.Popen | None = None
        self._connection: Any = None

    def __enter__(self) -> RewardProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def score(
        self, index: int, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> tuple[list[float], int]:
        values, errors = self.score_items(index, completions, rows)
        return values, sum(error is not None for error in errors)

    def score_items(
        self, index: int, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> tuple[list[float], list[str | None]]:
        name = self.specs[index].name
        if self._process is not None and self._process.poll() is not None:
            self.close()  # ended between calls (the kernel's OOM killer): start a fresh one
        if self._process is None:
            self._start()
        try:
            # The G completions of a prompt share its row object, so pickle sends each row once.
            self._connection.send((index, list(completions), list(rows)))
        except OSError:
            pass  # the child is gone: _wait reports it
        values, errors = self._wait(
            self.timeout_seconds,
            timed_out=f"reward {name!r} did not return within {self.timeout_seconds:g} s; its process was killed",
            died=f"reward {name!r} ended the process scoring it",
        )
        return values, errors

    def close(self) -> None:
        """Stop the child (killed: it may be hanging in a reward). Idempotent; a later score() starts a new one."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait()
        self._connection.close()
        self._process = self._connection = None

    def _start(self) -> None:
        parent_end, child_end = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(child_end.fileno()), str(os.getpid())],
                pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child_end.close()
        self._connection = Connection(parent_end.detach())
        try:
            self._connection.send(list(sys.path))
            self._connection.send(self.specs)
        except OSError:
            pass  # the child is gone: _wait reports it
        status, detail = self._wait(
            self.start_timeout_seconds,
            timed_out=f"the reward process did not start within {self.start_timeout_seconds:g} s; it was killed",
            died="the reward process ended while starting",
        )
        if status != "ready":
            self.close()
            raise RewardFailure(f"the reward process could not load the rewards: {detail}")

    def _exit_code(self) -> int | None:
        try:
            return self._process.wait(5) if self._process is not None else None
        except subprocess.TimeoutExpired:
            return None

    def _wait(self, limit: float, *, timed_out: str, died: str) -> Any:
        deadline = time.monotonic() + limit
        try:
            while not self._connection.poll(self.poll_seconds):
                if self.check_stop is not None:
                    self.check_stop()
                if time.monotonic() > deadline:
                    raise RewardTimeout(timed_out)
            try:
                return self._connection.recv()
            except (EOFError, OSError):
                raise RewardProcessDied(f"{died} (exit code {self._exit_code()})") from None
        except BaseException:
            # Timed out, stopped, died, or interrupted (KeyboardInterrupt): the child may be mid-call, so it cannot
            # answer the next request in order. Kill it; the next call starts a fresh one.
            self.close()
            raise


# --- the child ------------------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL this process when the thread that started it ends (its parent died)."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def serve(connection: Connection, parent: int) -> None:
    """The child's loop: resolve the rewards once, then answer (index, completions, rows) with (scores, per-item
    errors) until the parent closes its end."""
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and `grpo serve`'s SIGTERM are for the parent
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from grpo_core.rewards import resolve_rewards, score_items

    specs = connection.recv()
    try:
        rewards = resolve_rewards(specs)
    except Exception as error:  # an entry point that fails to import, a spec the parent checked differently
        connection.send(("error", f"{type(error).__name__}: {error}"))
        return
    connection.send(("ready", None))
    while True:
        try:
            index, completions, rows = connection.recv()
        except (EOFError, OSError):
            return
        fn, params, _weight = rewards[index]
        connection.send(score_items(fn, params, completions, rows))
