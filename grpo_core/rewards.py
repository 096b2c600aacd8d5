"""Reward functions: a registry of named, rule-based verifiers that score one completion against its dataset row.

A job names rewards; it never supplies code. Built-ins live here; an operator installs more as Python entry
points in the group `grpo_service.rewards`, each pointing at a `RewardFunction`. Every reward declares its
params (a pydantic model, so a bad spec is refused with a precise message before a model is loaded) and the
dataset fields it reads.

Names, params and fields are all this module holds, and it imports no torch: the API validates specs with it.
`score_batch` scores one function over a batch; the trainer runs it in a child process under a time limit
(`grpo_core.reward_process`), so a reward that hangs or never releases the GIL cannot hang the training process.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

import re2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from grpo_core.config import RewardSpec, range_problem

ENTRY_POINT_GROUP = "grpo_service.rewards"
TENANT_REWARD_PREFIX = "rwd_"  # a tenant's uploaded reward is named by its id, "rwd_<32 hex digits>"


def is_tenant_reward(name: str) -> bool:
    """Whether a job's reward name refers to a tenant's uploaded code (run only in the sandbox), not a registry name."""
    return name.startswith(TENANT_REWARD_PREFIX)


class RewardParams(BaseModel):
    # Numbers must be finite: a tolerance of Infinity would call every answer right (and echo back as null).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    numeric_fields: ClassVar[tuple[str, ...]] = ()
    """Params that name a dataset field whose values must be numbers in every row (checked at submit time)."""


@dataclass(frozen=True)
class RewardFunction:
    name: str
    description: str
    params_model: type[RewardParams]
    score: Callable[[str, Mapping[str, Any], Any], float]  # (completion, row, params) -> reward
    fields: Callable[[Any], tuple[str, ...]] = lambda params: ()  # dataset fields read, given the params

    def params_schema(self) -> dict[str, Any]:
        return self.params_model.model_json_schema()


class RewardSpecError(ValueError):
    """A reward reference cannot be used: unknown name, bad params, or a field missing from the dataset."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


_BUILTINS: dict[str, RewardFunction] = {}


def register_reward(fn: RewardFunction) -> RewardFunction:
    _BUILTINS[fn.name] = fn
    return fn


def reward_registry() -> dict[str, RewardFunction]:
    """Built-ins plus the operator's entry points (an entry point cannot shadow a built-in)."""
    registry = dict(_BUILTINS)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in registry:
            continue
        loaded = entry_point.load()
        if isinstance(loaded, RewardFunction):
            registry[entry_point.name] = loaded
    return registry


class TenantRewardParams(RewardParams):
    """A tenant reward's params: any keys, passed to its code as keyword arguments (checked at submit, where the
    function's signature is known)."""

    model_config = ConfigDict(extra="allow")


def _sandbox_only(completion: str, row: Mapping[str, Any], params: Any) -> float:
    raise RuntimeError("a tenant's reward runs only in its sandbox (grpo_core.sandbox), never in process")


def tenant_reward_function(name: str) -> RewardFunction:
    """The stand-in a tenant reward resolves to: its name and params for the trainer's bookkeeping. Its code
    scores only in a sandbox (grpo_core.scoring), so `score` refuses to run."""
    return RewardFunction(name, "a tenant's uploaded reward, run in a sandbox", TenantRewardParams, _sandbox_only)


_WEIGHT_FIELD = next(f for f in dataclasses.fields(RewardSpec) if f.name == "weight")


def resolve_rewards(
    specs: Sequence[RewardSpec],
    dataset_fields: set[str] | None = None,
    tenant_rewards: Collection[str] = (),
) -> list[tuple[RewardFunction, Any, float]]:
    """Check every spec and return (function, parsed params, weight) triples, or raise RewardSpecError listing
    every problem at once. dataset_fields, when given, must hold every field the rewards read. tenant_rewards
    names the uploaded rewards (ids) the specs may use; any other tenant name is unknown, like a missing one."""
    registry = reward_registry()
    resolved, problems = [], []
    if not specs:
        problems.append("at least one reward is needed")
    for spec in specs:
        tenant = is_tenant_reward(spec.name) and spec.name in tenant_rewards
        fn = tenant_reward_function(spec.name) if tenant else registry.get(spec.name)
        if fn is None:
            problems.append(f"unknown reward {spec.name!r}; valid: {', '.join(sorted(registry))}")
            continue
        if isinstance(spec.weight, bool) or not (isinstance(spec.weight, (int, float)) and math.isfinite(spec.weight)):
            problems.append(f"reward {spec.name!r}: weight must be a finite number, got {spec.weight!r}")
        elif problem := range_problem("weight", _WEIGHT_FIELD, spec.weight):
            problems.append(f"reward {spec.name!r}: {problem}")
        try:
            params = fn.params_model(**(spec.params or {}))
        except ValidationError as error:
            for item in error.errors():
                where = ".".join(str(part) for part in item["loc"]) or "params"
                problems.append(f"reward {spec.name!r}: param {where}: {item['msg']}")
            continue
        missing = [f for f in fn.fields(params) if dataset_fields is not None and f not in dataset_fields]
        if missing:
            problems.append(
                f"reward {spec.name!r} needs dataset field(s) {', '.join(missing)}, which the dataset lacks"
            )
        resolved.append((fn, params, float(spec.weight)))
    if problems:
        raise RewardSpecError(problems)
    return resolved


