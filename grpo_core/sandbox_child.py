"""The process inside the reward sandbox: loads a tenant's reward source, then scores batches until told to stop.

Run as a script (`python -I -S sandbox_child.py FD`), alone: it is the only file of the project bound into the
sandbox, so it imports nothing but the standard library. The parent sends with pickle (the child trusts its
parent); the child answers with JSON bytes only, because the parent must never unpickle what tenant code could
have written on the socket.

Messages: the parent sends {"limits", "source", "paths"}; the child applies the limits, loads the source and
answers {"ok", "shape", "parameters", "required", "error", "output"}. Then each (prompts, completions, rows,
params) is answered:
- per-sample shape: one {"result": [value, error], "output"} per item as soon as it is scored (so the parent can
  time each call and knows which item hung), then {"output"} with the rest of the printed output;
- batch shape: one {"results": [[value, error], ...], "output"}.
"output" is what the code printed since the last answer; the call's whole output is bounded, with a marker.

Shape rule (from the names of the first two positional parameters): `prompts, completions` is TRL's batch
shape, called once with every dataset column as a keyword list; `prompt, completion` is the per-sample shape,
called once per item with the row's columns as keywords. Without `**kwargs`, only the columns named as
parameters are passed. Anything else is refused, naming what was found. A prompt is the row's `prompt` string or
its `messages` list, so those columns (and any named completion(s)) are never passed as fields. In the batch
shape, as in TRL, a conversational prompt (a message list) gets its completion as
[{"role": "assistant", "content": text}]. `params` (the job's params for this reward) are passed to every call as
extra keyword arguments, scalars in both shapes, whether or not the signature names them.
"""

import inspect
import io
import json
import math
import os
import resource
import signal
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

    def drain(self):
        """What was kept since the last drain; the call's bound still counts it."""
        text = "".join(self.parts)
        self.parts = []
        return text

    def take(self):
        """The rest of the call's output, with the truncation marker, and a fresh bound for the next call."""
        text = self.drain()
        if self.dropped:
            text += f"\n[output truncated: {self.dropped} more characters]"
        self.kept, self.dropped = 0, 0
        return text


def _exit_on_cpu_limit(signum, _frame):
    # The interpreter is its pid namespace's init, to which the kernel does not deliver a default-handled SIGXCPU:
    # exit as if killed by it, so the parent can say why. A loop in C never returns here; the hard limit a second
    # later (SIGKILL) ends it.
    os._exit(128 + signum)


def _apply_limits(limits):
    signal.signal(signal.SIGXCPU, _exit_on_cpu_limit)
    for name, value in limits.items():
        # CPU: the soft limit sends SIGXCPU, which names the cause; the hard one (a second later) is SIGKILL.
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(getattr(resource, name), (value, hard))


def _error(error):
    """A tenant exception as text; its own __str__ may raise or return anything, so that is caught too."""
    try:
        return f"{type(error).__name__}: {error}"[:2000]
    except BaseException:
        return f"{type(error).__name__} (its message could not be read)"[:2000]


def _shape(fn):
    """(shape, keyword names it accepts or None for any, keyword names it requires) or raises ValueError naming
    the problem."""
    if not inspect.isfunction(fn):  # a class or a callable object would answer with an instance, not a number
        raise ValueError(f"`reward` must be a function (def or lambda), got {type(fn).__name__}")
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
    """(float, None) for a finite real number, else (None, why). Never raises: a tenant's int or float subclass
    may override __float__ or __repr__, and an int may be too large for a float."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"reward returned {type(value).__name__}, not a number"
        number = float(int.__index__(value) if isinstance(value, int) else float.__float__(value))
    except OverflowError:
        return None, "reward returned an integer too large for a float, not a finite number"
    except BaseException as error:
        return None, f"reward returned a value that cannot be read as a number ({_error(error)})"
    if not math.isfinite(number):
        return None, f"reward returned {number}, not a finite number"
    return number, None


_NOT_FIELDS = {"prompt", "messages", "completion", "prompts", "completions"}


def _fields(row, accepted):
    return {k: v for k, v in row.items() if k not in _NOT_FIELDS and (accepted is None or k in accepted)}


def _send(connection, message):
    connection.send_bytes(json.dumps(message).encode())


def _score_each(connection, output, fn, accepted, prompts, completions, rows, params):
    for prompt, completion, row in zip(prompts, completions, rows, strict=True):
        try:
            result = _number(fn(prompt, completion, **{**_fields(row, accepted), **params}))
        except BaseException as error:  # a tenant's SystemExit or KeyboardInterrupt is its sample's error
            result = (None, _error(error))
        _send(connection, {"result": result, "output": output.drain()})
    _send(connection, {"output": output.take()})


def _score_batch(fn, accepted, prompts, completions, rows, params):
    columns = list(dict.fromkeys(k for row in rows for k in _fields(row, accepted)))
    kwargs = {k: [row.get(k) for row in rows] for k in columns}
    # TRL's convention: a conversational prompt (a message list) gets its completion as a message list too.
    completions = [
        c if isinstance(p, str) else [{"role": "assistant", "content": c}]
        for p, c in zip(prompts, completions, strict=True)
    ]
    try:
        values = fn(prompts=list(prompts), completions=completions, **{**kwargs, **params})
        values = list(values)
    except BaseException as error:
        return [(None, _error(error))] * len(prompts)
    if len(values) != len(prompts):
        why = f"reward returned {len(values)} values for {len(prompts)} completions"
        return [(None, why)] * len(prompts)
    return [_number(value) for value in values]  # _number never raises


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
            prompts, completions, rows, params = connection.recv()
        except (EOFError, OSError):
            return
        if shape == PER_SAMPLE:
            _score_each(connection, output, fn, accepted, prompts, completions, rows, params)
        else:
            results = _score_batch(fn, accepted, prompts, completions, rows, params)
            _send(connection, {"results": results, "output": output.take()})


if __name__ == "__main__":
    main(int(sys.argv[1]))
    os._exit(0)  # skip interpreter teardown: tenant objects' __del__ must not run after the reply
