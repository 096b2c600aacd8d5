"""Pre-flight: what the base model does on a task before any compute is spent training on it.

Pure functions over plain numbers (no torch, so the API may import the names): the figures of a few sampled groups,
the job's estimated duration, and a verdict in words with the numbers behind it. grpo_core/preflight_measure.py
samples and times (the worker calls it and records the result); this module only judges.

A group whose G rewards are all equal has zero advantage and teaches nothing (grpo_core.algorithms). When almost every
group is like that, training spends its compute on nothing: a task the model never solves (all at the lowest reward:
too hard), always solves (all at the highest: too easy), or a reward that does not tell answers apart (no signal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

VerdictLevel = Literal["ok", "too_hard", "too_easy", "no_signal", "reward_errors"]
VERDICT_LEVELS: tuple[str, ...] = ("ok", "too_hard", "too_easy", "no_signal", "reward_errors")

FLAT_GROUPS_LIMIT = 0.75
"""At or above this fraction of groups with all-equal rewards, the task gives too little signal to train on."""
SAME_END_SHARE = 2 / 3
"""Of those flat groups, this share at the lowest (highest) reward seen makes the task too hard (too easy)."""
SAMPLES_AT_END_LIMIT = 0.9
"""With fewer flat groups, this fraction of all samples at the lowest (highest) reward seen still makes the task too
hard (too easy): the few groups with a spread teach a model that already fails (solves) almost every time."""
REWARD_ERROR_LIMIT = 0.25
"""A reward failing on more than this fraction of the samples makes the verdict reward_errors."""
TRUNCATION_LIMIT = 0.5
"""Above this fraction of completions cut at max_new_tokens, the verdict warns."""


@dataclass(frozen=True)
class RewardFigures:
    name: str
    mean: float
    errors: int  # samples this reward failed on (raised, timed out, not a number) and scored 0


@dataclass(frozen=True)
class Verdict:
    level: str  # one of VERDICT_LEVELS
    message: str  # a plain-language sentence or two, with the numbers behind it
    warnings: list[str] = field(default_factory=list)  # things to fix that do not decide the level (truncation)


@dataclass(frozen=True)
class SampleFigures:
    """The figures of the pre-flight's sampled groups (the base model at the job's temperature and G)."""

    prompts: int
    group_size: int
    reward_mean: float
    reward_std: float  # over every sample (Bessel's; 0 for a single sample)
    rewards: list[RewardFigures]
    flat_groups: int  # groups whose G rewards are all equal
    flat_fraction: float
    flat_low_groups: int  # flat groups at the lowest reward seen (all 0 for a 0/1 reward)
    flat_high_groups: int  # flat groups at the highest reward seen
    at_lowest_fraction: float  # samples at the lowest reward seen (0 when every sample scored the same)
    at_highest_fraction: float  # samples at the highest reward seen (0 when every sample scored the same)
    completion_length_mean: float  # tokens
    truncated_fraction: float  # completions cut at max_new_tokens


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def sample_figures(
    rewards: Sequence[float],
    per_function: Sequence[Sequence[float]],
    function_errors: Sequence[int],
    names: Sequence[str],
    lengths: Sequence[float],
    truncated: Sequence[bool],
    group_size: int,
) -> SampleFigures:
    """Figures of N = prompts x group_size samples, each group's G adjacent. rewards: [N] weighted sums;
    per_function: [N][F] each reward's raw score; function_errors: [F] failures per reward; names: [F];
    lengths: [N] completion tokens; truncated: [N] cut at max_new_tokens.

    A flat group is "low" when its value is the lowest reward seen and "high" when the highest; when every sample
    scored the same, a value at or below 0 counts as low (nothing earned any reward) and above 0 as high."""
    count = len(rewards)
    if count == 0 or group_size < 1 or count % group_size:
        raise ValueError(f"{count} rewards do not make whole groups of {group_size}")
    lowest, highest = min(rewards), max(rewards)
    groups = [rewards[start : start + group_size] for start in range(0, count, group_size)]
    flat = [group[0] for group in groups if max(group) == min(group)]
    if lowest == highest:
        low = len(flat) if lowest <= 0 else 0
        high = len(flat) - low
    else:
        low = sum(value == lowest for value in flat)
        high = sum(value == highest for value in flat)
    return SampleFigures(
        prompts=len(groups),
        group_size=group_size,
        reward_mean=sum(rewards) / count,
        reward_std=_std(rewards),
        rewards=[
            RewardFigures(name, sum(row[j] for row in per_function) / count, int(function_errors[j]))
            for j, name in enumerate(names)
        ],
        flat_groups=len(flat),
        flat_fraction=len(flat) / len(groups),
        flat_low_groups=low,
        flat_high_groups=high,
        at_lowest_fraction=0.0 if lowest == highest else sum(r == lowest for r in rewards) / count,
        at_highest_fraction=0.0 if lowest == highest else sum(r == highest for r in rewards) / count,
        completion_length_mean=sum(lengths) / count,
        truncated_fraction=sum(bool(t) for t in truncated) / count,
    )


def evaluations_in_job(max_steps: int, eval_every: int, has_eval_set: bool) -> int:
    """How many held-out evaluations a job runs: at step 0, every eval_every steps before the last, and after the
    last (grpo_core.trainer's loop)."""
    if not has_eval_set or eval_every == 0:
        return 0
    return 1 + (max_steps - 1) // eval_every + 1


def estimate_job_seconds(
    *, max_steps: int, seconds_per_step: float, evaluations: int, seconds_per_evaluation: float, load_seconds: float
) -> float:
    """The whole job on this worker: every step at the measured pace, its evaluations, and the model load."""
    return max_steps * seconds_per_step + evaluations * seconds_per_evaluation + load_seconds


def _num(value: float) -> str:
    return f"{value:.3g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def judge(figures: SampleFigures, max_new_tokens: int) -> Verdict:
    """The verdict on the sampled figures: reward_errors when a reward fails often, else too_hard, too_easy or
    no_signal when at least FLAT_GROUPS_LIMIT of the groups are flat, else too_hard (too_easy) when at least
    SAMPLES_AT_END_LIMIT of the samples got the lowest (highest) reward, else ok; a warning when many completions are
    cut at max_new_tokens, and one per reward that failed at all without deciding the level."""
    samples = figures.prompts * figures.group_size
    warnings = []
    if figures.truncated_fraction > TRUNCATION_LIMIT:
        warnings.append(
            f"{figures.truncated_fraction:.0%} of the completions were cut at max_new_tokens ({max_new_tokens} "
            "tokens): answers may never reach the part the reward checks. Raise max_new_tokens or ask for shorter "
            "answers."
        )
    failing = [r for r in figures.rewards if r.errors > REWARD_ERROR_LIMIT * samples]
    for reward in figures.rewards:
        if reward.errors and reward not in failing:
            warnings.append(f"reward {reward.name!r} failed on {reward.errors} of {samples} samples (scored 0).")
    if failing:
        worst = max(failing, key=lambda r: r.errors)
        return Verdict(
            "reward_errors",
            f"reward {worst.name!r} failed on {worst.errors} of {samples} samples (each scored 0): training would "
            "learn from the failures, not the task. Check the reward's params and the dataset's fields with "
            "POST /v1/rewards/{id}/test or the reward's documentation.",
            warnings,
        )
    flat, prompts = figures.flat_groups, figures.prompts
    learning = prompts - flat
    same = (
        f"{flat} of {prompts} groups gave every answer the same reward: training would learn from {learning} "
        f"prompt{'s' if learning != 1 else ''} in {prompts}."
    )
    if figures.flat_fraction >= FLAT_GROUPS_LIMIT:
        if figures.flat_low_groups >= SAME_END_SHARE * flat:
            return Verdict(
                "too_hard",
                f"{same} In {figures.flat_low_groups} of them every answer got the lowest reward (mean reward "
                f"{_num(figures.reward_mean)}). Lower the difficulty, shape the reward (partial credit), or raise G.",
                warnings,
            )
        if figures.flat_high_groups >= SAME_END_SHARE * flat:
            return Verdict(
                "too_easy",
                f"{same} In {figures.flat_high_groups} of them every answer got the highest reward (mean reward "
                f"{_num(figures.reward_mean)}): the base model already does this. Use harder prompts or a stricter "
                "reward.",
                warnings,
            )
        return Verdict(
            "no_signal",
            f"{same} The reward barely tells answers apart (std {_num(figures.reward_std)}). Use a reward with "
            "finer grades, or raise G or the temperature.",
            warnings,
        )
    for level, share, end, advice in (
        ("too_hard", figures.at_lowest_fraction, "lowest", "Lower the difficulty, shape the reward, or raise G."),
        ("too_easy", figures.at_highest_fraction, "highest", "Use harder prompts or a stricter reward."),
    ):
        if share >= SAMPLES_AT_END_LIMIT:
            return Verdict(
                level,
                f"{share:.0%} of the answers got the {end} reward (mean reward {_num(figures.reward_mean)}), and "
                f"only {learning} of {prompts} groups gave answers different rewards: training would learn from "
                f"{learning} prompt{'s' if learning != 1 else ''} in {prompts}, each with one odd answer or so. "
                f"{advice}",
                warnings,
            )
    return Verdict(
        "ok",
        f"{learning} of {prompts} groups have answers with different rewards (mean reward "
        f"{_num(figures.reward_mean)}, std {_num(figures.reward_std)}): training has a signal to learn from.",
        warnings,
    )


def report(
    figures: SampleFigures,
    *,
    max_new_tokens: int,
    seconds_per_step: float,
    load_seconds: float,
    seconds_per_evaluation: float,
    evaluations: int,
    max_steps: int,
) -> dict[str, Any]:
    """The pre-flight's result as stored and served: the figures, the timings, the estimate and the verdict."""
    verdict = judge(figures, max_new_tokens)
    estimate = estimate_job_seconds(
        max_steps=max_steps,
        seconds_per_step=seconds_per_step,
        evaluations=evaluations,
        seconds_per_evaluation=seconds_per_evaluation,
        load_seconds=load_seconds,
    )
    message = f"{verdict.message} The job would take about {_duration(estimate)} on this worker."
    return {
        **asdict(figures),
        "seconds_per_step": seconds_per_step,
        "load_seconds": load_seconds,
        "evaluations": evaluations,
        "seconds_per_evaluation": seconds_per_evaluation,
        "estimated_job_seconds": estimate,
        "verdict": verdict.level,
        "message": message,
        "warnings": verdict.warnings,
    }
