"""A sandbox for tenants' reward code: an unprivileged uid, bubblewrap namespaces, a seccomp filter by syscall name,
a cgroup per sandbox and rlimits around a fresh Python.

What it guarantees (Linux, bubblewrap installed, the kernel allowing unprivileged user namespaces):
- never host root: when the service runs as root the launcher drops to a dedicated uid and gid (`run_as`,
  GRPO_SANDBOX_UID/GID, default 65000: owns no file, is no other service's user, and is mapped in the usual
  65,536-id container user namespaces), supplementary groups cleared, before bubblewrap starts; as any other user,
  that user. Inside, uid 65534 maps to it (`/proc/self/uid_map` reads `65534 65000 1`), so host-root-owned files
  such as /proc/sys/* and /proc/kcore are the "other" class to it;
- no network: its own network namespace has only its own loopback;
- no view of the host's files beyond a read-only Python: /usr, the interpreter's prefix, the operator's package
  folders, and this project's one child script (copied in, so no project path is bound). /tmp is a private tmpfs
  (max_tmp_mb), the only writable place. Site-packages are hidden under empty tmpfs. bubblewrap's options reach it
  through a file descriptor (`--args`), so /proc/1/cmdline names no host path but the interpreter's;
- no nested namespaces (the filter refuses unshare, setns, mount, clone with namespace flags), no new processes
  (fork and non-thread clone answer EAGAIN), the interpreter as its namespace's init (no unfiltered process
  beside it, and it cannot undo its death with its parent), and none of io_uring, bpf, perf_event_open, userfaultfd, keyrings,
  ptrace, process_vm_*, modules or kexec: see grpo_core/syscall_filter.py (a deny-list, and why), x86_64 and
  aarch64;
- limits the kernel enforces on the whole sandbox: one cgroup each (grpo_core/cgroups.py, v1 or v2) with
  memory.max (tmpfs, SysV shm and memfd pages are charged to it: past it the OOM killer ends the sandbox), pids.max
  (processes and threads) and a CPU bound; and rlimits on address space, CPU seconds, open files and file size.
  Where no cgroup can be had the sandbox refuses to start unless `allow_without_cgroup` (then memory held outside
  the address space, such as shm and memfd, and threads of a root-run service are unbounded);
- a wall-clock timeout per call of `reward` (per item in the per-sample shape, per batch in the batch shape), past
  which the sandbox is killed (its pid namespace and cgroup die with it) and the items left go to a fresh one;
- answers bounded before they are parsed: each frame is read up to the call's remaining output budget plus a
  constant per item, within the call's deadline, and parsed as JSON that the parent checks field by field;
  anything else (too large, truncated, not UTF-8, huge numbers, deep nesting, wrong types) is the malformed-answer
  path: the sandbox is killed and restarted, the item fails with the reason. The parent never unpickles.

What it does not guarantee: the host's world-readable /proc files (loadavg, meminfo, stat) are readable, as they
are to any unprivileged user; timing side channels are not closed; /usr is visible read-only. Where bubblewrap
cannot run, RewardSandbox refuses unless `allow_unsandboxed` (dangerous: then tenant code runs with only the
unprivileged uid, the cgroup and the rlimits, and sees the host's files and network). A killed sandbox's bwrap
init is reparented to the host's (or container's) pid 1, which must reap it (tini or docker's --init).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import select
import shutil
import socket
import stat
import struct
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from grpo_core.cgroups import CgroupLimits, CgroupParent, SandboxCgroup, find_cgroup_parent
from grpo_core.reward_process import ChildProcess, RewardFailure, RewardResults, RewardTimeout, describe_exit

MAX_SOURCE_BYTES = 256 * 1024
DEFAULT_UID = DEFAULT_GID = 65000
_CHILD = Path(__file__).with_name("sandbox_child.py")
_CHILD_INSIDE = "/opt/reward/child.py"
_SANDBOX_UID = 65534  # the uid tenant code sees inside its user namespace
_MALFORMED = "the reward process sent a malformed answer; it was killed and will be restarted"
# --as-pid-1: the interpreter is the namespace's init, so no process inside runs outside the seccomp filter
# (bubblewrap's own init would: its memory is writable through /proc/1/mem to a process of the same uid).
# Not --disable-userns: it nests a second user namespace (as `--dev` does, below); the filter refuses nested
# namespaces instead (grpo_core/syscall_filter.py).
_BASE = [
    "--unshare-all", "--unshare-user", "--as-pid-1", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
    "--clearenv",
]  # fmt: skip
_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    # One core is the sandbox's CPU bound: thread pools sized to the host's cores would only hit pids.max.
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
# The character devices Python and its libraries open, bound one by one. Not bwrap's `--dev`: it mounts a devpts,
# for which bwrap maps the sandbox's uid to 0 of an outer user namespace and nests a second one; the tenant then
# owns that outer namespace's pid and IPC sysctls, and /proc/self/uid_map reads 0 outside.
_DEVICES = [
    arg
    for name in ("null", "zero", "full", "random", "urandom")
    for arg in ("--dev-bind", f"/dev/{name}", f"/dev/{name}")
]
# Writes the launcher's pid into each cgroup.procs named before "--", then execs the rest: the tenant's code starts
# inside its cgroup, with no window outside it.
_LAUNCHER = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
# What a frame may hold beyond the printed output it carries: an item's (value, error) with a 2,000-character
# error JSON-escaped, or a load answer's keyword names (bounded by the source's size).
_ITEM_BYTES = 32 * 1024
_LOAD_BYTES = 8 * MAX_SOURCE_BYTES
_BYTES_PER_CHAR = 12  # the most one character takes as ASCII JSON: "\ud83d\ude00" for one emoji


class SandboxUnavailable(RuntimeError):
    """bubblewrap (or a cgroup) cannot sandbox here and the operator did not opt into less."""


class RewardSourceError(ValueError):
    """The reward source was refused: too large, a syntax error, a failing import, no or a wrong `reward`."""


class SandboxRestartsExhausted(RewardFailure):
    """A tenant reward's sandbox died or was killed `max_restarts` calls in a row without scoring one item. Raised
    by score() with `scores` set: every item's result, those never tried failed with this message (a dry run shows
    them; a job fails)."""

    scores: RewardResults | None = None


@dataclass(frozen=True)
class SandboxLimits:
    """What a job's reward sandboxes may use, and as whom they run (the service's GRPO_REWARD_* and GRPO_SANDBOX_*
    settings)."""

    timeout_seconds: float = 60.0
    """Longest one call of `reward` may take: one item in the per-sample shape, the batch in the batch shape."""
    start_timeout_seconds: float = 60.0
    """Longest the sandbox may take to start and load the source, its imports included."""
    memory_mb: int = 1024
    """Address space of the sandboxed process, and its cgroup's memory.max (shm, memfd and tmpfs included), MiB."""
    cpu_seconds: int = 3600
    """CPU seconds over the process's life; past them it is killed, and restarted for the next items."""
    cpus: float = 1.0
    """CPU bandwidth of the sandbox's cgroup, in cores."""
    max_processes: int = 16
    """pids.max of its cgroup (threads count; bubblewrap's own two processes too), and RLIMIT_NPROC."""
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
    """DANGEROUS: run the code without bubblewrap (uid, cgroup and rlimits only) where bubblewrap cannot run."""
    allow_without_cgroup: bool = False
    """Run the sandbox without a cgroup where none can be had (rlimits only bound memory and processes)."""
    max_restarts: int = 3
    """Deaths (or kills) in a row, without one item scored in between, after which score() raises."""
    uid: int = DEFAULT_UID
    """Host uid the sandbox runs as when the service runs as root (ignored otherwise: it runs as the service's)."""
    gid: int = DEFAULT_GID
    python: str = "auto"
    """Interpreter the sandbox runs: "auto" is the service's own when `uid` can reach it, else python3 on PATH."""
    cgroup: str = "auto"
    """Where sandbox cgroups are made: "auto", "off", or a delegated cgroup v2 folder (grpo_core/cgroups.py)."""


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    shape: str | None = None  # "per_sample" or "batch" (see grpo_core/sandbox_child.py for the rule)
    parameters: list[str] | None = None  # keyword names `reward` accepts besides prompt(s)/completion(s); None: any
    required: tuple[str, ...] = ()  # keyword parameters without a default
    error: str | None = None
    output: str = ""


