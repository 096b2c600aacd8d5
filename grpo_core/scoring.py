"""Scoring a job's rewards, each where it may run: built-ins and operator plugins (trusted) in the reward process
(grpo_core.reward_process), each tenant reward (untrusted) in a sandbox of its own (grpo_core.sandbox).

The two fail differently. A built-in that hangs or kills its process ends the run (RewardTimeout,
RewardProcessDied): the operator must fix it. A tenant reward's call that hangs or dies fails its items only; the
sandbox restarts and training goes on, until it dies `max_restarts` times in a row (SandboxRestartsExhausted).
Either way an item that raised or was not a finite number scores 0 and carries its error; the trainer decides
when too many failed. Both return RewardResults.

This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from grpo_core.config import RewardSpec
from grpo_core.data import reward_prompt
from grpo_core.reward_process import RewardProcess, RewardResults
from grpo_core.rewards import is_tenant_reward
from grpo_core.sandbox import RewardSandbox, RewardSourceError, SandboxLimits


class RewardScorer:
    """Scores batches with a job's rewards: score(index, completions, rows) runs `specs[index]`.

    Built-ins and plugins share one RewardProcess (started at its first call). Each tenant reward, named by its
    id in `tenant_sources` (id -> source), gets one RewardSandbox, started at its first call and kept until
    close(). `check_stop` is called at every poll while either waits, and raises to abandon the call. Use as a
    context manager, or call close(), so no process outlives the run.
    """

    def __init__(
        self,
        specs: Sequence[RewardSpec],
        *,
        timeout_seconds: float,
        tenant_sources: Mapping[str, str] | None = None,
        limits: SandboxLimits | None = None,
        check_stop: Callable[[], None] | None = None,
    ):
        self.specs = list(specs)
        self.tenant_sources = dict(tenant_sources or {})
        self.limits = limits if limits is not None else SandboxLimits(timeout_seconds=timeout_seconds)
        self.check_stop = check_stop
        trusted = [index for index, spec in enumerate(self.specs) if not is_tenant_reward(spec.name)]
        # specs[index] -> its position among the trusted specs, the order the reward process knows them by
        self._trusted_index = {index: position for position, index in enumerate(trusted)}
        trusted_specs = [self.specs[index] for index in trusted]
        self._process = RewardProcess(trusted_specs, timeout_seconds=timeout_seconds, check_stop=check_stop)
        self._sandboxes: dict[str, RewardSandbox] = {}

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def score(
        self,
        index: int,
        completions: Sequence[str],
        rows: Sequence[Mapping[str, Any]],
        *,
        max_failures: int | None = None,
    ) -> RewardResults:
        """specs[index]'s scores of completion i against rows[i] (`values` gives a failed item's as 0). max_failures,
        for a tenant reward: past that many failed items the rest are not scored (they fail too), since the caller
        gives up anyway."""
        spec = self.specs[index]
        if index in self._trusted_index:
            return self._process.score(self._trusted_index[index], completions, rows)
        sandbox = self._sandbox(spec.name)
        prompts = [reward_prompt(row) for row in rows]
        try:
            return sandbox.score(prompts, completions, rows, dict(spec.params or {}), max_failures=max_failures)
        except RewardSourceError as error:  # at a restart: the source loaded once, so something changed under it
            raise RewardSourceError(f"reward {spec.name!r} no longer loads: {error}") from None

    def close(self) -> None:
        """Stop every process this scorer started. Idempotent."""
        self._process.close()
        for sandbox in self._sandboxes.values():
            sandbox.close()
        self._sandboxes.clear()

    def _sandbox(self, name: str) -> RewardSandbox:
        sandbox = self._sandboxes.get(name)
        if sandbox is None:
            source = self.tenant_sources.get(name)
            if source is None:
                raise RewardSourceError(f"reward {name!r}: no source was given for it")
            try:
                sandbox = RewardSandbox.from_limits(source, self.limits, name=name, check_stop=self.check_stop)
            except RewardSourceError as error:
                raise RewardSourceError(f"reward {name!r}: {error}") from None
            self._sandboxes[name] = sandbox
        return sandbox
