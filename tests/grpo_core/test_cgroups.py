"""Sandbox cgroups on this machine's real cgroup v1 hierarchies (as root, as CI runs), and the v2 layout's files.

cgroup v2 cannot be tried for real here: its controllers are bound to the v1 hierarchies, so the v2 test writes into
a folder of plain files standing in for a delegated cgroup and checks what was written there."""

import os
import signal
import subprocess
from pathlib import Path

import pytest

from grpo_core.cgroups import CgroupLimits, CgroupParent, SandboxCgroup, find_cgroup_parent
from tests.waiting import wait_for

LIMITS = CgroupLimits(memory_bytes=256 * 1024 * 1024, pids=8, cpus=0.5)


def v1_parent() -> CgroupParent:
    parent, detail = find_cgroup_parent("auto")
    if parent is None or parent.version != 1:
        pytest.skip(f"no cgroup v1 hierarchies to write here: {detail}")
    return parent


def test_a_v1_sandbox_cgroup_holds_its_limits_and_its_processes_and_goes_away():
    cgroup = SandboxCgroup(v1_parent(), LIMITS)
    memory, pids, cpu = cgroup.folders
    try:
        assert int((memory / "memory.limit_in_bytes").read_text()) == LIMITS.memory_bytes
        assert (pids / "pids.max").read_text().strip() == "8"
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
        launcher = 'for f; do echo $$ > "$f"; done; exec sleep 60'
        process = subprocess.Popen(["/bin/sh", "-c", launcher, "sh", *cgroup.procs_files])
        wait_for(lambda: str(process.pid) in (pids / "cgroup.procs").read_text(), "the launcher never joined")
        for folder in cgroup.folders:
            assert str(process.pid) in (folder / "cgroup.procs").read_text().split()
        assert int((pids / "pids.current").read_text()) == 1
    finally:
        cgroup.remove()  # kills what is left in it
    process.wait(60)  # bounds a hang only: the kill is asserted next
    assert process.returncode == -signal.SIGKILL
    assert not any(folder.exists() for folder in cgroup.folders)


def test_a_dead_services_leaves_are_swept_and_a_live_ones_are_kept():
    parent = v1_parent()
    stale = [folder / "sandbox-999999999-0" for folder in parent.folders]
    mine = SandboxCgroup(parent, LIMITS)
    try:
        for folder in stale:
            folder.mkdir()
        find_cgroup_parent("auto")
        assert not any(folder.exists() for folder in stale)
        assert all(folder.exists() for folder in mine.folders)
    finally:
        mine.remove()
        for folder in stale:
            if folder.exists():
                folder.rmdir()


@pytest.mark.unit
def test_off_and_a_folder_that_is_no_delegated_cgroup_say_why(tmp_path):
    assert find_cgroup_parent("off") == (None, "cgroups are turned off (GRPO_SANDBOX_CGROUP=off)")
    parent, why = find_cgroup_parent(str(tmp_path))
    assert parent is None and "is not a cgroup v2 folder" in why
    (tmp_path / "cgroup.subtree_control").write_text("pids\n")
    parent, why = find_cgroup_parent(str(tmp_path))
    assert parent is None and "lacks cpu memory" in why


@pytest.mark.unit
def test_a_v2_sandbox_cgroup_writes_memory_pids_and_cpu_bounds(tmp_path):
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory pids\n")
    parent, detail = find_cgroup_parent(str(tmp_path))
    assert parent == CgroupParent(2, (tmp_path,)), detail
    cgroup = SandboxCgroup(parent, LIMITS)
    [leaf] = cgroup.folders
    assert leaf.parent == tmp_path and leaf.name.startswith(f"sandbox-{os.getpid()}-")
    written = {path.name: path.read_text() for path in leaf.iterdir()}
    assert written == {
        "memory.max": str(LIMITS.memory_bytes),
        "memory.swap.max": "0",
        "memory.oom.group": "1",
        "pids.max": "8",
        "cpu.max": "50000 100000",
    }
    assert cgroup.procs_files == [str(leaf / "cgroup.procs")]
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cgroup.oom_killed()
    for path in leaf.iterdir():
        path.unlink()
    cgroup.remove()
    assert not Path(leaf).exists()