# --- who runs it, with which interpreter, and whether it can ---------------------------------------------------------


def run_as(limits: SandboxLimits) -> tuple[int, int]:
    """(uid, gid) of tenant code: the dedicated pair when the service is root, else the service's own."""
    if os.geteuid() == 0:
        if limits.uid == 0 or limits.gid == 0:
            raise SandboxUnavailable(
                "GRPO_SANDBOX_UID and GRPO_SANDBOX_GID must not be 0: tenant code never runs as root"
            )
        return limits.uid, limits.gid
    return os.geteuid(), os.getegid()


def reachable(path: str, uid: int, gid: int, *, need: int = os.R_OK | os.X_OK) -> bool:
    """Whether `uid`/`gid` (no supplementary groups) may traverse to `path` and read (and run) it, by mode bits."""

    def allowed(info: os.stat_result, bits: int) -> bool:
        if uid == 0:
            return True
        shift = 6 if info.st_uid == uid else 3 if info.st_gid == gid else 0
        wanted = ((bits & os.R_OK) and stat.S_IROTH) | ((bits & os.X_OK) and stat.S_IXOTH)
        return (info.st_mode >> shift) & wanted == wanted

    real = Path(os.path.realpath(path))
    try:
        for folder in reversed(real.parents):
            if not allowed(os.stat(folder), os.X_OK):
                return False
        return allowed(os.stat(real), need)
    except OSError:
        return False


