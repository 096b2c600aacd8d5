import json

import pytest

from grpo_core.data import (
    DatasetError,
    arithmetic_task,
    dataset_fields,
    is_number,
    load_jsonl,
    parse_jsonl,
    read_rows,
    render_prompt,
    summarize_dataset,
)

pytestmark = pytest.mark.unit


def test_parses_prompt_and_messages_rows_and_skips_blank_lines():
    text = "\n".join(
        [
            '{"prompt": "hi", "answer": 1}',
            "",
            json.dumps({"messages": [{"role": "user", "content": "yo"}], "answer": 2}),
        ]
    )
    rows = parse_jsonl(text)
    assert len(rows) == 2
    assert dataset_fields(rows) == {"answer"}


def test_every_bad_line_is_named_with_its_number_and_reason():
    lines = [
        b'{"prompt": "ok"}',
        b"{not json",
        b'["a list"]',
        b'{"answer": 3}',
        b'{"prompt": "x", "messages": []}',
        b'{"messages": [{"role": "user"}]}',
        b"\xff\xfe",
    ]
    with pytest.raises(DatasetError) as caught:
        parse_jsonl(b"\n".join(lines))
    by_line = {e.line: e.reason for e in caught.value.errors}
    assert set(by_line) == {2, 3, 4, 5, 6, 7}
    assert "invalid JSON" in by_line[2]
    assert "JSON object" in by_line[3]
    assert "exactly one of `prompt`" in by_line[4] and "exactly one of `prompt`" in by_line[5]
    assert "messages[0]" in by_line[6]
    assert "UTF-8" in by_line[7]


def test_an_empty_file_is_an_error():
    with pytest.raises(DatasetError, match="no rows"):
        parse_jsonl("\n  \n")


def test_arithmetic_split_never_shares_a_question():
    train, held_out = arithmetic_task()
    assert len(train) == 80 and len(held_out) == 20
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    assert all(eval(r["prompt"][8:-1]) == r["answer"] for r in train)  # "What is a + b?"


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


# --- one parser for the API and the worker: each case is refused (or read) the same way by both -----------------

ROW = b'{"prompt": "What is 2 + 3?", "answer": 5}'


@pytest.mark.parametrize(
    ("content", "rows"),
    [
        (ROW + b"\r\n" + ROW + b"\r\n", 2),  # Windows line ends
        (b"\xef\xbb\xbf" + ROW + b"\n" + ROW, 2),  # a UTF-8 byte order mark, as some editors write
        (ROW + b"\n\n  \n" + ROW + b"\n", 2),  # blank lines
    ],
    ids=["crlf", "bom", "blank lines"],
)
def test_line_ends_and_a_bom_read_as_plain_lines(content, rows, tmp_path):
    assert len(parse_jsonl(content)) == rows
    (tmp_path / "d.jsonl").write_bytes(content)
    assert load_jsonl(tmp_path / "d.jsonl") == parse_jsonl(content)


def test_read_rows_numbers_rows_as_load_jsonl_does(tmp_path):
    # Per-prompt figures name rows by their index in load_jsonl's list; read_rows reads a few of them back.
    rows = [{"prompt": f"p{i}"} for i in range(4)]
    lines = [json.dumps(row).encode() for row in rows]
    content = b"\xef\xbb\xbf" + lines[0] + b"\r\n\n  \n" + lines[1] + b"\n" + lines[2] + b"\r\n\n" + lines[3]
    (tmp_path / "d.jsonl").write_bytes(content)
    assert load_jsonl(tmp_path / "d.jsonl") == rows
    assert read_rows(tmp_path / "d.jsonl", [3, 0, 9]) == {0: rows[0], 3: rows[3]}
    assert read_rows(tmp_path / "d.jsonl", []) == {}


DEEP = b'{"prompt": "x", "deep": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
BAD_LINES = [
    (ROW + b"\r" + ROW + b"\r", "carriage return"),  # old Mac line ends: one line, not two rows
    (b'{"prompt": "a \\ud800 b"}', "lone surrogate"),
    (b'{"prompt": "x", "k": "\\udc00"}', "lone surrogate"),
    (DEEP, "nested deeper than 64 levels"),
    (b'{"prompt": "x", "deep": ' + b"[" * 80 + b"]" * 80 + b"}", "nested deeper than 64 levels"),
    (b'{"prompt": "x", "answer": ' + b"7" * 5000 + b"}", "an integer with more than 4300 digits"),
    (b'{"prompt": "x", "answer": NaN}', "NaN is not a JSON number"),
    (b'{"prompt": "x", "answer": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"prompt": "x", "answer": 1e400}', "1e400 is too large"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_each_bad_line_is_refused_naming_its_line_in_api_and_worker_alike(line, reason, tmp_path):
    content = ROW + b"\n" + line + b"\n"
    with pytest.raises(DatasetError) as caught:
        parse_jsonl(content)
    assert [e.line for e in caught.value.errors] == [2], caught.value
    assert reason in caught.value.errors[0].reason
    (tmp_path / "d.jsonl").write_bytes(content)
    with pytest.raises(DatasetError, match="line 2: "):
        load_jsonl(tmp_path / "d.jsonl")


def test_summary_records_prompt_size_and_the_fields_that_are_not_numbers():
    rows = [
        {"prompt": "héllo", "answer": 5, "label": "x"},
        {
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "answer": "1,234",
            "label": 3,
        },
    ]
    summary = summarize_dataset(rows)
    assert summary.fields == ["answer", "label"]
    assert summary.max_prompt_bytes == len("systembe brief") + len("userhi")  # "user" + "héllo" is 10 bytes
    assert summary.max_prompt_messages == 2
    assert summary.non_numeric_fields == {"label": 1}
    assert [is_number(v) for v in (5, "2.5", "1,234", True, None, "nan", "inf", "five")] == [True, True, True] + [
        False
    ] * 5
