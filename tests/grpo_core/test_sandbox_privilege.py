"""What tenant reward code cannot do with the privileges the sandbox leaves it: each test runs hostile code in a real
sandbox (real bubblewrap, seccomp filter, cgroup and rlimits; no mocks) and checks a bound the kernel held, in a way
that fails if that protection is taken away.

- never host root: the tenant process's host uid is the dedicated 65000 when the service is root, and a non-root
  service's own uid otherwise, read both from the host and from /proc/self/uid_map inside; one id mapped;
- no host-wide sysctl, /proc/sysrq-trigger or /sys file can be opened for writing, nor any sysctl of the
  sandbox's own namespaces (nothing is ever written: files are only opened and closed);
- no nested namespaces: unshare, setns and mount fail, and no /proc/*/ns/* link can be entered;
- memory held outside the address space (memfd, SysV shm kept after detaching, tmpfs files) is bounded by the
  sandbox's cgroup, and the host's shared memory is back to where it was once the sandbox is closed;
- native threads stop at the cgroup's pids.max, far below what the code asks for, and the host can still fork;
- the denied syscalls (io_uring, bpf, perf_event_open, userfaultfd, keyrings, ptrace, process_vm_*, modules,
  kexec, open_by_handle_at, pivot_root, mount) answer EPERM (clone3 ENOSYS), and no other ABI (x32, i386's
  int 0x80) gets a syscall past the filter; the aarch64 filter builds here too;
- no host path leaks into the sandbox's /proc (cmdline, mountinfo, environ), the kernel's memory files are
  closed, the tenant's interpreter is pid 1 with no unfiltered process beside it, no namespace link
  can be entered, /dev holds only harmless devices, and only stdio and the answer socket are open in the tenant
  process;
- forged, oversized, truncated, deeply nested, non-UTF-8 or mistyped answers written straight on the socket fail
  their item (never the parent, whose memory does not grow), and the next sandbox works.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from grpo_core.cgroups import find_cgroup_parent
from grpo_core.reward_process import RewardResults
from grpo_core.sandbox import (
    RewardSandbox,
    RewardSourceError,
    SandboxRestartsExhausted,
    reachable,
    sandbox_available,
)
from grpo_core.syscall_filter import filter_file

pytestmark = pytest.mark.skipif(sandbox_available() is not None, reason=f"no sandbox here: {sandbox_available()}")

REPO = Path(__file__).resolve().parents[2]
SANDBOX_UID = 65000  # SandboxLimits' default uid and gid for a root service
NON_ROOT_ID = 1234
X86_64 = os.uname().machine == "x86_64"
MiB = 1024 * 1024

# What every hostile source starts with: libc through ctypes, calls that report errno by name, and a report line.
PRELUDE = '''
import ctypes, errno, json, mmap, os, stat, struct, time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def errname(number):
    return errno.errorcode.get(number, str(number))


def call(function, *args):
    """(return value, errno name or None) of one libc call."""
    ctypes.set_errno(0)
    result = function(*args)
    return result, (errname(ctypes.get_errno()) if result == -1 else None)


def syscall(number, *args):
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return call(libc.syscall, ctypes.c_long(number), *converted)


def report(found):
    print("REPORT " + json.dumps(found))
'''


def _source(body: str) -> str:
    """A per-sample reward whose body fills the dict `found`, which comes back through _report."""
    inner = textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")
    return f"{PRELUDE}\n\ndef reward(prompt, completion, **fields):\n    found = {{}}\n{inner}\n    report(found)\n    return 0.0\n"


def _score(source: str, completions=("c",), **options) -> RewardResults:
    options.setdefault("timeout_seconds", 10)
    with RewardSandbox(source, **options) as sandbox:
        return sandbox.score(["p"] * len(completions), list(completions), [{}] * len(completions))


def _report(body: str, **options) -> dict:
    """Run `body` inside reward() in a fresh sandbox; the dict it reported (printed here too)."""
    scores = _score(_source(body), **options)
    assert scores.results == [(0.0, None)], scores
    match = re.search(r"^REPORT (.*)$", scores.output, re.MULTILINE)
    assert match, scores.output
    found = json.loads(match.group(1))
    print(json.dumps(found, indent=1))
    return found


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _tenant_pid(sandbox: RewardSandbox) -> int:
    """Host pid of the sandbox's Python (bwrap's child, the pid namespace's init: not bwrap itself)."""
    children, stack = _children_by_parent(), [sandbox.pid]
    while stack:
        for pid in children.get(stack.pop(), []):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"/opt/reward/child.py" in argv and not argv[0].endswith(b"bwrap"):
                return pid
            stack.append(pid)
    raise AssertionError(f"no sandboxed Python under pid {sandbox.pid}")


