"""RunState: saved and restored as one object, under the trainer-state keys checkpoints have always held."""

import pytest

from grpo_core.guardrails import GuardrailState, StopReason
from grpo_core.run_state import RunState

pytestmark = pytest.mark.unit


def test_a_run_state_round_trips_under_the_old_top_level_keys():
    reason = StopReason(reason="flat_steps", step=3, values={"flat": 1.0}, message="flat")
    state = RunState(3, GuardrailState(best_eval=0.5, best_eval_step=2, non_finite_steps=1), reason)
    saved = state.to_dict()
    assert set(saved) == {"step", "guardrails", "stopped_by"}
    assert RunState.from_dict({**saved, "optimizer": {}}) == state
    assert state.best_adapter_step == 2


def test_a_checkpoint_from_before_guardrails_resumes_with_fresh_ones():
    assert RunState.from_dict({"step": 4}) == RunState(4, GuardrailState(), None)


def test_non_finite_steps_are_counted_and_the_limit_th_fails_the_run():
    import pytest

    from grpo_core.update import NonFiniteUpdate

    state = RunState()
    assert state.count_non_finite_step(NonFiniteUpdate("loss is nan"), limit=2) == 1
    with pytest.raises(
        NonFiniteUpdate, match=r"loss is nan; 2 steps were not finite \(stop_when.max_non_finite_steps is 2\)"
    ):
        state.count_non_finite_step(NonFiniteUpdate("loss is nan"), limit=2)
