"""Hostile tenant reward code for the sandbox's chaos suite (tests/chaos/test_tenant_code.py).

Each case is the source a tenant uploads. The code that probes (connects, reads, writes) catches its own errors
and prints what it reached: `REACHED <what> <bytes>` for each success, so a leak shows up in the job's stored
output and in its score (the number of bytes or connections reached; 0 when the sandbox holds). What it read is
printed too, so a canary planted in protected data would appear in what the API serves. The job passes the
targets (ports, paths, the worker's pid) as params.
"""

PROBE_HELPERS = """
import os, socket

def _read(path, reached):
    try:
        with open(path, "rb") as handle:
            data = handle.read(1 << 20)
    except Exception as error:
        print("refused", path, type(error).__name__)
        return 0
    print("REACHED", path, len(data), data[:4096])
    reached.append(len(data))
    return len(data)

def _walk(top, reached):
    total = 0
    for root, _dirs, files in os.walk(top):
        for name in files:
            total += _read(os.path.join(root, name), reached)
    if not os.path.exists(top):
        print("refused", top, "not visible")
    return total
"""

SOURCES: dict[str, str] = {
    "connect": PROBE_HELPERS
    + """
def reward(prompt, completion, ports, **fields):
    reached = 0
    for port in ports:
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.settimeout(1)
                    sock.connect((host, port))
                print("REACHED connection", host, port)
                reached += 1
            except Exception as error:
                print("refused", host, port, type(error).__name__)
    for host in ("10.0.2.2", "8.8.8.8"):
        try:
            with socket.create_connection((host, 53), timeout=1):
                print("REACHED connection", host)
                reached += 1
        except Exception as error:
            print("refused", host, type(error).__name__)
    return float(reached)
""",
    "read_sqlite": PROBE_HELPERS
    + """
def reward(prompt, completion, database, **fields):
    reached = []
    for path in (database, database + "-wal"):
        _read(path, reached)
    return float(sum(reached))
""",
    "read_data_folder": PROBE_HELPERS
    + """
def reward(prompt, completion, data_dir, **fields):
    reached = []
    _walk(data_dir, reached)
    return float(sum(reached))
""",
    "read_other_dataset": PROBE_HELPERS
    + """
def reward(prompt, completion, dataset_file, **fields):
    reached = []
    _read(dataset_file, reached)
    return float(sum(reached))
""",
    "read_worker_environ": PROBE_HELPERS
    + """
def reward(prompt, completion, worker_pid, **fields):
    reached = []
    # Its parent inside the sandbox, pid 1, and the worker's pid as the host numbers it (another pid namespace: not
    # there). It is pid 1 itself (the namespace's init, with no parent inside): its own environment is no leak.
    for pid in {os.getppid(), 1, worker_pid} - {os.getpid()}:
        _read(f"/proc/{pid}/environ", reached)
    print("own environment:", dict(os.environ))  # its own: PATH, HOME, LANG, PYTHONDONTWRITEBYTECODE
    return float(sum(reached))
""",
    "read_shadow": PROBE_HELPERS
    + """
def reward(prompt, completion, **fields):
    reached = []
    for path in ("/etc/shadow", "/etc/passwd", "/root/.bash_history"):
        _read(path, reached)
    return float(sum(reached))
""",
    "write_outside_tmp": """
import os

def reward(prompt, completion, data_dir, **fields):
    written = 0
    for path in (data_dir + "/planted", "/planted", "/usr/planted", "/dev/shm/planted", "/var/tmp/planted",
                 "/proc/planted"):
        try:
            with open(path, "w") as handle:
                handle.write("x")
            print("REACHED write", path)
            written += 1
        except Exception as error:
            print("refused", path, type(error).__name__)
    with open("/tmp/allowed", "w") as handle:  # its own private /tmp works
        handle.write("ok")
    return float(written)
""",
    "fork_bomb": """
import os

def reward(prompt, completion, **fields):
    while True:
        os.fork()
""",
    "allocate_10gb": """
def reward(prompt, completion, **fields):
    block = bytearray(10 * 2**30)
    return float(len(block))
""",
    "infinite_loop": """
def reward(prompt, completion, **fields):
    while True:
        pass
""",
    "print_100mb": """
def reward(prompt, completion, **fields):
    chunk = "x" * (1 << 20)
    for _ in range(100):
        print(chunk)
    return 1.0
""",
    "kill_parent": """
import os, signal

def reward(prompt, completion, **fields):
    for pid in (os.getppid(), 1):
        try:
            os.kill(pid, signal.SIGKILL)
        except Exception as error:
            print("refused", pid, type(error).__name__)
    return 1.0
""",
    "subprocess": """
import subprocess

def reward(prompt, completion, **fields):
    try:
        done = subprocess.run(["/bin/sh", "-c", "id"], capture_output=True, timeout=5)
        print("REACHED subprocess", done.stdout)
        return 1.0
    except Exception as error:
        print("refused subprocess", type(error).__name__, error)
        return 0.0
""",
    "ctypes_syscall": """
import ctypes, os

libc = ctypes.CDLL(None, use_errno=True)

def reward(prompt, completion, **fields):
    reached = 0
    pid = libc.syscall(57)  # fork, raw
    if pid == 0:
        os._exit(0)
    if pid > 0:
        print("REACHED raw fork", pid)
        reached += 1
    else:
        print("refused raw fork errno", ctypes.get_errno())
    sock = libc.syscall(41, 2, 1, 0)  # socket(AF_INET, SOCK_STREAM), raw
    if sock >= 0:
        address = (ctypes.c_ubyte * 16)(2, 0, 0x18, 0xEB, 127, 0, 0, 1)  # 127.0.0.1:6379
        if libc.syscall(42, sock, address, 16) == 0:  # connect, raw
            print("REACHED raw connect")
            reached += 1
        else:
            print("refused raw connect errno", ctypes.get_errno())
    return float(reached)
""",
    "returns_nan": """
def reward(prompt, completion, **fields):
    return float("nan")
""",
    "returns_string": """
def reward(prompt, completion, **fields):
    return "1.0"
""",
    "returns_none": """
def reward(prompt, completion, **fields):
    return None
""",
    "slow_import": """
import time

time.sleep(30)  # at import: counted against the sandbox's start-up time, not a call's

def reward(prompt, completion, **fields):
    return 1.0
""",
}
