"""Waiting on a condition, never on a duration: a test polls for the state it needs (a step reached, a slot given
back), and the deadline only bounds a hang, so it is generous and never the assertion itself."""

import time


def wait_for(condition, what: str, timeout: float = 60) -> None:
    """Poll `condition()` until it is true; fail naming `what` if it is still false after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