@dataclass(frozen=True)
class Interpreter:
    path: str
    base_prefix: str
    hidden: tuple[str, ...]  # its site-packages folders, hidden under empty tmpfs


_PROBE = (
    "import json, sys, sysconfig; p = sysconfig.get_paths(); "
    "print(json.dumps([sys.version_info[:2], sys.base_prefix, p['purelib'], p['platlib']]))"
)


@lru_cache(maxsize=8)
def sandbox_interpreter(setting: str, uid: int, gid: int) -> Interpreter:
    """The Python the sandbox runs, as `uid` can reach it; SandboxUnavailable naming what is wrong otherwise. The
    service's own interpreter may live where the sandbox's uid cannot go (a pyenv under /root): "auto" then falls
    back to python3 on PATH (tenant code needs only the standard library and the operator's package folders)."""
    own = os.path.realpath(sys.executable)
    if setting == "auto":
        candidates = [own] + [p for p in (shutil.which("python3"), "/usr/bin/python3") if p]
    else:
        candidates = [setting]
    for candidate in dict.fromkeys(os.path.realpath(c) for c in candidates):
        if not reachable(candidate, uid, gid):
            continue
        if candidate == own:
            base = os.path.realpath(sys.base_prefix)
            paths = sysconfig.get_paths(vars={"base": base, "platbase": base})
            version, found = sys.version_info[:2], [base, paths["purelib"], paths["platlib"]]
        else:
            try:
                done = subprocess.run([candidate, "-I", "-S", "-c", _PROBE], capture_output=True, text=True, timeout=30)
                version, *found = json.loads(done.stdout)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                continue
        if tuple(version) < (3, 10) or not reachable(found[0], uid, gid):  # its standard library too
            continue
        hidden = {os.path.realpath(p) for p in found[1:]}
        for top in ("/usr/lib", "/usr/local/lib"):
            hidden |= {str(p) for p in Path(top).glob("python3*/*-packages")}
        return Interpreter(candidate, os.path.realpath(found[0]), tuple(sorted(hidden)))
    raise SandboxUnavailable(
        f"no Python 3.10+ that uid {uid} can run: tried {', '.join(candidates)} (set GRPO_SANDBOX_PYTHON to one "
        "whose folders are world-readable)"
    )


