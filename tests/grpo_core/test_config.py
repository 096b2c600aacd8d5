"""GRPOConfig (grpo_core/config.py): its defaults, the plain-dict form a job stores, and every check that refuses a
bad value with a message naming the field, as its docstrings and field metadata state them."""

import dataclasses
import json
import math

import pytest

from grpo_core.config import GRPOConfig, LoraSettings, field_docs

pytestmark = pytest.mark.unit


def refusal(**values) -> str:
    """The message GRPOConfig(**values) is refused with (the test fails when it is accepted)."""
    with pytest.raises(ValueError) as caught:
        GRPOConfig(**values)
    message = str(caught.value)
    assert message.startswith("invalid hyperparameters: "), message
    return message.removeprefix("invalid hyperparameters: ")


def lora_refusal(**values) -> str:
    return refusal(lora=LoraSettings(**values))


# --- defaults ----------------------------------------------------------------------------------------------------


def test_defaults_are_the_documented_ones():
    config = GRPOConfig()
    assert (config.group_size, config.prompts_per_step, config.micro_batch_size, config.processes) == (8, 1, 0, 1)
    assert (config.max_steps, config.num_iterations) == (60, 1)
    assert (config.epsilon, config.epsilon_high, config.beta) == (0.2, None, 0.0)
    assert (config.learning_rate, config.weight_decay, config.warmup_steps) == (2e-4, 0.0, 0)
    assert (config.lr_schedule, config.max_grad_norm) == ("constant", 1.0)
    assert (config.max_new_tokens, config.temperature, config.top_p) == (48, 1.0, 1.0)
    assert (config.loss_type, config.scale_rewards, config.importance_sampling_level) == ("grpo", "group", "token")
    assert (config.dynamic_sampling, config.max_sampling_rounds, config.mask_truncated_completions) == (False, 3, False)
    assert (config.seed, config.dtype) == (0, "auto")
    assert (config.checkpoint_every, config.eval_every, config.eval_samples_per_prompt) == (10, 0, 4)
    assert config.lora == LoraSettings(
        r=16, alpha=32, dropout=0.0, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")
    )
    assert config.problems() == []


def test_every_field_has_a_docstring():
    # The OpenAPI schema documents each field with the docstring under it (api/schemas.py reads field_docs).
    for cls in (GRPOConfig, LoraSettings):
        docs = field_docs(cls)
        undocumented = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert undocumented == [], f"{cls.__name__}: {undocumented}"


# --- the stored form ---------------------------------------------------------------------------------------------


def test_to_dict_is_plain_json_and_nests_lora():
    data = GRPOConfig().to_dict()
    assert data["lora"] == {
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    }
    assert data["group_size"] == 8 and data["epsilon_high"] is None
    assert set(data) == {f.name for f in dataclasses.fields(GRPOConfig)}
    assert json.loads(json.dumps(data)) == data  # no tuple, no object JSON lacks


def test_from_dict_and_to_dict_round_trip_through_json():
    config = GRPOConfig(
        group_size=4,
        prompts_per_step=2,
        epsilon=0.1,
        epsilon_high=0.28,
        beta=0.04,
        loss_type="dapo",
        scale_rewards="none",
        importance_sampling_level="sequence",
        dynamic_sampling=True,
        max_sampling_rounds=5,
        lr_schedule="cosine",
        seed=-3,
        lora=LoraSettings(r=4, alpha=8, dropout=0.05, target_modules=("q_proj", "v_proj")),
    )
    stored = json.loads(json.dumps(config.to_dict()))
    assert GRPOConfig.from_dict(stored) == config
    assert GRPOConfig.from_dict(stored).to_dict() == stored


def test_from_dict_takes_a_partial_dict_and_fills_the_defaults():
    config = GRPOConfig.from_dict({"group_size": 4, "lora": {"r": 8}})
    assert config == GRPOConfig(group_size=4, lora=LoraSettings(r=8))
    assert GRPOConfig.from_dict({}) == GRPOConfig()


def test_from_dict_reads_a_null_lora_as_the_defaults_and_a_json_list_as_the_modules():
    assert GRPOConfig.from_dict({"lora": None}).lora == LoraSettings()
    assert GRPOConfig.from_dict({"lora": {"target_modules": ["q_proj"]}}).lora.target_modules == ("q_proj",)


def test_from_dict_does_not_change_its_argument():
    data = {"group_size": 4, "lora": {"target_modules": ["q_proj"]}}
    GRPOConfig.from_dict(data)
    assert data == {"group_size": 4, "lora": {"target_modules": ["q_proj"]}}


