"""The reward sandbox's seccomp filter, built by syscall name with libseccomp (`pyseccomp`, over the system's
libseccomp2) and exported as the BPF program bubblewrap loads with `--seccomp FD`.

A deny-list, not an allow-list: tenant code is arbitrary Python with whatever packages the operator mounts
(sympy, numpy, math-verify), and an allow-list breaks it in ways nobody can explain to the tenant whenever a libc
or a package starts using a call that was not listed (as clone3 and rseq did). The kernel bounds the rest without
the filter: the code runs as an unprivileged uid with no capabilities and no_new_privs, in its own namespaces,
in a cgroup. What the filter refuses is what would reach past those bounds or widen the kernel's attack surface:
- new processes (fork, vfork, clone without CLONE_THREAD: EAGAIN, as a full process table answers; clone3:
  ENOSYS, so libc falls back to clone, whose flags a filter can read). Threads still work, up to pids.max;
- namespaces and mounts (unshare, setns, clone with a namespace flag, mount and the new mount API, pivot_root,
  chroot), and prctl(PR_SET_PDEATHSIG), by which the sandbox's init could outlive bubblewrap;
- io_uring, bpf, perf_event_open, userfaultfd, the keyrings, ptrace and process_vm_*, kcmp, pidfd_getfd,
  open_by_handle_at (the way out of a bind mount), kernel modules, kexec, reboot, swap, quotas, syslog, acct,
  fanotify, iopl/ioperm, and the clock setters: EPERM.
Only the filter's own architecture is allowed (x86_64 or aarch64; a 32-bit or x32 call kills the process), so
no second syscall table gets around a rule.
"""

from __future__ import annotations

import errno
import os
import tempfile
from functools import lru_cache
from typing import IO

CLONE_THREAD = 0x10000
# Namespace flags of clone: refused even on a thread (the kernel already refuses most of them with CLONE_THREAD).
CLONE_NAMESPACES = {
    "CLONE_NEWNS": 0x20000, "CLONE_NEWCGROUP": 0x2000000, "CLONE_NEWUTS": 0x4000000, "CLONE_NEWIPC": 0x8000000,
    "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000, "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x80,
}  # fmt: skip
PR_SET_PDEATHSIG = 1

DENIED = (
    # namespaces and mounts
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr",
    # kernel attack surface
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key",
    # other processes and the host
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise",
    "name_to_handle_at", "open_by_handle_at", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "quotactl", "syslog", "acct", "fanotify_init",
    "iopl", "ioperm", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "lookup_dcookie",
    "vhangup",
)  # fmt: skip

ARCHITECTURES = ("x86_64", "aarch64")


def _arch_token(seccomp, machine: str) -> int:
    return {"x86_64": seccomp.Arch.X86_64, "aarch64": seccomp.Arch.AARCH64}[machine]


def build_filter(machine: str | None = None):
    """The libseccomp filter for `machine` (uname's name; default this one's). Raises ValueError for another."""
    import pyseccomp as seccomp  # imported here: the API imports this module for its checks, not at start-up

    machine = machine or os.uname().machine
    if machine not in ARCHITECTURES:
        raise ValueError(f"no seccomp filter for {machine}; supported: {', '.join(ARCHITECTURES)}")
    syscall_filter = seccomp.SyscallFilter(seccomp.ALLOW)
    if seccomp.system_arch() != _arch_token(seccomp, machine):
        syscall_filter.add_arch(_arch_token(seccomp, machine))
        syscall_filter.remove_arch(seccomp.Arch.NATIVE)
    # A call of another ABI (i386's int 0x80, x32) is not judged by these rules: kill the process outright.
    syscall_filter.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    eagain, eperm = seccomp.ERRNO(errno.EAGAIN), seccomp.ERRNO(errno.EPERM)
    for name in ("fork", "vfork"):
        _add(seccomp, syscall_filter, eagain, name)
    _add(seccomp, syscall_filter, eagain, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, 0))
    for flag in CLONE_NAMESPACES.values():
        _add(seccomp, syscall_filter, eperm, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    _add(seccomp, syscall_filter, seccomp.ERRNO(errno.ENOSYS), "clone3")
    # The interpreter is its namespace's init and dies with bubblewrap: it may not clear that signal.
    _add(seccomp, syscall_filter, eperm, "prctl", seccomp.Arg(0, seccomp.EQ, PR_SET_PDEATHSIG))
    for name in DENIED:
        _add(seccomp, syscall_filter, eperm, name)
    return syscall_filter


def _add(seccomp, syscall_filter, action: int, name: str, *args) -> None:
    try:
        syscall_filter.add_rule(action, name, *args)
    except (OSError, ValueError):
        pass  # the name does not exist on this architecture (fork, vfork, iopl on aarch64)


@lru_cache(maxsize=4)
def bpf_program(machine: str | None = None) -> bytes:
    """The filter as classic BPF, built once per process (every sandbox needs it, and libseccomp's build is
    not free: benchmarks/README.md has the sandbox's start-up)."""
    with tempfile.TemporaryFile() as handle:
        build_filter(machine).export_bpf(handle)
        handle.seek(0)
        return handle.read()


def filter_file(machine: str | None = None) -> IO[bytes]:
    """The BPF program in an unnamed temporary file, at offset 0, for `bwrap --seccomp FD`."""
    handle = tempfile.TemporaryFile()
    handle.write(bpf_program(machine))
    handle.seek(0)
    return handle
