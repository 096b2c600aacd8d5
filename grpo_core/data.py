"""Prompt datasets: JSONL rows with a `prompt` string or chat `messages`, plus any fields rewards read."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_REPORTED_ERRORS = 20


@dataclass(frozen=True)
class LineError:
    line: int  # 1-based line number in the file
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class DatasetError(ValueError):
    """The file has bad lines; `errors` lists each with its line number and why (the first 20)."""

    def __init__(self, errors: list[LineError], total: int | None = None):
        self.errors = errors
        self.total = total if total is not None else len(errors)
        more = f" (and {self.total - len(errors)} more)" if self.total > len(errors) else ""
        super().__init__("; ".join(str(e) for e in errors) + more)


def row_problem(row: Any) -> str | None:
    """Why a parsed JSON value cannot be a prompt row, or None when it can."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    has_prompt, has_messages = "prompt" in row, "messages" in row
    if has_prompt == has_messages:
        return "needs exactly one of `prompt` (a string) or `messages` (a list of chat messages)"
    if has_prompt:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            return "`prompt` must be a non-empty string"
        return None
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return "`messages` must be a non-empty list"
    for i, message in enumerate(messages):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            return f"`messages[{i}]` must be an object with string `role` and `content`"
    return None


MAX_NESTING = 64
"""Deepest nesting of objects and lists a row may have: rewards read flat fields, and a deeper row is a mistake
or an attack (10,000 levels exhaust Python's recursion limit)."""

_UTF8_BOM = b"\xef\xbb\xbf"


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is too large for a 64-bit float")
    return value


