"""Base answers from a real server: `transformers serve` started by the test on a saved tiny
model, against the in-process generator; and the failures a user meets (server down, wrong
model name, no answer in time), each one clear line, with answers already written kept."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from screener.answers import served_key, write_answers
from screener.errors import EndpointError
from screener.generate import GenerationSettings
from screener.model import load_model
from screener.options import GenerationOptions, ScoringOptions
from screener.records import Message
from screener.render import Renderer
from screener.screening.scoring import store_key
from screener.served import AnswerServer, check_server
from screener.store import RunStore, token_hash
from tests.conftest import save_tiny_model
from tests.test_generate import PROMPTS

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
SERVE_START_S = 90


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def served_tiny(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> Iterator[tuple[Path, str]]:
    """A tiny model saved to disk and `transformers serve` serving it: (model dir, API root)."""
    folder = save_tiny_model(tmp_path_factory.mktemp("served") / "tiny", "llama", tiny_tokenizer)
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "transformers"),
        "serve",
        str(folder),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--log-level",
        "warning",
    ]
    assert shutil.which(command[0]), "transformers' CLI is not installed beside python"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = folder.parent / "serve.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError as exc:
                if server.poll() is not None or time.monotonic() > deadline:
                    output = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"transformers serve did not start:\n{output}") from exc
                time.sleep(0.5)
        yield folder, f"{url}/v1"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_served_answers_equal_the_in_process_answers(served_tiny: tuple[Path, str]) -> None:
    folder, url = served_tiny
    loaded = load_model(str(folder), dtype="fp32", device="cpu")
    settings = GenerationSettings(max_new_tokens=8)
    here = write_answers(loaded, PROMPTS, settings)
    server = AnswerServer(url, str(folder), concurrency=3)
    check_server(server)
    arrived: dict[int, str] = {}
    there = write_answers(loaded, PROMPTS, settings, server=server, on_answer=arrived.__setitem__)
    assert there == here and any(here)
    assert arrived == dict(enumerate(here))


def test_screen_with_a_server_keys_and_records_its_answers(
    served_tiny: tuple[Path, str], tmp_path: Path
) -> None:
    from screener.screening import FlagRule, screen
    from tests.test_screen import rows, tiny_vectors, write_jsonl

    folder, url = served_tiny
    loaded = load_model(str(folder), dtype="fp32", device="cpu")
    records = rows()[:6]
    data = write_jsonl(tmp_path / "data.jsonl", records)
    store = tmp_path / "store.duckdb"
    scoring = ScoringOptions(
        vectors=tiny_vectors(loaded, tmp_path / "v.safetensors"), calibration=None, store=store
    )
    common = {"model": loaded, "scoring": scoring, "rule": FlagRule({}, 90.0), "label": False}
    server = AnswerServer(url, str(folder))
    here = screen(data, generation=GenerationOptions(8), **common)
    there = screen(
        data, generation=GenerationOptions(8, server=server), out=tmp_path / "run", **common
    )
    assert there.scores["risk"].to_list() == pytest.approx(here.scores["risk"].to_list())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["generation"]["server"] == f"{folder}@{url}"
    # the server's answers are stored under their own key, beside the in-process ones
    renderer = Renderer(loaded.tokenizer)
    prompts = [(Message("user", r["messages"][0]["content"]),) for r in records]
    keys = [token_hash(renderer.prompt_ids(p)) for p in prompts]
    settings = json.dumps(GenerationSettings(8).as_dict(), sort_keys=True)
    expected = write_answers(loaded, prompts, GenerationSettings(8))
    with RunStore.open(store) as opened:
        for key in (served_key(loaded, server), store_key(loaded)):
            found = opened.get_base_responses(key, keys, settings)
            assert [found[k] for k in keys] == expected


def test_a_server_that_is_down_is_one_clear_line() -> None:
    server = AnswerServer(f"http://127.0.0.1:{free_port()}/v1", "m", timeout_s=5)
    with pytest.raises(EndpointError, match=r"is not reachable .*is the server running at"):
        check_server(server)


def test_a_wrong_model_name_says_what_the_server_serves(served_tiny: tuple[Path, str]) -> None:
    folder, url = served_tiny
    with pytest.raises(EndpointError, match=f"does not serve 'tiny-typo' \\(it lists {folder}\\)"):
        check_server(AnswerServer(url, "tiny-typo"))


def test_a_late_answer_stops_the_run_and_keeps_the_answers_already_written(
    served_tiny: tuple[Path, str], tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """A proxy in front of the real server holds back the answer to one prompt past the
    timeout: the error names the timeout, and the other prompts' answers arrived."""
    folder, url = served_tiny
    slow_word = "brilliant"
    proxy = _DelayingProxy(url, slow_word, delay_s=4)
    loaded = load_model(str(folder), dtype="fp32", device="cpu")
    server = AnswerServer(proxy.url, str(folder), concurrency=1, timeout_s=1)
    arrived: dict[int, str] = {}
    with proxy, pytest.raises(EndpointError, match="did not answer /completions within 1 s"):
        write_answers(
            loaded,
            PROMPTS,
            GenerationSettings(max_new_tokens=4),
            server=server,
            on_answer=arrived.__setitem__,
        )
    slow = next(i for i, p in enumerate(PROMPTS) if slow_word in p[-1].content)
    assert slow not in arrived and len(arrived) >= 1


