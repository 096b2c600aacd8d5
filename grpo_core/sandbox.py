"""A sandbox for tenants' reward code: bubblewrap namespaces, a seccomp filter and rlimits around a fresh Python.

What it guarantees (Linux, bubblewrap installed, the kernel allowing user namespaces):
- no network: its own network namespace has only its own loopback, so nothing on the host (API, database,
  Redis, even on 127.0.0.1) can be reached;
- no view of the host's files beyond a read-only Python: the standard library of `sys.base_prefix`, /usr (for
  shared libraries), and one file of this project (grpo_core/sandbox_child.py). Not the venv's site-packages,
  not the project, not the data folder, not /etc, not the host's /proc (it gets its own). `/tmp` is a private
  tmpfs (max_tmp_mb) and the only writable place (bwrap's own root and /dev are remounted read-only).
  Site-packages folders under /usr and the base prefix are hidden under empty tmpfs;
- an empty environment (PATH, HOME, LANG, PYTHONDONTWRITEBYTECODE only), uid/gid 65534 in its own user, pid, ipc,
  uts and cgroup namespaces, all capabilities dropped, no new privileges, its own session (no TIOCSTI);
- no new processes: on x86_64 a seccomp filter makes fork, vfork and clone without CLONE_THREAD fail with EAGAIN
  (threads still work; clone3 answers ENOSYS so libc falls back to clone). RLIMIT_NPROC is also set: uid 65534
  inside maps to the caller's uid outside, and the kernel counts processes per user namespace and uid, so the
  limit counts the sandbox's own processes (bwrap's init and the interpreter included: measured, a limit of 5
  stopped a fork loop after 3 forks when the caller was an unprivileged user). The kernel does not enforce it at
  all when the caller's uid is root, so when the service runs as root the seccomp filter is what stops a fork bomb;
- limits set before the tenant's code runs: address space (memory_mb), CPU seconds over the process's life,
  open files, file size; a wall-clock timeout per call of `reward` (per item in the per-sample shape, per batch
  in the batch shape), past which the whole sandbox is killed (its pid namespace dies with it) and the items not
  yet scored go to a fresh one; printed output kept up to a bound, with a marker;
- the parent never unpickles what the sandbox sends: answers are JSON, size-bounded and checked.

What it does not guarantee: the seccomp filter only restricts process creation (x32-ABI syscalls answer ENOSYS
and i386 ones kill the process, but every other x86_64 syscall, nested user namespaces included, is open to the
kernel's attack surface); on other architectures there is no filter at all; /usr is visible read-only (so is
any package installed under it, though not on sys.path); CPU use is not capped by a cgroup (a reward can use one
core for its whole timeout); tenant code can write forged answers on its own socket, which can only corrupt its
own scores. Where bubblewrap cannot run, RewardSandbox refuses unless `allow_unsandboxed` is set (dangerous: then
tenant code runs as the service's user with only the rlimits). A killed sandbox's bwrap init is reparented to
the host's (or container's) pid 1, which must reap it (tini or docker's --init in a container).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from grpo_core.reward_process import RewardFailure

MAX_SOURCE_BYTES = 256 * 1024
_CHILD = Path(__file__).with_name("sandbox_child.py")
_CHILD_INSIDE = "/opt/reward/child.py"
_SANDBOX_UID = 65534
_MALFORMED = "the reward process sent a malformed answer; it was killed and will be restarted"
_BASE = ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot sandbox here and unsandboxed rewards were not allowed."""


class RewardSourceError(ValueError):
    """The reward source was refused: too large, a syntax error, a failing import, no or a wrong `reward`."""


class SandboxRestartsExhausted(RewardFailure):
    """A tenant reward's sandbox died or was killed `max_restarts` calls in a row without scoring one item."""


