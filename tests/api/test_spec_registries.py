"""The names a job spec accepts against the engine's registries. The API validates without torch, so the names sit
in grpo_core/spec.py (and grpo_core/config.py); each list must equal the keys of the registry the engine looks
them up in, as the config, the API's pydantic model and its OpenAPI schema accept them."""

import dataclasses

import pytest
import torch

from api.main import create_app
from grpo_core import algorithms, config, rewards
from grpo_core.config import GRPOConfig, RewardSpec
from grpo_core.device import resolve_dtype
from grpo_core.policy import LR_SCHEDULES

pytestmark = pytest.mark.unit

# Each GRPOConfig field that takes a name, and the engine registry the name is looked up in.
REGISTRY_OF = {
    "loss_type": algorithms.LOSS_AGGREGATIONS,
    "scale_rewards": algorithms.REWARD_SCALINGS,
    "importance_sampling_level": algorithms.IMPORTANCE_SAMPLING_LEVELS,
    "lr_schedule": LR_SCHEDULES,
}
# Names the engine resolves without a registry (grpo_core/device.py resolve_dtype): tested by behaviour.
WITHOUT_REGISTRY = {"dtype"}


def choices() -> dict[str, tuple[str, ...]]:
    return {f.name: f.metadata["choices"] for f in dataclasses.fields(GRPOConfig) if "choices" in f.metadata}


@pytest.fixture(scope="module")
def hyperparameters_schema() -> dict:
    return create_app().openapi()["components"]["schemas"]["Hyperparameters"]["properties"]


def test_every_named_choice_is_held_to_the_engine():
    assert set(choices()) == set(REGISTRY_OF) | WITHOUT_REGISTRY, "map a new named field to its registry here"


@pytest.mark.parametrize("field", sorted(REGISTRY_OF))
def test_a_specs_names_are_the_registrys_keys(field, hyperparameters_schema):
    registered = sorted(REGISTRY_OF[field])
    assert sorted(choices()[field]) == registered
    assert sorted(hyperparameters_schema[field]["enum"]) == registered
    for name in registered:
        assert getattr(GRPOConfig.from_dict({field: name}), field) == name
    with pytest.raises(ValueError, match=field):
        GRPOConfig.from_dict({field: "not_registered"})


def test_importance_sampling_names_are_the_engines():
    from grpo_core import spec

    assert sorted(spec.IMPORTANCE_SAMPLING_LEVELS) == sorted(algorithms.IMPORTANCE_SAMPLING_LEVELS)


def test_each_dtype_name_resolves_on_a_cpu(hyperparameters_schema):
    assert sorted(hyperparameters_schema["dtype"]["enum"]) == sorted(config.DTYPES)
    for name in config.DTYPES:
        assert isinstance(resolve_dtype(name, torch.device("cpu")), torch.dtype)
    with pytest.raises(ValueError):
        resolve_dtype("float8", torch.device("cpu"))


def test_reward_names_are_the_reward_registrys():
    """A job's reward names are looked up in reward_registry() itself; an unknown one is refused with its keys."""
    with pytest.raises(rewards.RewardSpecError) as refused:
        rewards.resolve_rewards([RewardSpec("not_registered")])
    assert f"valid: {', '.join(sorted(rewards.reward_registry()))}" in str(refused.value)
