"""The reward sandbox with real bubblewrap: scores match direct calls, bad sources are named, hostile code gets
nothing out (no network, no host files or environment, no writes outside /tmp, no new processes, bounded memory,
time and output) while the test process is unharmed."""

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from grpo_core.reward_process import RewardFailure
from grpo_core.sandbox import (
    MAX_SOURCE_BYTES,
    RewardSandbox,
    SandboxRestartsExhausted,
    SandboxUnavailable,
    check_reward_source,
    probe_sandbox,
    sandbox_available,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(sandbox_available() is not None, reason=f"no sandbox here: {sandbox_available()}")

PER_SAMPLE = """
def reward(prompt, completion, answer=None, **fields):
    return float(len(completion)) + (1.0 if completion.strip() == str(answer) else 0.0) + 0.5 * len(prompt)
"""

BATCH = """
def reward(prompts, completions, answer, **kwargs):
    return [len(c) / (1 + len(p)) + (a or 0) for p, c, a in zip(prompts, completions, answer)]
"""

PROMPTS = ["1+1=", "2+2=", "what?"]
COMPLETIONS = ["2", " 5", "no idea"]
ROWS = [{"prompt": "1+1=", "answer": 2}, {"prompt": "2+2=", "answer": 4}, {"prompt": "what?", "answer": None}]


def _direct(source):
    namespace = {}
    exec(source, namespace)
    return namespace["reward"]


def _score(source, *, prompts=("p",), completions=("c",), rows=({},), **options):
    options.setdefault("timeout_seconds", 20)
    with RewardSandbox(source, **options) as sandbox:
        return sandbox.score(list(prompts), list(completions), list(rows))


def test_per_sample_scores_equal_direct_calls():
    fn = _direct(PER_SAMPLE)
    expected = [
        fn(p, c, **{k: v for k, v in r.items() if k != "prompt"})
        for p, c, r in zip(PROMPTS, COMPLETIONS, ROWS, strict=True)
    ]
    scores = _score(PER_SAMPLE, prompts=PROMPTS, completions=COMPLETIONS, rows=ROWS)
    assert scores.results == [(value, None) for value in expected]
    assert check_reward_source(PER_SAMPLE, timeout_seconds=20).shape == "per_sample"


def test_batch_scores_equal_direct_call_with_columns_as_lists():
    fn = _direct(BATCH)
    expected = fn(prompts=PROMPTS, completions=COMPLETIONS, answer=[r["answer"] for r in ROWS])
    scores = _score(BATCH, prompts=PROMPTS, completions=COMPLETIONS, rows=ROWS)
    assert scores.results == [(value, None) for value in expected]
    assert check_reward_source(BATCH, timeout_seconds=20).shape == "batch"


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("def reward(prompt, completion):\n    return (1\n", "line 2, column"),
        ("def score(prompt, completion):\n    return 1.0\n", "no `reward`"),
        ("def reward(text, n):\n    return 1.0\n", "it takes (text, n)"),
        ("reward = 3\n", "must be a function"),
        ("import numpy_that_is_not_here\ndef reward(prompt, completion): return 1.0\n", "numpy_that_is_not_here"),
        ("raise RuntimeError('boom at import')\n", "boom at import"),
        ("x = 1\n" * (MAX_SOURCE_BYTES // 6 + 1), f"limit is {MAX_SOURCE_BYTES} bytes"),
    ],
)
def test_bad_sources_are_refused_naming_the_problem(source, named):
    result = check_reward_source(source, timeout_seconds=20)
    assert not result.ok and result.shape is None
    assert named in result.error


def test_slow_import_times_out_at_check():
    result = check_reward_source("while True:\n    pass\n", timeout_seconds=2)
    assert not result.ok and "timed out after 2 s" in result.error


def test_bad_values_are_per_sample_errors():
    source = """
def reward(prompt, completion, **fields):
    if completion == "raise":
        return 1 / 0
    return {"nan": float("nan"), "str": "1.0", "none": None, "inf": float("inf"), "ok": 2}[completion]
"""
    results = _score(source, prompts=["p"] * 5, completions=["nan", "str", "none", "inf", "ok"], rows=[{}] * 5).results
    assert results[4] == (2.0, None)
    for (value, error), word in zip(results[:4], ["nan", "str", "NoneType", "inf"], strict=True):
        assert value is None and word in error
    raising = _score(source, completions=["raise"]).results
    assert raising[0][0] is None and "ZeroDivisionError" in raising[0][1]


def test_no_network_to_the_host():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    arrived = []
    done = threading.Event()

    def accept():
        while not done.is_set():
            try:
                arrived.append(listener.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept)
    thread.start()
    source = f"""
import socket
def reward(prompt, completion, **fields):
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"hi")
        return 1.0
    except OSError as error:
        print(error)
        return 0.0
"""
    try:
        scores = _score(source)
    finally:
        done.set()
        thread.join()
        listener.close()
    assert scores.results == [(0.0, None)]
    assert arrived == []


def test_no_host_files_or_environment(tmp_path, monkeypatch):
    secret = "s3cret-value-7f1c"
    (tmp_path / "secret.txt").write_text(secret)
    monkeypatch.setenv("GRPO_TEST_SECRET", secret)
    paths = [str(tmp_path / "secret.txt"), "/etc/shadow", "/proc/1/environ", f"/proc/{os.getpid()}/environ"]
    source = f"""
import os
def reward(prompt, completion, **fields):
    seen = repr(dict(os.environ))
    for path in {paths!r}:
        try:
            with open(path, "rb") as file:
                seen += repr(file.read())
        except OSError as error:
            print(path, error)
    print(seen)
    return float(seen.count({secret!r}))
"""
    scores = _score(source)
    assert scores.results == [(0.0, None)]
    assert secret not in scores.output
    assert "No such file" in scores.output  # it looked and found nothing, rather than never running


def test_no_writes_outside_tmp(tmp_path):
    targets = [
        str(tmp_path / "planted"),
        "/usr/planted",
        "/opt/reward/child.py",
        "/planted",
        "/dev/planted",
        "/proc/planted",
    ]
    source = f"""
def reward(prompt, completion, **fields):
    written = 0
    for path in {targets!r}:
        try:
            with open(path, "w") as file:
                file.write("x")
            written += 1
        except OSError:
            pass
    with open("/tmp/scratch", "w") as file:  # the one writable place
        file.write("ok")
    return float(written)
"""
    assert _score(source).results == [(0.0, None)]
    assert list(tmp_path.iterdir()) == []


def test_fork_bomb_and_subprocess_are_stopped():
    source = """
import ctypes, os, subprocess, threading
def reward(prompt, completion, **fields):
    if completion == "fork":
        while True:
            os.fork()
    if completion == "raw":  # the fork syscall itself, past any Python-level check
        if ctypes.CDLL(None, use_errno=True).syscall(57) == -1:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return 1.0
    if completion == "clone3":  # clone3(flags=0, exit_signal=SIGCHLD): a fork by another syscall
        args = (ctypes.c_uint64 * 11)(0, 0, 0, 0, 17)
        pid = ctypes.CDLL(None, use_errno=True).syscall(435, args, ctypes.sizeof(args))
        if pid == 0:
            os._exit(0)
        if pid == -1:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return 1.0
    if completion == "thread":  # threads are still allowed (clone with CLONE_THREAD)
        box = []
        thread = threading.Thread(target=box.append, args=(2.0,))
        thread.start()
        thread.join()
        return box[0]
    subprocess.run(["/bin/true"])
    return 1.0
"""
    with RewardSandbox(source, timeout_seconds=20) as sandbox:
        results = sandbox.score(["p"] * 4, ["fork", "raw", "subprocess", "clone3"], [{}] * 4).results
        assert all(value is None and "Resource temporarily unavailable" in error for value, error in results[:3])
        assert results[3][0] is None and "Function not implemented" in results[3][1]
        assert sandbox.score(["p"], ["thread"], [{}]).results == [(2.0, None)]
        assert sandbox.score(["p"], ["fork"], [{}]).results[0][0] is None  # the sandbox is still answering
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes


def test_huge_allocation_is_a_memory_error():
    source = """
def reward(prompt, completion, **fields):
    if completion == "big":
        return float(len(bytearray(10 * 1024 ** 3)))
    return 1.0
"""
    with RewardSandbox(source, timeout_seconds=20, memory_mb=512) as sandbox:
        results = sandbox.score(["p", "p"], ["big", "small"], [{}, {}]).results
    assert results[0][0] is None and "MemoryError" in results[0][1]
    assert results[1] == (1.0, None)


def _sandboxed_pids():
    pids = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                if b"/opt/reward/child.py" in file.read():
                    pids.add(int(entry))
        except (OSError, ValueError):
            pass
    return pids


def test_an_item_that_hangs_fails_alone_and_the_rest_go_to_a_fresh_sandbox():
    before = _sandboxed_pids()
    source = """
def reward(prompt, completion, **fields):
    print("scoring", completion)
    while completion == "loop":
        pass
    return 3.0
"""
    with RewardSandbox(source, timeout_seconds=2) as sandbox:
        sandbox.start()
        first_pid = sandbox.pid
        hung = sandbox.score(["p"] * 3, ["ok", "loop", "ok"], [{}] * 3)
        assert hung.restarted
        assert hung.results[0] == (3.0, None) and hung.results[2] == (3.0, None)
        assert hung.results[1][0] is None and "timed out after 2 s" in hung.results[1][1]
        # What the first item printed survives the kill; the third item printed in the fresh sandbox.
        assert hung.output.count("scoring ok") == 2 and "scoring loop" not in hung.output
        assert sandbox.pid not in (None, first_pid)
        assert sandbox.score(["p"], ["ok"], [{}]).results == [(3.0, None)]
    # Killing bwrap takes its pid namespace, the looping interpreter included, down with it (asynchronously).
    wait_for(lambda: not _sandboxed_pids() - before, "a sandboxed process outlived its sandbox")


def test_a_batch_that_hangs_fails_whole_and_the_next_call_works():
    source = """
def reward(prompts, completions, **kwargs):
    while "loop" in completions:
        pass
    return [1.0] * len(completions)
"""
    with RewardSandbox(source, timeout_seconds=2) as sandbox:
        hung = sandbox.score(["p", "p"], ["ok", "loop"], [{}, {}])
        assert hung.restarted and all(v is None and "timed out after 2 s" in e for v, e in hung.results)
        assert sandbox.score(["p", "p"], ["ok", "ok"], [{}, {}]).results == [(1.0, None)] * 2


def test_a_stop_while_a_call_hangs_kills_the_sandbox_and_raises_the_stop():
    class Stop(Exception):
        pass

    stopping = threading.Event()

    def check_stop():
        if stopping.is_set():
            raise Stop

    source = "def reward(prompt, completion, **fields):\n    while True:\n        pass\n"
    with RewardSandbox(source, timeout_seconds=600, check_stop=check_stop) as sandbox:
        sandbox.start()
        threading.Timer(0.5, stopping.set).start()
        with pytest.raises(Stop):
            sandbox.score(["p"], ["c"], [{}])
        assert sandbox.pid is None


def test_repeated_deaths_without_a_scored_item_raise_naming_the_reward():
    source = """
import ctypes
def reward(prompt, completion, **fields):
    if completion == "die":
        ctypes.string_at(0)  # a fault: the kernel kills it (a SIGKILL from inside cannot: it is its pid namespace's init)
    return 1.0
"""
    with RewardSandbox(source, timeout_seconds=20, max_restarts=3, name="rwd_abc") as sandbox:
        # Two deaths, then a scored item: the count starts again.
        first = sandbox.score(["p"] * 3, ["die", "die", "ok"], [{}] * 3)
        assert [value for value, _ in first.results] == [None, None, 1.0]
        assert "died (killed by SIGSEGV)" in first.results[0][1]
        # Three in a row (across calls too) end it.
        assert sandbox.score(["p"] * 2, ["die", "die"], [{}] * 2).results[1][0] is None
        with pytest.raises(SandboxRestartsExhausted, match=r"reward 'rwd_abc'.*3 times in a row.*SIGSEGV") as caught:
            sandbox.score(["p", "p"], ["die", "ok"], [{}] * 2)
        assert isinstance(caught.value, RewardFailure)
        # Every item's result comes with it (the dry run shows them): the one never tried fails with the message.
        results = caught.value.scores.results
        assert "SIGSEGV" in results[0][1] and results[1] == (None, str(caught.value))


def test_past_max_failures_the_rest_is_not_scored():
    source = """
def reward(prompt, completion, **fields):
    return 1 / 0 if completion == "bad" else 1.0
"""
    with RewardSandbox(source, timeout_seconds=20) as sandbox:
        scores = sandbox.score(["p"] * 5, ["bad", "ok", "bad", "ok", "ok"], [{}] * 5, max_failures=1)
        assert scores.results[:2] == [(None, "ZeroDivisionError: division by zero"), (1.0, None)]
        assert "ZeroDivisionError" in scores.results[2][1]
        assert all(v is None and e.startswith("not scored: more than 1 of the 5") for v, e in scores.results[3:])
        # Stopped mid-batch, the sandbox is replaced: the next call is answered in order.
        assert sandbox.score(["p", "p"], ["ok", "bad"], [{}] * 2, max_failures=1).results[0] == (1.0, None)


def test_params_are_keyword_scalars_in_both_shapes():
    per_sample = """
def reward(prompt, completion, scale, offset=0.0, answer=None):
    return scale * len(completion) + offset + (answer or 0)
"""
    batch = """
def reward(prompts, completions, scale, answer, **kwargs):
    assert isinstance(scale, float) and isinstance(answer, list)
    return [scale * len(c) + a + kwargs["offset"] for c, a in zip(completions, answer)]
"""
    rows = [{"prompt": "p", "answer": 1}, {"prompt": "p", "answer": 2}]
    params = {"scale": 2.0, "offset": 0.5}
    with RewardSandbox(per_sample, timeout_seconds=20) as sandbox:
        assert sandbox.score(["p", "p"], ["ab", "abc"], rows, params).results == [(5.5, None), (8.5, None)]
    with RewardSandbox(batch, timeout_seconds=20) as sandbox:
        assert sandbox.score(["p", "p"], ["ab", "abc"], rows, params).results == [(5.5, None), (8.5, None)]


def test_batch_shape_follows_trl_for_conversational_prompts():
    source = """
def reward(prompts, completions, **kwargs):
    print(sorted(kwargs), [type(c).__name__ for c in completions])
    return [float(c[0]["content"] == "4" and c[0]["role"] == "assistant" and p[-1]["content"] == "2+2?")
            if isinstance(p, list) else float(c == "4" and p == "2+2?") for p, c in zip(prompts, completions)]
"""
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
    rows = [{"messages": messages, "answer": 4}, {"prompt": "2+2?", "answer": 4}]
    with RewardSandbox(source, timeout_seconds=20) as sandbox:
        scores = sandbox.score([messages, "2+2?"], ["4", "4"], rows)
    assert scores.results == [(1.0, None), (1.0, None)]
    # The prompt's columns are not passed again as fields; the others are, one value per completion.
    assert "['answer'] ['list', 'str']" in scores.output


def test_per_sample_prompt_is_the_message_list_for_chat_rows():
    source = """
def reward(prompt, completion, **fields):
    assert "messages" not in fields and "prompt" not in fields
    return float(len(prompt)) if isinstance(prompt, list) else -1.0
"""
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "?"},
    ]
    with RewardSandbox(source, timeout_seconds=20) as sandbox:
        scores = sandbox.score([messages, "hi"], ["a", "b"], [{"messages": messages}, {"prompt": "hi"}])
    assert scores.results == [(3.0, None), (-1.0, None)]


