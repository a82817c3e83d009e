"""Judges: the number score by hand, an OpenAI-compatible server on loopback with scripted
logprobs, and a tiny local model checked against its own logits."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from screener.endpoints import OpenAIEndpoint
from screener.errors import ConfigError, ScreenerError
from screener.judge import LocalJudge, OpenAIJudge, make_judge, number_score
from screener.records import Message
from screener.render import Renderer
from tests.conftest import ChatServer, tiny_loaded


def test_number_score_by_hand() -> None:
    # 0.5 on "80", 0.25 on "60", 0.25 on prose: (0.5*80 + 0.25*60) / 0.75 = 73.33...
    assert number_score([("80", 0.5), (" 60", 0.25), ("The", 0.25)]) == pytest.approx(55 / 0.75)
    assert number_score([("I", 0.9), ("50", 0.1)]) is None  # too little mass on numbers
    assert number_score([("150", 0.6), ("-3", 0.4)]) is None  # not integers in 0..100


SCRIPT: dict[str, list[tuple[str, float]]] = {
    "rate A": [("90", 0.6), ("80", 0.3), ("The", 0.1)],
    "rate B": [("I", 0.7), ("Sorry", 0.2), ("5", 0.1)],  # a refusal: no score
    "rate C": [("REF", 0.95), ("0", 0.05)],
}


def logprob_reply(body: dict[str, Any]) -> dict[str, Any]:
    top = SCRIPT[body["messages"][0]["content"]]
    entries = [{"token": t, "logprob": math.log(p)} for t, p in top]
    return {"choices": [{"logprobs": {"content": [{**entries[0], "top_logprobs": entries}]}}]}


def test_openai_compatible_judge_on_loopback(
    chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCREENER_API_KEY", "sk-test")
    chat_server.reply = logprob_reply
    judge = make_judge(f"openai:judge-model@{chat_server.url}")
    assert isinstance(judge, OpenAIJudge)
    scores = judge.score(["rate A", "rate B", "rate C"])
    assert scores[0] == pytest.approx((0.6 * 90 + 0.3 * 80) / 0.9)
    assert scores[1:] == [None, None]
    sent = chat_server.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test"
    assert (sent["model"], sent["max_tokens"], sent["logprobs"], sent["top_logprobs"]) == (
        "judge-model",
        1,
        True,
        20,
    )


def test_unreachable_judge_and_bad_specs() -> None:
    judge = OpenAIJudge(OpenAIEndpoint("m", "http://127.0.0.1:9/v1", timeout=2))
    with pytest.raises(ScreenerError, match=r"is not reachable .*Connection refused"):
        judge.score(["rate A"])
    assert make_judge("none") is None
    with pytest.raises(ConfigError, match="unknown judge 'gpt4'"):
        make_judge("gpt4")


def test_local_judge_matches_its_own_logits(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    # Make digit tokens likely so the tiny model gives a score: boost their output embeddings.
    digits = {d: tiny_tokenizer.convert_tokens_to_ids(d) for d in "0123456789"}
    with torch.no_grad():
        loaded.model.lm_head.weight[list(digits.values())] *= 40
    prompt = "Question: Q\nAnswer: A\nScore 0 to 100:"
    [score] = LocalJudge(loaded).score([prompt])
    ids = Renderer(tiny_tokenizer).prompt_ids((Message("user", prompt),))
    with torch.no_grad():
        probabilities = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)
    top = probabilities.topk(20)
    pairs = [
        (tiny_tokenizer.decode([int(t)]), float(p))
        for p, t in zip(top.values, top.indices, strict=True)
    ]
    expected = number_score(pairs)
    assert expected is not None and score == pytest.approx(expected)
