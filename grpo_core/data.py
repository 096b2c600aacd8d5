"""Prompt datasets: JSONL rows with a `prompt` string or chat `messages`, plus any fields rewards read."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
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


def parse_jsonl(lines: Iterable[str | bytes]) -> list[dict[str, Any]]:
    """Parse JSONL text into rows, or raise DatasetError naming every bad line. Blank lines are skipped."""
    rows: list[dict[str, Any]] = []
    errors: list[LineError] = []
    total_errors = 0
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            problem: str | None = "not valid UTF-8"
        else:
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                problem = f"invalid JSON: {error.msg} at column {error.colno}"
            else:
                problem = row_problem(row)
        if problem is None:
            rows.append(row)
        else:
            total_errors += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append(LineError(number, problem))
    if errors:
        raise DatasetError(errors, total_errors)
    if not rows:
        raise DatasetError([LineError(0, "the file holds no rows")])
    return rows


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, "rb") as handle:
        return parse_jsonl(handle)


def dataset_fields(rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """Fields present in every row: what a reward can rely on."""
    fields: set[str] | None = None
    for row in rows:
        fields = set(row) if fields is None else fields & set(row)
    return fields or set()


def render_prompt(row: Mapping[str, Any], tokenizer) -> str:
    """The text the model continues: the chat template applied to `messages`, or to `prompt` as a user turn.
    A tokenizer without a chat template gets the raw prompt."""
    messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(message["content"] for message in messages)


def epoch_order(num_rows: int, seed: int, epoch: int) -> list[int]:
    """A shuffled order of row indices, a pure function of (seed, epoch) so a resumed run sees the same data."""
    order = list(range(num_rows))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def rows_for_step(num_rows: int, step: int, prompts_per_step: int, seed: int) -> list[int]:
    """Row indices for training step `step` (0-based): consecutive slices of per-epoch shuffles."""
    orders: dict[int, list[int]] = {}  # a step spans at most a few epochs: shuffle each once, not once per prompt
    indices = []
    for position in range(step * prompts_per_step, (step + 1) * prompts_per_step):
        epoch, offset = divmod(position, num_rows)
        if epoch not in orders:
            orders[epoch] = epoch_order(num_rows, seed, epoch)
        indices.append(orders[epoch][offset])
    return indices


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