def test_unknown_keys_are_refused_by_name_at_both_levels():
    with pytest.raises(ValueError, match=r"^unknown hyperparameters: groupsize, lr, lora\.rank$"):
        GRPOConfig.from_dict({"lr": 1e-4, "groupsize": 4, "lora": {"rank": 8}})


@pytest.mark.parametrize("lora", [[], 0, "", "r=8", ["q_proj"]])
def test_a_lora_that_is_not_an_object_is_refused(lora):
    with pytest.raises(ValueError, match=r"^lora must be an object such as \{\"r\": 16\}"):
        GRPOConfig.from_dict({"lora": lora})


def test_a_dict_given_as_lora_directly_is_refused():
    assert refusal(lora={"r": 8}).startswith("lora must be an object")


# --- frozen ------------------------------------------------------------------------------------------------------


def test_configs_are_frozen_and_hashable():
    config = GRPOConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.group_size = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lora.r = 2  # type: ignore[misc]
    assert hash(config) == hash(GRPOConfig())
    changed = dataclasses.replace(config, group_size=4)
    assert changed.group_size == 4 and config.group_size == 8


def test_replace_runs_the_checks_again():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        dataclasses.replace(GRPOConfig(), group_size=1)


# --- types -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("group_size", 2.0, "group_size must be an integer, got 2.0"),
        ("group_size", "8", 'group_size must be an integer, got "8"'),
        ("group_size", True, "group_size must be an integer, got true"),
        ("max_steps", None, "max_steps must be an integer, got null"),
        ("seed", 1.5, "seed must be an integer, got 1.5"),
        ("epsilon", "0.2", 'epsilon must be a finite number, got "0.2"'),
        ("epsilon", False, "epsilon must be a finite number, got false"),
        ("epsilon_high", "x", 'epsilon_high must be a finite number or null, got "x"'),
        ("loss_type", 1, "loss_type must be a string, got 1"),
        ("dynamic_sampling", 1, "dynamic_sampling must be true or false, got 1"),
        ("mask_truncated_completions", "yes", 'mask_truncated_completions must be true or false, got "yes"'),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_by_name(field, value, expected):
    assert refusal(**{field: value}) == expected


@pytest.mark.parametrize("field", ["epsilon", "epsilon_high", "beta", "learning_rate", "temperature", "top_p"])
@pytest.mark.parametrize("value,written", [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity")])
def test_non_finite_numbers_are_refused(field, value, written):
    assert refusal(**{field: value}).startswith(f"{field} must be a finite number")
    assert refusal(**{field: value}).endswith(f"got {written}")


def test_integers_are_numbers_for_float_fields():
    config = GRPOConfig(learning_rate=1, beta=2, epsilon_high=3)
    assert (config.learning_rate, config.beta, config.epsilon_high) == (1, 2, 3)


def test_type_problems_come_before_range_problems_and_are_all_listed():
    # A range check on a string would only raise Python's TypeError; the type problems are reported alone.
    assert refusal(group_size="8", epsilon="x", beta=-1) == (
        'group_size must be an integer, got "8"; epsilon must be a finite number, got "x"'
    )


# --- ranges ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("group_size", 1, "group_size must be >= 2 (a group of one has no baseline), got 1"),
        ("group_size", 0, "group_size must be >= 2 (a group of one has no baseline), got 0"),
        ("prompts_per_step", 0, "prompts_per_step must be >= 1, got 0"),
        ("micro_batch_size", -1, "micro_batch_size must be >= 0, got -1"),
        ("processes", 0, "processes must be >= 1, got 0"),
        ("max_steps", 0, "max_steps must be >= 1, got 0"),
        ("num_iterations", 0, "num_iterations must be >= 1, got 0"),
        ("epsilon", 0, "epsilon must be in (0, 1), got 0"),
        ("epsilon", 1, "epsilon must be in (0, 1), got 1"),
        ("epsilon", -0.2, "epsilon must be in (0, 1), got -0.2"),
        ("epsilon_high", 0, "epsilon_high must be in (0, 10], got 0"),
        ("epsilon_high", 10.5, "epsilon_high must be in (0, 10], got 10.5"),
        ("beta", -0.1, "beta must be in [0, 10], got -0.1"),
        ("beta", 1e300, "beta must be in [0, 10], got 1e+300"),
        ("learning_rate", 0, "learning_rate must be in (0, 1], got 0"),
        ("learning_rate", 1.5, "learning_rate must be in (0, 1], got 1.5"),
        ("weight_decay", -0.01, "weight_decay must be in [0, 1], got -0.01"),
        ("warmup_steps", -1, "warmup_steps must be >= 0, got -1"),
        ("max_grad_norm", -1.0, "max_grad_norm must be in [0, 1000], got -1.0"),
        ("max_new_tokens", 0, "max_new_tokens must be in [1, 4096], got 0"),
        ("max_new_tokens", 4097, "max_new_tokens must be in [1, 4096], got 4097"),
        ("temperature", 0.001, "temperature must be in [0.01, 100], got 0.001"),
        ("top_p", 0, "top_p must be in (0, 1], got 0"),
        ("top_p", 1.01, "top_p must be in (0, 1], got 1.01"),
        ("max_sampling_rounds", 0, "max_sampling_rounds must be in [1, 16], got 0"),
        ("max_sampling_rounds", 17, "max_sampling_rounds must be in [1, 16], got 17"),
        ("checkpoint_every", -1, "checkpoint_every must be >= 0, got -1"),
        ("eval_every", -1, "eval_every must be >= 0, got -1"),
        ("eval_samples_per_prompt", 0, "eval_samples_per_prompt must be >= 1, got 0"),
    ],
)
def test_a_value_out_of_range_is_refused_with_its_range(field, value, expected):
    assert refusal(**{field: value}) == expected


