"""The GRPO training loop: a step, then its evaluation, guardrails and checkpoint, until max_steps or a stop.

The pieces live by concern, each callable alone with a tiny model: the step (grpo_core.step: rollout, advantages,
update, metrics), the update and its undo (grpo_core.update), the prompt schedule (grpo_core.schedule), the policy
and its optimizer (grpo_core.policy), the run's state and its checkpoints (grpo_core.run_state), what callbacks get
(grpo_core.callbacks, grpo_core.report). `GRPOTrainer` only wires them together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_core.callbacks import CallbackList, StepAbandoned, TrainerCallback
from grpo_core.checkpoint import Checkpoint, ForkPoint, capture_rng_state, load_fork_point, restore_rng_state
from grpo_core.config import GRPOConfig, RewardSpec
from grpo_core.data import dataset_fields
from grpo_core.device import deterministic_kernels, resolve_device, resolve_dtype
from grpo_core.distributed import LOCAL, World
from grpo_core.evaluation import Evaluator
from grpo_core.guardrails import StopReason, StopWhen, check_step
from grpo_core.options import DEFAULT_OPTIONS, TrainerOptions
from grpo_core.policy import Policy, load_policy
from grpo_core.report import StepReporter
from grpo_core.rewards import is_tenant_reward, resolve_rewards
from grpo_core.rollout import Rollout
from grpo_core.run_state import RunCheckpoints, RunState, run_settings
from grpo_core.sandbox import SandboxUnavailable, sandbox_refusal
from grpo_core.schedule import prompt_draw, round_rows
from grpo_core.scoring import RewardScorer
from grpo_core.step import TooManyRewardFailures, grpo_step
from grpo_core.update import NonFiniteUpdate, NonFiniteWeights, UpdateSnapshot


@dataclass
class TrainResult:
    final_step: int
    stopped_early: bool  # a stop was requested (should_stop or stop_requested): the run did not end on its own
    adapter_dir: Path  # the run's adapter (loadable with PeftModel.from_pretrained): the last checkpoint's folder,
    # or with stopped_by and stop_when.adapter "best", that of the best evaluation
    adapter_step: int = 0  # the step of adapter_dir
    stopped_by: StopReason | None = None  # the guardrail (stop_when) that ended the run before max_steps


class GRPOTrainer:
    """Runs GRPO with a LoRA adapter on `base_model` over `train_rows`, writing checkpoints to output_dir.

    The reward specs are checked against the dataset before any model is loaded. Built-in and plugin rewards score
    in a child process (grpo_core.reward_process), started at the first step and kept until train() returns; a
    call that takes longer than options.reward_timeout_seconds ends the run with RewardTimeout naming the reward
    and the limit. A tenant reward, named by its id, is code from `tenant_rewards` (id -> source) and scores only in
    a sandbox of its own (grpo_core.sandbox) under options.sandbox_limits: a call that hangs or dies fails its items
    and training goes on (see grpo_core.scoring). Where the sandbox cannot run (and the limits do not allow running
    unsandboxed) the constructor raises SandboxUnavailable, before any model is loaded.

    options: this machine's knobs (grpo_core.options.TrainerOptions): the device (a device that is not there raises
    ValueError here, before any model is loaded; the base model is loaded in config.dtype resolved for it), the
    model cache and catalog, reward limits and how many groups go to on_samples.

    world: this process's place in a job run on several processes (grpo_core.distributed; LOCAL, the default, is
    one process). Every rank builds the same trainer and trains: each step's prompts are dealt in contiguous
    blocks (grpo_core.schedule), the G completions of a prompt on one rank, each prompt sampling from a random
    stream of its own, so N ranks train what one process would. Only rank 0 calls the callbacks that write, saves
    checkpoints and evaluates; every rank resumes from the same checkpoint, and the ranks agree on a stop at the
    start of each step (grpo_core.callbacks.CallbackList).

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
        options: TrainerOptions = DEFAULT_OPTIONS,
        tenant_rewards: Mapping[str, str] | None = None,
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
        self.world, self.options, self.config, self.base_model = world, options, config, base_model
        self.stop_when = stop_when or StopWhen()
        self.run_state = RunState()  # restored with a checkpoint
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.reward_specs = list(rewards)
        self.tenant_rewards = dict(tenant_rewards or {})
        fields = dataset_fields([*train_rows, *eval_rows])
        self.rewards = resolve_rewards(self.reward_specs, fields, tenant_rewards=self.tenant_rewards)
        self.sandbox_limits = options.sandbox
        if any(is_tenant_reward(spec.name) for spec in self.reward_specs):
            problem = sandbox_refusal(self.sandbox_limits)
            if problem is not None:
                raise SandboxUnavailable(problem)
        self.train_rows, self.eval_rows = list(train_rows), list(eval_rows)
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.callbacks = CallbackList(callbacks, world)
        self.checkpoints = RunCheckpoints(
            self.checkpoint_dir,
            config=config,
            settings=run_settings(base_model, self.reward_specs, self.dtype),
            device=self.device,
            world=world,
            on_checkpoint=self.callbacks.on_checkpoint,
        )
        self.evaluator = Evaluator(
            self.eval_rows, self.rewards, config, self.stop_when, world=world, callbacks=self.callbacks
        )
        self.report_step = StepReporter(
            self.callbacks, self.rewards, config, len(self.train_rows), options.sample_groups_per_step
        )
        self.fork_point = fork_point
        # Built by setup(): kept out of __init__ so a bad spec is refused before any model is loaded.
        self.policy: Policy | None = None

    def setup(self) -> None:
        options = self.options
        self.policy = load_policy(
            self.base_model,
            self.config,
            self.device,
            self.dtype,
            cache_dir=options.cache_dir,
            models_file=options.models_file,
        )

    # The policy's parts, as callers and tests reach them (None before setup).
    model = property(lambda self: self.policy and self.policy.model)
    tokenizer = property(lambda self: self.policy and self.policy.tokenizer)
    optimizer = property(lambda self: self.policy and self.policy.optimizer)
    scheduler = property(lambda self: self.policy and self.policy.scheduler)

    def make_scorer(self, check_stop) -> RewardScorer:
        """The run's reward scorer (a context manager: its child processes live until it exits)."""
        return RewardScorer(
            self.reward_specs,
            timeout_seconds=self.options.reward_timeout_seconds,
            tenant_sources=self.tenant_rewards,
            limits=self.sandbox_limits,
            check_stop=check_stop,
        )

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
        if self.policy is None:
            self.setup()
        self.checkpoints.clean()
        checkpoint = self.checkpoints.latest_sound(self.callbacks.on_warning) if resume else None
        self.run_state = self.checkpoints.restore(checkpoint, self._policy) if checkpoint else RunState()
        if checkpoint is None and self.fork_point is not None:
            # A fork's first start: the parent's adapter, saved at once as this run's step 0, so a resume (after a
            # crash) continues from this run's own checkpoints and never reads the parent's again. The barrier
            # keeps rank 0's save after every rank has looked for a checkpoint of its own.
            self.world.barrier()
            load_fork_point(self.model, self.optimizer, self.fork_point)
            checkpoint = self._save()
        scorer = self.make_scorer(self.callbacks.check_stop)
        self.evaluator.last_step = None
        with scorer, deterministic_kernels(self.device):
            checkpoint, stopped_early = self._run_steps(checkpoint, scorer)
            if not stopped_early and self.evaluator.last_step != self.run_state.step:
                try:
                    checkpoint, _reason = self._evaluate_and_keep(scorer, checkpoint)
                except StepAbandoned:
                    stopped_early = True
            if checkpoint is None or checkpoint.step != self.run_state.step:
                checkpoint = self._save()
        self.world.barrier()  # rank 0's last checkpoint is on disk
        run = self.run_state
        best = run.best_adapter_step if run.stopped_by is not None and self.evaluator.keeps_best else None
        adapter = self.checkpoints.adapter(checkpoint, best)
        return TrainResult(run.step, stopped_early, adapter.path, adapter.step, run.stopped_by)

    def _run_steps(self, checkpoint: Checkpoint | None, scorer: RewardScorer) -> tuple[Checkpoint | None, bool]:
        """Steps after run.step up to max_steps, with their evaluations and checkpoints, until a guardrail ends the
        run (run.stopped_by). Returns the last checkpoint saved and whether a stop request ended the run early."""
        config, run = self.config, self.run_state
        try:
            if run.step == 0:
                checkpoint, run.stopped_by = self._evaluate_and_keep(scorer, checkpoint)
            while run.step < config.max_steps and run.stopped_by is None:
                if self.callbacks.stop_agreed():
                    return checkpoint, True
                run.stopped_by = self._take_step(scorer)
                if config.eval_every and run.step % config.eval_every == 0 and run.step < config.max_steps:
                    checkpoint, reason = self._evaluate_and_keep(scorer, checkpoint)
                    run.stopped_by = run.stopped_by or reason
                if run.stopped_by is not None:
                    self.callbacks.on_warning(f"step {run.step}: stopping early: {run.stopped_by.message}")
                    checkpoint = self._save()  # says the run ended here, so a resume trains no further
                elif (
                    config.checkpoint_every and run.step % config.checkpoint_every == 0 and run.step < config.max_steps
                ):
                    if checkpoint is None or checkpoint.step != run.step:
                        checkpoint = self._save()
        except StepAbandoned:
            return checkpoint, True
        return checkpoint, False

    def _take_step(self, scorer: RewardScorer) -> StopReason | None:
        """Step run_state.step + 1, reported to the callbacks, or skipped (none of it applied) when an update was not
        finite. Returns the step-side guardrail's stop reason, if any."""
        run, policy = self.run_state, self._policy
        undo = UpdateSnapshot.take(policy) if self.config.num_iterations > 1 else None
        try:
            metrics, rollout = self.train_step(run.step, scorer, self.callbacks.check_stop)
        except NonFiniteUpdate as error:
            if isinstance(error, NonFiniteWeights):
                raise
            run.step += 1
            if undo is not None:
                undo.restore(policy)
            limit = self.stop_when.max_non_finite_steps
            count = run.count_non_finite_step(error, limit)
            self.callbacks.on_step(run.step, {"skipped_non_finite": 1.0, "non_finite_steps": float(count)})
            self.callbacks.on_warning(
                f"{error}; the step was skipped ({count} of {limit} allowed before the run fails)"
            )
            return None
        run.step += 1
        self.report_step(run.step, metrics, rollout)
        return check_step(self.stop_when, run.guardrails, run.step, metrics)

    def train_step(self, step: int, scorer: RewardScorer, check_stop) -> tuple[dict[str, float], Rollout]:
        """0-based step `step` on this rank's share of its prompts (grpo_core.schedule): its metrics and rollout.
        Abandoned (StepAbandoned), it changed no weight, and its random draws are undone too, so a run resumed from
        the last finished step samples what an uninterrupted one would have."""
        config, rows = self.config, self.train_rows
        draw = prompt_draw(config, len(rows), step).share(self.world)
        rng_before = capture_rng_state(self.device)
        try:
            return grpo_step(
                self.model,
                self.tokenizer,
                self.optimizer,
                self.scheduler,
                draw.rows(rows),
                self.rewards,
                config,
                scorer=scorer,
                check_stop=check_stop,
                max_reward_failure_fraction=self.options.max_reward_failure_fraction,
                seeds=list(draw.seeds),
                world=self.world,
                draw_more=lambda round_: round_rows(config, rows, step, round_),
            )
        except StepAbandoned:
            restore_rng_state(rng_before, self.device)
            raise
        except (NonFiniteUpdate, TooManyRewardFailures) as error:
            raise type(error)(f"step {step + 1}: {error}") from None

    def _evaluate_and_keep(
        self, scorer: RewardScorer, checkpoint: Checkpoint | None
    ) -> tuple[Checkpoint | None, StopReason | None]:
        """Evaluate at run_state.step, then a checkpoint of it when it was the best evaluation so far and the best is
        kept. Returns the last checkpoint saved and the eval-side stop reason, if any."""
        step = self.run_state.step
        improved, reason = self.evaluator(self._policy, step, self.run_state.guardrails, scorer)
        if improved and self.evaluator.keeps_best and (checkpoint is None or checkpoint.step != step):
            checkpoint = self._save()
        return checkpoint, reason

    def _save(self) -> Checkpoint | None:
        """A checkpoint of run_state.step (rank 0; None on the others)."""
        return self.checkpoints.save(self.run_state, self._policy)

    @property
    def _policy(self) -> Policy:
        assert self.policy is not None, "setup() builds the policy"
        return self.policy