def score_items(
    fn: RewardFunction, params: Any, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> tuple[list[float], list[str | None]]:
    """fn's score of completion i against rows[i], for every i, and per item None or why it failed: it raised or
    was not a finite number (such items score 0: one bad completion must not stop a run)."""
    values: list[float] = []
    errors: list[str | None] = []
    for completion, row in zip(completions, rows, strict=True):
        try:
            value = float(fn.score(completion, row, params))
            if not math.isfinite(value):
                raise ValueError(f"reward returned {value}, not a finite number")
            error = None
        except Exception as raised:
            value, error = 0.0, f"{type(raised).__name__}: {raised}"[:2000]
        values.append(value)
        errors.append(error)
    return values, errors


def score_batch(
    fn: RewardFunction, params: Any, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> tuple[list[float], int]:
    """As score_items, with how many items failed instead of why."""
    values, errors = score_items(fn, params, completions, rows)
    return values, sum(error is not None for error in errors)


# --- built-ins ----------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> float | None:
    """The last number written in text ("1,234" reads as 1234), or None."""
    matches = _NUMBER.findall(text)
    return float(matches[-1].replace(",", "")) if matches else None


class NumericAnswerParams(RewardParams):
    numeric_fields = ("field",)
    field: str = Field("answer", description="Dataset field holding the expected number")
    tolerance: float = Field(1e-6, ge=0, description="Largest absolute difference that still counts as right")


def _numeric_answer(completion: str, row: Mapping[str, Any], params: NumericAnswerParams) -> float:
    predicted = last_number(completion)
    expected = float(str(row[params.field]).replace(",", ""))
    return float(predicted is not None and abs(predicted - expected) <= params.tolerance)


register_reward(
    RewardFunction(
        "numeric_answer",
        "1 when the last number in the completion equals the row's answer within a tolerance, else 0",
        NumericAnswerParams,
        _numeric_answer,
        lambda params: (params.field,),
    )
)


class ExactMatchParams(RewardParams):
    field: str = Field("answer", description="Dataset field holding the expected text")
    strip: bool = Field(True, description="Ignore leading and trailing whitespace")
    case_sensitive: bool = True


def _exact_match(completion: str, row: Mapping[str, Any], params: ExactMatchParams) -> float:
    got, want = completion, str(row[params.field])
    if params.strip:
        got, want = got.strip(), want.strip()
    if not params.case_sensitive:
        got, want = got.casefold(), want.casefold()
    return float(got == want)


register_reward(
    RewardFunction(
        "exact_match",
        "1 when the completion equals the row's field exactly (optionally stripped, case-folded), else 0",
        ExactMatchParams,
        _exact_match,
        lambda params: (params.field,),
    )
)


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.dot_nl = True  # `.` matches a newline too, as re.DOTALL did: completions are multi-line
    options.log_errors = False  # a refused pattern is reported to the user, not logged by the C library
    return options


_RE2_OPTIONS = _re2_options()


class RegexMatchParams(RewardParams):
    pattern: str = Field(
        description="Regular expression in RE2 syntax (https://github.com/google/re2/wiki/Syntax), matched in time "
        "linear in the completion's length. RE2 has no backreferences (\\1, (?P=name)) and no lookaround "
        "((?=...), (?!...), (?<=...), (?<!...)); write a code point as \\x{263a}, not \\u263a. `.` also matches "
        "a newline."
    )
    full_match: bool = Field(False, description="Require the whole completion to match, not just a part")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re2.compile(pattern, options=_RE2_OPTIONS)
        except re2.error as error:
            reason = error.args[0]
            reason = reason.decode(errors="replace") if isinstance(reason, bytes) else reason  # RE2 gives bytes
            raise ValueError(
                f"not a valid regular expression for RE2 ({reason}); regex_match uses RE2, which runs in linear "
                "time and so has no backreferences or lookaround"
            ) from None
        return pattern


def _regex_match(completion: str, row: Mapping[str, Any], params: RegexMatchParams) -> float:
    # RE2, not re: a pattern such as (.+)+$ backtracks for ever in re, holding the GIL; RE2 never backtracks.
    regex = re2.compile(params.pattern, options=_RE2_OPTIONS)
    match = regex.fullmatch if params.full_match else regex.search
    return float(match(completion) is not None)


register_reward(
    RewardFunction(
        "regex_match",
        "1 when the completion matches the regular expression `pattern` (RE2 syntax: linear time, no "
        "backreferences or lookaround), else 0",
        RegexMatchParams,
        _regex_match,
    )
)


class FormatTagsParams(RewardParams):
    tag: str = Field("answer", pattern=r"^[A-Za-z][\w-]*$", description="Tag name: rewards <tag>...</tag>")


def _format_tags(completion: str, row: Mapping[str, Any], params: FormatTagsParams) -> float:
    tag = re.escape(params.tag)
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", completion, flags=re.DOTALL)
    return float(len(found) == 1 and found[0].strip() != "")


register_reward(
    RewardFunction(
        "format_tags",
        "1 when the completion holds exactly one non-empty <tag>...</tag> block, else 0",
        FormatTagsParams,
        _format_tags,
    )
)


class LengthTargetParams(RewardParams):
    target: int = Field(gt=0, description="Wanted length")
    unit: Literal["chars", "words"] = "chars"


def _length_target(completion: str, row: Mapping[str, Any], params: LengthTargetParams) -> float:
    length = len(completion) if params.unit == "chars" else len(completion.split())
    return max(0.0, 1.0 - abs(length - params.target) / params.target)


register_reward(
    RewardFunction(
        "length_target",
        "1 at the target length, falling linearly to 0 at twice (or zero times) the target",
        LengthTargetParams,
        _length_target,
    )
)
