"""The process inside the reward sandbox: loads a tenant's reward source, then scores batches until told to stop.

Run as a script (`python -I -S sandbox_child.py FD`), alone: it is the only file of the project bound into the
sandbox, so it imports nothing but the standard library. The parent sends with pickle (the child trusts its
parent); the child answers with JSON bytes only, because the parent must never unpickle what tenant code could
have written on the socket.

Messages: the parent sends {"limits", "source", "paths"}; the child applies the limits, loads the source and
answers {"ok", "shape", "parameters", "required", "error", "output"}. Then each (prompts, completions, rows) is answered with
{"results": [[value, error], ...], "output"}.

Shape rule (from the names of the first two positional parameters): `prompts, completions` is TRL's batch
shape, called once with every dataset column as a keyword list; `prompt, completion` is the per-sample shape,
called once per item with the row's columns as keywords. Without `**kwargs`, only the columns named as
parameters are passed. Anything else is refused, naming what was found.
"""

import inspect
import io
import json
import math
import os
import resource
import sys
from multiprocessing.connection import Connection

PER_SAMPLE = "per_sample"
BATCH = "batch"


class _BoundedText(io.TextIOBase):
    """Keeps the first `limit` characters written and counts the rest, so printing 100 MB costs no memory."""

    def __init__(self, limit):
        self.limit = limit
        self.parts = []
        self.kept = 0
        self.dropped = 0

    def writable(self):
        return True

    def write(self, text):
        text = str(text)
        room = self.limit - self.kept
        if room > 0:
            self.parts.append(text[:room])
            self.kept += min(room, len(text))
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def take(self):
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n[output truncated: {self.dropped} more characters]"
        self.parts, self.kept, self.dropped = [], 0, 0
        return text


def _apply_limits(limits):
    for name, value in limits.items():
        # CPU: the soft limit sends SIGXCPU, which names the cause; the hard one (a second later) is SIGKILL.
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(getattr(resource, name), (value, hard))


def _error(error):
    return f"{type(error).__name__}: {error}"[:2000]


def _shape(fn):
    """(shape, keyword names it accepts or None for any, keyword names it requires) or raises ValueError naming
    the problem."""
    if not callable(fn):
        raise ValueError(f"`reward` must be a function, got {type(fn).__name__}")
    if inspect.iscoroutinefunction(fn):
        raise ValueError("`reward` must be a plain function, not `async def`")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as error:
        raise ValueError(f"the signature of `reward` cannot be read: {error}") from None
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    shapes = {("prompt", "completion"): PER_SAMPLE, ("prompts", "completions"): BATCH}
    shape = shapes.get(tuple(positional[:2]))
    if shape is None:
        found = ", ".join(p.name for p in params)
        raise ValueError(
            "`reward` must take (prompt, completion, **fields) for one sample or (prompts, completions, **kwargs) "
            f"for a batch; it takes ({found})"
        )
    fixed = {"prompt", "completion", "prompts", "completions"}
    required = sorted(
        p.name
        for p in params[2:]
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in fixed
    )
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return shape, None, required
    return shape, {p.name for p in params if p.kind != p.VAR_POSITIONAL}, required


def _number(value):
    """(float, None) for a finite real number, else (None, why)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"reward returned {type(value).__name__} {str(value)[:80]!r}, not a number"
    value = float(value)
    if not math.isfinite(value):
        return None, f"reward returned {value}, not a finite number"
    return value, None


def _score(fn, shape, accepted, prompts, completions, rows):
    fixed = {"prompt", "completion", "prompts", "completions"}
    if shape == PER_SAMPLE:
        results = []
        for prompt, completion, row in zip(prompts, completions, rows, strict=True):
            fields = {k: v for k, v in row.items() if k not in fixed and (accepted is None or k in accepted)}
            try:
                results.append(_number(fn(prompt, completion, **fields)))
            except BaseException as error:  # a tenant's SystemExit or KeyboardInterrupt is its sample's error
                results.append((None, _error(error)))
        return results
    columns = [k for row in rows for k in row if k not in fixed]
    columns = list(dict.fromkeys(columns))
    kwargs = {k: [row.get(k) for row in rows] for k in columns if accepted is None or k in accepted}
    try:
        values = fn(prompts=list(prompts), completions=list(completions), **kwargs)
        values = list(values)
    except BaseException as error:
        return [(None, _error(error))] * len(prompts)
    if len(values) != len(prompts):
        why = f"reward returned {len(values)} values for {len(prompts)} completions"
        return [(None, why)] * len(prompts)
    return [_number(value) for value in values]


def main(fd):
    connection = Connection(fd)
    setup = connection.recv()
    _apply_limits(setup["limits"])
    sys.path.extend(setup["paths"])
    output = _BoundedText(setup["output_chars"])
    sys.stdout = sys.stderr = output
    try:
        code = compile(setup["source"], "reward.py", "exec")
    except SyntaxError as error:
        message = f"syntax error at line {error.lineno}, column {error.offset}: {error.msg}"
        connection.send_bytes(json.dumps({"ok": False, "error": message, "output": ""}).encode())
        return
    namespace = {"__name__": "reward"}
    try:
        exec(code, namespace)
        fn = namespace.get("reward")
        if fn is None:
            raise LookupError("the source defines no `reward` function")
        shape, accepted, required = _shape(fn)
    except (LookupError, ValueError) as error:
        reply = {"ok": False, "error": str(error), "output": output.take()}
        connection.send_bytes(json.dumps(reply).encode())
        return
    except BaseException as error:
        reply = {"ok": False, "error": f"running the source failed: {_error(error)}", "output": output.take()}
        connection.send_bytes(json.dumps(reply).encode())
        return
    parameters = None if accepted is None else sorted(accepted - {"prompt", "completion", "prompts", "completions"})
    reply = {"ok": True, "shape": shape, "parameters": parameters, "required": required, "output": output.take()}
    connection.send_bytes(json.dumps(reply).encode())
    while True:
        try:
            prompts, completions, rows = connection.recv()
        except (EOFError, OSError):
            return
        results = _score(fn, shape, accepted, prompts, completions, rows)
        connection.send_bytes(json.dumps({"results": results, "output": output.take()}).encode())


if __name__ == "__main__":
    main(int(sys.argv[1]))
    os._exit(0)  # skip interpreter teardown: tenant objects' __del__ must not run after the reply