def _id_map(text: str) -> list[list[int]]:
    return [[int(field) for field in line.split()] for line in text.splitlines() if line.strip()]


def _status(pid: int | str, key: str) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return [int(field) for field in line.split()[1:]]
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def _host_shmem_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1])
    raise AssertionError("no Shmem in /proc/meminfo")


UID_MAP_BODY = """
found["uid_map"] = open("/proc/self/uid_map").read()
found["gid_map"] = open("/proc/self/gid_map").read()
found["ids"] = [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()]
"""


# --- 1. never host root ----------------------------------------------------------------------------------------------


def test_tenant_code_runs_as_one_unprivileged_host_uid_never_root():
    """Inside, the tenant is uid/gid 65534 and exactly one id is mapped; seen from the host (the kernel's own view of
    the process, and /proc/PID/uid_map read from the host's namespace) that id is 65000 for a root service, the
    service's uid otherwise: never 0."""
    expected = SANDBOX_UID if os.geteuid() == 0 else os.geteuid()
    expected_gid = SANDBOX_UID if os.geteuid() == 0 else os.getegid()
    with RewardSandbox(_source(UID_MAP_BODY), timeout_seconds=10) as sandbox:
        sandbox.start()
        pid = _tenant_pid(sandbox)
        host_uid_map = _id_map(Path(f"/proc/{pid}/uid_map").read_text())
        host_gid_map = _id_map(Path(f"/proc/{pid}/gid_map").read_text())
        host_uids, host_gids = _status(pid, "Uid"), _status(pid, "Gid")
        host_groups = Path(f"/proc/{pid}/status").read_text().split("Groups:")[1].splitlines()[0].split()
        scores = sandbox.score(["p"], ["c"], [{}])
    inside = json.loads(re.search(r"^REPORT (.*)$", scores.output, re.MULTILINE).group(1))
    print("inside:", inside)
    print("host view: uid_map", host_uid_map, "gid_map", host_gid_map, "Uid", host_uids, "Gid", host_gids)
    assert inside["ids"] == [65534, 65534, 65534, 65534, []]
    # One id, no range: the tenant can become no other host user.
    for mapping in (_id_map(inside["uid_map"]), _id_map(inside["gid_map"]), host_uid_map, host_gid_map):
        assert len(mapping) == 1 and mapping[0][0] == 65534 and mapping[0][2] == 1
    assert host_uid_map[0][1] == expected != 0
    assert host_gid_map[0][1] == expected_gid != 0
    assert host_uids == [expected] * 4 and host_gids == [expected_gid] * 4
    assert host_groups == []


def test_the_outside_uid_read_inside_is_not_zero():
    found = _report(UID_MAP_BODY)
    expected = SANDBOX_UID if os.geteuid() == 0 else os.geteuid()
    for key in ("uid_map", "gid_map"):
        outside = _id_map(found[key])[0][1]
        assert outside != 0
        assert outside == expected


NON_ROOT_SCRIPT = r"""
import json, os, re, sys
from pathlib import Path
from grpo_core.sandbox import RewardSandbox

SOURCE = '''
def reward(prompt, completion, **fields):
    print("REPORT " + open("/proc/self/uid_map").read().strip())
    return 0.0
'''

def tenant_pid(root):
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            children.setdefault(int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
        except (OSError, IndexError):
            pass
    stack = [root]
    while stack:
        for pid in children.get(stack.pop(), []):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"/opt/reward/child.py" in argv and not argv[0].endswith(b"bwrap"):
                return pid
            stack.append(pid)

with RewardSandbox(SOURCE, timeout_seconds=10, allow_without_cgroup=True, cgroup=sys.argv[1]) as sandbox:
    sandbox.start()
    pid = tenant_pid(sandbox.pid)
    host_uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
    host_uid = [line.split()[1:] for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:")][0]
    scores = sandbox.score(["p"], ["c"], [{}])
print(json.dumps({
    "me": os.geteuid(),
    "results": scores.results,
    "inside_uid_map": re.search(r"REPORT (.*)", scores.output).group(1).split(),
    "host_uid_map": host_uid_map,
    "host_uid": host_uid,
}))
"""