def test_printing_100_mb_is_truncated():
    source = """
def reward(prompt, completion, **fields):
    for _ in range(100):
        print("x" * 1_000_000)
    return 1.0
"""
    scores = _score(source, output_chars=10_000)
    assert scores.results == [(1.0, None)]
    assert scores.output.startswith("x" * 10_000)
    assert "[output truncated: " in scores.output and len(scores.output) < 10_100


def test_refuses_when_bwrap_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    probe_sandbox.cache_clear()
    try:
        assert "not installed" in sandbox_available()
        with pytest.raises(SandboxUnavailable, match="not run unsandboxed"):
            _score(PER_SAMPLE)
        # The explicit, dangerous opt-out runs it (still in a child process).
        assert math.isclose(_score(PER_SAMPLE, allow_unsandboxed=True).results[0][0], 1.5)
    finally:
        monkeypatch.undo()
        probe_sandbox.cache_clear()


def test_the_project_and_its_packages_cannot_be_imported():
    source = """
import importlib, sys
def reward(prompt, completion, **fields):
    imported = []
    for name in ["api", "worker", "grpo_core", "sqlalchemy", "psycopg", "redis", "torch", "pydantic", "pip", "setuptools"]:
        try:
            importlib.import_module(name)
            imported.append(name)
        except ImportError:
            pass
    print(imported, sys.path)
    return float(len(imported))
"""
    # Even with the test's own sys.path (the venv's and the interpreter's site-packages, the project) added.
    scores = _score(source.replace("imported = []", f"imported = []\n    sys.path += {sys.path!r}"))
    assert scores.results == [(0.0, None)], scores.output