@dataclass(frozen=True)
class SandboxLimits:
    """What a job's reward sandboxes may use (the service's GRPO_REWARD_* settings)."""

    timeout_seconds: float = 60.0
    """Longest one call of `reward` may take: one item in the per-sample shape, the batch in the batch shape."""
    start_timeout_seconds: float = 60.0
    """Longest the sandbox may take to start and load the source, its imports included."""
    memory_mb: int = 1024
    """Address space of the sandboxed process, MiB."""
    cpu_seconds: int = 3600
    """CPU seconds over the process's life; past them it is killed, and restarted for the next items."""
    max_processes: int = 16
    max_open_files: int = 64
    max_file_mb: int = 64
    """Largest file the code may write (in its private /tmp), MiB."""
    max_tmp_mb: int = 256
    """Size of its private /tmp, MiB."""
    output_chars: int = 64 * 1024
    """Printed output kept per call of score() (the rest is cut, with a marker)."""
    extra_paths: tuple[str, ...] = ()
    """Folders of packages bound read-only into the sandbox and put on its sys.path."""
    allow_unsandboxed: bool = False
    """DANGEROUS: run the code without bubblewrap (rlimits only) where bubblewrap cannot run."""
    max_restarts: int = 3
    """Deaths (or kills) in a row, without one item scored in between, after which score() raises."""


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    shape: str | None = None  # "per_sample" or "batch" (see grpo_core/sandbox_child.py for the rule)
    parameters: list[str] | None = None  # keyword names `reward` accepts besides prompt(s)/completion(s); None: any
    required: tuple[str, ...] = ()  # keyword parameters without a default
    error: str | None = None
    output: str = ""


@dataclass(frozen=True)
class Scores:
    results: list[tuple[float | None, str | None]]  # one (value, error) per completion, exactly one of them None
    output: str = ""  # what the code printed during the call, bounded
    restarted: bool = False  # the sandbox was killed (timed out, died or stopped early) during this call
    seconds: float = 0.0


# --- availability ---------------------------------------------------------------------------------------------------


def _python() -> str:
    return os.path.realpath(sys.executable)