def _value_problem(row: Any) -> str | None:
    """Why a parsed row is not plain JSON data the trainer can use: nesting past MAX_NESTING, or a string holding a
    lone surrogate ("\\ud800" is valid JSON syntax but not Unicode, and no tokenizer or database takes it).
    Iterative, so a deep row cannot exhaust the stack here either."""
    stack = [(row, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_NESTING:
                return f"nested deeper than {MAX_NESTING} levels"
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"a string holds a lone surrogate ({value.encode('utf-8', 'backslashreplace').decode()[:40]}), which is not valid Unicode"
    return None


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(row, None) for a good line, (None, reason) for a bad one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not valid UTF-8"
    try:
        row = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as error:
        reason = f"invalid JSON: {error.msg} at column {error.colno}"
        if "\r" in text:  # JSON reads a lone CR as whitespace, so a CR-separated file is one line with extra data
            reason += " (the line holds a carriage return: lines must end in \\n or \\r\\n, not \\r alone)"
        return None, reason
    except RecursionError:
        return None, f"nested deeper than {MAX_NESTING} levels"
    except ValueError as error:  # NaN, Infinity, 1e400, an integer past Python's 4300-digit limit
        message = str(error)
        if "integer string conversion" in message:
            message = "an integer with more than 4300 digits"
        return None, f"invalid JSON: {message}"
    problem = _value_problem(row) or row_problem(row)
    return (row, None) if problem is None else (None, problem)


def split_lines(content: bytes) -> list[bytes]:
    """The lines of a JSONL file: separated by \\n, a trailing \\r dropped (so \\r\\n files read the same), a
    UTF-8 byte order mark at the start ignored. A lone \\r does not end a line: the line is then refused as
    invalid JSON, not read as two rows (bytes.splitlines would split it, a file iterator would not)."""
    if content.startswith(_UTF8_BOM):
        content = content[len(_UTF8_BOM) :]
    return [line[:-1] if line.endswith(b"\r") else line for line in content.split(b"\n")]


def parse_jsonl(content: bytes | str) -> list[dict[str, Any]]:
    """Parse a JSONL file's content into rows, or raise DatasetError naming every bad line (1-based). Blank lines are
    skipped. The one parser: the API parses an upload with it and the worker the stored file, so what the API
    accepts is exactly what trains. Refused beyond JSON syntax: NaN and Infinity (not JSON), numbers that overflow
    a float, integers past 4300 digits, rows nested deeper than MAX_NESTING, lone surrogates."""
    if isinstance(content, str):
        content = content.encode("utf-8", "surrogatepass")  # a lone surrogate then fails UTF-8 decoding, refused
    rows: list[dict[str, Any]] = []
    errors: list[LineError] = []
    total_errors = 0
    for number, raw in enumerate(split_lines(content), start=1):
        if not raw.strip():
            continue
        row, problem = _parse_line(raw)
        if row is not None:
            rows.append(row)
            continue
        total_errors += 1
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(LineError(number, str(problem)))
    if errors:
        raise DatasetError(errors, total_errors)
    if not rows:
        raise DatasetError([LineError(0, "the file holds no rows")])
    return rows


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return parse_jsonl(Path(path).read_bytes())


def dataset_fields(rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """Fields present in every row: what a reward can rely on."""
    fields: set[str] | None = None
    for row in rows:
        fields = set(row) if fields is None else fields & set(row)
    return fields or set()


def prompt_messages(row: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The chat messages a row's prompt is: its `messages`, or its `prompt` as one user turn."""
    return row.get("messages") or [{"role": "user", "content": row["prompt"]}]


def reward_prompt(row: Mapping[str, Any]) -> str | list[Mapping[str, Any]]:
    """The prompt a tenant's reward code receives for a row, as TRL gives it: the `prompt` string, or the
    `messages` list of a chat row."""
    return row["prompt"] if "prompt" in row else row["messages"]


def is_number(value: Any) -> bool:
    """Whether a field's value reads as a finite number the way numeric rewards read it: 14, 2.5, "14", "1,234"."""
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(str(value).replace(",", "")))
    except ValueError:
        return False


@dataclass(frozen=True)
class DatasetSummary:
    """What the API records about a dataset at upload, so a job spec can be checked against it without the file."""

    fields: list[str]
    """Fields present in every row."""
    max_prompt_bytes: int
    """The largest, over rows, of the UTF-8 bytes of the prompt's roles and contents (template text not included)."""
    max_prompt_messages: int
    """The most chat messages in one row's prompt (a `prompt` row is one message)."""
    non_numeric_fields: dict[str, int]
    """Each field of `fields` that is not a number in every row -> the first such row (1-based)."""


def summarize_dataset(rows: Sequence[Mapping[str, Any]]) -> DatasetSummary:
    fields = sorted(dataset_fields(rows))
    non_numeric: dict[str, int] = {}
    max_bytes = max_messages = 0
    for number, row in enumerate(rows, start=1):
        messages = prompt_messages(row)
        size = sum(len(m["role"].encode()) + len(m["content"].encode()) for m in messages)
        max_bytes, max_messages = max(max_bytes, size), max(max_messages, len(messages))
        for name in fields:
            if name not in non_numeric and not is_number(row[name]):
                non_numeric[name] = number
    return DatasetSummary(fields, max_bytes, max_messages, non_numeric)


def render_prompt(row: Mapping[str, Any], tokenizer) -> str:
    """The text the model continues: the chat template applied to `messages`, or to `prompt` as a user turn.
    A tokenizer without a chat template gets the prompt as it is (a chat row's contents joined by newlines),
    after the BOS token when the tokenizer adds one: the sampler tokenizes without special tokens (a template
    writes its own), and a model such as Gemma trained with a BOS in front of every text degrades without it."""
    messages = prompt_messages(row)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = "\n".join(message["content"] for message in messages)
    bos_id = tokenizer.bos_token_id
    if bos_id is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos_id]:
        return tokenizer.bos_token + text
    return text


# --- the built-in demo task ---------------------------------------------------------------------------------------

ARITHMETIC_TEMPLATE = "What is {a} + {b}?"


def arithmetic_task(eval_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Single-digit addition ("What is 6 + 8?", answer 14): a (train, eval) split of the 100 pairs, the eval pairs
    never trained on. SmolLM2-135M solves some but not all at temperature 1, so groups are mixed and GRPO learns."""
    rows = [{"prompt": ARITHMETIC_TEMPLATE.format(a=a, b=b), "answer": a + b} for a in range(10) for b in range(10)]
    random.Random(seed).shuffle(rows)
    cut = int(len(rows) * eval_fraction)
    return rows[cut:], rows[:cut]


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def read_rows(path: str | Path, indices: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The rows at `indices` (numbered as load_jsonl numbers them: blank lines skipped) of a JSONL file, read line by
    line and parsed only where wanted, up to the last one wanted: a page of per-prompt figures names a few rows of a
    file that may hold a million, and should not cost a parse of all of it. Lines split as split_lines splits them.
    An index past the last row is left out; a bad wanted line raises DatasetError."""
    wanted = set(indices)
    found: dict[int, dict[str, Any]] = {}
    if not wanted:
        return found
    index = 0
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):  # a binary file's lines end at \n alone, as split_lines'
            if number == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM) :]
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            if not raw.strip():
                continue
            if index in wanted:
                row, problem = _parse_line(raw)
                if row is None:
                    raise DatasetError([LineError(number, str(problem))])
                found[index] = row
                if len(found) == len(wanted):
                    break
            index += 1
    return found
