"""Scoring rewards in a child process, under a time limit that holds whatever the reward does.

A reward is code the training process cannot trust to return: an operator's plugin may sleep, wait on a socket,
or spin in C holding the GIL (Python's `re` backtracking does), and a thread in the same process can neither stop
it nor, while the GIL is held, even run. So every reward scores in a child process, one call per reward function
per batch, the parent waiting in short polls. Two kinds share ChildProcess (starting on first use, the
deadline-bounded wait for a reply, killing and reaping, a context manager) and return RewardResults:
- RewardProcess, here: built-ins and operator plugins (trusted). Past `timeout_seconds` the child is killed
  (SIGKILL needs no cooperation) and RewardTimeout names the reward and the limit; a child that dies raises
  RewardProcessDied; the next call starts a new child. A reward that raises still scores 0 and is counted, as
  in-process (`grpo_core.rewards.score_items`).
- RewardSandbox (grpo_core.sandbox): one tenant's reward code, under bubblewrap, seccomp and a cgroup, framed so
  that the parent never unpickles what it sends.

The trusted child is a fresh interpreter (`python -c`, as multiprocessing's "spawn" starts one, never a fork of a
process with torch threads, and unlike spawn it never re-runs the parent's main script), given the parent's
sys.path and talking over a socket pair with multiprocessing's Connection. It imports no torch and lives across
steps, so a step pays one message per reward function, not a start. It ignores SIGINT and SIGTERM (its parent
decides when it ends) and, on Linux, is killed when the thread that started it ends, so a parent killed with
SIGKILL leaves no reward spinning behind it.

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
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Self

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


@dataclass(frozen=True)
class RewardResults:
    """One reward function's results over a batch of N completions, whichever process scored them: the trusted
    RewardProcess or a tenant's RewardSandbox."""

    results: list[tuple[float | None, str | None]]
    """[N] (value, error) per completion, exactly one of them None: the score, or why the item failed (it raised,
    was not a finite number, timed out, or its process died)."""
    output: str = ""
    """What the reward printed while scoring, bounded (tenant code only: the trusted process keeps none)."""
    restarted: bool = False
    """The process was killed or died during the call and a fresh one took the items left (the sandbox only: a
    trusted reward that hangs or dies raises instead)."""

    @classmethod
    def from_items(cls, values: Sequence[float], errors: Sequence[str | None]) -> RewardResults:
        """From `score_items`' [N] values and [N] errors (a failed item's placeholder value is dropped)."""
        pairs = zip(values, errors, strict=True)
        return cls([(None, error) if error is not None else (value, None) for value, error in pairs])

    @property
    def values(self) -> list[float]:
        """[N] the scores, 0 for a failed item: one bad completion must not stop a run."""
        return [value if value is not None else 0.0 for value, _error in self.results]

    @property
    def errors(self) -> list[str | None]:
        """[N] why each item failed, or None."""
        return [error for _value, error in self.results]

    @property
    def failures(self) -> int:
        return sum(error is not None for _value, error in self.results)


def describe_exit(code: int | None) -> str:
    """How a child ended, from its exit code: Popen's -N or, as a shell (and bubblewrap) report it, 128 + N for a
    signal N; the code itself otherwise."""
    number = -code if code is not None and code < 0 else code - 128 if code is not None and code > 128 else 0
    if number in {member.value for member in signal.Signals}:
        name = signal.Signals(number).name
        return f"killed by {name}" + (": past its CPU-time limit" if name == "SIGXCPU" else "")
    return f"exit code {code}"


