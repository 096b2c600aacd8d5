"""`grpo sandbox-cgroup`: a container entrypoint's one root step on cgroup v2, after which the API or worker runs
as a non-root user and still gives each reward sandbox a cgroup of its own (grpo_core/cgroups.py).

Two kernel rules shape the layout:
- no internal processes: a cgroup that enables controllers for its children (cgroup.subtree_control) may hold no
  process itself. The top of the container's cgroup namespace holds its init and this entrypoint, so they move to a
  leaf `init` first (where `docker exec` processes land too: runc joins pid 1's cgroup when the top is no leaf).
- delegation containment: a non-root user may move a process from one cgroup to another only if it may write the
  cgroup.procs of their common ancestor. The service moves each sandbox's launcher from its own cgroup into the
  sandbox's leaf, so it must run inside the folder delegated to it: in FOLDER/service (the entrypoint passes its own
  pid, which then execs the service), beside the sandbox leaves.

    /sys/fs/cgroup            the container's own cgroup (a private cgroup namespace); +memory +pids +cpu
    ├── init                  pid 1, `docker exec` processes
    └── grpo-sandbox          owned by USER; +memory +pids +cpu; no process of its own ("auto" finds it)
        ├── service           the API or worker, as USER
        └── sandbox-<pid>-<n> one per reward sandbox, made by the service

Pure standard library: it runs as root before anything else, and imports nothing of the service.
"""

from __future__ import annotations

import errno
import os
import pwd
from collections.abc import Callable
from functools import partial
from pathlib import Path

from grpo_core.cgroups import CGROUP_MOUNT as CGROUP_ROOT
from grpo_core.cgroups import SANDBOX_FOLDER

ENABLE = "+memory +pids +cpu"
# What the kernel's delegation model hands to the delegatee (cgroup-v2.rst, "Delegation"): the folder, and the three
# files that move processes and enable controllers; the limit files stay root's.
DELEGATED_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")
_HINTS = {
    errno.EROFS: "the cgroup mount is read-only (Docker 28+: security_opt writable-cgroups=true, docker-compose.yml)",
    errno.EACCES: "run it as root: it is the container entrypoint's one root step",
    errno.EPERM: "run it as root: it is the container entrypoint's one root step",
    errno.EBUSY: "a process is still in that cgroup",
}


class SetupError(RuntimeError):
    """A step failed; the message names the file and what the kernel answered."""


def delegate_cgroup(
    user: str,
    folder: Path | None = None,
    *,
    join: int | None = None,
    root: Path = CGROUP_ROOT,
    self_cgroup: Path = Path("/proc/self/cgroup"),
) -> list[str]:
    """Delegate `folder` (default root/grpo-sandbox) to `user` (a name or uid) as the layout above; put process
    `join` in folder/service. Returns what it did, one sentence a line; raises SetupError. Idempotent."""
    if not (root / "cgroup.controllers").exists():
        return [
            f"{root} is no cgroup v2 tree (cgroup v1, or none): nothing to delegate, and nothing can be. A non-root "
            "service gets no cgroup per sandbox there: tenant reward code is refused unless "
            "GRPO_REWARD_ALLOW_WITHOUT_CGROUP=1 (or the service runs as root, which cgroup v1 needs)"
        ]
    folder = folder or root / SANDBOX_FOLDER
    uid, gid = _ids(user)
    if folder.parent != root:
        raise SetupError(f"{folder} is not directly under {root}")
    own = next((line[3:] for line in _read(self_cgroup).splitlines() if line.startswith("0::")), "?")
    if own not in ("/", "/init") or not (root / "cgroup.type").exists():  # the host's root cgroup has no cgroup.type
        raise SetupError(
            f"{root} is not this container's own cgroup (this process is in {own}): this needs a private cgroup "
            "namespace (compose: cgroup: private; docker run: --cgroupns=private), and never runs on a host's tree"
        )
    missing = {"memory", "pids", "cpu"} - set(_read(root / "cgroup.controllers").split())
    if missing:
        raise SetupError(f"{root}/cgroup.controllers lacks {' '.join(sorted(missing))}: not delegated to the container")
    _mkdir(root / "init")
    pids = _read(root / "cgroup.procs").split()
    for pid in pids:
        _write(root / "init" / "cgroup.procs", pid, gone_ok=True)
    _write(root / "cgroup.subtree_control", ENABLE)
    _mkdir(folder)
    _write(folder / "cgroup.subtree_control", ENABLE)
    service = folder / "service"
    _mkdir(service)
    if join is not None:
        _write(service / "cgroup.procs", str(join))
    for path in (folder, *(folder / name for name in DELEGATED_FILES), service, service / "cgroup.procs"):
        _do("chown", path, partial(os.chown, path, uid, gid))
    return [
        f"moved {len(pids)} process(es) from {root} to {root / 'init'}; enabled {ENABLE} in {root} and {folder}",
        f"{folder} and its {', '.join(DELEGATED_FILES)} now belong to uid {uid} gid {gid}; sandboxes go there",
        f"process {join} is in {service}" if join is not None else f"run the service in {service}",
    ]


def _ids(user: str) -> tuple[int, int]:
    """(uid, gid) of a user name, or of a uid (its passwd group, or the same number where it has no entry)."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if user.isdigit():
            return int(user), int(user)
        raise SetupError(f"no user {user!r} in /etc/passwd") from None
    return entry.pw_uid, entry.pw_gid


def _do(what: str, path: Path, action: Callable[[], object]):
    try:
        return action()
    except OSError as error:
        code = error.errno or 0
        hint = _HINTS.get(code)
        raise SetupError(
            f"cannot {what} {path}: {os.strerror(code)} ({errno.errorcode.get(code, code)})"
            + (f"; {hint}" if hint else "")
        ) from None


def _read(path: Path) -> str:
    return _do("read", path, path.read_text)


def _mkdir(path: Path) -> None:
    _do("make", path, lambda: path.mkdir(exist_ok=True))


def _write(path: Path, value: str, *, gone_ok: bool = False) -> None:
    """One write() of `value` (the kernel takes one pid per write to cgroup.procs); appended, so a stand-in file keeps
    every value written. gone_ok: a process that exited meanwhile (ESRCH) is no error."""

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{value}\n".encode())
        except ProcessLookupError:
            if not gone_ok:
                raise
        finally:
            os.close(fd)

    _do(f"write {value!r} to", path, write)