def _ro_binds(interpreter: Interpreter) -> list[str]:
    """Read-only binds of what a stdlib-only interpreter needs, and tmpfs over every site-packages in them."""
    args: list[str] = []
    for top in ("/usr", "/lib", "/lib64", "/bin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    base = interpreter.base_prefix
    if not base.startswith("/usr/") and base != "/usr":
        args += ["--ro-bind", base, base]
    if not (interpreter.path.startswith("/usr/") or interpreter.path.startswith(base + "/")):
        args += ["--ro-bind", interpreter.path, interpreter.path]
    for path in interpreter.hidden:
        if os.path.isdir(path):
            args += ["--tmpfs", path]
    return args


def _privilege_drop(uid: int, gid: int) -> list[str]:
    """The command prefix that leaves root for (uid, gid) with no supplementary groups; nothing when not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]


def sandbox_available(limits: SandboxLimits | None = None) -> str | None:
    """None when bubblewrap can create the sandbox's namespaces here, as the sandbox's uid, with the filter; else a
    sentence saying why not. Cached per (python, uid, gid, package folders): probe_sandbox.cache_clear() forgets."""
    limits = limits or SandboxLimits()
    return probe_sandbox(limits.python, limits.uid, limits.gid, limits.extra_paths)


@lru_cache(maxsize=8)
def probe_sandbox(python: str, uid: int, gid: int, extra_paths: tuple[str, ...]) -> str | None:
    limits = SandboxLimits(python=python, uid=uid, gid=gid, extra_paths=extra_paths)
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (`bwrap`) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        uid, gid = run_as(limits)
        interpreter = sandbox_interpreter(limits.python, uid, gid)
        command = _privilege_drop(uid, gid)
        if command and not os.path.exists(command[0]):
            return "setpriv (util-linux) is missing: it drops root for the sandbox's uid"
        from grpo_core.syscall_filter import filter_file

        with filter_file() as syscall_filter:
            command += [bwrap, *_BASE, "--uid", str(_SANDBOX_UID), "--gid", str(_SANDBOX_UID), *_ro_binds(interpreter)]
            command += ["--proc", "/proc", *_DEVICES, "--tmpfs", "/tmp"]
            command += ["--seccomp", str(syscall_filter.fileno()), interpreter.path, "-I", "-S", "-c", ""]
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                pass_fds=[syscall_filter.fileno()],
            )  # fmt: skip
    except SandboxUnavailable as error:
        return str(error)
    except ImportError as error:
        return f"the seccomp filter cannot be built: {error} (pip install pyseccomp; apt-get install libseccomp2)"
    except (OSError, ValueError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap could not be started: {error}"
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"
        return f"the kernel refused bubblewrap's namespaces (user, network, pid...) to uid {uid}: {detail}"
    for path in limits.extra_paths:
        if not reachable(path, uid, gid):
            return f"the reward package folder {path} is not readable by the sandbox's uid {uid}"
    return None


@lru_cache(maxsize=8)
def cgroup_parent(setting: str) -> tuple[CgroupParent | None, str]:
    return find_cgroup_parent(setting)


def sandbox_refusal(limits: SandboxLimits) -> str | None:
    """Why tenant code would be refused here under `limits` (no bubblewrap, no cgroup, a root uid, no reachable
    interpreter, each unless the operator allowed less), or None when it can run."""
    problem = sandbox_available(limits)
    if problem is not None and not limits.allow_unsandboxed:
        return f"tenant reward code is not run unsandboxed: {problem}"
    parent, why_none = cgroup_parent(limits.cgroup)
    if parent is None and not limits.allow_without_cgroup:
        return (
            f"tenant reward code is not run without a cgroup: {why_none} (GRPO_REWARD_ALLOW_WITHOUT_CGROUP=1 runs it "
            "with rlimits only)"
        )
    try:
        sandbox_interpreter(limits.python, *run_as(limits))
    except SandboxUnavailable as error:
        return str(error)
    return None


def sandbox_level(limits: SandboxLimits) -> dict[str, Any]:
    """Which isolation tenant code gets in this process, for /healthz: level "full" (bubblewrap, filter, cgroup),
    "without_cgroup" (the operator allowed it), "unsandboxed" (the operator allowed it) or "refused" (tenant code
    is not run here), with the uid it runs as and why anything is missing. Cached: cheap after the first call."""
    problem = sandbox_available(limits)
    parent, cgroup_detail = cgroup_parent(limits.cgroup)
    try:
        uid: int | None = run_as(limits)[0]
    except SandboxUnavailable:
        uid = None
    if problem is not None:
        level = "unsandboxed" if limits.allow_unsandboxed and uid is not None else "refused"
    elif parent is None:
        level = "without_cgroup" if limits.allow_without_cgroup else "refused"
    else:
        level = "full"
    return {"level": level, "uid": uid, "bubblewrap": problem or "ok", "cgroup": cgroup_detail}


# --- the sandboxed process ------------------------------------------------------------------------------------------


class RewardSandbox(ChildProcess):
    """One tenant reward in a long-lived sandboxed process, for one job.

    score(prompts, completions, rows, params) calls the per-sample shape once per item or the batch shape once,
    and returns RewardResults: a (value, error) per item. An item whose call raised or returned anything but a finite
    number is an error, not a crash. A call past `timeout_seconds` (or one that kills the process) fails its item,
    or the whole batch in the batch shape, with the reason; the sandbox is killed and the items left go to a fresh
    one. After `max_restarts` such deaths in a row with no item answered in between, score() raises
    SandboxRestartsExhausted naming the reward: a sandbox that cannot stay up would only burn the timeout on
    every item. A source that fails to load raises RewardSourceError (permanent); no usable sandbox raises
    SandboxUnavailable unless the operator allowed less. ChildProcess starts, waits on and kills it (`check_stop`
    included); this class launches it under bubblewrap, sends pickled frames and reads bounded JSON ones.
    """

    def __init__(
        self,
        source: str,
        *,
        timeout_seconds: float,
        start_timeout_seconds: float = 30.0,
        poll_seconds: float = 0.05,
        name: str = "reward",
        check_stop: Callable[[], None] | None = None,
        limits: SandboxLimits | None = None,
        **overrides: Any,
    ):
        size = len(source.encode())
        if size > MAX_SOURCE_BYTES:
            raise RewardSourceError(f"reward source is {size} bytes; the limit is {MAX_SOURCE_BYTES} bytes (256 KiB)")
        # Tests and the dry run set a few limits by name; the rest comes from `limits` (the service's settings).
        if "extra_paths" in overrides:
            overrides["extra_paths"] = tuple(os.path.realpath(p) for p in overrides["extra_paths"])
        base = limits or SandboxLimits(start_timeout_seconds=start_timeout_seconds)
        self.limits = dataclasses.replace(base, timeout_seconds=timeout_seconds, **overrides)
        self.source = source
        self.timeout_seconds = timeout_seconds
        self.start_timeout_seconds = self.limits.start_timeout_seconds
        self.output_chars = self.limits.output_chars
        self.name = name
        self.max_restarts = self.limits.max_restarts
        self._deaths_in_a_row = 0
        self.shape: str | None = None
        self.load_output = ""
        self._loaded = CheckResult(ok=False)
        super().__init__(poll_seconds=poll_seconds, check_stop=check_stop)
        # Any: set together by _launch and cleared together by _release
        self._socket: Any = None
        self._cgroup: SandboxCgroup | None = None

    @classmethod
    def from_limits(
        cls,
        source: str,
        limits: SandboxLimits,
        *,
        name: str = "reward",
        check_stop: Callable[[], None] | None = None,
    ) -> RewardSandbox:
        return cls(source, timeout_seconds=limits.timeout_seconds, limits=limits, name=name, check_stop=check_stop)

    def _rlimits(self) -> dict[str, int]:
        limits = self.limits
        return {
            "RLIMIT_AS": limits.memory_mb * 1024 * 1024,
            "RLIMIT_CPU": limits.cpu_seconds,
            "RLIMIT_NPROC": limits.max_processes,
            "RLIMIT_NOFILE": limits.max_open_files,
            "RLIMIT_FSIZE": limits.max_file_mb * 1024 * 1024,
            "RLIMIT_CORE": 0,
        }

    def start(self) -> CheckResult:
        """Start the process and load the source, unless it is running; raises RewardSourceError if it is refused."""
        self._ensure_started()
        return self._loaded

    def _handshake(self) -> None:
        """Send the limits and the source; the child's load answer, checked (RewardSourceError when refused)."""
        setup = {
            "limits": self._rlimits(),
            "source": self.source,
            "paths": list(self.limits.extra_paths),
            "output_chars": self.output_chars,
        }
        unsent = self._send(setup, self.start_timeout_seconds)
        reply: dict | str = (
            unsent
            if unsent is not None
            else self._receive(self.start_timeout_seconds, _BYTES_PER_CHAR * self.output_chars + _LOAD_BYTES)
        )
        loaded = _checked_load(reply) if isinstance(reply, dict) else None
        if isinstance(reply, str) or loaded is None:
            why = reply if isinstance(reply, str) else _MALFORMED
            raise RewardSourceError(f"loading the reward failed: {why.replace('; it will be restarted', '')}")
        if not loaded.ok:
            raise RewardSourceError(str(loaded.error))
        self.shape = loaded.shape
        self.load_output = loaded.output[: self.output_chars + 100]
        self._loaded = loaded

    def score(
        self,
        prompts: Sequence[str | list],
        completions: Sequence[str],
        rows: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any] | None = None,
        *,
        max_failures: int | None = None,
    ) -> RewardResults:
        """A (value, error) per item. prompts[i] is the row's prompt string or its message list; params are passed
        to every call as keyword arguments. With `max_failures`, once more items than that have failed the rest
        are not scored (their error says so): the caller gives up past that many anyway."""
        n = len(completions)
        if not (len(prompts) == n == len(rows)):
            raise ValueError(f"{len(prompts)} prompts, {n} completions and {len(rows)} rows: they must match")
        results: list[tuple[float | None, str | None]] = []
        output = _Output(self.output_chars)
        restarted = False
        while len(results) < n:
            if max_failures is not None and sum(value is None for value, _ in results) > max_failures:
                why = f"not scored: more than {max_failures} of the {n} samples had failed already"
                results += [(None, why)] * (n - len(results))
                break
            self.start()
            first = len(results)
            batch = (list(prompts[first:]), list(completions[first:]), [dict(r) for r in rows[first:]])
            try:
                failed = self._send((*batch, dict(params or {})), self.timeout_seconds)
                if failed is not None:
                    results += [(None, failed)] * (n - first) if self.shape != "per_sample" else [(None, failed)]
                    self._died(failed)
                elif self.shape == "per_sample":
                    self._receive_items(n - first, results, output, max_failures)
                else:
                    self._receive_batch(n - first, results, output)
            except SandboxRestartsExhausted as error:
                results += [(None, str(error))] * (n - len(results))
                error.scores = RewardResults(results, output.text(), restarted=True)
                raise
            restarted = restarted or self._process is None
        return RewardResults(results, output.text(), restarted)

    def _receive_items(
        self,
        count: int,
        results: list[tuple[float | None, str | None]],
        output: _Output,
        max_failures: int | None,
    ) -> None:
        """Read the per-sample answers of `count` items into results, each call timed on its own, then the call's
        last output. On a timeout, a death or a wrong answer the item it was on fails and the sandbox is closed
        (_died); past max_failures it is closed too, mid-batch, and score() marks the rest."""
        for _ in range(count):
            reply = self._receive(self.timeout_seconds, output.budget_bytes() + _ITEM_BYTES)
            checked = _checked_results([reply.get("result")], 1) if isinstance(reply, dict) else None
            if not isinstance(reply, dict) or checked is None or not output.add(reply.get("output")):
                why = reply if isinstance(reply, str) else _MALFORMED
                results.append((None, why))
                self._died(why)
                return
            self._deaths_in_a_row = 0
            results.append(checked[0])
            if max_failures is not None and sum(value is None for value, _ in results) > max_failures:
                self.close()
                return
        reply = self._receive(self.timeout_seconds, output.budget_bytes() + _ITEM_BYTES)
        if not isinstance(reply, dict) or set(reply) != {"output"} or not output.add(reply["output"]):
            self._died(reply if isinstance(reply, str) else _MALFORMED)

    def _receive_batch(self, count: int, results: list[tuple[float | None, str | None]], output: _Output) -> None:
        """Read the batch shape's one answer for `count` items into results; all of them fail when it times out,
        dies or answers wrongly (_died)."""
        reply = self._receive(self.timeout_seconds, output.budget_bytes() + count * _ITEM_BYTES)
        checked = _checked_results(reply.get("results"), count) if isinstance(reply, dict) else None
        if not isinstance(reply, dict) or checked is None or not output.add(reply.get("output")):
            why = reply if isinstance(reply, str) else _MALFORMED
            results += [(None, why)] * count
            self._died(why)
            return
        self._deaths_in_a_row = 0
        results += checked

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

    def _release(self) -> None:
        """After close() killed bwrap (which takes its pid namespace down with it): close the socket, remove the
        cgroup."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._cgroup is not None:
            self._cgroup.remove()
            self._cgroup = None

    def _launch(self) -> subprocess.Popen:
        limits = self.limits
        refusal = sandbox_refusal(limits)
        if refusal is not None:
            raise SandboxUnavailable(refusal)
        problem = sandbox_available(limits)
        uid, gid = run_as(limits)
        parent, _ = cgroup_parent(limits.cgroup)
        interpreter = sandbox_interpreter(limits.python, uid, gid)
        parent_end, child_end = socket.socketpair()
        pass_fds = [child_end.fileno()]
        opened: list[Any] = [child_end]
        try:
            if parent is not None:
                cgroup_limits = CgroupLimits(limits.memory_mb * 1024 * 1024, limits.max_processes, limits.cpus)
                self._cgroup = SandboxCgroup(parent, cgroup_limits)
            launcher = ["/bin/sh", "-c", _LAUNCHER, "sh", *(self._cgroup.procs_files if self._cgroup else []), "--"]
            launcher += _privilege_drop(uid, gid)
            if problem is None:
                from grpo_core.syscall_filter import filter_file

                child_source = open(_CHILD, "rb")  # noqa: SIM115 (closed below, after bwrap has its copy)
                syscall_filter = filter_file()
                opened += [child_source, syscall_filter]
                options = list(_BASE)
                for name, value in _ENV.items():
                    options += ["--setenv", name, value]
                options += ["--uid", str(_SANDBOX_UID), "--gid", str(_SANDBOX_UID), *_ro_binds(interpreter)]
                options += ["--ro-bind-data", str(child_source.fileno()), _CHILD_INSIDE]
                options += ["--proc", "/proc", *_DEVICES]
                options += ["--size", str(limits.max_tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]
                # The operator's package folders last: a later mount hides an earlier one (a folder under /tmp).
                for path in limits.extra_paths:
                    options += ["--ro-bind", path, path]
                # bwrap's root (and /dev) are writable tmpfs: make them read-only so /tmp is the one writable place.
                options += ["--remount-ro", "/", "--chdir", "/tmp"]
                options += ["--seccomp", str(syscall_filter.fileno())]
                read_end, write_end = os.pipe()
                opened += [os.fdopen(read_end, "rb")]
                with os.fdopen(write_end, "wb") as writer:  # a few KiB: fits the pipe's buffer
                    writer.write(b"".join(option.encode() + b"\0" for option in options))
                pass_fds += [child_source.fileno(), syscall_filter.fileno(), read_end]
                bwrap = shutil.which("bwrap") or "bwrap"
                command = [*launcher, bwrap, "--args", str(read_end), interpreter.path, "-I", "-S", _CHILD_INSIDE]
                command.append(str(child_end.fileno()))
                environment: dict[str, str] = {}
                cwd = None
            else:  # the operator's explicit, dangerous opt-out: the uid, the cgroup and the rlimits only
                command = [*launcher, interpreter.path, "-I", "-S", "-c", _CHILD.read_text(), str(child_end.fileno())]
                environment = dict(_ENV, HOME="/tmp")
                cwd = "/tmp"
            process = subprocess.Popen(
                command, pass_fds=pass_fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=environment, cwd=cwd or "/",  # the launcher exports its PWD
            )  # fmt: skip
        except BaseException:
            parent_end.close()
            if self._cgroup is not None:
                self._cgroup.remove()
                self._cgroup = None
            raise
        finally:
            for handle in opened:
                handle.close()
        parent_end.setblocking(False)
        self._socket = parent_end
        return process

    def _readable(self, timeout: float) -> bool:
        """Whether the socket can be read, waiting up to `timeout`; so it can once the child died: whatever it wrote
        before dying is read, then recv says EOF."""
        return bool(select.select([self._socket], [], [], timeout)[0]) or not self._running()

    def _writable(self, timeout: float) -> bool:
        return bool(select.select([], [self._socket], [], timeout)[1])

    def _wait(self, ready: Callable[[float], bool], deadline: float, limit: float) -> str | None:
        """None once `ready`, else why not: it timed out (the sandbox is killed). The stop check's exception
        propagates, the sandbox killed."""
        try:
            self._wait_until(
                ready, deadline, f"timed out after {limit:g} s; the reward process was killed and will be restarted"
            )
        except RewardTimeout as error:
            return str(error)
        return None

    def _send(self, message: Any, limit: float) -> str | None:
        """Send one pickled frame to the child (it trusts its parent); None, or why it could not be sent in time."""
        data = pickle.dumps(message)
        frame = memoryview(struct.pack("!i", len(data)) + data)
        deadline = time.monotonic() + limit
        try:
            while frame:
                why = self._wait(self._writable, deadline, limit)
                if why is not None:
                    return why
                frame = frame[self._socket.send(frame) :]
        except OSError:
            return self._death_reason()
        return None

    def _read_exact(self, size: int, deadline: float, limit: float) -> bytes | str:
        chunks, got = [], 0
        while got < size:
            why = self._wait(self._readable, deadline, limit)
            if why is not None:
                return why
            try:
                chunk = self._socket.recv(min(size - got, 1 << 20))
            except BlockingIOError:
                if self._running():
                    continue
                chunk = b""  # dead, and nothing more will come
            except OSError:
                chunk = b""
            if not chunk:
                return self._death_reason()
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _receive(self, limit: float, max_bytes: int) -> dict | str:
        """The child's next JSON answer, read only up to `max_bytes` and within `limit` seconds, or a sentence saying
        why there is none (the process is then to be killed)."""
        deadline = time.monotonic() + limit
        header = self._read_exact(4, deadline, limit)
        if isinstance(header, str):
            return header
        (size,) = struct.unpack("!i", header)
        if not 0 <= size <= max_bytes:
            return f"{_MALFORMED} (a frame of {size} bytes; at most {max_bytes} were allowed)"
        raw = self._read_exact(size, deadline, limit)
        if isinstance(raw, str):
            return raw
        try:
            # Numbers as floats: a 400-digit integer is then inf (refused as not finite), never an OverflowError.
            reply = json.loads(raw, parse_int=float)
        except (ValueError, RecursionError):
            return _MALFORMED
        return reply if isinstance(reply, dict) else _MALFORMED

    def _death_reason(self) -> str:
        code = self._exit_code()
        if self._cgroup is not None and self._cgroup.oom_killed():
            return (
                f"the reward process died (killed past its memory limit of {self.limits.memory_mb} MiB, shared "
                "memory and files in /tmp included); it will be restarted"
            )
        # Killed by a signal: Popen's -N unsandboxed, bwrap's 128 + N sandboxed.
        return f"the reward process died ({describe_exit(code)}); it will be restarted"


class _Output:
    """The printed output of one score() call, kept up to `limit` characters (each restart brings its own), then a
    marker. budget_bytes() is the most the next frame's output may take as JSON."""

    def __init__(self, limit: int):
        self.limit = limit + 100  # room for the child's own truncation marker
        self.parts: list[str] = []
        self.kept = 0
        self.dropped = 0

    def budget_bytes(self) -> int:
        return _BYTES_PER_CHAR * max(0, self.limit - self.kept)

    def add(self, text: Any) -> bool:
        """Keep `text` within the bound; False when it is not a string (a malformed answer)."""
        if text is None:
            return True
        if not isinstance(text, str):
            return False
        room = max(0, self.limit - self.kept)
        self.parts.append(text[:room])
        self.kept += min(room, len(text))
        self.dropped += max(0, len(text) - room)
        return True

    def text(self) -> str:
        kept = "".join(self.parts)
        if self.dropped:
            kept += f"\n[output truncated: {self.dropped} more characters]"
        return kept


def _checked_load(reply: dict) -> CheckResult | None:
    """The load answer, checked field by field; None when anything has the wrong type."""
    output, error = reply.get("output", ""), reply.get("error")
    if not isinstance(output, str) or not (error is None or isinstance(error, str)):
        return None
    if reply.get("ok") is not True:
        return CheckResult(ok=False, error=(error or "the reward could not be loaded")[:2000], output=output)
    shape, parameters, required = reply.get("shape"), reply.get("parameters"), reply.get("required") or []
    if shape not in ("per_sample", "batch") or not isinstance(required, list):
        return None
    if not (parameters is None or (isinstance(parameters, list) and all(isinstance(p, str) for p in parameters))):
        return None
    if not all(isinstance(p, str) for p in required):
        return None
    return CheckResult(ok=True, shape=shape, parameters=parameters, required=tuple(required), output=output)


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
        elif isinstance(value, float) and math.isfinite(value):
            checked.append((value, None))
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
