"""Hyperparameters of a GRPO run: one frozen, documented config, stored with the job as a plain dict."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

from grpo_core.spec import IMPORTANCE_SAMPLING_LEVELS, LOSS_TYPES, REWARD_SCALINGS

# The largest integer any field takes, unless its own bound is lower: a 32-bit signed int, what the job tables
# store and what torch's seeding and tensor sizes take without overflow (the API's schema caps at the same value).
MAX_INT = 2**31 - 1

LR_SCHEDULES = ("constant", "cosine")
DTYPES = ("auto", "bfloat16", "float32")

# Each field's range lives in its metadata (ge, gt, le, lt, min_length, choices; `why` explains a bound): the
# checks below and the API's pydantic model (api/schemas.py) both read it, so they cannot disagree. Upper bounds on
# scales (beta, learning_rate, lora.alpha, temperature, ...) sit far above any useful value, where float32 math
# still holds: past them one step already overflows (a beta of 1e300 is Infinity in float32, and 0 x Infinity is
# NaN), so such a spec could never train.


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter: which linear layers get one, its rank and its scale."""

    r: int = field(default=16, metadata={"ge": 1})
    """Rank of the LoRA update matrices."""
    alpha: int = field(default=32, metadata={"gt": 0, "le": 1024})
    """Scaling numerator: the update is multiplied by alpha / r."""
    dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    """Dropout on the LoRA input, written into the adapter's config for whoever fine-tunes it further. GRPO's own
    passes run without dropout (as TRL's disable_dropout does): the clipped ratio and the KL compare the policy with
    itself, and dropout would make the ratio differ from 1 before any update."""
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj"), metadata={"min_length": 1}
    )
    """Names of the linear layers that get an adapter (Llama-style attention projections by default); GET /v1/models
    lists each model's."""


