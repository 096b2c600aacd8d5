import json

import pytest

from grpo_core.data import DatasetError, arithmetic_task, dataset_fields, parse_jsonl, render_prompt, rows_for_step


def test_parses_prompt_and_messages_rows_and_skips_blank_lines():
    text = [
        '{"prompt": "hi", "answer": 1}',
        "",
        json.dumps({"messages": [{"role": "user", "content": "yo"}], "answer": 2}),
    ]
    rows = parse_jsonl(text)
    assert len(rows) == 2
    assert dataset_fields(rows) == {"answer"}


def test_every_bad_line_is_named_with_its_number_and_reason():
    lines = [
        '{"prompt": "ok"}',
        "{not json",
        '["a list"]',
        '{"answer": 3}',
        '{"prompt": "x", "messages": []}',
        '{"messages": [{"role": "user"}]}',
        b"\xff\xfe",
    ]
    with pytest.raises(DatasetError) as caught:
        parse_jsonl(lines)
    by_line = {e.line: e.reason for e in caught.value.errors}
    assert set(by_line) == {2, 3, 4, 5, 6, 7}
    assert "invalid JSON" in by_line[2]
    assert "JSON object" in by_line[3]
    assert "exactly one of `prompt`" in by_line[4] and "exactly one of `prompt`" in by_line[5]
    assert "messages[0]" in by_line[6]
    assert "UTF-8" in by_line[7]


def test_an_empty_file_is_an_error():
    with pytest.raises(DatasetError, match="no rows"):
        parse_jsonl(["", "  "])


def test_arithmetic_split_never_shares_a_question():
    train, held_out = arithmetic_task()
    assert len(train) == 80 and len(held_out) == 20
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    assert all(eval(r["prompt"][8:-1]) == r["answer"] for r in train)  # "What is a + b?"


def test_data_order_is_a_function_of_seed_and_step_and_covers_each_epoch():
    first_epoch = [i for step in range(5) for i in rows_for_step(10, step, 2, seed=7)]
    assert sorted(first_epoch) == list(range(10))
    assert rows_for_step(10, 3, 2, seed=7) == rows_for_step(10, 3, 2, seed=7)
    assert first_epoch != [i for step in range(5) for i in rows_for_step(10, step, 2, seed=8)]


def test_render_prompt_uses_the_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = render_prompt({"prompt": "What is 1 + 1?"}, tokenizer)
    assert "<|im_start|>user\nWhat is 1 + 1?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    chat = render_prompt(
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}, tokenizer
    )
    assert "Be brief." in chat and "helpful AI assistant" not in chat
