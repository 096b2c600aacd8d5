"""Hyperparameters of a GRPO run: one frozen, documented config, stored with the job as a plain dict."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from grpo_core.spec import LOSS_TYPES, REWARD_SCALINGS


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    """Rank of the LoRA update matrices."""
    alpha: int = 32
    """Scaling numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the LoRA input, written into the adapter's config for whoever fine-tunes it further. GRPO's own
    passes run without dropout (as TRL's disable_dropout does): the clipped ratio and the KL compare the policy with
    itself, and dropout would make the ratio differ from 1 before any update."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Names of the linear layers that get an adapter (Llama-style attention projections by default)."""


@dataclass(frozen=True)
class RewardSpec:
    """A reference to a registered reward function; the step's reward is the weighted sum over specs."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GRPOConfig:
    group_size: int = 8
    """G: completions sampled per prompt; their mean and std are the baseline."""
    prompts_per_step: int = 1
    """P: prompts per training step, so each step samples P x G completions."""
    max_steps: int = 60
    """Training steps (one sampling round each)."""
    num_iterations: int = 1
    """mu: optimizer updates per sampling round. Above 1 the sampling policy's log-probs are kept and clipped against."""
    epsilon: float = 0.2
    """Lower clip: the ratio is kept above 1 - epsilon."""
    epsilon_high: float | None = None
    """Upper clip: the ratio is kept below 1 + epsilon_high (DAPO's clip-higher). None means epsilon."""
    beta: float = 0.0
    """KL penalty weight towards the reference (the base model without the adapter). 0 skips the reference pass,
    as TRL and DAPO do by default: with LoRA the policy stays close to the base anyway."""
    learning_rate: float = 2e-4
    """AdamW learning rate for the adapter weights (LoRA wants a larger rate than full fine-tuning)."""
    weight_decay: float = 0.0
    warmup_steps: int = 0
    """Linear warmup from 0 over this many optimizer updates (num_iterations per step, as TRL counts them)."""
    lr_schedule: str = "constant"
    """After warmup: "constant" or "cosine" (to 0 at the last update, max_steps x num_iterations)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 disables it."""
    max_new_tokens: int = 48
    """Longest completion; a completion that reaches it without EOS counts as truncated."""
    temperature: float = 1.0
    top_p: float = 1.0
    loss_type: str = "grpo"
    """How token losses are reduced: grpo (mean per sequence, then over sequences), bnpo, dapo, dr_grpo."""
    scale_rewards: str = "group"
    """Advantage normalisation: group (divide by the group's std), batch, or none (Dr. GRPO)."""
    seed: int = 0
    """Seeds LoRA initialisation, data order and sampling: the same seed repeats a run exactly on CPU."""
    checkpoint_every: int = 10
    """Save a resumable checkpoint every this many steps (and at the end); 0 saves only the final one."""
    eval_every: int = 0
    """Evaluate on the eval split every this many steps (and before the first and after the last); 0 disables."""
    eval_samples_per_prompt: int = 4
    """Sampled answers per eval prompt for the sampled-reward figure (greedy is always one)."""
    lora: LoraSettings = field(default_factory=LoraSettings)

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
        checks = [
            (self.group_size >= 2, f"group_size must be >= 2 (a group of one has no baseline), got {self.group_size}"),
            (self.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {self.prompts_per_step}"),
            (self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}"),
            (0 < self.epsilon < 1, f"epsilon must be in (0, 1), got {self.epsilon}"),
            (self.epsilon_high is None or self.epsilon_high > 0, f"epsilon_high must be > 0, got {self.epsilon_high}"),
            (self.beta >= 0, f"beta must be >= 0, got {self.beta}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (
                self.lr_schedule in ("constant", "cosine"),
                f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}",
            ),
            (self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}"),
            (1 <= self.max_new_tokens <= 4096, f"max_new_tokens must be in [1, 4096], got {self.max_new_tokens}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (
                self.loss_type in LOSS_TYPES,
                f"loss_type must be one of {list(LOSS_TYPES)}, got {self.loss_type!r}",
            ),
            (
                self.scale_rewards in REWARD_SCALINGS,
                f"scale_rewards must be one of {list(REWARD_SCALINGS)}, got {self.scale_rewards!r}",
            ),
            (self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}"),
            (self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}"),
            (
                self.eval_samples_per_prompt >= 1,
                f"eval_samples_per_prompt must be >= 1, got {self.eval_samples_per_prompt}",
            ),
            (self.lora.r >= 1, f"lora.r must be >= 1, got {self.lora.r}"),
            (self.lora.alpha > 0, f"lora.alpha must be > 0, got {self.lora.alpha}"),
            (0 <= self.lora.dropout < 1, f"lora.dropout must be in [0, 1), got {self.lora.dropout}"),
            (len(self.lora.target_modules) >= 1, "lora.target_modules must name at least one module"),
        ]
        return [message for ok, message in checks if not ok]

    def training_differences(self, saved: dict[str, Any]) -> list[str]:
        """The fields in which `saved` (another config's to_dict()) differs from this one in a way that changes
        what is trained, so a run resumed across them would not be the run that was saved. When to checkpoint and
        evaluate may change; so may max_steps under a constant schedule (nothing before it depends on it)."""
        neutral = set(RESUMABLE_CHANGES) | ({"max_steps"} if self.lr_schedule == "constant" else set())
        mine, theirs = _flatten(self.to_dict()), _flatten(saved)
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
    "str": (lambda v: isinstance(v, str), "a string"),
    "tuple[str, ...]": (
        lambda v: isinstance(v, tuple) and all(isinstance(item, str) for item in v),
        "a list of strings",
    ),
}
# lora.alpha is declared an int (PEFT's usual value) but any finite scale works: alpha / r multiplies the update.
_KIND_OVERRIDES = {"lora.alpha": "float"}


def _type_problems(config: GRPOConfig) -> list[str]:
    """Each field whose value is not of its declared type: 2.5 or "8" for an integer, Infinity for a number, a
    string for a list. JSON and YAML hand us any type, and a dataclass checks none."""
    fields = [(f.name, f.type, getattr(config, f.name)) for f in dataclasses.fields(config) if f.name != "lora"]
    if not isinstance(config.lora, LoraSettings):
        return [f"lora must be an object, got {config.lora!r}"]
    fields += [(f"lora.{f.name}", f.type, getattr(config.lora, f.name)) for f in dataclasses.fields(config.lora)]
    problems = []
    for name, declared, value in fields:
        check, expected = _KINDS[_KIND_OVERRIDES.get(name, str(declared))]
        if not check(value):
            problems.append(f"{name} must be {expected}, got {json_repr(value)}")
    return problems


def json_repr(value: Any) -> str:
    """A value as the user wrote it in JSON (true, null, "8", Infinity), not as Python prints it."""
    try:
        return json.dumps(value, allow_nan=True)[:80]
    except (TypeError, ValueError):
        return repr(value)[:80]


# Fields a resumed run may change: they decide when to save and evaluate, not what is trained.
RESUMABLE_CHANGES = frozenset({"checkpoint_every", "eval_every", "eval_samples_per_prompt"})


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    flat = {key: value for key, value in config.items() if key != "lora"}
    flat.update({f"lora.{key}": value for key, value in (config.get("lora") or {}).items()})
    if isinstance(flat.get("lora.target_modules"), tuple | list):
        flat["lora.target_modules"] = list(flat["lora.target_modules"])
    return flat