def _as_non_root(*args: str, scratch: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run /usr/bin/python3 as uid/gid NON_ROOT_ID (no groups) with a PYTHONPATH it can read: the project (copied
    when it cannot reach it) and pyseccomp (already importable, else the venv's site-packages when the uid can read
    it, else a copy of its one module)."""
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, f"--reuid={NON_ROOT_ID}", f"--regid={NON_ROOT_ID}", "--clear-groups", "/usr/bin/python3"]

    def run(path: list[str], *arguments: str, limit: float = 30) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONPATH": os.pathsep.join(path)}
        return subprocess.run([*prefix, *arguments], capture_output=True, text=True, env=env, cwd="/", timeout=limit)

    def can_import(path: list[str]) -> bool:
        return run(path, "-c", "import grpo_core.sandbox, pyseccomp").returncode == 0

    if reachable(str(REPO / "grpo_core" / "sandbox.py"), NON_ROOT_ID, NON_ROOT_ID, need=os.R_OK):
        path = [str(REPO)]
    else:
        shutil.copytree(REPO / "grpo_core", scratch / "project" / "grpo_core", ignore=shutil.ignore_patterns("*.pyc"))
        path = [str(scratch / "project")]
    if not can_import(path):
        origin = importlib.util.find_spec("pyseccomp").origin
        if reachable(origin, NON_ROOT_ID, NON_ROOT_ID, need=os.R_OK) and can_import([*path, os.path.dirname(origin)]):
            path.append(os.path.dirname(origin))
        else:
            (scratch / "seccomp").mkdir()
            shutil.copy(origin, scratch / "seccomp" / "pyseccomp.py")
            path.append(str(scratch / "seccomp"))
    for folder in [scratch, *scratch.rglob("*")]:
        folder.chmod(0o755 if folder.is_dir() else 0o644)
    assert can_import(path), run(path, "-c", "import grpo_core.sandbox, pyseccomp").stderr
    print("PYTHONPATH for uid", NON_ROOT_ID, path)
    return run(path, *args, limit=timeout)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs the test to run as root")
needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
needs_system_python = pytest.mark.skipif(
    not os.path.exists("/usr/bin/python3"), reason="no /usr/bin/python3 for the other uid"
)


def _non_root_sandbox(cgroup: str, scratch: Path) -> dict:
    done = _as_non_root("-c", NON_ROOT_SCRIPT, cgroup, scratch=scratch)
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["me"] == NON_ROOT_ID
    return found


@needs_root
@needs_setpriv
@needs_system_python
def test_a_non_root_service_runs_its_sandbox_as_its_own_uid(readable_tmp_path):
    """Started by uid 1234 (no cgroup: cgroup v1 folders need root), the tenant process is host uid 1234 and sees
    itself as 65534: one id mapped, never root."""
    found = _non_root_sandbox("off", readable_tmp_path)
    assert found["results"] == [[0.0, None]]
    assert found["inside_uid_map"] == ["65534", str(NON_ROOT_ID), "1"]  # read inside: never 0 outside
    assert found["host_uid_map"] == ["65534", str(NON_ROOT_ID), "1"]
    assert found["host_uid"] == [str(NON_ROOT_ID)] * 4


@needs_root
@needs_setpriv
@needs_system_python
def test_a_non_root_service_without_cgroup_rights_falls_back_when_allowed(readable_tmp_path):
    parent, _ = find_cgroup_parent("auto")  # as root: makes the v1 folders, as a root service would have
    if parent is None or parent.version != 1:
        pytest.skip("the case needs cgroup v1 folders made by root (this test process) first")
    found = _non_root_sandbox("auto", readable_tmp_path)
    assert found["results"] == [[0.0, None]]
    assert found["host_uid"] == [str(NON_ROOT_ID)] * 4


# --- 2. no sysctl, sysrq or /sys write ------------------------------------------------------------------------------

HOST_SYSCTLS = [
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/vm/drop_caches",
    "/proc/sys/fs/file-max",
    "/proc/sys/vm/overcommit_memory",
]
TRY_OPEN = """
def try_open(path):
    try:
        fd = os.open(path, os.O_WRONLY)  # only opened and closed: nothing is ever written
    except OSError as error:
        return errname(error.errno)
    os.close(fd)
    return "OPENED"
"""


def test_no_host_sysctl_sysrq_or_sys_file_can_be_opened_for_writing():
    body = f"""
    {textwrap.indent(TRY_OPEN, "    ").strip()}
    for path in {HOST_SYSCTLS!r} + ["/proc/sysrq-trigger"]:
        found[path] = [os.path.exists(path), try_open(path)]
    if os.path.isdir("/sys"):
        for path in ["/sys/kernel/mm/transparent_hugepage/enabled", "/sys/power/state", "/sys/kernel/uevent_helper"]:
            found[path] = [os.path.exists(path), try_open(path)]
        try:
            os.close(os.open("/sys/planted", os.O_WRONLY | os.O_CREAT, 0o644))
            found["/sys/planted"] = [True, "OPENED"]
        except OSError as error:
            found["/sys/planted"] = [False, errname(error.errno)]
    else:
        found["/sys"] = [False, "not mounted"]
    """
    found = _report(body)
    for path in HOST_SYSCTLS:
        assert found[path][0], f"{path} is not visible: the check would prove nothing"
    opened = {path: result for path, (_, result) in found.items() if result == "OPENED"}
    assert opened == {}


def test_no_sysctl_at_all_can_be_opened_for_writing():
    """pid_max (per pid namespace since Linux 6.14) and every other file under /proc/sys. ns_last_pid is left out: it
    is 0666 on every kernel, a write needing CAP_CHECKPOINT_RESTORE at write time."""
    body = f"""
    {textwrap.indent(TRY_OPEN, "    ").strip()}
    found["checked"], found["opened"] = 0, []
    found["pid_max"] = try_open("/proc/sys/kernel/pid_max")
    for folder, _, files in os.walk("/proc/sys"):
        for name in files:
            path = os.path.join(folder, name)
            found["checked"] += 1
            if path != "/proc/sys/kernel/ns_last_pid" and try_open(path) == "OPENED":
                found["opened"].append(path)
    """
    found = _report(body)
    assert found["checked"] > 100
    assert found["pid_max"] != "OPENED"
    assert found["opened"] == []


# --- 3. no nested namespaces -----------------------------------------------------------------------------------------


def test_unshare_setns_and_mount_fail():
    body = """
    CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x20000, 0x40000000
    found["unshare(CLONE_NEWUSER)"] = call(libc.unshare, CLONE_NEWUSER)
    found["unshare(CLONE_NEWUSER|CLONE_NEWNS)"] = call(libc.unshare, CLONE_NEWUSER | CLONE_NEWNS)
    found["unshare(CLONE_NEWNET)"] = call(libc.unshare, CLONE_NEWNET)
    for ns in ("user", "mnt", "net"):
        fd = os.open(f"/proc/self/ns/{ns}", os.O_RDONLY)
        found[f"setns({ns})"] = call(libc.setns, fd, 0)
        os.close(fd)
    os.makedirs("/tmp/mnt", exist_ok=True)
    found["mount(tmpfs)"] = call(libc.mount, b"none", b"/tmp/mnt", b"tmpfs", 0, None)
    found["mount(bind /)"] = call(libc.mount, b"/", b"/tmp/mnt", None, 0x1000, None)  # MS_BIND
    """
    found = _report(body)
    assert found and all(result == [-1, "EPERM"] for result in found.values()), found


# --- 4. memory outside the address space is the cgroup's --------------------------------------------------------------

MEMORY_SOURCES = {
    # One memfd stops at the file-size rlimit (64 MiB), so it rotates to a fresh one every 48 MiB: only the cgroup
    # bounds the sum. The address-space rlimit never sees written memfd pages.
    "memfd": """
    chunk, files, written = b"m" * MiB, [], 0
    while written < TOTAL:
        if written % (48 * MiB) == 0:
            files.append(os.memfd_create("fill"))
        os.write(files[-1], chunk)
        written += MiB
    """,
    # Segments of 64 MiB, touched then detached: they outlive the mapping (and the address-space rlimit), in the
    # sandbox's IPC namespace; IPC_RMID is never called.
    "sysv-shm": """
    libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.shmat.restype = ctypes.c_void_p
    libc.shmdt.argtypes = [ctypes.c_void_p]
    segment, written = 64 * MiB, 0
    while written < TOTAL:
        shm_id = libc.shmget(0, segment, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
        if shm_id == -1:
            raise OSError(ctypes.get_errno(), "shmget")
        address = libc.shmat(shm_id, None, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "shmat")
        ctypes.memset(address, 1, segment)  # every page
        libc.shmdt(address)
        written += segment
    """,
    # A 2 GiB /tmp: only the cgroup bounds it (files of 48 MiB, under the file-size rlimit).
    "tmpfs-2GiB": """
    chunk, written, handle = b"t" * MiB, 0, None
    while written < TOTAL:
        if written % (48 * MiB) == 0:
            handle = open(f"/tmp/fill-{written}", "wb", buffering=0)
        handle.write(chunk)
        written += MiB
    """,
}
MEMORY_SOURCES["tmpfs-default"] = MEMORY_SOURCES["tmpfs-2GiB"]  # the default 256 MiB /tmp: bounded by its size too


@pytest.mark.parametrize("kind", sorted(MEMORY_SOURCES))
def test_memory_held_outside_the_address_space_is_bounded_and_freed(kind):
    body = textwrap.dedent(MEMORY_SOURCES[kind])
    source = (
        f"{PRELUDE}\nMiB = 1024 * 1024\nTOTAL = 1536 * MiB\n\n\ndef reward(prompt, completion, **fields):\n"
        f"{textwrap.indent(body.strip(), '    ')}\n    return written / MiB\n"
    )
    options = {"max_tmp_mb": 2048} if kind == "tmpfs-2GiB" else {}
    before = _host_shmem_kb()
    started = time.monotonic()
    with RewardSandbox(source, timeout_seconds=20, memory_mb=1024, max_restarts=5, **options) as sandbox:
        scores = sandbox.score(["p"], ["c"], [{}])
        during = _host_shmem_kb()
    deadline = time.monotonic() + 15
    after = _host_shmem_kb()
    while abs(after - before) > 50 * 1024 and time.monotonic() < deadline:
        time.sleep(0.1)
        after = _host_shmem_kb()
    print(
        f"{kind}: result {scores.results[0]}, restarted {scores.restarted}, {time.monotonic() - started:.1f} s; "
        f"host Shmem before {before / 1024:.0f} MiB, after the call {during / 1024:.0f} MiB, "
        f"after close {after / 1024:.0f} MiB"
    )
    value, error = scores.results[0]
    assert value is None and error, scores  # 1.5 GiB never fit in a 1 GiB sandbox
    assert scores.restarted or "No space left" in error
    assert abs(after - before) <= 50 * 1024, f"host Shmem {before} kB before, {after} kB after close"


# --- 5. threads stop at pids.max --------------------------------------------------------------------------------------


def test_native_threads_stop_at_the_pids_limit_and_the_host_can_still_fork():
    body = """
    libc.pthread_attr_init.argtypes = [ctypes.c_void_p]
    libc.pthread_attr_setstacksize.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.pthread_create.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    attr = ctypes.create_string_buffer(256)  # pthread_attr_t is 56 bytes on x86_64, 64 on aarch64
    found["attr_init"] = libc.pthread_attr_init(attr)
    found["setstacksize"] = libc.pthread_attr_setstacksize(attr, 16384)
    pause = ctypes.cast(libc.pause, ctypes.c_void_p)  # the thread runs C only: pause() until the sandbox dies
    thread = ctypes.c_ulong()
    started, errors = 0, {}
    for _ in range(3000):
        code = libc.pthread_create(ctypes.byref(thread), attr, pause, None)
        if code == 0:
            started += 1
        else:
            errors[errname(code)] = errors.get(errname(code), 0) + 1
    found["started"], found["errors"] = started, errors
    found["threads_now"] = len(os.listdir("/proc/self/task"))
    """
    max_processes = 16
    found = _report(body, max_processes=max_processes, timeout_seconds=20)
    print(f"threads: {found['started']} of 3000 started with max_processes={max_processes}; refused: {found['errors']}")
    assert found["attr_init"] == 0 and found["setstacksize"] == 0
    assert 1 <= found["started"] < max_processes  # threads work, up to pids.max (bwrap's two and main included)
    assert sum(found["errors"].values()) == 3000 - found["started"] and set(found["errors"]) == {"EAGAIN"}
    assert subprocess.run(["true"], timeout=10).returncode == 0  # the host can still start processes


# --- 6, 7, 8. the syscall filter ---------------------------------------------------------------------------------------

DENIED_X86_64 = {
    "io_uring_setup": "syscall(425, 1, buf)",
    "bpf": "syscall(321, 0, buf, 72)",  # BPF_MAP_CREATE
    "perf_event_open": "syscall(298, buf, 0, -1, -1, 0)",
    "userfaultfd": "syscall(323, 0)",
    "keyctl": "syscall(250, 0, -3, 1)",  # KEYCTL_GET_KEYRING_ID of the session keyring, creating it
    "add_key": 'syscall(248, b"user", b"grpo-test", b"x", 1, -3)',
    "request_key": 'syscall(249, b"user", b"grpo-test", None, 0)',
    "ptrace": "syscall(101, 16, 1, 0, 0)",  # PTRACE_ATTACH to pid 1
    "process_vm_readv": "syscall(310, 1, iov, 1, iov, 1, 0)",
    "init_module": 'syscall(175, buf, 16, b"")',
    "finit_module": 'syscall(313, -1, b"", 0)',
    "kexec_load": "syscall(246, 0, 0, None, 0)",
    "open_by_handle_at": "syscall(304, -100, buf, 0)",
    "pivot_root": 'syscall(155, b"/tmp", b"/tmp")',
    "mount": 'syscall(165, b"none", b"/tmp", b"tmpfs", 0, None)',
    "clone3": "syscall(435, clone_args, 88)",
}


@pytest.mark.skipif(not X86_64, reason="the syscall numbers are x86_64's")
def test_denied_syscalls_answer_eperm_and_clone3_enosys():
    calls = "\n".join(f"found[{name!r}] = {expression}" for name, expression in DENIED_X86_64.items())
    body = f"""
    buf = ctypes.create_string_buffer(4096)
    struct.pack_into("I", buf, 0, 1)  # bpf: map_type 1 (hash); io_uring: sq_entries
    iov = (ctypes.c_uint64 * 2)(ctypes.addressof(buf), 16)
    clone_args = (ctypes.c_uint64 * 11)(0, 0, 0, 0, 17)  # a fork (exit_signal SIGCHLD) by clone3
    {textwrap.indent(calls, "    ").strip()}
    if found["clone3"][0] == 0:
        os._exit(0)  # a forked child: gone before it can answer
    """
    found = _report(body)
    expected = {name: [-1, "ENOSYS" if name == "clone3" else "EPERM"] for name in DENIED_X86_64}
    assert found == expected


@pytest.mark.skipif(not X86_64, reason="x32 and int 0x80 are x86_64's other ABIs")
def test_x32_and_i386_syscalls_do_not_get_past_the_filter():
    source = (
        PRELUDE
        + """

def reward(prompt, completion, **fields):
    if completion == "x32":  # getpid with the x32 bit
        result, error = syscall(0x40000000 | 39)
        if error:
            raise OSError(getattr(errno, error, 0), "x32 getpid: " + error)
        return float(result)
    if completion == "int80":  # i386 getpid (20) through int 0x80, from executable memory
        code = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        code.write(b"\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3")  # mov eax, 20; int 0x80; ret
        result = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(code)))()
        if result < 0:
            raise OSError(-result, "int 0x80 getpid: " + errname(-result))
        return float(result)
    return float(os.getpid())  # the plain call, for comparison