@pytest.mark.parametrize("field", ["seed", "max_steps", "warmup_steps", "checkpoint_every"])
def test_an_integer_past_32_bits_is_refused_like_the_api_refuses_it(field):
    # The command line's YAML reaches GRPOConfig without the API's schema: torch.manual_seed(2**80) would only
    # overflow once the run started.
    assert refusal(**{field: 2**40}) == f"{field} must be a 32-bit integer (-2147483648 to 2147483647), got {2**40}"
    assert GRPOConfig(**{field: 2**31 - 1}).to_dict()[field] == 2**31 - 1


@pytest.mark.parametrize(
    "values",
    [
        {"group_size": 2},
        {"epsilon": 1e-9, "epsilon_high": 10},
        {"epsilon": 0.999},
        {"beta": 10, "learning_rate": 1, "weight_decay": 1, "max_grad_norm": 0},
        {"temperature": 0.01, "top_p": 1e-9},
        {"temperature": 100, "max_new_tokens": 4096},
        {"max_sampling_rounds": 16, "dynamic_sampling": True},
        {"micro_batch_size": 0, "warmup_steps": 0, "checkpoint_every": 0, "eval_every": 0},
    ],
)
def test_the_bounds_themselves_are_accepted_where_they_are_inclusive(values):
    assert GRPOConfig(**values).problems() == []


@pytest.mark.parametrize(
    "field,choices",
    [
        ("loss_type", ["bnpo", "dapo", "dr_grpo", "grpo"]),
        ("scale_rewards", ["batch", "group", "none"]),
        ("importance_sampling_level", ["sequence", "token"]),
        ("lr_schedule", ["constant", "cosine"]),
        ("dtype", ["auto", "bfloat16", "float32"]),
    ],
)
def test_a_name_outside_the_choices_is_refused_with_the_valid_ones(field, choices):
    for name in choices:
        assert getattr(GRPOConfig(**{field: name}), field) == name
    assert refusal(**{field: "ppo"}) == f"{field} must be one of {choices}, got 'ppo'"
    assert refusal(**{field: "GRPO"}).startswith(f"{field} must be one of")  # names are case-sensitive


def test_every_range_problem_is_listed_at_once():
    assert refusal(group_size=1, epsilon=2, beta=-1) == (
        "group_size must be >= 2 (a group of one has no baseline), got 1; epsilon must be in (0, 1), got 2; "
        "beta must be in [0, 10], got -1"
    )


# --- combinations ------------------------------------------------------------------------------------------------


def test_dynamic_sampling_is_refused_on_several_processes():
    assert refusal(dynamic_sampling=True, processes=2, prompts_per_step=2) == (
        "dynamic_sampling runs on one process (processes is 2): its extra sampling rounds are decided from the "
        "whole step's rewards"
    )
    assert GRPOConfig(dynamic_sampling=True, processes=1, prompts_per_step=2).dynamic_sampling
    assert GRPOConfig(dynamic_sampling=False, processes=2, prompts_per_step=2).processes == 2


def test_processes_may_not_exceed_prompts_per_step():
    assert refusal(processes=3, prompts_per_step=2) == (
        "processes (3) must not exceed prompts_per_step (2): each process takes whole prompts of every step"
    )
    assert GRPOConfig(processes=2, prompts_per_step=2).processes == 2


