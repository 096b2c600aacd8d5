"""Hostile tenant reward code that goes after the sandbox's privilege and resource bounds, for the chaos suite
(tests/chaos/test_sandbox_privilege.py).

Each case is the source a tenant uploads, in the style of tests/chaos/tenant_code.py: what it tries, it tries
itself and catches its own errors, printing `REACHED <what> ...` for each success (a breach the test looks for in
the dry run's output and in the job's stored output) and `refused <what> <why>` otherwise, and returns a number.
The cases that must be stopped by the kernel (memory past the limit) or by the parent's frame reader (forged
answers) do not return: the sandbox is killed under them.

The test passes what the code looks for (the repo root, the data folder, the host's namespace inodes) as params.
"""

HELPERS = """
import ctypes, os, stat, struct, sys

libc = ctypes.CDLL(None, use_errno=True)

def _errno():
    return os.strerror(ctypes.get_errno())

def _socket_fd():
    # The child's end of the socketpair to its parent: any open socket (only one is expected).
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                return int(name)
        except OSError:
            pass
    raise LookupError("no socket among " + " ".join(os.listdir("/proc/self/fd")))

def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
"""

# A forged frame as the parent reads them: a "!i" length, then that many bytes (meant to be JSON).
FORGE = (
    HELPERS
    + """
import time, zlib

MiB = 1 << 20

def _frame(payload):
    return struct.pack("!i", len(payload)) + payload

def _valid(padding):
    return b'{"result": [1.0, null], "output": "' + b"x" * padding + b'"}'

MALFORMED = ("header_1gib", "frame_50mb", "many_1mib_frames", "huge_int", "nested", "bad_utf8")

def forge(mode, completion=""):
    if mode == "mixed":  # one of the malformed frames, picked by the completion (a restart forgets any counter)
        mode = MALFORMED[zlib.crc32(completion.encode()) % len(MALFORMED)]
    fd = _socket_fd()
    print("forging", mode, "on fd", fd)
    try:
        if mode == "header_1gib":
            # Claims a 1 GiB frame, then sends it a MiB at a time: the parent must refuse at the header.
            _write_all(fd, struct.pack("!i", 1 << 30))
            chunk = b"x" * MiB
            for _ in range(1024):
                _write_all(fd, chunk)
        elif mode == "frame_50mb":
            payload = _valid(50 * MiB)
            _write_all(fd, _frame(payload))
        elif mode == "many_1mib_frames":
            frame = _frame(_valid(MiB))
            for _ in range(200):
                _write_all(fd, frame)
        elif mode == "huge_int":
            _write_all(fd, _frame(b'{"result": [1' + b"0" * 400 + b', null], "output": ""}'))
        elif mode == "nested":
            _write_all(fd, _frame(b'{"result": ' + b"[" * 100_000 + b"]" * 100_000 + b', "output": ""}'))
        elif mode == "bad_utf8":
            _write_all(fd, _frame(b'{"result": [1.0, null], "output": "\\xff\\xfe\\xc3("}'))
        elif mode == "truncated":
            _write_all(fd, struct.pack("!i", 1000) + b'{"result": ')
            os._exit(0)
        else:
            raise ValueError(mode)
    except OSError as error:  # the parent closed its end: it stopped reading, as it should
        print("refused write", mode, type(error).__name__)
        time.sleep(60)
    print("REACHED forged-answer-ignored", mode)  # its own answer follows: the parent must not have taken the forged one
    return 1.0
"""
)

