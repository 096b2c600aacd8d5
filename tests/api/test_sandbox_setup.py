"""`grpo sandbox-cgroup` (api/sandbox_setup.py): the container entrypoint's root step that delegates a cgroup v2
folder for reward sandboxes to the service's non-root user.

A real cgroup v2 tree with free controllers cannot be mounted on this cgroup v1 machine (its controllers are bound
to the v1 hierarchies), and reorganising the machine's own tree is not a test's business; so the tree here is a
folder of plain files in tmp_path, stand-ins for the kernel's interface files. What is checked is what the command
writes where, in which order, and what it hands to the user; the kernel's answers to those writes are not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.sandbox_setup import ENABLE, SetupError, delegate_cgroup

pytestmark = pytest.mark.unit

TOP = Path(__file__).resolve().parents[2]


def fake_v2_tree(tmp_path: Path, *, controllers: str = "cpuset cpu io memory hugetlb pids rdma misc") -> Path:
    """The top of a container's private cgroup namespace: pid 1 and the entrypoint in it, no controller enabled."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.type").write_text("domain\n")  # a namespace root is a cgroup below the host's root: it has one
    (root / "cgroup.procs").write_text("1\n7\n42\n")
    (tmp_path / "self-cgroup").write_text("0::/\n")
    return root


@pytest.fixture
def chowns(monkeypatch) -> list[tuple[Path, int, int]]:
    """os.chown recorded, not done: giving a file to another uid needs root, and the stand-ins are plain files."""
    calls: list[tuple[Path, int, int]] = []
    monkeypatch.setattr(os, "chown", lambda path, uid, gid: calls.append((Path(path), uid, gid)))
    return calls


def test_it_moves_the_top_processes_enables_the_controllers_and_delegates_the_folder(tmp_path, chowns):
    root = fake_v2_tree(tmp_path)

    done = delegate_cgroup("4321", join=42, root=root, self_cgroup=tmp_path / "self-cgroup")

    # Every process at the top goes to the leaf `init`, one write each (the kernel takes one pid per write), before
    # the top enables controllers for its children: v2 forbids both in one cgroup.
    assert (root / "init" / "cgroup.procs").read_text() == "1\n7\n42\n"
    assert (root / "cgroup.subtree_control").read_text() == ENABLE + "\n"
    folder = root / "grpo-sandbox"
    assert (folder / "cgroup.subtree_control").read_text() == ENABLE + "\n"
    # The entrypoint's pid goes to the service's leaf beside the sandboxes, inside the delegated folder.
    assert (folder / "service" / "cgroup.procs").read_text() == "42\n"
    # A uid with no passwd entry gets the same number as gid; only the folder and the files the kernel's delegation
    # model names change hands (the limit files stay root's).
    assert chowns == [
        (folder, 4321, 4321),
        (folder / "cgroup.procs", 4321, 4321),
        (folder / "cgroup.threads", 4321, 4321),
        (folder / "cgroup.subtree_control", 4321, 4321),
        (folder / "service", 4321, 4321),
        (folder / "service" / "cgroup.procs", 4321, 4321),
    ]
    assert "moved 3 process(es)" in done[0] and "uid 4321 gid 4321" in done[1] and "process 42" in done[2]


def test_a_user_name_is_looked_up_and_a_second_run_changes_nothing_more(tmp_path, chowns):
    import pwd

    me = pwd.getpwuid(os.getuid())
    root = fake_v2_tree(tmp_path)
    (root / "cgroup.procs").write_text("")  # a rerun, from `docker exec`: the top is empty by then
    (tmp_path / "self-cgroup").write_text("0::/init\n")

    delegate_cgroup(me.pw_name, root=root, self_cgroup=tmp_path / "self-cgroup")

    assert {(uid, gid) for _, uid, gid in chowns} == {(me.pw_uid, me.pw_gid)}
    assert not (root / "grpo-sandbox" / "service" / "cgroup.procs").exists()  # no --join: nothing moved there


@pytest.mark.parametrize(
    ("own", "controllers", "message"),
    [
        ("0::/system.slice/docker-1.scope", "memory pids cpu", "needs a private cgroup namespace"),
        ("0::/", "memory pids", "cgroup.controllers lacks cpu"),
    ],
)
def test_it_refuses_a_tree_that_is_not_the_containers_own_or_lacks_a_controller(
    tmp_path, chowns, own, controllers, message
):
    root = fake_v2_tree(tmp_path, controllers=controllers)
    (tmp_path / "self-cgroup").write_text(own + "\n")

    with pytest.raises(SetupError, match=message):
        delegate_cgroup("4321", root=root, self_cgroup=tmp_path / "self-cgroup")
    assert not (root / "init").exists() and chowns == []


def test_a_failed_write_names_the_file_and_the_errno(tmp_path, chowns):
    root = fake_v2_tree(tmp_path)
    (root / "cgroup.subtree_control").unlink()
    (root / "cgroup.subtree_control").mkdir()  # writing it now fails with EISDIR

    with pytest.raises(SetupError) as raised:
        delegate_cgroup("4321", root=root, self_cgroup=tmp_path / "self-cgroup")
    assert str(raised.value) == (f"cannot write '{ENABLE}' to {root}/cgroup.subtree_control: Is a directory (EISDIR)")


def test_a_user_that_does_not_exist_is_refused(tmp_path, chowns):
    with pytest.raises(SetupError, match="no user 'no-such-user-here' in /etc/passwd"):
        delegate_cgroup("no-such-user-here", root=fake_v2_tree(tmp_path), self_cgroup=tmp_path / "self-cgroup")


@pytest.mark.skipif(
    Path("/sys/fs/cgroup/cgroup.controllers").exists(),
    reason="cgroup v2 here: the real command would reorganise this machine's (or container's) cgroups",
)
@pytest.mark.slow
def test_on_cgroup_v1_the_real_command_says_nothing_is_needed_and_exits_0():
    run = subprocess.run(
        [sys.executable, "-m", "api.cli", "sandbox-cgroup", "--user", "nobody"],
        cwd=TOP,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "nothing to delegate" in run.stdout and "GRPO_REWARD_ALLOW_WITHOUT_CGROUP=1" in run.stdout
