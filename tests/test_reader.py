"""The dataset reader: every format and file type, and every bad-row case with its reason."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from screener.errors import InputError
from screener.reader import FieldNames, content_id, read_dataset
from screener.records import Message, RejectedRow, Sample

CHAT = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_all(path: Path, **kwargs: Any) -> tuple[list[Sample], list[RejectedRow]]:
    reader = read_dataset(path, **kwargs)
    records = list(reader)
    samples = [r for r in records if isinstance(r, Sample)]
    rejected = [r for r in records if isinstance(r, RejectedRow)]
    assert reader.counts.rows == len(records) == reader.counts.samples + reader.counts.rejected
    assert (reader.counts.samples, reader.counts.rejected) == (len(samples), len(rejected))
    return samples, rejected


def test_messages_format_multi_turn_with_system(tmp_path: Path) -> None:
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "x1", "messages": conversation, "extra": 3}])
    [sample], rejected = read_all(path)
    assert rejected == []
    assert sample.id == "x1" and sample.line == 1 and sample.format == "messages"
    assert sample.response == "A2"
    assert [m.role for m in sample.prompt] == ["system", "user", "assistant", "user"]
    assert sample.original == {"id": "x1", "messages": conversation, "extra": 3}


def test_turns_after_last_assistant_are_dropped_with_warning(tmp_path: Path) -> None:
    rows = [{"messages": [*CHAT, {"role": "user", "content": "thanks"}]}]
    [sample], _ = read_all(write_jsonl(tmp_path / "d.jsonl", rows))
    assert sample.response == "Hello!"
    assert sample.warnings == ("dropped 1 turn(s) after the last assistant turn",)


def test_sharegpt_format(tmp_path: Path) -> None:
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "S"},
                {"from": "human", "value": "Q"},
                {"from": "gpt", "value": "A"},
            ]
        }
    ]
    [sample], _ = read_all(write_jsonl(tmp_path / "d.jsonl", rows))
    assert sample.format == "sharegpt"
    assert sample.messages == (
        Message("system", "S"),
        Message("user", "Q"),
        Message("assistant", "A"),
    )


def test_alpaca_format_with_and_without_input(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(
        json.dumps(
            [
                {"instruction": "Translate", "input": "bonjour", "output": "hello"},
                {"instruction": "Say hi", "input": "", "output": "hi"},
            ],
            indent=2,
        )
    )
    samples, _ = read_all(path)
    assert [s.format for s in samples] == ["alpaca", "alpaca"]
    assert samples[0].messages[0] == Message("user", "Translate\n\nbonjour")
    assert samples[1].messages == (Message("user", "Say hi"), Message("assistant", "hi"))
    assert [s.line for s in samples] == [2, 7]  # where each array element starts


def test_prompt_response_with_configured_field_names(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"uid": 7, "question": "Q", "answer": "A"}])
    fields = FieldNames(prompt="question", response="answer", id="uid")
    [sample], _ = read_all(path, fields=fields)
    assert sample.id == "7" and sample.format == "prompt_response"
    assert sample.messages == (Message("user", "Q"), Message("assistant", "A"))


def test_prompt_response_as_message_lists(tmp_path: Path) -> None:
    row = {
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        "response": [{"role": "assistant", "content": "A"}],
    }
    [sample], _ = read_all(write_jsonl(tmp_path / "d.jsonl", [row]))
    assert [m.role for m in sample.messages] == ["system", "user", "assistant"]


def test_csv_with_quoted_newlines_reports_start_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "prompt", "response"])
        writer.writerow(["a", "line one\nline two", 'ok, "quoted"'])
        writer.writerow(["b", "Q", "A"])
        writer.writerow(["c", "Q only"])
    samples, [bad] = read_all(path)
    assert [(s.id, s.line) for s in samples] == [("a", 2), ("b", 4)]
    assert samples[0].messages[0].content == "line one\nline two"
    assert (bad.line, bad.reason) == (5, "row has 2 fields, the header has 3")


def test_parquet_and_save_to_disk_and_mixed_directory(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    rows = [{"id": f"r{i}", "prompt": f"Q{i}", "response": f"A{i}"} for i in range(3)]
    pl.DataFrame(rows).write_parquet(tmp_path / "d.parquet")
    samples, _ = read_all(tmp_path / "d.parquet")
    assert [(s.id, s.line, s.response) for s in samples] == [
        ("r0", 1, "A0"),
        ("r1", 2, "A1"),
        ("r2", 3, "A2"),
    ]

    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    samples, _ = read_all(tmp_path / "saved")
    assert [s.id for s in samples] == ["r0", "r1", "r2"]

    DatasetDict(
        {"train": Dataset.from_list(rows[:2]), "test": Dataset.from_list(rows[2:])}
    ).save_to_disk(str(tmp_path / "dd"))
    samples, _ = read_all(tmp_path / "dd")
    dd = tmp_path / "dd"
    assert [(s.source, s.line, s.id) for s in samples] == [
        (f"{dd}[train]", 1, "r0"),
        (f"{dd}[train]", 2, "r1"),
        (f"{dd}[test]", 1, "r2"),
    ]

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_jsonl(mixed / "a.jsonl", [{"id": "j", "messages": CHAT}])
    pl.DataFrame(rows[:1]).write_parquet(mixed / "b.parquet")
    (mixed / "notes.txt").write_text("not data")
    samples, _ = read_all(mixed)
    assert [(Path(s.source).name, s.id) for s in samples] == [("a.jsonl", "j"), ("b.parquet", "r0")]


def test_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    body = (
        json.dumps({"id": "a", "messages": CHAT})
        + "\r\n\r\n"
        + json.dumps({"id": "b", "messages": CHAT})
    )
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    samples, rejected = read_all(path)
    assert [(s.id, s.line) for s in samples] == [("a", 1), ("b", 3)] and rejected == []


def test_ids_fall_back_to_a_stable_content_hash(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": CHAT}])
    [sample], _ = read_all(path)
    messages = (Message("user", "Hi?"), Message("assistant", "Hello!"))
    assert sample.id == content_id(messages) and len(sample.id) == 16
    [again], _ = read_all(path)
    assert again.id == sample.id


BAD_ROWS: list[tuple[Any, str, str | None]] = [
    ({"messages": [{"role": "user", "content": "Q"}]}, "no assistant turn", "messages"),
    (
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]},
        "the assistant response is empty",
        "messages[1].content",
    ),
    (
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "A"}]},
        "content is a number, expected a string",
        "messages[0].content",
    ),
    (
        {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "A"}]},
        "content is null",
        "messages[0].content",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
                {"role": "assistant", "content": "A"},
            ]
        },
        "content part of type 'image_url' is not text",
        "messages[0].content",
    ),
    (
        {"messages": [{"role": "wizard", "content": "Q"}, {"role": "assistant", "content": "A"}]},
        "unknown role 'wizard'",
        "messages[0].role",
    ),
    (
        {"messages": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "Q"}]},
        "the assistant response has no user turn before it",
        "messages",
    ),
    ({"messages": "hello"}, "expected a list of turns, found text that is not JSON", "messages"),
    ({"messages": {"role": "user"}}, "expected a list of turns, found an object", "messages"),
    (
        {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "A"}]},
        "every user turn before the response is empty",
        "messages",
    ),
    ({"id": 1.5, "messages": CHAT}, "id is a decimal number", "id"),
    ({"prompt": "Q"}, "missing field(s) messages", "messages"),
    ([1, 2], "row is an array, expected a JSON object", None),
]


@pytest.mark.parametrize(("row", "reason", "field"), BAD_ROWS)
def test_bad_row_is_rejected_with_reason_and_field(
    row: Any, reason: str, field: str | None, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "ok", "messages": CHAT}, row])
    samples, [bad] = read_all(path)
    assert [s.id for s in samples] == ["ok"]
    assert bad.source == str(path) and bad.line == 2
    assert reason in bad.reason
    assert bad.field == field


def test_malformed_json_and_invalid_utf8_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    good = json.dumps({"id": "a", "messages": CHAT}).encode()
    path.write_bytes(
        good
        + b"\n"
        + b'{"id": "b", "messages": ['
        + b"\n"
        + b'{"id": "c\xff"}'
        + b"\n"
        + good.replace(b'"a"', b'"d"')
    )
    samples, rejected = read_all(path)
    assert [s.id for s in samples] == ["a", "d"]
    assert [(r.line, r.reason.split(":")[0]) for r in rejected] == [
        (2, "malformed JSON"),
        (3, "not valid UTF-8 (byte 0xff at column 10)"),
    ]


def test_duplicate_ids_and_duplicate_content(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "messages": CHAT},
        {"id": "a", "messages": CHAT[::-1] + CHAT},
        {"messages": CHAT},
        {"messages": CHAT},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    samples, rejected = read_all(path)
    assert [s.line for s in samples] == [1, 3]
    assert [(r.line, r.field) for r in rejected] == [(2, "id"), (4, None)]
    assert rejected[0].reason == f"duplicate id 'a' (first seen at {path}:1)"
    assert rejected[1].reason == f"duplicate conversation (same text as {path}:3)"
    # reading rows again that were judged before: every row is a sample
    samples, rejected = read_all(path, check_duplicates=False)
    assert [s.line for s in samples] == [1, 2, 3, 4] and not rejected


def test_on_bad_row_fail_raises_with_file_line_and_field(tmp_path: Path) -> None:
    rows = [{"messages": CHAT}, {"messages": [{"role": "user", "content": 3}, CHAT[1]]}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(InputError) as info:
        list(read_dataset(path, on_bad_row="fail"))
    assert (
        str(info.value) == f"{path}:2 [messages[0].content]: content is a number, expected a string"
    )


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        list(read_dataset(tmp_path / "missing.jsonl"))
    unknown = write_jsonl(tmp_path / "u.jsonl", [{"text": "hello"}])
    with pytest.raises(
        InputError, match=r"u.jsonl:1: cannot tell the dataset format: the columns are text, "
    ):
        list(read_dataset(unknown))
    broken = tmp_path / "b.json"
    broken.write_text('[\n  {"messages": []},\n  {"messages": [}\n]')
    with pytest.raises(InputError, match=r"b.json:3: malformed JSON"):
        list(read_dataset(broken, fmt="messages"))
    truncated = tmp_path / "t.json"
    truncated.write_text('[{"prompt": "Q", "response": "A"},')
    with pytest.raises(InputError, match="truncated"):
        list(read_dataset(truncated))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="unsupported file type"):
        list(read_dataset(tmp_path / "x.txt"))


def test_json_array_elements_longer_than_a_read_chunk(tmp_path: Path) -> None:
    big = "word " * 300_000  # 1.5 MB, larger than the reader's 1 MB chunk
    path = tmp_path / "d.json"
    path.write_text(
        json.dumps([{"prompt": "Q", "response": big}, {"prompt": "Q2", "response": "A"}])
    )
    samples, _ = read_all(path)
    assert [len(s.response) for s in samples] == [len(big), 1]


def test_csv_invalid_utf8_header_only_and_json_non_object_elements(tmp_path: Path) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_bytes(b"id,prompt,response\r\na,Q,A\r\nb,Q\xff,A\r\n")
    samples, [bad] = read_all(bad_csv)
    assert [s.id for s in samples] == ["a"]
    assert (bad.line, bad.reason) == (3, "not valid UTF-8")

    header_only = tmp_path / "h.csv"
    header_only.write_text("id,prompt,response\n")
    with pytest.raises(InputError, match=f"{header_only}: no rows to read"):
        read_all(header_only)

    array = tmp_path / "a.json"
    array.write_text('[{"prompt": "Q", "response": "A"},\n "text",\n [1]]')
    samples, rejected = read_all(array)
    assert len(samples) == 1
    assert [(r.line, r.reason) for r in rejected] == [
        (2, "row is a string, expected a JSON object"),
        (3, "row is an array, expected a JSON object"),
    ]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 11, 16, 40])
def test_json_array_parses_the_same_at_any_read_chunk_size(
    chunk: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from screener.reader import sources

    monkeypatch.setattr(sources, "_CHUNK_CHARS", chunk)
    path = tmp_path / "d.json"
    path.write_text(
        '[{"prompt": "Q \\u00e9\\n", "response": "A1"},\n 1234567, "txt",\n'
        ' {"prompt": "Q2", "response": "A2"}  ]\n'
    )
    samples, rejected = read_all(path)
    assert [(s.line, s.messages[0].content) for s in samples] == [(1, "Q é\n"), (3, "Q2")]
    assert [(r.line, r.reason) for r in rejected] == [
        (2, "row is a number, expected a JSON object"),
        (2, "row is a string, expected a JSON object"),
    ]


def test_malformed_json_array_fails_without_reading_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from screener.reader import sources

    monkeypatch.setattr(sources, "_CHUNK_CHARS", 64)
    reads = []
    original = sources._JsonArrayStream._fill

    def counting_fill(self: sources._JsonArrayStream) -> bool:
        reads.append(1)
        return original(self)

    monkeypatch.setattr(sources._JsonArrayStream, "_fill", counting_fill)
    path = tmp_path / "d.json"
    path.write_text('[{"prompt": },' + ' {"prompt": "Q", "response": "A"},' * 1000 + "]")
    with pytest.raises(InputError, match=r"d.json:1: malformed JSON: Expecting value"):
        list(read_dataset(path))
    assert len(reads) <= 2


def test_file_shapes_that_cannot_be_read_fail_with_a_reason(tmp_path: Path) -> None:
    pretty = tmp_path / "array.jsonl"
    pretty.write_text('[\n  {"prompt": "Q", "response": "A"}\n]\n')
    with pytest.raises(InputError, match=r"array.jsonl:1: this .jsonl file holds a JSON array"):
        list(read_dataset(pretty))
    repeated = tmp_path / "r.csv"
    repeated.write_text("prompt,response,response\nQ,A,B\n")
    with pytest.raises(InputError, match=r"r.csv:1: the header repeats column\(s\) response"):
        list(read_dataset(repeated))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(InputError, match="no data files here"):
        list(read_dataset(empty_dir))


def test_csv_messages_column_and_content_part_prompts(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["id", "messages"], ["a", json.dumps(CHAT)]])
    [sample], _ = read_all(path)
    assert sample.messages == (Message("user", "Hi?"), Message("assistant", "Hello!"))

    parts = {
        "prompt": [{"type": "text", "text": "Q "}, {"type": "text", "text": "more"}],
        "response": "A",
    }
    [sample], _ = read_all(write_jsonl(tmp_path / "p.jsonl", [parts]))
    assert sample.messages == (Message("user", "Q more"), Message("assistant", "A"))


def test_field_errors_list_the_columns_and_the_flags_that_map_them(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("prompt,response\nWhat is 2+2?,4\n")
    asked = FieldNames(prompt="question", response="answer")
    with pytest.raises(InputError) as info:
        list(read_dataset(path, fields=asked))
    message = str(info.value)
    assert message.startswith(f"{path}:2: cannot tell the dataset format: the columns are ")
    assert "the columns are prompt, response," in message
    assert "`question`+`answer` (from --prompt-field/--response-field)" in message
    assert message.endswith(
        "pass --prompt-field prompt --response-field response, or pass --format"
    )
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "Q?", "answer": "A."}])
    with pytest.raises(InputError, match="pass --prompt-field question --response-field answer"):
        list(read_dataset(other))
    assert [s.id for s in read_dataset(other, fields=FieldNames("question", "answer"))] == [
        content_id((Message("user", "Q?"), Message("assistant", "A.")))
    ]


def test_a_missing_id_field_is_an_error_that_lists_the_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "Q", "response": "A"}])
    with pytest.raises(InputError) as info:
        list(read_dataset(path, fields=FieldNames(id="uid")))
    assert str(info.value) == (
        f"{path}:1 [uid]: no column 'uid' (from --id-field): the columns are id, prompt, "
        "response; pass one of them, or leave --id-field out to give rows ids from their content"
    )
    # without --id-field, rows lacking an `id` column get ids from their content, as before
    no_ids = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "Q", "response": "A"}])
    assert len(list(read_dataset(no_ids))) == 1


def prepare_hub_cache(cache: Path, name: str, splits: dict[str, list[dict[str, Any]]]) -> None:
    """Leave `name` (owner/name) in the datasets cache `cache` as `datasets.load_dataset(name)`
    leaves a hub dataset: prepared by a real builder (json here, parquet for most hub datasets)
    under CACHE/owner___name/default/0.0.0/HASH. Offline, `load_dataset(name)` then reads it."""
    from datasets.packaged_modules.json.json import Json

    owner, short = name.split("/")
    files = {
        split: str(write_jsonl(cache.parent / f"{short}-{split}.jsonl", rows))
        for split, rows in splits.items()
    }
    builder = Json(cache_dir=str(cache), dataset_name=short, data_files=files, hash="0123abcd")
    builder.download_and_prepare()
    # a hub builder names its folder owner___name and its configuration `default`; from local
    # files the json builder writes name/default-DATAFILESHASH
    (cache / short).rename(cache / f"{owner}___{short}")
    [config] = (cache / f"{owner}___{short}").iterdir()
    config.rename(config.parent / "default")


@pytest.fixture
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import datasets

    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def test_a_hub_dataset_in_the_local_cache_is_read_split_by_split(
    datasets_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    rows = [{"id": f"r{i}", "prompt": f"Q{i}", "response": f"A{i}"} for i in range(5)]
    prepare_hub_cache(datasets_cache, "acme/chats", {"train": rows[:3], "test": rows[3:]})
    monkeypatch.chdir(tmp_path)
    samples, rejected = read_all("acme/chats")
    assert rejected == []
    # the rows `datasets` itself loads from that cache, offline, split by split and in order
    loaded = datasets.load_dataset("acme/chats", cache_dir=str(datasets_cache))
    expected = [
        (f"acme/chats[{split}]", line, row["id"], row["response"])
        for split in ("train", "test")
        for line, row in enumerate(loaded[split], 1)
    ]
    assert [(s.source, s.line, s.id, s.response) for s in samples] == expected
    assert [e[2] for e in expected] == ["r0", "r1", "r2", "r3", "r4"]


def test_a_hub_dataset_with_several_cached_configurations_asks_for_one(
    datasets_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"prompt": "Q", "response": "A"}]
    prepare_hub_cache(datasets_cache, "acme/chats", {"train": rows})
    root = datasets_cache / "acme___chats"
    (root / "default").rename(root / "en")
    prepare_hub_cache(datasets_cache / "other", "acme/chats", {"train": rows})
    (datasets_cache / "other" / "acme___chats" / "default").rename(root / "fr")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        list(read_dataset("acme/chats"))
    assert str(info.value) == (
        f"acme/chats: the local datasets cache ({root}) holds several configurations of this "
        "dataset (en, fr): save the one to screen with datasets.load_dataset('acme/chats', "
        "CONFIG).save_to_disk(DIR) and screen DIR"
    )


def test_a_hub_dataset_id_not_in_the_cache_says_how_to_make_it_available(
    datasets_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        list(read_dataset("HuggingFaceH4/ultrachat_200k"))
    assert str(info.value) == (
        "HuggingFaceH4/ultrachat_200k: no such file or directory (a Hugging Face dataset id? it "
        f"is not in the local datasets cache ({datasets_cache}) and screener downloads nothing: "
        "run datasets.load_dataset('HuggingFaceH4/ultrachat_200k') here while online, or save "
        "it elsewhere with .save_to_disk(DIR) or .to_json(FILE.jsonl) and screen that)"
    )
    with pytest.raises(InputError) as info:
        list(read_dataset("data/missing.jsonl"))  # a file path: no hint
    assert str(info.value) == "data/missing.jsonl: no such file or directory"
