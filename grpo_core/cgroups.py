"""One cgroup per reward sandbox, so the kernel bounds its memory (tmpfs, SysV shared memory and memfd pages
included: they are charged to the cgroup whose process touched them), its processes and threads, and its CPU.

Two layouts, found at run time (`find_cgroup_parent`):
- cgroup v1 (this machine, many older hosts and CI runners): the `memory`, `pids` and `cpu` controllers are
  mounted as separate hierarchies under /sys/fs/cgroup. A folder `grpo-sandbox` is made under the service's own
  cgroup in each (so whatever limits the operator put on the service hold over its sandboxes too). Needs root.
- cgroup v2 (systemd hosts, current Docker): one unified tree. The sandboxes' parent is a folder that has
  `memory pids cpu` in its cgroup.subtree_control, holds no process itself (v2's rule) and is writable by the
  service's user: `GRPO_SANDBOX_CGROUP` names it (a systemd unit with `Delegate=yes`, or the folder
  `grpo sandbox-cgroup` prepares in a container's entrypoint); "auto" takes `<mount>/grpo-sandbox` when it is set
  up like that.

Each sandbox gets a leaf `sandbox-<pid>-<n>` in each hierarchy; the launcher writes its own pid there before it
execs bubblewrap, so the tenant's code never runs outside it. Closing the sandbox kills what is left in the leaf
and removes it.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_MOUNT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
SANDBOX_FOLDER = "grpo-sandbox"  # what "auto" looks for on v2, and `grpo sandbox-cgroup` makes
_counter = itertools.count()


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int
    """memory.max: RAM charged to the sandbox, page cache, tmpfs, shm and memfd included; no swap."""
    pids: int
    """pids.max: processes and threads, bubblewrap's own two included."""
    cpus: float
    """CPU bandwidth, in cores (cpu.max or cfs_quota_us over a 100 ms period)."""


@dataclass(frozen=True)
class CgroupParent:
    """Where sandbox cgroups are made: version 1 or 2, and the parent folder of each hierarchy."""

    version: int
    folders: tuple[Path, ...]  # v1: one per controller in V1_CONTROLLERS order; v2: one

    def describe(self) -> str:
        return f"cgroup v{self.version} ({', '.join(str(f) for f in self.folders)})"


def _own_cgroups() -> dict[str, str]:
    """{controller or "" for v2: path of this process's cgroup}, from /proc/self/cgroup."""
    found: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            found[name] = path
    return found


def _usable_v2(folder: Path) -> str | None:
    """None when `folder` can parent sandbox cgroups (controllers delegated, writable), else why not."""
    try:
        enabled = set((folder / "cgroup.subtree_control").read_text().split())
    except OSError as error:
        return f"{folder} is not a cgroup v2 folder ({error.strerror})"
    missing = {"memory", "pids", "cpu"} - enabled
    if missing:
        return f"{folder}/cgroup.subtree_control lacks {' '.join(sorted(missing))}"
    if not os.access(folder, os.W_OK):
        return f"{folder} is not writable by uid {os.geteuid()}"
    return None


def find_cgroup_parent(setting: str = "auto") -> tuple[CgroupParent | None, str]:
    """(the parent for sandbox cgroups, a sentence naming it) or (None, a sentence saying why there is none).
    Leaves left by a process that died without closing its sandboxes (SIGKILL) are removed on the way.

    setting: "auto", "off", or a cgroup v2 folder (GRPO_SANDBOX_CGROUP)."""
    parent, detail = _find_parent(setting)
    if parent is not None:
        _remove_stale_leaves(parent)
    return parent, detail