def test_combinations_are_checked_only_once_each_field_is_in_range():
    # A range problem is reported alone: the combination it is part of may not even be meant.
    assert refusal(group_size=1, dynamic_sampling=True, processes=2, prompts_per_step=2) == (
        "group_size must be >= 2 (a group of one has no baseline), got 1"
    )


def test_epsilon_high_none_means_epsilon_and_a_set_one_is_kept():
    assert GRPOConfig(epsilon=0.2).epsilon_high is None
    assert GRPOConfig(epsilon=0.2, epsilon_high=0.28).epsilon_high == 0.28
    # GSPO's clip range, far tighter than GRPO's (the field's docstring).
    assert GRPOConfig(importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4).problems() == []


# --- LoRA --------------------------------------------------------------------------------------------------------


def test_lora_defaults():
    assert LoraSettings() == LoraSettings(16, 32, 0.0, ("q_proj", "k_proj", "v_proj", "o_proj"))


@pytest.mark.parametrize(
    "values,expected",
    [
        ({"r": 0}, "lora.r must be >= 1, got 0"),
        ({"r": 8.0}, "lora.r must be an integer, got 8.0"),
        ({"alpha": 0}, "lora.alpha must be in (0, 1024], got 0"),
        ({"alpha": 2048}, "lora.alpha must be in (0, 1024], got 2048"),
        ({"alpha": math.nan}, "lora.alpha must be a finite number, got NaN"),
        ({"alpha": True}, "lora.alpha must be a finite number, got true"),
        ({"dropout": -0.1}, "lora.dropout must be in [0, 1), got -0.1"),
        ({"dropout": 1.0}, "lora.dropout must be in [0, 1), got 1.0"),
        ({"target_modules": ()}, "lora.target_modules must hold at least 1 item(s), got 0"),
        ({"target_modules": "q_proj"}, 'lora.target_modules must be a list of strings, got "q_proj"'),
        ({"target_modules": ("q_proj", 3)}, 'lora.target_modules must be a list of strings, got ["q_proj", 3]'),
    ],
)
def test_bad_lora_settings_are_refused_by_their_dotted_name(values, expected):
    assert lora_refusal(**values) == expected


def test_lora_alpha_takes_any_finite_scale_not_only_an_integer():
    assert GRPOConfig(lora=LoraSettings(alpha=0.5)).lora.alpha == 0.5


def test_lora_from_a_dict_is_checked_like_a_constructed_one():
    with pytest.raises(ValueError, match=r'lora\.target_modules must be a list of strings, got "q_proj"'):
        GRPOConfig.from_dict({"lora": {"target_modules": "q_proj"}})  # a string is not split into letters
    with pytest.raises(ValueError, match=r"lora\.target_modules must hold at least 1 item\(s\), got 0"):
        GRPOConfig.from_dict({"lora": {"target_modules": []}})
    with pytest.raises(ValueError, match=r"lora\.r must be >= 1, got 0"):
        GRPOConfig.from_dict({"lora": {"r": 0}})


# --- resuming ----------------------------------------------------------------------------------------------------


def test_training_differences_name_what_changes_the_run():
    saved = GRPOConfig(learning_rate=1e-4, lora=LoraSettings(r=8)).to_dict()
    assert GRPOConfig(learning_rate=1e-4, lora=LoraSettings(r=8)).training_differences(saved) == []
    assert GRPOConfig(learning_rate=1e-4, lora=LoraSettings(r=4)).training_differences(saved) == ["lora.r"]
    assert GRPOConfig(lora=LoraSettings(r=8)).training_differences(saved) == ["learning_rate"]


def test_when_to_save_and_how_to_cut_a_step_may_change_on_resume():
    saved = GRPOConfig().to_dict()
    changed = GRPOConfig(
        checkpoint_every=1, eval_every=5, eval_samples_per_prompt=2, micro_batch_size=4, processes=1, max_steps=99
    )
    assert changed.training_differences(saved) == []


def test_max_steps_may_change_only_under_a_constant_schedule():
    # Under cosine the rate at every step depends on max_steps.
    saved = GRPOConfig(lr_schedule="cosine").to_dict()
    assert GRPOConfig(lr_schedule="cosine", max_steps=99).training_differences(saved) == ["max_steps"]


def test_a_field_missing_from_a_saved_config_had_its_default():
    saved = GRPOConfig().to_dict()
    del saved["dynamic_sampling"], saved["lora"]["dropout"]
    assert GRPOConfig().training_differences(saved) == []
    assert GRPOConfig(dynamic_sampling=True).training_differences(saved) == ["dynamic_sampling"]
