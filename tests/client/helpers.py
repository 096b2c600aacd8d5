"""What the client and CLI tests share: a tiny job's settings and rewards, a prompts file, and the mark that runs a
test on the embedded layout alone."""

import json

import pytest

# The running_service fixture is parametrized over both layouts; tests here take the embedded one alone: the client
# speaks HTTP, so the other layout adds nothing.
embedded_only = pytest.mark.parametrize("running_service", ["embedded"], indirect=True)

# A tiny job, as tests/e2e/test_end_to_end.py runs them: random weights never write the sum, so a length reward
# gives groups with mixed rewards.
TINY_JOB = {
    "group_size": 2,
    "max_new_tokens": 8,
    "lora": {"r": 4},
}
TINY_REWARDS = [{"name": "length_target", "params": {"target": 40}}, {"name": "numeric_answer"}]


def write_prompts(path, rows=8):
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + 2?", "answer": i + 2}) + "\n" for i in range(rows)))
    return path