"""
    )
    with RewardSandbox(source, timeout_seconds=10) as sandbox:
        scores = sandbox.score(["p"] * 4, ["plain", "x32", "int80", "plain"], [{}] * 4)
    print(scores.results)
    plain, x32, int80, plain_again = scores.results
    assert plain[0] is not None and plain[0] > 0 and plain_again == plain  # getpid works; the sandbox restarts
    for value, error in (x32, int80):
        assert value is None and ("SIGSYS" in error or "died" in error or "OSError" in error), error


def test_the_aarch64_filter_builds_here_and_other_machines_are_refused():
    def arch_tokens(program: bytes) -> set[int]:
        # BPF instructions are 8 bytes: code (u16), jt, jf, k (u32); the arch checks compare k with AUDIT_ARCH_*.
        return {int.from_bytes(program[i + 4 : i + 8], "little") for i in range(0, len(program) - 7, 8)}

    audit_arch_aarch64, audit_arch_x86_64 = 0xC00000B7, 0xC000003E
    with filter_file("aarch64") as handle:
        aarch64 = handle.read()
    with filter_file("x86_64") as handle:
        x86_64 = handle.read()
    print(f"aarch64 filter: {len(aarch64) // 8} instructions; x86_64: {len(x86_64) // 8}")
    assert aarch64 and len(aarch64) % 8 == 0
    assert audit_arch_aarch64 in arch_tokens(aarch64) and audit_arch_x86_64 not in arch_tokens(aarch64)
    assert audit_arch_x86_64 in arch_tokens(x86_64)
    with pytest.raises(ValueError, match="mips"):
        filter_file("mips")


# --- 9. no host paths, no kernel memory -------------------------------------------------------------------------------


def _host_paths() -> set[str]:
    """The repository and the virtual environment running the tests, as given and resolved; not a system prefix
    (/usr is bound into the sandbox by design)."""
    paths = {str(REPO), os.path.realpath(REPO), sys.prefix, os.path.realpath(sys.prefix)}
    return {path for path in paths if path not in ("/", "/usr", "/usr/local")}


def test_proc_names_no_host_path_and_kernel_memory_files_are_closed():
    body = """
    for path in ["/proc/1/cmdline", "/proc/self/cmdline", "/proc/self/mountinfo", "/proc/self/environ"]:
        found[path] = open(path, "rb").read().decode(errors="replace")
    for path in ["/proc/kcore", "/proc/slabinfo", "/proc/kpagecount", "/proc/kpageflags", "/proc/kallsyms"]:
        try:
            with open(path, "rb") as handle:
                data = handle.read(4096)
            lines = data.decode(errors="replace").splitlines()[:-1]  # the last may be cut
            addresses = [int(line.split()[0], 16) for line in lines] if path == "/proc/kallsyms" else [1]
            found[path] = "READ" if any(addresses) else "zeroed"
        except OSError as error:
            found[path] = errname(error.errno)
    """
    found = _report(body)
    for path in ["/proc/1/cmdline", "/proc/self/cmdline", "/proc/self/mountinfo", "/proc/self/environ"]:
        for host_path in _host_paths():
            assert host_path not in found[path], f"{path} names {host_path}: {found[path]!r}"
    for path in ["/proc/kcore", "/proc/slabinfo", "/proc/kpagecount", "/proc/kpageflags"]:
        assert found[path] != "READ", path
    assert found["/proc/kallsyms"] != "READ"  # readable, but every address zeroed for an unprivileged uid


def test_bwrap_init_environment_names_no_host_path():
    body = """
    try:
        found["environ"] = open("/proc/1/environ", "rb").read().decode(errors="replace")
    except OSError as error:
        found["environ"] = errname(error.errno)
    """
    found = _report(body)
    for host_path in _host_paths():
        assert host_path not in found["environ"], f"/proc/1/environ names {host_path}: {found['environ']!r}"


# --- 10. no way into bwrap's init, the namespaces, devices or inherited files -----------------------------------------


def test_the_tenant_is_the_namespaces_init_and_no_process_beside_it_escapes_the_filter():
    # bubblewrap's own init (same uid, dumpable, outside the seccomp filter) would be writable through /proc/1/mem:
    # with --as-pid-1 there is none; pid 1 is the tenant's interpreter, under the filter (Seccomp: 2).
    body = """
    found["pid"] = os.getpid()
    found["pids"] = sorted(name for name in os.listdir("/proc") if name.isdigit())
    found["seccomp"] = [line.split()[1] for line in open("/proc/1/status") if line.startswith("Seccomp:")]
    """
    found = _report(body)
    assert found == {"pid": 1, "pids": ["1"], "seccomp": ["2"]}


def test_ptrace_of_init_and_namespace_links_give_no_way_in():
    body = """
    found["ptrace(PTRACE_ATTACH, 1)"] = call(libc.ptrace, 16, 1, None, None)
    for pid in ("1", "self"):
        for ns in sorted(os.listdir(f"/proc/{pid}/ns")):
            try:
                fd = os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY)
            except OSError as error:
                found[f"/proc/{pid}/ns/{ns}"] = ["open", errname(error.errno)]
                continue
            found[f"/proc/{pid}/ns/{ns}"] = call(libc.setns, fd, 0)
            os.close(fd)
    """
    found = _report(body)
    assert found["ptrace(PTRACE_ATTACH, 1)"] == [-1, "EPERM"]
    namespaces = {key: result for key, result in found.items() if "/ns/" in key}
    assert len(namespaces) >= 8  # user, mnt, net, pid, ipc, uts, cgroup... of both
    assert all(result[0] in ("open", -1) for result in namespaces.values()), namespaces


HARMLESS_DEV = {"null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "fd", "stdin", "stdout"}
HARMLESS_DEV |= {"stderr", "core"}  # symlinks bwrap makes: /proc/self/fd/*, /proc/kcore (closed: see above)


def test_dev_holds_only_harmless_devices():
    body = """
    for name in os.listdir("/dev"):
        info = os.lstat("/dev/" + name)
        kind = "block" if stat.S_ISBLK(info.st_mode) else "char" if stat.S_ISCHR(info.st_mode) else "other"
        target = os.readlink("/dev/" + name) if stat.S_ISLNK(info.st_mode) else None
        found[name] = [kind, stat.filemode(info.st_mode), target]
    for name in os.listdir("/dev/pts") if os.path.isdir("/dev/pts") else []:
        found["pts/" + name] = ["block" if stat.S_ISBLK(os.lstat("/dev/pts/" + name).st_mode) else "pts", "", None]
    for name in ["mem", "kmem", "port", "kmsg", "sda", "vda", "nvme0", "fuse", "net/tun", "kvm", "loop0"]:
        found["exists " + name] = os.path.lexists("/dev/" + name)
    """
    found = _report(body)
    entries = {name: value for name, value in found.items() if not name.startswith(("exists ", "pts/"))}
    assert set(entries) <= HARMLESS_DEV, sorted(set(entries) - HARMLESS_DEV)
    assert not [name for name, value in found.items() if not name.startswith("exists ") and value[0] == "block"]
    assert not [name for name, value in found.items() if name.startswith("exists ") and value]


def test_only_stdio_and_the_answer_socket_are_open_in_the_tenant_process():
    body = """
    listed = os.listdir("/proc/self/fd")  # its own folder fd is closed once listed: it reads ENOENT below
    for name in listed:
        try:
            found[name] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            pass
    """
    found = _report(body)
    print("open in the tenant process:", found)
    sockets = [fd for fd, target in found.items() if target.startswith("socket:")]
    assert len(sockets) == 1
    assert {fd: target for fd, target in found.items() if fd not in sockets} == {
        "0": "/dev/null",
        "1": "/dev/null",
        "2": "/dev/null",
    }


# --- 11. forged and malformed answers --------------------------------------------------------------------------------

FORGE = r"""
import os, struct, time