def test_cpu_limit_and_suicide_kill_the_call_and_the_next_call_works():
    source = """
import ctypes
def reward(prompt, completion, **fields):
    if completion == "spin":
        while True:
            pass
    if completion == "die":
        ctypes.string_at(0)
    return 1.0
"""
    with RewardSandbox(source, timeout_seconds=20, cpu_seconds=1) as sandbox:
        spun = sandbox.score(["p"], ["spin"], [{}])
        assert spun.restarted and "SIGXCPU" in spun.results[0][1]
        assert sandbox.score(["p"], ["ok"], [{}]).results == [(1.0, None)]
        died = sandbox.score(["p", "p", "p"], ["ok", "die", "ok"], [{}, {}, {}])
        assert died.restarted and died.results[0] == died.results[2] == (1.0, None)
        assert died.results[1][0] is None and "died" in died.results[1][1]


def test_a_killed_parent_takes_its_sandbox_down():
    before = _sandboxed_pids()
    script = (
        "from grpo_core.sandbox import RewardSandbox\n"
        "sandbox = RewardSandbox('def reward(prompt, completion):\\n    while True: pass\\n', timeout_seconds=600)\n"
        "print('started', flush=True)\n"
        "sandbox.score(['p'], ['c'], [{}])\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline() == "started\n"
        wait_for(lambda: _sandboxed_pids() - before, "the sandbox never started")
        time.sleep(0.3)  # inside the looping call
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    wait_for(lambda: not _sandboxed_pids() - before, "a sandboxed process outlived its sandbox")


def test_an_operators_package_folder_is_importable_and_read_only(readable_tmp_path):
    # What GRPO_REWARD_PACKAGES names: a folder such as `pip install --target DIR sympy` makes. Under a folder the
    # sandbox's uid can traverse (pytest's own tmp_path is private to root).
    tmp_path = readable_tmp_path
    package = tmp_path / "packages" / "gradelib"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("def grade(text):\n    return float(text.strip() == '42')\n")
    source = """
import gradelib
def reward(prompt, completion, **fields):
    try:
        with open(gradelib.__file__, "a") as handle:
            handle.write("# tampered")
        print("wrote")
    except OSError as error:
        print("read-only:", type(error).__name__)
    return gradelib.grade(completion)
"""
    with RewardSandbox(source, timeout_seconds=20, extra_paths=[str(tmp_path / "packages")]) as sandbox:
        scores = sandbox.score(["p", "p"], ["42", "41"], [{}, {}])
    assert scores.results == [(1.0, None), (0.0, None)]
    assert "read-only:" in scores.output and "wrote" not in scores.output  # EROFS, or EACCES to the uid
    assert "tampered" not in (package / "__init__.py").read_text()
    # Without the folder the same source is refused at the check, naming the import.
    refused = check_reward_source(source, timeout_seconds=20)
    assert not refused.ok and "gradelib" in refused.error


def test_a_frame_that_never_completes_times_out_as_a_hung_call_does():
    # The parent reads a frame within the call's deadline: a header and one byte, then silence, is a timeout.
    source = """
import os, stat, struct, time
def reward(prompt, completion, **fields):
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                os.write(int(name), struct.pack("!i", 100) + b"{")
        except OSError:
            pass
    time.sleep(3600)
"""
    started = time.monotonic()
    with RewardSandbox(source, timeout_seconds=2) as sandbox:
        scores = sandbox.score(["p"], ["c"], [{}])
    assert time.monotonic() - started < 15
    assert scores.restarted and "timed out after 2 s" in scores.results[0][1]


def test_the_filter_is_built_by_name_for_both_architectures():
    from grpo_core.syscall_filter import DENIED, bpf_program, build_filter

    for machine in ("x86_64", "aarch64"):
        assert len(bpf_program(machine)) > 8 * len(DENIED)  # a rule's comparison and return at least
    with pytest.raises(ValueError, match="supported: x86_64, aarch64"):
        build_filter("mips")
