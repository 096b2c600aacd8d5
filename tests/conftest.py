import os

import pytest

# Tests never reach a model hub; catalog models are built or converted locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model_dir():
    from grpo_core.models import resolve_model_dir

    return resolve_model_dir("tiny-random-llama")