def _socket_fd():
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                return int(name)
        except OSError:
            pass
    raise LookupError("no socket")


def _send_raw(data):
    fd, view = _socket_fd(), memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _frame(payload):
    return struct.pack("!i", len(payload)) + payload


def forge(kind):
    if kind == "huge-header":  # claims 1 GiB, then sends nothing
        _send_raw(struct.pack("!i", 1 << 30))
        time.sleep(60)
    elif kind == "huge-number":  # a 401-digit integer: inf as a float, an OverflowError as an int
        _send_raw(_frame(b'{"result": [' + b"1" * 401 + b', null], "output": ""}'))
    elif kind == "deep-nesting":
        _send_raw(_frame(b'{"result": ' + b"[" * 100_000 + b"]" * 100_000 + b', "output": ""}'))
    elif kind == "not-utf8":
        _send_raw(_frame(b'{"result": [1.0, null], "output": "\xff\xfe\xc3"}'))
    elif kind == "truncated":  # says 1,000 bytes, sends 10, exits
        _send_raw(struct.pack("!i", 1000) + b'{"result":')
        os._exit(0)
    elif kind == "wrong-type":
        _send_raw(_frame(b'{"result": ["1.0", null], "output": ""}'))
"""
FORGED_KINDS = ["huge-header", "huge-number", "deep-nesting", "not-utf8", "truncated", "wrong-type"]
PLAIN = "def reward(prompt, completion, **fields):\n    return 1.0\n"


def _rss_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # "VmRSS:	  17940 kB"
    raise AssertionError(f"no {key} in /proc/self/status")


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux 4.0+)
    except OSError:
        pass


def _check_parent_memory(run) -> object:
    """run(); the parent's peak RSS during it may not exceed its RSS before by more than 50 MB."""
    _reset_peak_rss()
    before = _rss_kb("VmRSS")
    result = run()
    peak, now = _rss_kb("VmHWM"), _rss_kb("VmRSS")
    print(f"parent RSS: {before / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB, after {now / 1024:.1f} MiB")
    assert max(peak, now) - before <= 50 * 1000, f"RSS grew from {before} kB to a peak of {peak} kB"
    return result


