"""`screener traits new`: a generator writes a pack; invalid output is retried, then reported,
and never saved half-valid."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from screener.cli import main
from screener.errors import TraitPackError
from screener.traits import load_pack, user_packs_dir
from screener.traits.writer import extract_json, write_pack
from tests.conftest import ChatServer
from tests.test_traits import good_pack


def message(text: str) -> dict[str, Any]:
    return {"choices": [{"message": {"role": "assistant", "content": text}}]}


def test_extract_json_ignores_fences_and_chatter() -> None:
    assert extract_json('Sure!\n```json\n{"a": [1, 2]}\n```\nHope this helps') == {"a": [1, 2]}
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json("I cannot help with that.")


def test_invalid_replies_are_retried_with_the_error(
    chat_server: ChatServer, capsys: pytest.CaptureFixture[str]
) -> None:
    short = good_pack() | {"eval_questions": good_pack()["eval_questions"][:19]}
    replies = iter(
        [
            message("Here you go: {broken"),
            message(json.dumps(short)),
            message("```json\n" + json.dumps(good_pack()) + "\n```"),
        ]
    )
    chat_server.reply = lambda body: next(replies)
    code = main(
        [
            "traits",
            "new",
            "tidy",
            "--description",
            "Keeps answers neat.",
            "--generator",
            f"openai:writer@{chat_server.url}",
        ]
    )
    assert code == 0
    saved = user_packs_dir() / "tidy.json"
    assert capsys.readouterr().out == f"wrote {saved}\n"
    assert load_pack("tidy").extraction_questions == tuple(good_pack()["extraction_questions"])
    prompts = [r["messages"][0]["content"] for r in chat_server.requests]
    assert 'character trait "tidy"' in prompts[0] and "Keeps answers neat." in prompts[0]
    assert (
        "rejected: " in prompts[1]
        and "rejected: generated pack (attempt 2): `eval_questions` must hold exactly 20"
        in prompts[2]
    )
    assert (
        main(
            [
                "traits",
                "new",
                "tidy",
                "--description",
                "x",
                "--generator",
                f"openai:w@{chat_server.url}",
            ]
        )
        == 2
    )
    os.remove(saved)


def test_a_generator_that_never_validates_saves_nothing(tmp_path: Path) -> None:
    wrong_name = json.dumps(good_pack() | {"name": "neat"})
    with pytest.raises(
        TraitPackError,
        match=r"no valid pack for 'tidy' in 2 attempts; last problem: `name` must be 'tidy'",
    ):
        write_pack("tidy", "Keeps answers neat.", lambda prompt: wrong_name, attempts=2)
    code = main(
        [
            "traits",
            "new",
            "tidy",
            "--description",
            "d",
            "--out",
            str(tmp_path / "t.json"),
            "--generator",
            "openai:w@http://127.0.0.1:9/v1",
            "--attempts",
            "1",
        ]
    )
    assert code == 2 and not (tmp_path / "t.json").exists()
