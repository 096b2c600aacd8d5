"""grpo_core.spec is what the API validates with, without torch: it must name exactly what the engine can run."""

import subprocess
import sys

from grpo_core import algorithms, models, spec


def test_the_light_lists_equal_the_engine_registries():
    assert set(spec.BASE_MODELS) == set(models.CATALOG)
    assert {name: entry.description for name, entry in models.CATALOG.items()} == spec.BASE_MODELS
    assert sorted(spec.LOSS_TYPES) == sorted(algorithms.LOSS_AGGREGATIONS)
    assert sorted(spec.REWARD_SCALINGS) == sorted(algorithms.REWARD_SCALINGS)


def test_validation_modules_import_no_torch():
    code = (
        "import sys, grpo_core, grpo_core.spec, grpo_core.config, grpo_core.rewards, grpo_core.data\n"
        "grpo_core.GRPOConfig.from_dict({'group_size': 4, 'lora': {'r': 8}})\n"
        "grpo_core.resolve_rewards([grpo_core.RewardSpec('regex_match', params={'pattern': 'a+'})], {'answer'})\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