def _ro_binds() -> list[str]:
    """Read-only binds of what a stdlib-only interpreter needs, and tmpfs over every site-packages in them."""
    args: list[str] = []
    for top in ("/usr", "/lib", "/lib64", "/bin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    base = os.path.realpath(sys.base_prefix)
    if not base.startswith("/usr/"):
        args += ["--ro-bind", base, base]
    python = _python()
    if not (python.startswith("/usr/") or python.startswith(base + "/")):
        args += ["--ro-bind", python, python]
    hidden = {os.path.realpath(sysconfig.get_paths(vars={"base": base, "platbase": base})["purelib"])}
    hidden |= {str(p) for p in Path("/usr/lib").glob("python3*/*-packages")}
    hidden |= {str(p) for p in Path("/usr/local/lib").glob("python3*/*-packages")}
    for path in sorted(hidden):
        if os.path.isdir(path):
            args += ["--tmpfs", path]
    return args


def _seccomp_program() -> bytes | None:
    """Classic BPF: fork/vfork fail EAGAIN, clone without CLONE_THREAD fails EAGAIN, clone3 fails ENOSYS.
    x86_64 only (syscall numbers are per architecture); None elsewhere."""
    if os.uname().machine != "x86_64":
        return None

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, errno = 0x7FFF0000, 0x00050000
    eagain, enosys, clone_thread = 11, 38, 0x10000
    return b"".join(
        [
            op(ld, 0, 0, 4),  # 0: seccomp_data.arch
            op(jeq, 1, 0, 0xC000003E),  # 1: AUDIT_ARCH_X86_64
            op(ret, 0, 0, 0x80000000),  # 2: another ABI (i386 entry): kill the process
            op(ld, 0, 0, 0),  # 3: seccomp_data.nr
            # Jump offsets count instructions skipped: (4) x32-ABI numbers land on (14) ENOSYS, (5) fork and
            # (6) vfork on (12) EAGAIN, (7) clone3 on (14) ENOSYS (its flags live in memory, out of the filter's
            # reach; libc then falls back to clone), (8) clone on (10) its flags.
            op(jge, 9, 0, 0x40000000),  # 4: __X32_SYSCALL_BIT
            op(jeq, 6, 0, 57),  # 5: fork
            op(jeq, 5, 0, 58),  # 6: vfork
            op(jeq, 6, 0, 435),  # 7: clone3
            op(jeq, 1, 0, 56),  # 8: clone
            op(ret, 0, 0, allow),  # 9: any other syscall
            op(ld, 0, 0, 16),  # 10: low word of args[0], clone's flags
            op(jset, 1, 0, clone_thread),  # 11: a thread -> 13
            op(ret, 0, 0, errno | eagain),  # 12
            op(ret, 0, 0, allow),  # 13
            op(ret, 0, 0, errno | enosys),  # 14
        ]
    )


@lru_cache(maxsize=1)
def sandbox_available() -> str | None:
    """None when bubblewrap can create the sandbox's namespaces here, else a sentence saying why not."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (`bwrap`) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    command = [bwrap, *_BASE, *_ro_binds(), "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", _python(), "-c", ""]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap could not be started: {error}"
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"
        return f"the kernel refused bubblewrap's namespaces (user, network, pid...): {detail}"
    return None


# --- the sandboxed process ------------------------------------------------------------------------------------------


class RewardSandbox:
    """One tenant reward in a long-lived sandboxed process, for one job.

    score(prompts, completions, rows, params) calls the per-sample shape once per item or the batch shape once,
    and returns Scores: a (value, error) per item. An item whose call raised or returned anything but a finite
    number is an error, not a crash. A call past `timeout_seconds` (or one that kills the process) fails its item,
    or the whole batch in the batch shape, with the reason; the sandbox is killed and the items left go to a fresh
    one. After `max_restarts` such deaths in a row with no item answered in between, score() raises
    SandboxRestartsExhausted naming the reward: a sandbox that cannot stay up would only burn the timeout on
    every item. A source that fails to load raises RewardSourceError (permanent); no usable sandbox raises
    SandboxUnavailable unless `allow_unsandboxed`. `check_stop`, when given, is called at every poll while the
    parent waits; it raises to abandon the call (the sandbox is then killed).
    """

    def __init__(
        self,
        source: str,
        *,
        timeout_seconds: float,
        memory_mb: int = 1024,
        cpu_seconds: int = 3600,
        max_processes: int = 16,
        max_open_files: int = 64,
        max_file_mb: int = 64,
        max_tmp_mb: int = 256,
        output_chars: int = 64 * 1024,
        extra_paths: Sequence[str] = (),
        start_timeout_seconds: float = 30.0,
        allow_unsandboxed: bool = False,
        poll_seconds: float = 0.05,
        name: str = "reward",
        max_restarts: int = 3,
        check_stop: Callable[[], None] | None = None,
    ):
        size = len(source.encode())
        if size > MAX_SOURCE_BYTES:
            raise RewardSourceError(f"reward source is {size} bytes; the limit is {MAX_SOURCE_BYTES} bytes (256 KiB)")
        self.source = source
        self.timeout_seconds = timeout_seconds
        self.start_timeout_seconds = start_timeout_seconds
        self.output_chars = output_chars
        self.extra_paths = [os.path.realpath(p) for p in extra_paths]
        self.allow_unsandboxed = allow_unsandboxed
        self.poll_seconds = poll_seconds
        self.name = name
        self.max_restarts = max_restarts
        self.check_stop = check_stop
        self._deaths_in_a_row = 0
        self.tmp_bytes = max_tmp_mb * 1024 * 1024
        self.limits = {
            "RLIMIT_AS": memory_mb * 1024 * 1024,
            "RLIMIT_CPU": cpu_seconds,
            "RLIMIT_NPROC": max_processes,
            "RLIMIT_NOFILE": max_open_files,
            "RLIMIT_FSIZE": max_file_mb * 1024 * 1024,
            "RLIMIT_CORE": 0,
        }
        self.shape: str | None = None
        self.load_output = ""
        self._loaded = CheckResult(ok=False)
        # Any, as in reward_process: both are set together by _spawn and cleared together by close()
        self._process: Any = None
        self._connection: Any = None

    @classmethod
    def from_limits(
        cls,
        source: str,
        limits: SandboxLimits,
        *,
        name: str = "reward",
        check_stop: Callable[[], None] | None = None,
    ) -> RewardSandbox:
        return cls(
            source,
            timeout_seconds=limits.timeout_seconds,
            start_timeout_seconds=limits.start_timeout_seconds,
            memory_mb=limits.memory_mb,
            cpu_seconds=limits.cpu_seconds,
            max_processes=limits.max_processes,
            max_open_files=limits.max_open_files,
            max_file_mb=limits.max_file_mb,
            max_tmp_mb=limits.max_tmp_mb,
            output_chars=limits.output_chars,
            extra_paths=limits.extra_paths,
            allow_unsandboxed=limits.allow_unsandboxed,
            name=name,
            max_restarts=limits.max_restarts,
            check_stop=check_stop,
        )

    def __enter__(self) -> RewardSandbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> CheckResult:
        """Start the process and load the source; raises RewardSourceError if it is refused."""
        if self._process is not None and self._process.poll() is None:
            return self._loaded
        self.close()
        self._spawn()
        setup = {
            "limits": self.limits,
            "source": self.source,
            "paths": self.extra_paths,
            "output_chars": self.output_chars,
        }
        try:
            self._connection.send(setup)
        except OSError:
            pass  # gone already: _receive says so
        reply = self._receive(self.start_timeout_seconds)
        if isinstance(reply, str):
            self.close()
            raise RewardSourceError(f"loading the reward failed: {reply.replace('; it will be restarted', '')}")
        if not reply.get("ok"):
            self.close()
            raise RewardSourceError(str(reply.get("error"))[:2000])
        self.shape = str(reply.get("shape"))
        self.load_output = str(reply.get("output", ""))[: self.output_chars + 100]
        parameters = reply.get("parameters")
        self._loaded = CheckResult(
            ok=True,
            shape=self.shape,
            parameters=[str(p) for p in parameters] if isinstance(parameters, list) else None,
            required=tuple(str(p) for p in reply.get("required") or ()),
            output=self.load_output,
        )
        return self._loaded

    def score(
        self,
        prompts: Sequence[str | list],
        completions: Sequence[str],
        rows: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any] | None = None,
        *,
        max_failures: int | None = None,
    ) -> Scores:
        """A (value, error) per item. prompts[i] is the row's prompt string or its message list; params are passed
        to every call as keyword arguments. With `max_failures`, once more items than that have failed the rest
        are not scored (their error says so): the caller gives up past that many anyway."""
        n = len(completions)
        if not (len(prompts) == n == len(rows)):
            raise ValueError(f"{len(prompts)} prompts, {n} completions and {len(rows)} rows: they must match")
        started = time.monotonic()
        results: list[tuple[float | None, str | None]] = []
        outputs: list[str] = []
        restarted = False
        while len(results) < n:
            if max_failures is not None and sum(value is None for value, _ in results) > max_failures:
                why = f"not scored: more than {max_failures} of the {n} samples had failed already"
                results += [(None, why)] * (n - len(results))
                break
            self.start()
            first = len(results)
            try:
                batch = (list(prompts[first:]), list(completions[first:]), [dict(r) for r in rows[first:]])
                self._connection.send((*batch, dict(params or {})))
            except OSError:
                pass  # gone already: _receive says so
            if self.shape == "per_sample":
                self._receive_items(n - first, results, outputs, max_failures)
            else:
                self._receive_batch(n - first, results, outputs)
            restarted = restarted or self._process is None
        output = "".join(outputs)
        if len(output) > self.output_chars + 100:  # each restart brings a call's worth
            cut = len(output) - self.output_chars
            output = output[: self.output_chars] + f"\n[output truncated: {cut} more characters]"
        return Scores(results, output=output, restarted=restarted, seconds=time.monotonic() - started)

    def _receive_items(
        self,
        count: int,
        results: list[tuple[float | None, str | None]],
        outputs: list[str],
        max_failures: int | None,
    ) -> None:
        """Read the per-sample answers of `count` items into results, each call timed on its own, then the call's
        last output. On a timeout, a death or a wrong answer the item it was on fails and the sandbox is closed
        (_died); past max_failures it is closed too, mid-batch, and score() marks the rest."""
        for _ in range(count):
            reply = self._receive(self.timeout_seconds)
            checked = _checked_results([reply.get("result")], 1) if isinstance(reply, dict) else None
            if not isinstance(reply, dict) or checked is None:
                why = reply if isinstance(reply, str) else _MALFORMED
                results.append((None, why))
                self._died(why)
                return
            self._deaths_in_a_row = 0
            results.append(checked[0])
            outputs.append(_text(reply.get("output")))
            if max_failures is not None and sum(value is None for value, _ in results) > max_failures:
                self.close()
                return
        reply = self._receive(self.timeout_seconds)
        if not isinstance(reply, dict) or set(reply) != {"output"}:
            self._died(reply if isinstance(reply, str) else _MALFORMED)
            return
        outputs.append(_text(reply["output"]))

    def _receive_batch(self, count: int, results: list[tuple[float | None, str | None]], outputs: list[str]) -> None:
        """Read the batch shape's one answer for `count` items into results; all of them fail when it times out,
        dies or answers wrongly (_died)."""
        reply = self._receive(self.timeout_seconds)
        checked = _checked_results(reply.get("results"), count) if isinstance(reply, dict) else None
        if not isinstance(reply, dict) or checked is None:
            why = reply if isinstance(reply, str) else _MALFORMED
            results += [(None, why)] * count
            self._died(why)
            return
        self._deaths_in_a_row = 0
        results += checked
        outputs.append(_text(reply.get("output")))

    def _died(self, why: str) -> None:
        """The sandbox timed out, died or answered wrongly: kill it (the next items start a fresh one), and give up
        once that happened max_restarts times in a row with no item answered in between."""
        self.close()
        self._deaths_in_a_row += 1
        if self._deaths_in_a_row >= self.max_restarts:
            self._deaths_in_a_row = 0
            raise SandboxRestartsExhausted(
                f"reward {self.name!r}: its sandbox was killed or died {self.max_restarts} times in a row without "
                f"scoring a sample; last: {why}"
            )

    def close(self) -> None:
        """Kill the sandbox (killing bwrap takes its pid namespace down with it). Idempotent."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _spawn(self) -> None:
        problem = sandbox_available()
        if problem is not None and not self.allow_unsandboxed:
            raise SandboxUnavailable(f"tenant reward code is not run unsandboxed: {problem}")
        parent_end, child_end = socket.socketpair()
        fd = str(child_end.fileno())
        filter_file = None
        try:
            if problem is None:
                command = [shutil.which("bwrap") or "bwrap", *_BASE]
                for name, value in _ENV.items():
                    command += ["--setenv", name, value]
                command += ["--uid", str(_SANDBOX_UID), "--gid", str(_SANDBOX_UID)]
                command += [*_ro_binds(), "--ro-bind", str(_CHILD), _CHILD_INSIDE]
                command += ["--proc", "/proc", "--dev", "/dev", "--size", str(self.tmp_bytes), "--tmpfs", "/tmp"]
                # The operator's package folders last: a later mount hides an earlier one (a folder under /tmp).
                for path in self.extra_paths:
                    command += ["--ro-bind", path, path]
                # bwrap's root (and /dev) are writable tmpfs: make them read-only so /tmp is the one writable place.
                command += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp"]
                pass_fds = [child_end.fileno()]
                program = _seccomp_program()
                if program is not None:
                    filter_file = tempfile.TemporaryFile()
                    filter_file.write(program)
                    filter_file.seek(0)
                    command += ["--seccomp", str(filter_file.fileno())]
                    pass_fds.append(filter_file.fileno())
                command += [_python(), "-I", "-S", _CHILD_INSIDE, fd]
                self._process = subprocess.Popen(
                    command, pass_fds=pass_fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, env={},
                )  # fmt: skip
            else:  # the operator's explicit, dangerous opt-out: only the rlimits and an empty environment
                self._process = subprocess.Popen(
                    [_python(), "-I", "-S", str(_CHILD), fd], pass_fds=(child_end.fileno(),),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    env=dict(_ENV, HOME=tempfile.gettempdir()), cwd=tempfile.gettempdir(),
                )  # fmt: skip
        finally:
            child_end.close()
            if filter_file is not None:
                filter_file.close()
        self._connection = Connection(parent_end.detach())

    def _receive(self, limit: float) -> dict | str:
        """The child's JSON answer, or a sentence saying why there is none (the process is then to be killed)."""
        deadline = time.monotonic() + limit
        try:
            while not self._connection.poll(self.poll_seconds):
                if self.check_stop is not None:
                    try:
                        self.check_stop()
                    except BaseException:
                        self.close()  # it may be mid-call: it cannot answer the next one in order
                        raise
                if time.monotonic() > deadline:
                    return f"timed out after {limit:g} s; the reward process was killed and will be restarted"
                if self._process.poll() is not None:
                    break
            raw = self._connection.recv_bytes(maxlength=4 * self.output_chars + 64 * 1024 * 1024)
            reply = json.loads(raw)
            if not isinstance(reply, dict):
                raise ValueError("not an object")
            return reply
        except (EOFError, OSError, ValueError):
            code = None
            try:
                code = self._process.wait(5)
            except subprocess.TimeoutExpired:
                pass
            # Killed by a signal: Popen's -N unsandboxed, bwrap's 128 + N (as a shell reports it) sandboxed.
            number = -code if code is not None and code < 0 else code - 128 if code is not None and code > 128 else 0
            if number in {member.value for member in signal.Signals}:
                name = signal.Signals(number).name
                why = {"SIGXCPU": ": past its CPU-time limit", "SIGKILL": ""}.get(name, "")
                return f"the reward process died (killed by {name}{why}); it will be restarted"
            return f"the reward process died (exit code {code}); it will be restarted"


def _text(output: Any) -> str:
    return output if isinstance(output, str) else ""


def _checked_results(results: Any, n: int) -> list[tuple[float | None, str | None]] | None:
    if not isinstance(results, list) or len(results) != n:
        return None
    checked: list[tuple[float | None, str | None]] = []
    for item in results:
        if not (isinstance(item, list) and len(item) == 2):
            return None
        value, error = item
        if isinstance(error, str):
            checked.append((None, error[:2000]))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            checked.append((float(value), None))
        else:
            return None
    return checked


def check_reward_source(source: str, *, timeout_seconds: float, allow_unsandboxed: bool = False) -> CheckResult:
    """Compile, run and inspect `source` inside the sandbox; ok with its shape, or the problem named.
    Oversize sources are refused before anything starts. Raises SandboxUnavailable (never runs it unsandboxed
    unless `allow_unsandboxed`)."""
    try:
        sandbox = RewardSandbox(
            source,
            timeout_seconds=timeout_seconds,
            start_timeout_seconds=timeout_seconds,
            allow_unsandboxed=allow_unsandboxed,
        )
    except RewardSourceError as error:
        return CheckResult(ok=False, error=str(error))
    with sandbox:
        try:
            return sandbox.start()
        except RewardSourceError as error:
            return CheckResult(ok=False, error=str(error))