@dataclass(frozen=True)
class RewardSpec:
    """A reference to a registered reward function; the step's reward is the weighted sum over specs."""

    name: str
    weight: float = field(default=1.0, metadata={"ge": -1000, "le": 1000})
    """Multiplies the reward in the weighted sum. Bounded: in float32 a weight of 1e300 is Infinity, and a reward of 0
    times it is NaN."""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GRPOConfig:
    group_size: int = field(default=8, metadata={"ge": 2, "why": "a group of one has no baseline"})
    """G: completions sampled per prompt; their mean and std are the baseline."""
    prompts_per_step: int = field(default=1, metadata={"ge": 1})
    """P: prompts per training step, so each step samples P x G completions."""
    micro_batch_size: int = field(default=0, metadata={"ge": 0})
    """Completions per forward/backward chunk: the log-prob passes and each update run over this many completions
    at a time, accumulating the gradient, so their memory stays that of micro_batch_size completions however large
    P x G grows (sampling still holds all P x G at once). 0 runs the whole step in one pass. Loss, gradient and
    metrics are the one-pass ones for every loss_type (dapo and dr_grpo normalise over the whole step), up to
    float rounding, so a resumed run may change it: lowering it is how a step that ran out of memory fits."""
    processes: int = field(default=1, metadata={"ge": 1})
    """Processes the job trains on, data-parallel over torch.distributed (one GPU each on a GPU worker, gloo ranks
    on a CPU one; grpo_core/distributed.py). Each step's prompts are dealt among them, so it must not exceed
    prompts_per_step. What is trained is the one-process run's, up to float rounding (the gradient is summed across
    processes), so a resumed run may change it."""
    max_steps: int = field(default=60, metadata={"ge": 1})
    """Training steps (one sampling round each)."""
    num_iterations: int = field(default=1, metadata={"ge": 1})
    """mu: optimizer updates per sampling round. Above 1 the sampling policy's log-probs are kept and clipped against."""
    epsilon: float = field(default=0.2, metadata={"gt": 0, "lt": 1})
    """Lower clip: the ratio is kept above 1 - epsilon."""
    epsilon_high: float | None = field(default=None, metadata={"gt": 0, "le": 10})
    """Upper clip: the ratio is kept below 1 + epsilon_high (DAPO's clip-higher). None means epsilon."""
    beta: float = field(default=0.0, metadata={"ge": 0, "le": 10})
    """KL penalty weight towards the reference (the base model without the adapter). 0 skips the reference pass,
    as TRL and DAPO do by default: with LoRA the policy stays close to the base anyway."""
    learning_rate: float = field(default=2e-4, metadata={"gt": 0, "le": 1})
    """AdamW learning rate for the adapter weights (LoRA wants a larger rate than full fine-tuning)."""
    weight_decay: float = field(default=0.0, metadata={"ge": 0, "le": 1})
    """AdamW's decoupled weight decay on the adapter weights."""
    warmup_steps: int = field(default=0, metadata={"ge": 0})
    """Linear warmup from 0 over this many optimizer updates (num_iterations per step, as TRL counts them)."""
    lr_schedule: str = field(default="constant", metadata={"choices": LR_SCHEDULES})
    """After warmup: "constant" or "cosine" (to 0 at the last update, max_steps x num_iterations)."""
    max_grad_norm: float = field(default=1.0, metadata={"ge": 0, "le": 1000})
    """Gradient clipping by global norm; 0 disables it."""
    max_new_tokens: int = field(default=48, metadata={"ge": 1, "le": 4096})
    """Longest completion; a completion that reaches it without EOS counts as truncated."""
    temperature: float = field(default=1.0, metadata={"ge": 0.01, "le": 100})
    """Sampling temperature: logits are divided by it."""
    top_p: float = field(default=1.0, metadata={"gt": 0, "le": 1})
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p (1 keeps all)."""
    loss_type: str = field(default="grpo", metadata={"choices": LOSS_TYPES})
    """How token losses are reduced: grpo (mean per sequence, then over sequences), bnpo, dapo, dr_grpo."""
    scale_rewards: str = field(default="group", metadata={"choices": REWARD_SCALINGS})
    """Advantage normalisation: group (divide by the group's std), batch, or none (Dr. GRPO)."""
    importance_sampling_level: str = field(default="token", metadata={"choices": IMPORTANCE_SAMPLING_LEVELS})
    """Where the clipped ratio to the sampling policy is taken: token (GRPO: each token's own ratio) or sequence
    (GSPO: one ratio per completion, the geometric mean of its token ratios, clipped as one; GSPO's paper clips it
    far tighter, epsilon about 3e-4 and epsilon_high 4e-4). The ratio differs from 1 only when num_iterations > 1."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: groups whose completions all got the same reward (no learning signal) are dropped,
    and more prompts are drawn (prompts_per_step at a time, chosen at random from the dataset by seed and step)
    until the step has prompts_per_step informative groups or max_sampling_rounds rounds have run; a step still
    short trains on those it found. The step's metrics say how many prompts were drawn and groups dropped. One
    process only."""
    max_sampling_rounds: int = field(default=3, metadata={"ge": 1, "le": 16})
    """With dynamic_sampling: at most this many sampling rounds per step, the first included, so a task where
    every group is flat costs at most this many times a step's sampling."""
    mask_truncated_completions: bool = False
    """DAPO's overlong filtering: completions that reach max_new_tokens without EOS leave the loss (they still
    count in their group's reward mean and std). Each loss_type then normalises over the completions left (dr_grpo
    keeps its constant)."""
    seed: int = 0
    """Seeds LoRA initialisation, data order and sampling: the same seed repeats a run exactly on CPU."""
    dtype: str = field(default="auto", metadata={"choices": DTYPES})
    """Precision of the base model's weights and activations: auto (bfloat16 on a CUDA GPU that supports it,
    float32 on a CPU), float32, or bfloat16. The LoRA weights and the optimizer's state stay float32 either way.
    Resolved once per run; a checkpoint resumes only in the dtype it was trained in."""
    checkpoint_every: int = field(default=10, metadata={"ge": 0})
    """Save a resumable checkpoint every this many steps (and at the end); 0 saves only the final one."""
    eval_every: int = field(default=0, metadata={"ge": 0})
    """Evaluate on the eval split every this many steps (and before the first and after the last); 0 disables."""
    eval_samples_per_prompt: int = field(default=4, metadata={"ge": 1})
    """Sampled answers per eval prompt for the sampled-reward figure (greedy is always one)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """The LoRA adapter's shape (null or omitted: the defaults)."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid hyperparameters: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every type or range violation, in words a user can act on (empty when the config is valid). Types come
        first: a range check on a value of the wrong type would only raise Python's own error."""
        type_problems = _type_problems(self)
        if type_problems:
            return type_problems
        problems = [
            problem for name, spec, value in _declared_fields(self) if (problem := range_problem(name, spec, value))
        ]
        if not problems and self.dynamic_sampling and self.processes > 1:
            problems.append(
                f"dynamic_sampling runs on one process (processes is {self.processes}): its extra sampling rounds "
                "are decided from the whole step's rewards"
            )
        if not problems and self.processes > self.prompts_per_step:
            problems.append(
                f"processes ({self.processes}) must not exceed prompts_per_step ({self.prompts_per_step}): each "
                "process takes whole prompts of every step"
            )
        return problems

    def training_differences(self, saved: dict[str, Any]) -> list[str]:
        """The fields in which `saved` (another config's to_dict()) differs from this one in a way that changes
        what is trained, so a run resumed across them would not be the run that was saved. When to checkpoint and
        evaluate may change; so may max_steps under a constant schedule (nothing before it depends on it)."""
        neutral = set(RESUMABLE_CHANGES) | ({"max_steps"} if self.lr_schedule == "constant" else set())
        # A field the saved config lacks did not exist when it was written: that run had its default.
        mine, theirs = _flatten(self.to_dict()), {**_flatten(GRPOConfig().to_dict()), **_flatten(saved)}
        return sorted(
            key for key in mine.keys() | theirs.keys() if key not in neutral and mine.get(key) != theirs.get(key)
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lora"]["target_modules"] = list(self.lora.target_modules)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GRPOConfig:
        """Build from a plain dict (a job spec, a YAML file); unknown keys are an error, not silently ignored."""
        data = dict(data)
        lora = data.pop("lora", None)
        lora = {} if lora is None else lora  # null means the defaults; [], 0 or "" are mistakes, refused below
        if not isinstance(lora, dict):
            raise ValueError(f'lora must be an object such as {{"r": 16}}, got {lora!r}')
        lora = dict(lora)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        known_lora = {f.name for f in dataclasses.fields(LoraSettings)}
        unknown += [f"lora.{k}" for k in sorted(set(lora) - known_lora)]
        if unknown:
            raise ValueError(f"unknown hyperparameters: {', '.join(unknown)}")
        if isinstance(lora.get("target_modules"), list):  # JSON has no tuples; a string is left to be refused
            lora["target_modules"] = tuple(lora["target_modules"])
        return cls(**data, lora=LoraSettings(**lora))


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_KINDS: dict[str, tuple[Any, str]] = {
    "int": (_is_integer, "an integer"),
    "float": (_is_finite_number, "a finite number"),
    "float | None": (lambda v: v is None or _is_finite_number(v), "a finite number or null"),
    "int | None": (lambda v: v is None or _is_integer(v), "an integer or null"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "tuple[str, ...]": (
        lambda v: isinstance(v, tuple) and all(isinstance(item, str) for item in v),
        "a list of strings",
    ),
}
# lora.alpha is declared an int (PEFT's usual value) but any finite scale works: alpha / r multiplies the update.
_KIND_OVERRIDES = {"lora.alpha": "float"}


def _declared_fields(config: GRPOConfig) -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted name, dataclass field, value) for every field, lora's as lora.r, lora.alpha, ..."""
    fields = [(f.name, f, getattr(config, f.name)) for f in dataclasses.fields(config) if f.name != "lora"]
    fields += [(f"lora.{f.name}", f, getattr(config.lora, f.name)) for f in dataclasses.fields(config.lora)]
    return fields


def declared_kind(name: str, spec: dataclasses.Field) -> str:
    """The field's type as written ("int", "float | None", ...), or the kind it is checked as where that differs."""
    return _KIND_OVERRIDES.get(name, str(spec.type))


def _type_problems(config: GRPOConfig) -> list[str]:
    """Each field whose value is not of its declared type: 2.5 or "8" for an integer, Infinity for a number, a
    string for a list. JSON and YAML hand us any type, and a dataclass checks none."""
    if not isinstance(config.lora, LoraSettings):
        return [f"lora must be an object, got {config.lora!r}"]
    problems = []
    for name, spec, value in _declared_fields(config):
        check, expected = _KINDS[declared_kind(name, spec)]
        if not check(value):
            problems.append(f"{name} must be {expected}, got {json_repr(value)}")
    return problems


def field_problems(instance: Any, prefix: str = "") -> list[str]:
    """Every type problem of a flat config dataclass's fields, or when there is none every range problem (see
    GRPOConfig.problems), each naming the field as prefix + name."""
    fields = [(prefix + spec.name, spec, getattr(instance, spec.name)) for spec in dataclasses.fields(instance)]
    problems = []
    for name, spec, value in fields:
        check, expected = _KINDS[declared_kind(name, spec)]
        if not check(value):
            problems.append(f"{name} must be {expected}, got {json_repr(value)}")
    if problems:
        return problems
    return [problem for name, spec, value in fields if (problem := range_problem(name, spec, value))]


_BOUND_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def range_problem(name: str, spec: dataclasses.Field, value: Any) -> str | None:
    """Why `value` (of the right type) is outside the range in the field's metadata, or None."""
    bounds = spec.metadata
    if value is None:  # only optional fields take None (the type check ran first); their bounds apply to numbers
        return None
    why = f" ({bounds['why']})" if "why" in bounds else ""
    if "choices" in bounds and value not in bounds["choices"]:
        return f"{name} must be one of {list(bounds['choices'])}, got {value!r}"
    if "min_length" in bounds and len(value) < bounds["min_length"]:
        return f"{name} must hold at least {bounds['min_length']} item(s), got {len(value)}"
    failed = {
        "ge": lambda b: value < b,
        "gt": lambda b: value <= b,
        "le": lambda b: value > b,
        "lt": lambda b: value >= b,
    }
    low = next((k for k in ("ge", "gt") if k in bounds), None)
    high = next((k for k in ("le", "lt") if k in bounds), None)
    if not any(failed[k](bounds[k]) for k in (low, high) if k):
        if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT - 1 <= value <= MAX_INT:
            return f"{name} must be a 32-bit integer ({-MAX_INT - 1} to {MAX_INT}), got {value}"
        return None
    if low and high:
        interval = f"{'[' if low == 'ge' else '('}{bounds[low]}, {bounds[high]}{']' if high == 'le' else ')'}"
        return f"{name} must be in {interval}{why}, got {value}"
    bound = low or high
    assert bound is not None  # some bound failed
    return f"{name} must be {_BOUND_WORDS[bound]} {bounds[bound]}{why}, got {value}"


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (Python keeps no such docstring at run time: read the source),
    so the OpenAPI schema documents each field with the very text the config class holds. Without the source (an
    install of bytecode only) the fields go undocumented rather than the API failing to start."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    definition = ast.parse(textwrap.dedent(source)).body[0]
    assert isinstance(definition, ast.ClassDef)
    body = definition.body
    return {
        node.target.id: inspect.cleandoc(following.value.value)
        for node, following in zip(body, body[1:], strict=False)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(following, ast.Expr)
        and isinstance(following.value, ast.Constant)
        and isinstance(following.value.value, str)
    }


def json_repr(value: Any) -> str:
    """A value as the user wrote it in JSON (true, null, "8", Infinity), not as Python prints it."""
    try:
        return json.dumps(value, allow_nan=True)[:80]
    except (TypeError, ValueError):
        return repr(value)[:80]


# Fields a resumed run may change: they decide when to save and evaluate, or (micro_batch_size) how a step is cut
# to fit in memory, not what is trained. A micro batch changes only the order in which the gradient's terms are
# summed (about 1e-7 relative in float32), and a job that ran out of memory must be able to resume with a smaller
# one; a checkpoint saved before the field existed ran its steps in one pass, which is micro_batch_size 0.
# processes likewise only changes where the gradient's terms are summed; a checkpoint from before it ran on one.
RESUMABLE_CHANGES = frozenset(
    {"checkpoint_every", "eval_every", "eval_samples_per_prompt", "micro_batch_size", "processes"}
)


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    flat = {key: value for key, value in config.items() if key != "lora"}
    flat.update({f"lora.{key}": value for key, value in (config.get("lora") or {}).items()})
    if isinstance(flat.get("lora.target_modules"), tuple | list):
        flat["lora.target_modules"] = list(flat["lora.target_modules"])
    return flat