def _plain_sandbox_still_works() -> None:
    assert _score(PLAIN).results == [(1.0, None)]


@pytest.mark.parametrize("kind", FORGED_KINDS)
def test_a_forged_answer_on_the_socket_fails_its_item_only(kind):
    source = FORGE + "\n\ndef reward(prompt, completion, **fields):\n    forge(completion)\n    return 1.0\n"

    def run() -> RewardResults:
        with RewardSandbox(source, timeout_seconds=5) as sandbox:
            try:
                return sandbox.score(["p"], [kind], [{}])
            except SandboxRestartsExhausted as error:  # the one documented exception (not after a single death)
                return RewardResults([(None, str(error))], restarted=True)

    started = time.monotonic()
    scores = _check_parent_memory(run)
    print(f"{kind}: {scores.results} restarted={scores.restarted} in {time.monotonic() - started:.1f} s")
    [(value, error)] = scores.results
    assert value is None and re.search(r"malformed|died|timed out", error), error
    assert scores.restarted
    _plain_sandbox_still_works()


@pytest.mark.parametrize("kind", ["huge-header", "deep-nesting", "huge-number"])
def test_a_forged_answer_at_import_refuses_the_source(kind):
    source = FORGE + f"\nforge({kind!r})\n\n\ndef reward(prompt, completion, **fields):\n    return 1.0\n"

    def run() -> str:
        with RewardSandbox(source, timeout_seconds=5, start_timeout_seconds=5) as sandbox:
            with pytest.raises(RewardSourceError) as refused:  # score() starts the sandbox: documented for a load
                sandbox.score(["p"], ["c"], [{}])
        return str(refused.value)

    refused = _check_parent_memory(run)
    print(f"{kind} at import: {refused}")
    # A forged frame that parses to a dict without "ok" is a refusal too ("could not be loaded").
    assert re.search(r"malformed|died|timed out|could not be loaded", refused), refused
    _plain_sandbox_still_works()


def test_a_batch_reward_returning_a_401_digit_integer_is_a_per_sample_error():
    source = "def reward(prompts, completions, **kwargs):\n    return [10**400] * len(completions)\n"

    def run() -> RewardResults:
        with RewardSandbox(source, timeout_seconds=5) as sandbox:
            return sandbox.score(["p", "p"], ["a", "b"], [{}, {}])

    scores = _check_parent_memory(run)
    print(scores)
    assert not scores.restarted  # the child's own check, not a death
    assert all(value is None and "too large" in error for value, error in scores.results), scores.results
    _plain_sandbox_still_works()
