"""The GRPO training loop: collect a rollout, update the policy, report; checkpoints and exact resume.

Each piece is a function callable alone (with a tiny model in a test); `GRPOTrainer` only wires them together
and owns the state that must survive a restart (adapter, optimizer, scheduler, RNG, step).

Stopping mid-step: a callback's stop_requested() is read before each decoded token, at each poll (0.1 s) while
rewards score, and between the rollout and the update. When it says stop, the step in progress is abandoned (its
RNG draws undone) and the run ends as if should_stop() had said so before it: a checkpoint of the last finished
step is saved. The update itself (the optimizer steps of a step) is never interrupted, so no checkpoint holds a
half-updated adapter. A stop therefore takes effect within one decoded token's forward pass, or 0.1 s while
rewards score, or, when it arrives during the log-prob passes, after them.

Rewards that fail: an item whose reward raised, timed out (tenant code), or was not a finite number scores 0, is
counted in `reward_errors/<name>`, and the step warns (on_warning) with the first error. When more than
max_reward_failure_fraction of a step's samples failed for one reward, the run ends (TooManyRewardFailures)
before that step updates anything.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpo_core.algorithms import LossStats, compute_policy_loss, loss_normaliser, zero_std_group_fraction
from grpo_core.checkpoint import (
    Checkpoint,
    ForkPoint,
    capture_rng_state,
    changed_files,
    list_checkpoints,
    load_fork_point,
    load_trainer_state,
    remove_partial_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from grpo_core.config import GRPOConfig, LoraSettings, RewardSpec
from grpo_core.data import dataset_fields, extra_rows_for_step, reward_prompt, rows_for_step
from grpo_core.device import deterministic_kernels, dtype_name, forked_rng, resolve_device, resolve_dtype
from grpo_core.distributed import LOCAL, World, prompt_share
from grpo_core.guardrails import GuardrailState, StopReason, StopWhen, check_eval, check_step
from grpo_core.models import load_base_model
from grpo_core.packed_linear import pack_frozen_linears
from grpo_core.reward_process import RewardFailure
from grpo_core.rewards import is_tenant_reward, resolve_rewards
from grpo_core.rollout import (
    ResolvedRewards,
    Rollout,
    Scores,
    collect_dynamic_rollout,
    collect_rollout,
    gather_scores,
    sample_and_score,
    without_dropout,
)
from grpo_core.sampling import completion_logprobs, micro_batches, prompt_seed
from grpo_core.sandbox import SandboxLimits, SandboxUnavailable, sandbox_refusal
from grpo_core.scoring import RewardScorer

SAMPLE_TEXT_CHARS = 16 * 1024  # a stored sample's prompt strings and completion, and a step's output per reward


class TrainerCallback:
    """Hooks the trainer calls as it goes; override what you need. Exceptions propagate and stop the run."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    def on_warning(self, message: str) -> None:
        """Something the user should know that did not stop the run (a corrupt checkpoint skipped on resume, a step
        where a reward failed on some samples)."""

    def on_samples(self, step: int, samples: list[dict[str, Any]], outputs: dict[str, str]) -> None:
        """After on_step: the step's first sample_groups_per_step groups, one dict per completion: {"group",
        "index" (within the group), "prompt" (the row's prompt string or messages), "completion", "reward" (the
        weighted sum), "advantage", "scores": {reward: value}, "errors": {reward: message} (failed ones only)}.
        outputs: reward name -> what it printed during the step (tenant rewards that printed anything). Strings
        are cut at SAMPLE_TEXT_CHARS with a marker."""

    def on_prompt_groups(self, step: int, groups: list[dict[str, Any]]) -> None:
        """After on_step: every group the step sampled, in draw order (with dynamic_sampling also those it dropped,
        and those of every round), one dict each: {"row": the row's index in train_rows, "rewards": [G weighted
        rewards]}. What per-prompt difficulty is built from."""

    def should_stop(self) -> bool:
        """Checked between steps: True ends the run cooperatively after saving a checkpoint."""
        return False

    def stop_requested(self) -> bool:
        """Checked often while a step runs (before each decoded token, at each poll while rewards score): read a
        flag here, nothing slower. True abandons the step in progress and ends the run as should_stop() does."""
        return False


class StepAbandoned(Exception):
    """A callback's stop_requested() said stop while a step was collecting its rollout; nothing was applied."""


class NonFiniteUpdate(ArithmeticError):
    """An update's loss or gradient norm was not finite: it was not applied. The trainer skips the step, and fails
    the run at stop_when.max_non_finite_steps such steps."""


class NonFiniteWeights(NonFiniteUpdate):
    """An update left adapter weights that are not finite: they are in the model, so the run cannot go on."""


class ResumeMismatch(ValueError):
    """The checkpoint to resume from was saved by a run with other settings: resuming would not continue it."""


class TooManyRewardFailures(RewardFailure):
    """More than the allowed fraction of a step's samples failed for one reward."""


@dataclass
class TrainResult:
    final_step: int
    stopped_early: bool  # a stop was requested (should_stop or stop_requested): the run did not end on its own
    adapter_dir: Path  # the run's adapter (loadable with PeftModel.from_pretrained): the last checkpoint's folder,
    # or with stopped_by and stop_when.adapter "best", that of the best evaluation
    adapter_step: int = 0  # the step of adapter_dir
    stopped_by: StopReason | None = None  # the guardrail (stop_when) that ended the run before max_steps