def _remove_stale_leaves(parent: CgroupParent) -> None:
    for folder in parent.folders:
        for leaf in folder.glob("sandbox-*-*"):
            pid = leaf.name.split("-")[1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                try:
                    leaf.rmdir()
                except OSError:
                    pass  # a process still in it (a new service reusing the pid): left alone


def _find_parent(setting: str) -> tuple[CgroupParent | None, str]:
    if setting == "off":
        return None, "cgroups are turned off (GRPO_SANDBOX_CGROUP=off)"
    if setting != "auto":
        folder = Path(setting)
        problem = _usable_v2(folder)
        if problem:
            return None, f"GRPO_SANDBOX_CGROUP: {problem}"
        parent = CgroupParent(2, (folder,))
        return parent, parent.describe()
    if (CGROUP_MOUNT / "cgroup.controllers").exists():  # the unified tree is mounted at the top: v2
        folder = CGROUP_MOUNT / SANDBOX_FOLDER
        problem = _usable_v2(folder)
        if problem:
            return None, f"cgroup v2 without a delegated folder for sandboxes ({problem}); set GRPO_SANDBOX_CGROUP"
        parent = CgroupParent(2, (folder,))
        return parent, parent.describe()
    own = _own_cgroups()
    folders = []
    for name in V1_CONTROLLERS:
        mount = CGROUP_MOUNT / name
        if name not in own or not (mount / "cgroup.procs").exists():
            return (
                None,
                f"no cgroup v1 `{name}` hierarchy is mounted at {mount}, and no cgroup v2 tree at {CGROUP_MOUNT}",
            )
        folder = mount / own[name].lstrip("/") / SANDBOX_FOLDER
        try:
            folder.mkdir(exist_ok=True)
        except OSError as error:
            return None, f"cannot make {folder} ({error.strerror}): cgroup v1 needs the service to run as root"
        if not os.access(folder, os.W_OK):  # made by a root-run service before this one
            return None, f"{folder} is not writable by uid {os.geteuid()}: cgroup v1 needs the service to run as root"
        folders.append(folder)
    parent = CgroupParent(1, tuple(folders))
    return parent, parent.describe()


class SandboxCgroup:
    """The leaf cgroup(s) of one sandbox, limits written; `procs_files` are what the launcher writes its pid to."""

    def __init__(self, parent: CgroupParent, limits: CgroupLimits):
        self.parent = parent
        name = f"sandbox-{os.getpid()}-{next(_counter)}"
        self.folders = [folder / name for folder in parent.folders]
        for folder in self.folders:
            folder.mkdir()
        try:
            self._write_limits(limits)
        except OSError:
            self.remove()
            raise

    def _write_limits(self, limits: CgroupLimits) -> None:
        quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
        if self.parent.version == 2:
            [leaf] = self.folders
            _write(leaf / "memory.max", limits.memory_bytes)
            _write(leaf / "memory.swap.max", 0, optional=True)
            _write(leaf / "memory.oom.group", 1, optional=True)  # an OOM kills the whole sandbox, not one thread
            _write(leaf / "pids.max", limits.pids)
            _write(leaf / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            return
        memory, pids, cpu = self.folders
        _write(memory / "memory.limit_in_bytes", limits.memory_bytes)
        # With swap accounting, memory+swap gets the same bound: tmpfs pages must not escape to swap.
        _write(memory / "memory.memsw.limit_in_bytes", limits.memory_bytes, optional=True)
        _write(pids / "pids.max", limits.pids)
        _write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
        _write(cpu / "cpu.cfs_quota_us", quota)

    @property
    def procs_files(self) -> list[str]:
        return [str(folder / "cgroup.procs") for folder in self.folders]

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer struck inside this sandbox's memory cgroup."""
        memory = self.folders[0]
        name = "memory.events" if self.parent.version == 2 else "memory.oom_control"
        try:
            for line in (memory / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def remove(self) -> None:
        """Kill whatever is left in the leaf (a thread bwrap's init had not reaped yet) and remove it."""
        for folder in self.folders:
            deadline = time.monotonic() + 5
            while folder.exists():
                try:
                    folder.rmdir()
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break  # left for the operator: an empty leaf holds nothing
                    _kill_members(folder)
                    time.sleep(0.01)


def _kill_members(folder: Path) -> None:
    if (folder / "cgroup.kill").exists():
        _write(folder / "cgroup.kill", 1, optional=True)
        return
    try:
        pids = [int(pid) for pid in (folder / "cgroup.procs").read_text().split()]
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _write(path: Path, value: object, *, optional: bool = False) -> None:
    try:
        path.write_text(str(value))
    except OSError:
        if not optional:
            raise