def test_a_screen_that_timed_out_resumes_with_only_the_missing_answers(
    served_tiny: tuple[Path, str], tmp_path: Path
) -> None:
    """The answers that arrived before a timeout are in the store; the rerun asks the server
    only for the rest, and scores as a run that never failed."""
    from screener.screening import FlagRule, screen
    from tests.test_screen import QUESTIONS, rows, tiny_vectors, write_jsonl

    folder, url = served_tiny
    loaded = load_model(str(folder), dtype="fp32", device="cpu")
    data = write_jsonl(tmp_path / "data.jsonl", rows()[:6])
    slow_word = QUESTIONS[4].split()[-1]  # a word of the fifth row's prompt only
    assert sum(slow_word in q for q in QUESTIONS[:6]) == 1
    scoring = ScoringOptions(
        vectors=tiny_vectors(loaded, tmp_path / "v.safetensors"),
        calibration=None,
        store=tmp_path / "store.duckdb",
    )
    common = {"model": loaded, "scoring": scoring, "rule": FlagRule({}, 90.0), "label": False}
    with _DelayingProxy(url, slow_word, delay_s=4) as proxy:
        late = AnswerServer(proxy.url, str(folder), concurrency=1, timeout_s=1)
        with pytest.raises(EndpointError, match="did not answer"):
            screen(data, generation=GenerationOptions(8, server=late), **common)
    renderer = Renderer(loaded.tokenizer)
    keys = [token_hash(renderer.prompt_ids((Message("user", q),))) for q in QUESTIONS[:6]]
    settings = json.dumps(GenerationSettings(8).as_dict(), sort_keys=True)
    with RunStore.open(scoring.store) as opened:
        kept = opened.get_base_responses(served_key(loaded, late), keys, settings)
    assert len(kept) == 4 and keys[4] not in kept  # the four answers before the late one
    with _DelayingProxy(url, "no such word", delay_s=0) as proxy:
        server = AnswerServer(proxy.url, str(folder))
        resumed = screen(data, generation=GenerationOptions(8, server=server), **common)
        assert proxy.completions == 2  # the late one and the one after it
    fresh = screen(
        data,
        generation=GenerationOptions(8, server=AnswerServer(url, str(folder))),
        **{**common, "scoring": dataclasses.replace(scoring, store=":memory:")},
    )
    assert resumed.scores["risk"].to_list() == fresh.scores["risk"].to_list()


class _DelayingProxy:
    """Forwards requests to `target`, waiting `delay_s` first when the body holds `word`."""

    def __init__(self, target: str, word: str, delay_s: float) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self
        self.completions = 0  # /completions requests seen

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.completions += self.path.endswith("/completions")
                if word.encode() in body:
                    time.sleep(delay_s)
                request = urllib.request.Request(
                    target + self.path.removeprefix("/v1"),
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=30) as reply:
                    answer = reply.read()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:  # the client gave up waiting
                    pass

            def do_GET(self) -> None:
                with urllib.request.urlopen(target + self.path.removeprefix("/v1")) as reply:
                    answer = reply.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _DelayingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_server_flags_are_checked() -> None:
    with pytest.raises(Exception, match="should be an http"):
        AnswerServer("localhost:8000", "m")
    with pytest.raises(Exception, match="--generation-dtype applies to answers written here"):
        GenerationOptions(server=AnswerServer("http://h/v1", "m"), dtype="fp32")