# --- pieces -------------------------------------------------------------------------------------------------------


def peft_lora_config(lora: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


def add_lora(model, lora: LoraSettings, seed: int):
    """Wrap `model` in a fresh LoRA adapter; only the adapter weights train, in float32 whatever the base's dtype.
    The LoRA A matrices are initialised from `seed`, so the same seed starts from the same adapter. On a CPU the
    frozen float32 base linears then compute with oneDNN-packed copies of their weights
    (grpo_core/packed_linear.py)."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    policy = get_peft_model(model, peft_lora_config(lora))
    # A bfloat16 base keeps float32 adapter weights, so AdamW's state is float32 too: bfloat16's 8-bit mantissa
    # rounds an update smaller than 1/256 of a weight to nothing, and AdamW's steps are about learning_rate in
    # size. peft computes the LoRA branch in the adapter's dtype and casts the result back to the base's.
    for param in policy.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    # The base weights stay frozen from here on, so on a CPU their products can use a packed copy (faster).
    pack_frozen_linears(policy)
    return policy


def reuse_freed_memory() -> bool:
    """Ask the C library's malloc to keep freed memory for reuse instead of handing it back to the kernel.

    A step allocates and frees about a gigabyte of activations and logits. By default glibc maps each large block
    fresh and unmaps it when freed, so every step faults all of it back in (benchmarks/README.md has the count
    and its cost). With mapping and trimming off, later steps reuse the heap with no faults,
    and the peak RSS measured no higher. Process-wide, so the trainer's setup calls it: its process trains (a
    worker, `grpo train`). Returns False where there is no glibc mallopt."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def learning_rate_at(update: int, config: GRPOConfig) -> float:
    """Multiplier of the base learning rate for the 0-based optimizer update `update`. Updates are counted as TRL
    counts them: num_iterations per step, so a run makes max_steps x num_iterations of them. Linear warmup over
    warmup_steps updates, then constant, or cosine decay to 0 at the last update."""
    if update < config.warmup_steps:
        return (update + 1) / (config.warmup_steps + 1)
    if config.lr_schedule == "constant":
        return 1.0
    total_updates = config.max_steps * config.num_iterations
    progress = (update - config.warmup_steps) / max(1, total_updates - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model, config: GRPOConfig):
    """AdamW over the trainable (LoRA) weights, and a scheduler to step once per optimizer update."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: learning_rate_at(update, config))
    return optimizer, scheduler


def loss_completion_mask(batch, config: GRPOConfig) -> torch.Tensor:
    """[N, T]: the completion tokens the loss counts: every completion's, or with mask_truncated_completions only
    those of completions that ended with EOS (DAPO's overlong filtering: a cut answer is not judged on its
    ending)."""
    if not config.mask_truncated_completions:
        return batch.completion_mask
    return batch.completion_mask * (~batch.truncated).unsqueeze(1).to(batch.completion_mask.dtype)


def update_policy(
    model, optimizer, scheduler, rollout: Rollout, config: GRPOConfig, world: World = LOCAL
) -> list[dict[str, float]]:
    """config.num_iterations clipped updates on one rollout, the scheduler stepped after each. Returns each
    update's metrics: the loss's (loss, clip fractions, ratio, kl), grad_norm, and the learning rate it used.

    Each update runs config.micro_batch_size completions at a time (0: all at once), each chunk's backward adding
    to the gradient before the one optimizer step. A chunk's loss is its share of the step's: its token losses
    over the loss_type's normaliser of the whole step, so gradient, loss and metrics are the one-pass ones.

    The update passes run without dropout, like the sampling, old and reference passes: the ratio and the KL
    compare the policy with itself, so the ratio is exactly 1 before the first update (TRL's disable_dropout).

    An update whose loss or gradient norm is not finite (finite inputs can overflow float32: a reward of 1e300 is
    inf there, and inf - inf is NaN) raises NonFiniteUpdate before the optimizer steps. One that leaves non-finite
    weights all the same (a backstop: the config's bounds keep AdamW's decay finite) raises it after: the run ends
    there, so no checkpoint holds them.
    With num_iterations > 1 the updates before it were applied to the model in memory, likewise never saved.

    world: when the step is dealt across ranks, the normaliser is the whole step's (summed over ranks), each rank's
    gradient is summed over ranks before clipping, and the loss stats are the step's: every rank then applies the
    one-pass update, and they stay equal."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
    batch = rollout.batch
    loss_mask = loss_completion_mask(batch, config)
    normaliser = world.sum(loss_normaliser(loss_mask, config.loss_type, config.max_new_tokens))
    chunks = micro_batches(batch.completion_ids.shape[0], config.micro_batch_size)
    updates: list[dict[str, float]] = []
    with without_dropout(model):
        for _ in range(config.num_iterations):
            optimizer.zero_grad(set_to_none=True)
            stats: LossStats | None = None
            for rows in chunks:
                output = compute_policy_loss(
                    completion_logprobs(model, batch.select(rows), config.temperature),
                    None if rollout.old_logprobs is None else rollout.old_logprobs[rows],
                    None if rollout.ref_logprobs is None else rollout.ref_logprobs[rows],
                    rollout.advantages[rows],
                    loss_mask[rows],
                    epsilon=config.epsilon,
                    epsilon_high=config.epsilon_high,
                    beta=config.beta,
                    loss_type=config.loss_type,
                    max_completion_length=config.max_new_tokens,
                    normaliser=normaliser,
                    importance_sampling_level=config.importance_sampling_level,
                )
                output.loss.backward()
                stats = output.stats if stats is None else stats + output.stats
            assert stats is not None  # a rollout has at least one completion
            world.sum_gradients(trainable)
            stats = world.sum_stats(stats)
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm).item()
            if not (math.isfinite(stats.loss) and math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                where = f" in update {len(updates) + 1} of {config.num_iterations}" if config.num_iterations > 1 else ""
                raise NonFiniteUpdate(f"loss is {stats.loss} (grad norm {grad_norm}){where}; nothing was applied")
            learning_rate = optimizer.param_groups[0]["lr"]
            optimizer.step()
            # Finite gradients can still give non-finite weights: AdamW's decay multiplies by 1 - lr x weight_decay.
            if not all(bool(torch.isfinite(p).all()) for p in trainable):
                raise NonFiniteWeights(
                    f"the update left adapter weights that are not finite (learning rate {learning_rate:g}, "
                    f"weight_decay {config.weight_decay:g}); the run stops, and no checkpoint holds them"
                )
            scheduler.step()
            updates.append({**stats.metrics(), "grad_norm": grad_norm, "learning_rate": learning_rate})
    return updates


def step_metrics(
    rollout: Rollout,
    updates: Sequence[dict[str, float]],
    rewards: ResolvedRewards,
    step_seconds: float,
    world: World = LOCAL,
) -> dict[str, float]:
    """What a step reports: rewards and advantages of its rollout, the last update's loss figures, completion
    lengths and timings. With several ranks, per-completion values are gathered first, so the figures are the
    whole step's; the timings are the slowest rank's."""
    batch = rollout.batch
    scores = gather_scores(world, rollout.samples.scores)
    lengths = world.gather(batch.completion_mask.sum(dim=1).float())
    advantages = world.gather(rollout.advantages)
    truncated = world.gather(batch.truncated)
    step_seconds, sampling_seconds = world.max(step_seconds), world.max(rollout.sampling_seconds)
    return {
        "reward_mean": scores.rewards.mean().item(),
        "reward_std": scores.rewards.std().item(),
        **{f"reward/{fn.name}": scores.per_function[:, j].mean().item() for j, (fn, _p, _w) in enumerate(rewards)},
        "reward_errors": float(scores.errors),
        **{f"reward_errors/{fn.name}": float(scores.function_errors[j]) for j, (fn, _p, _w) in enumerate(rewards)},
        "zero_std_group_fraction": zero_std_group_fraction(scores.rewards, batch.group_size),
        "advantage_mean": advantages.mean().item(),
        "advantage_std": advantages.std().item(),
        "advantage_max": advantages.max().item(),
        "advantage_min": advantages.min().item(),
        "kl": 0.0,  # replaced by the loss's figure when beta > 0
        **updates[-1],
        "completion_length_mean": lengths.mean().item(),
        "completion_length_max": lengths.max().item(),
        "truncated_fraction": truncated.float().mean().item(),
        "step_seconds": step_seconds,
        "sampling_seconds": sampling_seconds,
        "generated_tokens_per_second": lengths.sum().item() / max(sampling_seconds, 1e-9),
        **(rollout.dynamic.metrics() if rollout.dynamic is not None else {}),
    }


def check_reward_failures(scores: Scores, rewards: ResolvedRewards, max_fraction: float) -> None:
    """Raise TooManyRewardFailures naming the first reward that failed on more than max_fraction of the samples,
    with the count and its first error."""
    total = scores.per_function.shape[0]
    for (fn, _params, _weight), count, errors in zip(
        rewards, scores.function_errors, scores.error_messages, strict=True
    ):
        if count > max_fraction * total:
            first = next(error for error in errors if error is not None)
            raise TooManyRewardFailures(
                f"reward {fn.name!r} failed on {count} of {total} samples (more than the allowed fraction, "
                f"{max_fraction:g}); first error: {first}"
            )


def reward_warnings(scores: Scores, rewards: ResolvedRewards) -> list[str]:
    """One message per reward that failed on some samples: the count and its first error."""
    total = scores.per_function.shape[0]
    return [
        f"reward {fn.name!r} failed on {count} of {total} samples (scored 0); first error: "
        + next(error for error in errors if error is not None)
        for (fn, _params, _weight), count, errors in zip(
            rewards, scores.function_errors, scores.error_messages, strict=True
        )
        if count
    ]


def _cut(text: str, limit: int, what: str = "") -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[{what}truncated: {len(text) - limit} more characters]"


def step_samples(
    rollout: Rollout, rows: Sequence[Mapping[str, Any]], rewards: ResolvedRewards, groups: int
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """What TrainerCallback.on_samples gets for the first `groups` groups of a rollout over `rows`: a dict per
    completion, and what each reward printed (non-empty outputs only)."""
    scores, group_size = rollout.samples.scores, rollout.batch.group_size
    names = [fn.name for fn, _params, _weight in rewards]
    samples = []
    for group, row in enumerate(rows[:groups]):
        prompt = reward_prompt(row)
        if isinstance(prompt, str):
            prompt = _cut(prompt, SAMPLE_TEXT_CHARS)
        else:
            prompt = [{**message, "content": _cut(message["content"], SAMPLE_TEXT_CHARS)} for message in prompt]
        for index in range(group_size):
            i = group * group_size + index
            samples.append(
                {
                    "group": group,
                    "index": index,
                    "prompt": prompt,
                    "completion": _cut(rollout.samples.completions[i], SAMPLE_TEXT_CHARS),
                    "reward": scores.rewards[i].item(),
                    "advantage": rollout.advantages[i].item(),
                    "scores": {name: scores.per_function[i, j].item() for j, name in enumerate(names)},
                    "errors": {
                        name: scores.error_messages[j][i]
                        for j, name in enumerate(names)
                        if scores.error_messages[j][i] is not None
                    },
                }
            )
    outputs = {
        name: _cut(output, SAMPLE_TEXT_CHARS, "output ")
        for name, output in zip(names, scores.outputs, strict=True)
        if output
    }
    return samples, outputs


def grpo_step(
    model,
    tokenizer,
    optimizer,
    scheduler,
    rows: Sequence[Mapping[str, Any]],
    rewards: ResolvedRewards,
    config: GRPOConfig,
    *,
    scorer: RewardScorer | None = None,
    check_stop: Callable[[], None] | None = None,
    max_reward_failure_fraction: float = 1.0,
    seeds: Sequence[int] | None = None,
    world: World = LOCAL,
    draw_more: Callable[[int], tuple[Sequence[Mapping[str, Any]], Sequence[int]]] | None = None,
) -> tuple[dict[str, float], Rollout]:
    """One training step on `rows` (P prompts): collect a rollout (G completions each, scored, advantages, old
    and reference log-probs), update the policy num_iterations times. Returns the step's metrics and its rollout.

    Rewards score with `scorer` when given (see score_completions). More than max_reward_failure_fraction of the
    samples failing for one reward raises TooManyRewardFailures before any update (scoring stops at that point:
    the rest of that reward's samples are not scored). check_stop is called during the rollout (each decoded
    token, each reward poll, and once before the update) and raises to abandon the step; the update is never
    interrupted.

    seeds: one per row, the random stream each prompt samples from (see sample_groups). world: `rows` are this
    rank's share of the step; rewards, advantages, the failure check, the loss and the metrics are the whole
    step's (see grpo_core.distributed). check_stop must then not raise: a rank that left the step alone would
    leave the others waiting in a collective.

    With config.dynamic_sampling, draw_more(round) gives the rows and seeds of each sampling round after the first
    (see rollout.collect_dynamic_rollout), and the rollout's groups are the informative ones found; the rollout's
    `rows` are then the rows it trained on."""
    started = time.perf_counter()
    # The whole step's limit on each rank: a rank stops scoring early only when the step as a whole is over it.
    step_rows = sum(world.gather_objects(len(rows)))
    max_failures = math.floor(max_reward_failure_fraction * step_rows * config.group_size)
    if config.dynamic_sampling:
        if draw_more is None:
            raise ValueError("dynamic_sampling needs draw_more: where the rows of later sampling rounds come from")
        rollout = collect_dynamic_rollout(
            model,
            tokenizer,
            lambda round_: (rows, seeds) if round_ == 0 else draw_more(round_),
            rewards,
            config,
            scorer=scorer,
            check_stop=check_stop,
            max_reward_failures=max_failures,
        )
    else:
        rollout = collect_rollout(
            model,
            tokenizer,
            rows,
            rewards,
            config,
            scorer=scorer,
            check_stop=check_stop,
            max_reward_failures=max_failures,
            seeds=seeds,
            world=world,
        )
    check_reward_failures(gather_scores(world, rollout.samples.scores), rewards, max_reward_failure_fraction)
    if check_stop is not None:
        check_stop()
    updates = update_policy(model, optimizer, scheduler, rollout, config, world)
    return step_metrics(rollout, updates, rewards, time.perf_counter() - started, world), rollout


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    rewards: ResolvedRewards,
    config: GRPOConfig,
    *,
    scorer: RewardScorer | None = None,
    check_stop: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Mean reward on held-out rows: sampled (eval_samples_per_prompt each, at the training temperature) and
    greedy. Runs on its own RNG streams (the CPU's and the model's GPU's), so evaluating never changes what
    training samples next. scorer and check_stop as for grpo_step."""
    results = {}
    with forked_rng(model.device):
        torch.manual_seed(config.seed + 1)
        for name, greedy, samples in (("sampled", False, config.eval_samples_per_prompt), ("greedy", True, 1)):
            scored = sample_and_score(
                model,
                tokenizer,
                rows,
                rewards,
                config,
                group_size=samples,
                greedy=greedy,
                scorer=scorer,
                check_stop=check_stop,
            )
            results[f"eval_reward_{name}"] = scored.scores.rewards.mean().item()
    return results


# --- the loop -------------------------------------------------------------------------------------------------------


class GRPOTrainer:
    """Runs GRPO with a LoRA adapter on `base_model` over `train_rows`, writing checkpoints to output_dir.

    The reward specs are checked against the dataset before any model is loaded. Built-in and plugin rewards score
    in a child process (grpo_core.reward_process), started at the first step and kept until train() returns; a
    call that takes longer than reward_timeout_seconds ends the run with RewardTimeout naming the reward and the
    limit. A tenant reward, named by its id, is code from `tenant_rewards` (id -> source) and scores only in a
    sandbox of its own (grpo_core.sandbox) under `sandbox_limits`: a call that hangs or dies fails its items and
    training goes on (see grpo_core.scoring). Where the sandbox cannot run (and sandbox_limits does not allow
    running unsandboxed) the constructor raises SandboxUnavailable, before any model is loaded.

    max_reward_failure_fraction: a step where more than this fraction of the samples failed for one reward ends
    the run (TooManyRewardFailures). sample_groups_per_step: how many groups of each step go to on_samples.

    device: where the run computes (grpo_core.device.resolve_device: auto, cpu, cuda, cuda:N); the base model is
    loaded in config.dtype resolved for it, and every tensor a step makes lives there. A device that is not there
    raises ValueError here, before any model is loaded.

    world: this process's place in a job run on several processes (grpo_core.distributed; LOCAL, the default, is
    one process). Every rank builds the same trainer and trains: each step's prompts are dealt in contiguous
    blocks, the G completions of a prompt on one rank, and each prompt samples from a random stream of its own
    (sampling.prompt_seed of seed, step and its index in the step), so N ranks train what one process would. Only
    rank 0 calls the callbacks that write (on_step, on_eval, on_checkpoint, on_samples, on_warning), saves
    checkpoints and evaluates; every rank resumes from the same checkpoint. Every rank reads should_stop and
    stop_requested, and the ranks agree at the start of each step (any rank asking stops all): with several
    processes a stop requested mid-step takes effect when the step in progress has finished, since a rank that
    left a step alone would leave the others waiting in a collective.

    fork_point: another run's checkpoint folder to start from when this run has no checkpoint of its own (a fork):
    its adapter, and with fork_point.optimizer its AdamW moments (grpo_core.checkpoint.load_fork_point), saved at
    once as this run's step-0 checkpoint.
    """

    def __init__(
        self,
        *,
        base_model: str,
        train_rows: Sequence[Mapping[str, Any]],
        rewards: Sequence[RewardSpec],
        config: GRPOConfig,
        output_dir: str | Path,
        eval_rows: Sequence[Mapping[str, Any]] = (),
        callbacks: Sequence[TrainerCallback] = (),
        cache_dir: str | Path | None = None,
        models_file: str | Path | None = None,
        reward_timeout_seconds: float = 60.0,
        tenant_rewards: Mapping[str, str] | None = None,
        sandbox_limits: SandboxLimits | None = None,
        max_reward_failure_fraction: float = 0.5,
        sample_groups_per_step: int = 2,
        device: str | torch.device = "auto",
        world: World = LOCAL,
        fork_point: ForkPoint | None = None,
        stop_when: StopWhen | None = None,
    ):
        if not train_rows:
            raise ValueError("the training dataset is empty")
        if config.processes != world.size:
            raise ValueError(
                f"processes is {config.processes} in the config but this trainer is one of {world.size} "
                "processes (launch the ranks with grpo_core.distributed.run_ranks)"
            )
        self.world = world
        self._stop_seen = False  # a stop requested mid-step on a rank of several, acted on between steps
        self._drawn_indices: list[list[int]] = []  # the step's row indices, a list per sampling round
        self.stop_when = stop_when or StopWhen()
        self.guardrails = GuardrailState()  # restored with a checkpoint
        self._stopped_by: StopReason | None = None
        self._last_eval_step: int | None = None  # the step of this train() call's last evaluation
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.reward_specs = list(rewards)
        self.tenant_rewards = dict(tenant_rewards or {})
        fields = dataset_fields([*train_rows, *eval_rows])
        self.rewards = resolve_rewards(self.reward_specs, fields, tenant_rewards=self.tenant_rewards)
        self.sandbox_limits = sandbox_limits or SandboxLimits(timeout_seconds=reward_timeout_seconds)
        if any(is_tenant_reward(spec.name) for spec in self.reward_specs):
            problem = sandbox_refusal(self.sandbox_limits)
            if problem is not None:
                raise SandboxUnavailable(problem)
        self.max_reward_failure_fraction = max_reward_failure_fraction
        self.sample_groups_per_step = sample_groups_per_step
        self.base_model = base_model
        self.train_rows = list(train_rows)
        self.eval_rows = list(eval_rows)
        self.config = config
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.callbacks = list(callbacks)
        # The callbacks that write: rank 0's only.
        self.writers = self.callbacks if world.is_main else []
        self.cache_dir = cache_dir
        self.models_file = models_file
        self.reward_timeout_seconds = reward_timeout_seconds
        self.fork_point = fork_point
        # Built by setup(): kept out of __init__ so a bad spec is refused before any model is loaded.
        self.model: Any = None
        self.tokenizer: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None

    def setup(self) -> None:
        if self.device.type == "cpu":
            reuse_freed_memory()  # a CPU run's activations come from malloc; a GPU's do not
        torch.manual_seed(self.config.seed)  # seeds every CUDA device's generator too
        base, self.tokenizer = load_base_model(
            self.base_model, self.cache_dir, dtype=self.dtype, models_file=self.models_file
        )
        self.model = add_lora(base.to(self.device), self.config.lora, self.config.seed)
        self.optimizer, self.scheduler = make_optimizer(self.model, self.config)

    def _run_settings(self) -> dict[str, Any]:
        """What, besides the hyperparameters, makes a checkpoint belong to this run."""
        return {
            "base_model": self.base_model,
            "rewards": [{"name": s.name, "weight": s.weight, "params": dict(s.params)} for s in self.reward_specs],
            # dtype "auto" is float32 on a CPU and bfloat16 on most GPUs: what was trained is the resolved one.
            "dtype": dtype_name(self.dtype),
        }

    def _warn(self, message: str) -> None:
        for callback in self.writers:
            callback.on_warning(message)

    def _resume_point(self) -> Checkpoint | None:
        """The newest checkpoint whose every file still has the sha256 its manifest recorded; a newer one that does
        not is skipped with a warning (the disk or a copy damaged it), so training goes on from the one before."""
        for checkpoint in reversed(list_checkpoints(self.checkpoint_dir)):
            changed = changed_files(checkpoint)
            if not changed:
                return checkpoint
            self._warn(
                f"checkpoint at step {checkpoint.step} is corrupt ({', '.join(changed)} no longer match the sha256 "
                "saved with it); resuming from the checkpoint before it"
            )
        return None

    def _restore(self, checkpoint: Checkpoint) -> int:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = load_trainer_state(checkpoint)
        differences = self.config.training_differences(state["config"])
        saved_run = state.get("run", {})
        # Checkpoints from before the dtype was recorded were all trained in float32.
        saved_run = {"dtype": "float32", **saved_run}
        differences += [key for key, value in self._run_settings().items() if saved_run.get(key, value) != value]
        differences = list(dict.fromkeys(differences))  # dtype can differ both as asked and as resolved
        if differences:
            raise ResumeMismatch(
                f"cannot resume from the checkpoint at step {checkpoint.step}: it was saved with other "
                f"{', '.join(differences)}; run with the settings it was saved with, or in a new output folder"
            )
        set_peft_model_state_dict(self.model, load_file(checkpoint.path / "adapter_model.safetensors"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"], self.device)
        self.guardrails = GuardrailState.from_dict(state.get("guardrails"))
        # A run a guardrail ended stays ended: its last checkpoint says so, and resuming it trains no further.
        self._stopped_by = StopReason(**state["stopped_by"]) if state.get("stopped_by") else None
        return state["step"]

    def _save(self, step: int) -> Checkpoint | None:
        """Rank 0 saves (None on the others: they read the checkpoint folder rank 0 writes)."""
        if not self.world.is_main:
            return None
        state = {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(self.device),
            "config": self.config.to_dict(),
            "run": self._run_settings(),
            "guardrails": self.guardrails.to_dict(),
            "stopped_by": self._stopped_by.to_dict() if self._stopped_by else None,
        }
        checkpoint = save_checkpoint(self.checkpoint_dir, step, self.model, state)
        for callback in self.writers:
            callback.on_checkpoint(checkpoint)
        return checkpoint

    def _check_stop(self) -> None:
        if any(callback.stop_requested() for callback in self.callbacks):
            if self.world.size > 1:
                self._stop_seen = True  # acted on when the ranks next agree (between steps)
                return
            raise StepAbandoned("stop requested")

    def _evaluate(self, step: int, scorer: RewardScorer) -> tuple[bool, StopReason | None]:
        """Evaluate at `step` (rank 0; every rank calls this at the same points) and check the eval-side guardrail.
        Returns whether it was the best evaluation so far and whether eval_patience ends the run, both agreed by
        every rank. Nothing happens without eval rows and eval_every."""
        if not self.eval_rows or self.config.eval_every == 0:
            return False, None
        improved, reason = False, None
        if self.world.is_main:
            metrics = evaluate(
                self.model,
                self.tokenizer,
                self.eval_rows,
                self.rewards,
                self.config,
                scorer=scorer,
                check_stop=self._check_stop,
            )
            for callback in self.writers:
                callback.on_eval(step, metrics)
            improved, reason = check_eval(self.stop_when, self.guardrails, step, metrics)
        self._last_eval_step = step
        if self.world.size > 1:
            improved, reason = self.world.gather_objects((improved, reason))[0]
        return improved, reason

    @property
    def _keeps_best(self) -> bool:
        """Whether the best evaluation's adapter is kept (saved when it ran), to be the run's adapter should a
        guardrail end it."""
        return (
            self.stop_when.adapter == "best"
            and self.stop_when.any_condition
            and bool(self.eval_rows)
            and self.config.eval_every > 0
        )

    def _evaluate_and_keep(
        self, step: int, scorer: RewardScorer, checkpoint: Checkpoint | None
    ) -> tuple[Checkpoint | None, StopReason | None]:
        """_evaluate, then a checkpoint of `step` when it was the best evaluation so far and the best is kept.
        Returns the last checkpoint saved and the eval-side stop reason, if any."""
        improved, reason = self._evaluate(step, scorer)
        if improved and self._keeps_best and (checkpoint is None or checkpoint.step != step):
            checkpoint = self._save(step)
        return checkpoint, reason

    def train(self, resume: bool = False) -> TrainResult:
        """Train to max_steps. resume=True continues from the latest sound checkpoint in output_dir (from step 0
        when there is none), giving the same adapter as a run that never stopped; a checkpoint saved with
        settings that change training raises ResumeMismatch naming them.

        A stop (should_stop between steps, stop_requested within one) ends the run early with a checkpoint of the
        last finished step. A built-in reward that hangs raises RewardTimeout, a reward failing on too many samples
        TooManyRewardFailures, a tenant reward's sandbox that keeps dying SandboxRestartsExhausted; neither saves a
        checkpoint of the failed step. A step whose loss or gradient norm is not finite is skipped (nothing of it
        applied, with a warning); the stop_when.max_non_finite_steps-th such step raises NonFiniteUpdate naming it.

        Guardrails (stop_when) end the run before max_steps when their condition holds: the result's stopped_by
        says which, a checkpoint of that step is saved (and says so: resuming from it trains no further), the
        final evaluation runs, and the adapter is the best evaluation's when stop_when.adapter is "best" and there
        is an eval set.

        On a CUDA device the run uses torch's deterministic algorithms (grpo_core.device.deterministic_kernels):
        slower kernels for attention's backward, the price of a bit-exact resume."""
        if self.model is None:
            self.setup()
        if self.world.is_main:
            remove_partial_checkpoints(self.checkpoint_dir)
        self.world.barrier()
        checkpoint = self._resume_point() if resume else None
        step = self._restore(checkpoint) if checkpoint else 0
        if checkpoint is None and self.fork_point is not None:
            # A fork's first start: the parent's adapter, saved at once as this run's step 0, so a resume (after a
            # crash) continues from this run's own checkpoints and never reads the parent's again. The barrier
            # keeps rank 0's save after every rank has looked for a checkpoint of its own.
            self.world.barrier()
            load_fork_point(self.model, self.optimizer, self.fork_point)
            checkpoint = self._save(0)
        scorer = RewardScorer(
            self.reward_specs,
            timeout_seconds=self.reward_timeout_seconds,
            tenant_sources=self.tenant_rewards,
            limits=self.sandbox_limits,
            check_stop=self._check_stop,
        )
        self._last_eval_step = None
        with scorer, deterministic_kernels(self.device):
            step, checkpoint, stopped_early = self._run_steps(step, checkpoint, scorer)
            if not stopped_early and self._last_eval_step != step:
                try:
                    checkpoint, _reason = self._evaluate_and_keep(step, scorer, checkpoint)
                except StepAbandoned:
                    stopped_early = True
            if checkpoint is None or checkpoint.step != step:
                checkpoint = self._save(step)
        self.world.barrier()  # rank 0's last checkpoint is on disk
        checkpoints = list_checkpoints(self.checkpoint_dir)
        adapter = checkpoint or checkpoints[-1]
        best = self.guardrails.best_eval_step
        if self._stopped_by is not None and self._keeps_best and best is not None:
            adapter = next((c for c in checkpoints if c.step == best), adapter)
        return TrainResult(step, stopped_early, adapter.path, adapter.step, self._stopped_by)

    def _run_steps(
        self, step: int, checkpoint: Checkpoint | None, scorer: RewardScorer
    ) -> tuple[int, Checkpoint | None, bool]:
        """Steps after `step` up to max_steps, with their checkpoints and evaluations, until a guardrail ends the
        run (self._stopped_by). Returns the last finished step, the last checkpoint saved, and whether a stop
        request ended the run early."""
        config = self.config
        try:
            if step == 0:
                checkpoint, self._stopped_by = self._evaluate_and_keep(0, scorer, checkpoint)
            while step < config.max_steps and self._stopped_by is None:
                stop = self._stop_seen or any(callback.should_stop() for callback in self.callbacks)
                if self.world.any(stop):
                    return step, checkpoint, True
                undo = self._snapshot() if config.num_iterations > 1 else None
                try:
                    metrics, rollout, rows = self._step(step, scorer)
                except NonFiniteUpdate as error:
                    if isinstance(error, NonFiniteWeights):
                        raise
                    step += 1
                    self._skip_non_finite_step(step, error, undo)
                else:
                    step += 1
                    self._report_step(step, metrics, rollout, rows)
                    self._stopped_by = check_step(self.stop_when, self.guardrails, step, metrics)
                reason = None
                if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
                    checkpoint, reason = self._evaluate_and_keep(step, scorer, checkpoint)
                self._stopped_by = self._stopped_by or reason
                if self._stopped_by is not None:
                    self._warn(f"step {step}: stopping early: {self._stopped_by.message}")
                    checkpoint = self._save(step)  # says the run ended here, so a resume trains no further
                elif config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.max_steps:
                    if checkpoint is None or checkpoint.step != step:
                        checkpoint = self._save(step)
        except StepAbandoned:
            return step, checkpoint, True
        return step, checkpoint, False

    def _report_step(self, step: int, metrics: dict[str, float], rollout: Rollout, rows: list) -> None:
        """Hand a finished step to the callbacks: metrics, warnings, the groups it drew and its samples."""
        for callback in self.writers:
            callback.on_step(step, metrics)
        for message in reward_warnings(gather_scores(self.world, rollout.samples.scores), self.rewards):
            self._warn(f"step {step}: {message}")
        groups = self._drawn_groups(rollout)
        for callback in self.writers:
            callback.on_prompt_groups(step, groups)
        if self.sample_groups_per_step:
            samples, outputs = step_samples(rollout, rows, self.rewards, self.sample_groups_per_step)
            for callback in self.writers:
                callback.on_samples(step, samples, outputs)

    def _snapshot(self) -> tuple[list[torch.Tensor], dict, dict]:
        """The adapter weights, optimizer and scheduler before a step of several updates, to undo it if a later
        update is not finite (the earlier ones were applied). LoRA-sized: a few copies of the adapter."""
        trainable = [p.detach().clone() for p in self.model.parameters() if p.requires_grad]
        return trainable, copy.deepcopy(self.optimizer.state_dict()), self.scheduler.state_dict()

    def _skip_non_finite_step(self, step: int, error: NonFiniteUpdate, undo) -> None:
        """Step `step` had an update that is not finite: none of it stays applied. Counted; the limit-th raises."""
        if undo is not None:
            weights, optimizer_state, scheduler_state = undo
            with torch.no_grad():
                trainable = [p for p in self.model.parameters() if p.requires_grad]
                for param, saved in zip(trainable, weights, strict=True):
                    param.copy_(saved)
            self.optimizer.load_state_dict(optimizer_state)
            self.scheduler.load_state_dict(scheduler_state)
        self.guardrails.non_finite_steps += 1
        count, limit = self.guardrails.non_finite_steps, self.stop_when.max_non_finite_steps
        if count >= limit:
            raise NonFiniteUpdate(
                f"{error}; {count} steps were not finite (stop_when.max_non_finite_steps is {limit})"
            ) from None
        for callback in self.writers:
            callback.on_step(step, {"skipped_non_finite": 1.0, "non_finite_steps": float(count)})
        self._warn(f"{error}; the step was skipped ({count} of {limit} allowed before the run fails)")

    def _step(self, step: int, scorer: RewardScorer) -> tuple[dict[str, float], Rollout, list[Mapping[str, Any]]]:
        """Step `step` + 1: its metrics, rollout and rows. Abandoned (StepAbandoned), it changed no weight, and its
        random draws are undone too, so a run resumed from the last finished step samples what an uninterrupted one
        would have."""
        indices = rows_for_step(len(self.train_rows), step, self.config.prompts_per_step, self.config.seed)
        share = prompt_share(len(indices), self.world.size, self.world.rank)
        self._drawn_indices = [indices[share]]
        rows = [self.train_rows[i] for i in indices[share]]
        seeds = [prompt_seed(self.config.seed, step, i) for i in range(share.start, share.stop)]
        rng_before = capture_rng_state(self.device)
        try:
            metrics, rollout = grpo_step(
                self.model,
                self.tokenizer,
                self.optimizer,
                self.scheduler,
                rows,
                self.rewards,
                self.config,
                scorer=scorer,
                check_stop=self._check_stop,
                max_reward_failure_fraction=self.max_reward_failure_fraction,
                seeds=seeds,
                world=self.world,
                draw_more=lambda round_: self._extra_rows(step, round_),
            )
        except StepAbandoned:
            restore_rng_state(rng_before, self.device)
            raise
        except (NonFiniteUpdate, TooManyRewardFailures) as error:
            raise type(error)(f"step {step + 1}: {error}") from None
        return metrics, rollout, list(rollout.rows)

    def _drawn_groups(self, rollout: Rollout) -> list[dict[str, Any]]:
        """on_prompt_groups' list for the step just taken: each drawn row's index with its group's rewards, over
        every rank (in rank order, so in step order)."""
        group_size = self.config.group_size
        local = [
            {"row": row, "rewards": rewards}
            for indices, round_rewards in zip(self._drawn_indices, rollout.drawn_rewards, strict=True)
            for row, rewards in zip(indices, round_rewards.view(-1, group_size).tolist(), strict=True)
        ]
        return [group for part in self.world.gather_objects(local) for group in part]

    def _extra_rows(self, step: int, round_: int) -> tuple[list[Mapping[str, Any]], list[int]]:
        """Dynamic sampling's rows for round `round_` of 0-based step `step`, and their sampling seeds (prompt
        indices after the step's own: round x prompts_per_step onwards)."""
        per_round = self.config.prompts_per_step
        indices = extra_rows_for_step(len(self.train_rows), step, round_, per_round, self.config.seed)
        self._drawn_indices.append(indices)
        seeds = [prompt_seed(self.config.seed, step, round_ * per_round + i) for i in range(per_round)]
        return [self.train_rows[i] for i in indices], seeds