class ChildProcess:
    """A child process that scores rewards for the parent that owns it: what the trusted reward process and the
    tenant sandbox share. A subclass says how its child is launched and how messages are framed (_launch,
    _handshake, _release); this class starts the child on first use and again when it ended between calls, waits
    for its replies under a deadline (_wait_until), and kills and reaps it on a timeout, a stop, an interruption or
    close().

    `check_stop`, when given, is called at every poll (every `poll_seconds`) while the parent waits; it raises to
    abandon the call, and the child is then killed (it may be the one hanging). Use as a context manager, or call
    close(), so the child does not outlive its user.
    """

    def __init__(self, *, poll_seconds: float, check_stop: Callable[[], None] | None):
        self.poll_seconds = poll_seconds
        self.check_stop = check_stop
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def close(self) -> None:
        """Kill the child (it may be hanging in a reward), reap it and release what talks to it. Idempotent; the
        next call starts a fresh one."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        self._release()

    def _launch(self) -> subprocess.Popen:
        """Start the child and open the parent's end of its channel."""
        raise NotImplementedError

    def _handshake(self) -> None:
        """Whatever the child needs before its first call, and its answer that it is ready; raises when it is not
        (the child is then killed)."""

    def _release(self) -> None:
        """Close the parent's end of the channel (and whatever else the child held), after the child is reaped."""

    def _running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _ensure_started(self) -> bool:
        """Start the child unless one is running (one that ended between calls, say by the OOM killer, is reaped
        first); True when it started one. Whatever the launch or the handshake raises kills the child."""
        if self._running():
            return False
        self.close()
        try:
            self._process = self._launch()
            self._handshake()
        except BaseException:
            self.close()
            raise
        return True

    def _wait_until(self, ready: Callable[[float], bool], deadline: float, timed_out: str) -> None:
        """Return once `ready(poll_seconds)` (which waits up to that long) is true, calling check_stop between
        polls; past `deadline` (time.monotonic()) raise RewardTimeout(timed_out). Whatever escapes (the timeout,
        the stop, a KeyboardInterrupt) kills the child first: it may be mid-call, so it could not answer the next
        request in order."""
        try:
            while not ready(self.poll_seconds):
                if self.check_stop is not None:
                    self.check_stop()
                if time.monotonic() > deadline:
                    raise RewardTimeout(timed_out)
        except BaseException:
            self.close()
            raise

    def _exit_code(self) -> int | None:
        """The exit code of a child that is ending; None if it is still running after a few seconds."""
        try:
            return self._process.wait(5) if self._process is not None else None
        except subprocess.TimeoutExpired:
            return None


class RewardProcess(ChildProcess):
    """Scores batches of completions with `specs`' reward functions in a child process (trusted code only).

    score(index, completions, rows) runs reward function `index` (the order of `specs`) over the batch and returns
    RewardResults, an item that raised failing with why as in `score_items`. A call past `timeout_seconds` raises
    RewardTimeout, a child that dies RewardProcessDied (see ChildProcess for check_stop and closing).
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
        super().__init__(poll_seconds=poll_seconds, check_stop=check_stop)
        self.specs = list(specs)
        self.timeout_seconds = timeout_seconds
        # Starting takes an interpreter, imports and the installed rewards' entry points: slow on a busy machine.
        self.start_timeout_seconds = max(start_timeout_seconds, timeout_seconds)
        self._connection: Any = None  # set by _launch, cleared by _release

    def score(self, index: int, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> RewardResults:
        name = self.specs[index].name
        self._ensure_started()
        try:
            # The G completions of a prompt share its row object, so pickle sends each row once.
            self._connection.send((index, list(completions), list(rows)))
        except OSError:
            pass  # the child is gone: _reply reports it
        values, errors = self._reply(
            self.timeout_seconds,
            timed_out=f"reward {name!r} did not return within {self.timeout_seconds:g} s; its process was killed",
            died=f"reward {name!r} ended the process scoring it",
        )
        return RewardResults.from_items(values, errors)

    def _launch(self) -> subprocess.Popen:
        parent_end, child_end = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(child_end.fileno()), str(os.getpid())],
                pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self._connection = Connection(parent_end.detach())
        return process

    def _handshake(self) -> None:
        try:
            self._connection.send(list(sys.path))
            self._connection.send(self.specs)
        except OSError:
            pass  # the child is gone: _reply reports it
        status, detail = self._reply(
            self.start_timeout_seconds,
            timed_out=f"the reward process did not start within {self.start_timeout_seconds:g} s; it was killed",
            died="the reward process ended while starting",
        )
        if status != "ready":
            raise RewardFailure(f"the reward process could not load the rewards: {detail}")

    def _release(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _reply(self, limit: float, *, timed_out: str, died: str) -> Any:
        """The child's next message within `limit` seconds; RewardTimeout or RewardProcessDied (the child killed)."""
        self._wait_until(self._connection.poll, time.monotonic() + limit, timed_out)
        try:
            return self._connection.recv()
        except (EOFError, OSError):
            how = describe_exit(self._exit_code())
            self.close()
            raise RewardProcessDied(f"{died} ({how})") from None
        except BaseException:
            self.close()  # interrupted mid-message: the next reply could not be read in order
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