SOURCES: dict[str, str] = {
    # 1. Who it is, outside: /proc/self/uid_map's second column is the host uid its uid maps to.
    "uid_map": HELPERS
    + """
def reward(prompt, completion, **fields):
    maps = {}
    for name in ("uid_map", "gid_map"):
        with open("/proc/self/" + name) as handle:
            text = handle.read()
        print(name, repr(text))
        maps[name] = [int(line.split()[1]) for line in text.splitlines() if line.split()]
    with open("/proc/self/status") as handle:
        status = dict(line.split(":", 1) for line in handle.read().splitlines() if ":" in line)
    print("Uid", status["Uid"].split(), "CapEff", status["CapEff"].strip(), "CapBnd", status["CapBnd"].strip())
    if 0 in maps["uid_map"] or 0 in maps["gid_map"]:
        print("REACHED root-uid-outside", maps)
    if int(status["CapEff"], 16) or int(status["CapPrm"], 16):
        print("REACHED capabilities", status["CapEff"].strip())
    return float(min(maps["uid_map"]))
""",
    # 2. The host's kernel knobs: only ever opened for writing, then closed; nothing is written.
    "core_pattern": HELPERS
    + """
# The host's, then two the kernel keeps per IPC namespace (writable by uid 0 of the user namespace that owns the
# sandbox's: never the sandbox's uid). Not kernel/ns_last_pid: it is mode 0666 and checks a write, never an open.
KNOBS = ("/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches", "/proc/sys/kernel/pid_max",
         "/proc/sys/fs/file-max", "/proc/sys/vm/overcommit_memory", "/proc/sys/kernel/shmmax",
         "/proc/sys/fs/mqueue/msg_max")

def reward(prompt, completion, **fields):
    opened = 0
    for path in KNOBS:
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as error:
            print("refused", path, error.strerror)
            continue
        os.close(fd)  # never written
        print("REACHED knob-open-for-writing", path)
        opened += 1
    return float(opened)
""",
    # 3. Memory outside the address space (RLIMIT_AS does not see it): only the cgroup bounds these.
    "memfd_1536mib": HELPERS
    + """
def reward(prompt, completion, **fields):
    # RLIMIT_FSIZE (64 MiB) bounds each memfd, so it takes many of 48 MiB each: 1.5 GiB in all.
    chunk, held, fds = b"\\1" * (1 << 20), 0, []
    while held < 1536:
        fd = os.memfd_create("grow")
        fds.append(fd)
        for _ in range(48):
            _write_all(fd, chunk)
            held += 1
    print("REACHED memfd-MiB", held)
    return float(held)
""",
    "sysv_shm_1536mib": HELPERS
    + """
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
libc.shmget.restype = ctypes.c_int
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]

def reward(prompt, completion, **fields):
    # Segments of 128 MiB, each attached, touched and detached: they stay (no IPC_RMID) after detaching, so the
    # address-space limit never sees more than one of them.
    size, held = 128 << 20, 0
    while held < 1536:
        shmid = libc.shmget(IPC_PRIVATE, size, IPC_CREAT | 0o600)
        if shmid < 0:
            print("refused shmget", _errno())
            return float(held)
        address = libc.shmat(shmid, None, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            print("refused shmat", _errno())
            return float(held)
        ctypes.memset(address, 1, size)
        libc.shmdt(ctypes.c_void_p(address))
        held += 128
    print("REACHED shm-MiB", held)
    return float(held)
""",
    "userns_tmpfs": HELPERS
    + """
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

def _fill(folder):
    chunk, held = b"\\1" * (1 << 20), 0
    for n in range(24):  # files of 64 MiB (RLIMIT_FSIZE), 1.5 GiB in all
        with open(f"{folder}/fill{n}", "wb") as handle:
            for _ in range(64):
                handle.write(chunk)
                held += 1
    return held

def reward(prompt, completion, **fields):
    # A raw clone into new user and mount namespaces (a new process: the child leaves at once).
    number = {"x86_64": 56, "aarch64": 220}[os.uname().machine]
    pid = libc.syscall(number, CLONE_NEWUSER | CLONE_NEWNS | 17, 0, 0, 0, 0)  # clone(flags | SIGCHLD)
    if pid == 0:
        os._exit(0)
    if pid > 0:
        print("REACHED clone", "CLONE_NEWUSER|CLONE_NEWNS", pid)
        os.waitpid(pid, 0)
    else:
        print("refused clone(CLONE_NEWUSER|CLONE_NEWNS)", _errno())
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        print("refused unshare(CLONE_NEWUSER|CLONE_NEWNS)", _errno())
    else:
        print("REACHED unshare", "CLONE_NEWUSER|CLONE_NEWNS")
    os.makedirs("/tmp/mnt", exist_ok=True)
    if libc.mount(b"none", b"/tmp/mnt", b"tmpfs", 0, b"size=4g") != 0:
        print("refused mount tmpfs", _errno())
        return 0.0
    print("REACHED mount", "tmpfs")
    held = _fill("/tmp/mnt")
    print("REACHED tmpfs-MiB", held)
    return float(held)
""",
    # 4. Native threads past pids.max: each blocks in pause() on a 16 KiB stack.
    "threads_3000": HELPERS
    + """
libc.pthread_create.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
libc.pthread_attr_setstacksize.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

def reward(prompt, completion, **fields):
    attr = ctypes.create_string_buffer(256)
    libc.pthread_attr_init(attr)
    for stack in (16 << 10, 64 << 10):  # 16 KiB, or glibc's minimum if larger
        if libc.pthread_attr_setstacksize(attr, stack) == 0:
            break
    pause = ctypes.cast(libc.pause, ctypes.c_void_p)
    started, failures = 0, {}
    for _ in range(3000):
        handle = ctypes.c_ulong()
        code = libc.pthread_create(ctypes.byref(handle), attr, pause, None)
        if code == 0:
            started += 1
        else:
            failures[os.strerror(code)] = failures.get(os.strerror(code), 0) + 1
    print("threads started", started, "of 3000 with", stack, "byte stacks; refused:", failures)
    if started >= 64:
        print("REACHED threads", started)
    return float(started)
""",
    # 5. Forged answers, per sample: `mode` says which (see FORGE); every one must be refused by the parent.
    "forge": FORGE
    + """
def reward(prompt, completion, mode, **fields):
    return forge(mode, completion)
""",
    # ... and the batch shape returning an integer no float holds.
    "forge_batch_huge_int": """
def reward(prompts, completions, **kwargs):
    return [10**400 for _ in completions]
""",
    # 6. Other ways in.
    "ways_in": HELPERS
    + """
import errno

PTRACE_ATTACH = 16
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
# bubblewrap's --dev: the nodes every sandbox gets; anything else is the host's.
DEV = {"console", "core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
       "stdout", "tty", "urandom", "zero"}

def _first_mapping(pid):
    with open(f"/proc/{pid}/maps") as handle:
        return int(handle.readline().split("-")[0], 16)

def reward(prompt, completion, repo, data_dir, host_namespaces, **fields):
    reached = 0
    # Every other process in its pid namespace (bubblewrap's init, unless this process is pid 1 itself): its
    # memory, opened to read and to write (never written), and read.
    others = sorted(int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid())
    print("this process is pid", os.getpid(), "; the others in its pid namespace:", others)
    for pid in others:
        for mode, flags in (("read", os.O_RDONLY), ("read-write", os.O_RDWR)):
            try:
                fd = os.open(f"/proc/{pid}/mem", flags)
            except OSError as error:
                print("refused open", f"/proc/{pid}/mem", mode, error.strerror)
                continue
            try:
                address = _first_mapping(pid)
                data = os.pread(fd, 16, address)
                print("REACHED other-process-memory", f"/proc/{pid}/mem", mode, "read", len(data), "bytes at",
                      hex(address))
            except OSError as error:
                print("REACHED other-process-memory", f"/proc/{pid}/mem", mode, "opened; reading:", error.strerror)
            finally:
                os.close(fd)
            reached += 1
    # ptrace, attaching to init.
    if libc.ptrace(PTRACE_ATTACH, 1, None, None) == 0:
        print("REACHED ptrace attach 1")
        reached += 1
    else:
        print("refused ptrace attach 1", _errno())
    # Namespaces: a handle on one of the host's, and setns into any of pid 1's.
    own = {}
    for name in sorted(os.listdir("/proc/self/ns")):
        own[name] = os.stat(f"/proc/self/ns/{name}").st_ino
    for name in sorted(os.listdir("/proc/1/ns")):
        path = f"/proc/1/ns/{name}"
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as error:
            print("refused open", path, error.strerror)
            continue
        inode = os.fstat(fd).st_ino
        shared = "own" if own.get(name) == inode else "other"
        print("opened", path, inode, shared, "namespace")
        if inode == host_namespaces.get(name) and own.get(name) != inode:
            print("REACHED host-namespace", path)
            reached += 1
        if libc.setns(fd, 0) == 0:
            print("REACHED setns", path)
            reached += 1
        else:
            print("refused setns", path, _errno())
        os.close(fd)
    # /dev and /sys.
    devices = sorted(os.listdir("/dev"))
    print("/dev:", " ".join(devices))
    for name in devices:
        if name not in DEV:
            print("REACHED device", "/dev/" + name)
            reached += 1
    try:
        listed = os.listdir("/sys")
    except OSError as error:
        print("refused list /sys", error.strerror)
    else:
        print("/sys:", " ".join(sorted(listed)) or "(empty)")
        if listed:
            print("REACHED sysfs", len(listed), "entries")
            reached += 1
    # File descriptors open across exec: 0, 1, 2 and its socket only (and the one listing them).
    socket_fd = _socket_fd()
    listing = os.listdir("/proc/self/fd")
    for name in sorted(listing, key=int):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own descriptor, closed by now
        print("fd", fd, target)
        if fd not in (0, 1, 2, socket_fd) and not target.startswith("/proc/"):
            print("REACHED inherited-fd", fd, target)
            reached += 1
    # What names the host's folders.
    paths = ["/proc/self/cmdline", "/proc/self/mountinfo", "/proc/self/cgroup", "/proc/self/environ"]
    for pid in sorted({1, *others}):
        paths += [f"/proc/{pid}/cmdline", f"/proc/{pid}/mountinfo", f"/proc/{pid}/environ"]
    for path in paths:
        try:
            with open(path, "rb") as handle:
                text = handle.read().replace(b"\\0", b" ").decode(errors="replace")
        except OSError as error:
            print("refused", path, error.strerror)
            continue
        print(path, repr(text[:3000]))
        # An environment: its own is cleared (--clearenv), but bubblewrap's init keeps the launcher's.
        category = "host-path-in-environ" if path.endswith("environ") else "host-path"
        for secret in (repo, data_dir):
            if secret in text:
                print("REACHED", category, path, "names", secret)
                reached += 1
    return float(reached)
""",
}
