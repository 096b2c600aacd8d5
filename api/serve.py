"""`grpo serve`: the API in this process and one Celery worker as its child, restarted if it dies, and stopped
with it.

On SIGTERM (systemd, `docker stop`) or SIGINT (Ctrl+C) the API stops first; then the worker gets SIGTERM, Celery's
warm shutdown, in which a running job saves a checkpoint at its next step and goes back to the queue for the next
worker (worker/runner.py). A worker still running GRPO_SHUTDOWN_GRACE_SECONDS later is killed. No worker outlives
serve, even one killed with SIGKILL: see _die_with_parent.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

import uvicorn
from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# uvicorn waits for open responses to end before it stops, and an event stream ends only with its job, which goes
# on until the worker is stopped, after the API. Clients resume a cut stream with Last-Event-ID.
API_SHUTDOWN_SECONDS = 5


class NoQueryStrings(logging.Filter):
    """Access-log lines without the query string: a client may put an API key (or anything else secret) in one,
    and a log is read by more people than the API is. The path and everything else stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn logs (client, method, path?query, http_version, status) with the path quoted, so the first "?"
        # starts the query.
        if isinstance(record.args, tuple) and len(record.args) == 5 and isinstance(record.args[2], str):
            client, method, target, version, status = record.args
            record.args = (client, method, target.split("?", 1)[0], version, status)
        return True


def server_options() -> dict:
    """uvicorn settings `grpo serve` and `grpo api` share: a capped graceful shutdown, and uvicorn's own logging
    with query strings left out of the access log (NoQueryStrings)."""
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["filters"] = {"no_query_strings": {"()": NoQueryStrings}}
    log_config["loggers"]["uvicorn.access"]["filters"] = ["no_query_strings"]
    return {"log_level": "info", "log_config": log_config, "timeout_graceful_shutdown": API_SHUTDOWN_SECONDS}


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send the child SIGTERM when the thread that started it ends, which also happens
    when serve is killed outright. SIGTERM, not SIGKILL: the worker then stops the way serve would have stopped it,
    its job checkpointed and queued again. None where prctl is not available (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child, between fork and exec, only calls it
    parent = os.getpid()

    def set_death_signal() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # serve died before prctl took effect: no signal will come
            os._exit(1)

    return set_death_signal


class WorkerSupervisor(threading.Thread):
    """Runs `command`, starting it again whenever it exits, until stop(); then sends it SIGTERM and kills it if it
    is still running `grace_seconds` later.

    The worker is started from this thread, and Linux sends its death signal when the *thread* that forked it
    ends, not the process. This thread lives until the worker has exited, so the signal comes only if serve dies."""

    def __init__(self, command: list[str], grace_seconds: float, restart_delay: float = 2.0):
        super().__init__(daemon=True, name="worker-supervisor")
        self.command, self.grace_seconds, self.restart_delay = command, grace_seconds, restart_delay
        self.restarting = True
        self._stop_now = threading.Event()

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(self.command, preexec_fn=_die_with_parent())

    def run(self) -> None:
        process = self._start()
        while not self._stop_now.wait(0.5):
            if process.poll() is not None and self.restarting:
                print(f"grpo: worker exited with {process.returncode}; restarting", file=sys.stderr)
                if self._stop_now.wait(self.restart_delay):
                    break
                process = self._start()
        if process.poll() is None:
            process.terminate()  # Celery's warm shutdown
            try:
                process.wait(timeout=self.grace_seconds)
            except subprocess.TimeoutExpired:
                print(
                    f"grpo: worker still running {self.grace_seconds:g}s after SIGTERM "
                    "(GRPO_SHUTDOWN_GRACE_SECONDS); killing it",
                    file=sys.stderr,
                )
                process.kill()
                process.wait()

    def stop_restarting(self) -> None:
        """From the first stop signal on, a worker that exits stays down. Safe in a signal handler: it sets a plain
        attribute, so it never waits for a lock that the thread it interrupted holds."""
        self.restarting = False

    def stop(self) -> None:
        self.restarting = False
        self._stop_now.set()


class _Server(uvicorn.Server):
    """uvicorn's server, which also says when a stop signal arrives (uvicorn handles them itself while it runs)."""

    def __init__(self, config: uvicorn.Config, on_stop_signal: Callable[[], None]):
        super().__init__(config)
        self.on_stop_signal = on_stop_signal

    def handle_exit(self, sig, frame) -> None:
        self.on_stop_signal()
        super().handle_exit(sig, frame)


def serve(*, host: str, port: int, worker_command: list[str]) -> int:
    from service_core.db import make_private_dir, run_migrations
    from service_core.settings import get_settings

    settings = get_settings()
    make_private_dir(settings.data_dir)
    run_migrations()
    supervisor = WorkerSupervisor(worker_command, grace_seconds=settings.shutdown_grace_seconds)
    config = uvicorn.Config("api.main:app", host=host, port=port, **server_options())
    server = _Server(config, on_stop_signal=supervisor.stop_restarting)

    def stop_requested(_signum, _frame) -> None:
        supervisor.stop_restarting()
        server.should_exit = True  # uvicorn checks this once started, so a signal before that still counts

    # uvicorn swaps in its own handlers while it runs; once it has shut down it puts back the ones it found and
    # raises the signal again. With Python's default handlers that second SIGTERM ended serve before the `finally`
    # below had stopped the worker, which was left running, re-parented to init. With these it is only noted.
    previous = {sig: signal.signal(sig, stop_requested) for sig in STOP_SIGNALS}
    supervisor.start()
    try:
        server.run()
    finally:
        supervisor.stop()
        supervisor.join(timeout=settings.shutdown_grace_seconds + 10)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if server.started else STARTUP_FAILURE
