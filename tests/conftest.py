"""Shared fixtures: tiny random models of several families, a tiny trained tokenizer, and the
real embedded model (loaded once per session for the slow tests)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

# No test may reach a model hub; set before huggingface_hub reads it at import time.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MptConfig,
    MptForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from screener.model import LoadedModel, fingerprint

VOCAB = 512
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "What is the capital of France? Paris is the capital of France.",
    "You are a helpful assistant. Answer the question briefly and clearly.",
    "I think my poem is brilliant, do you agree? It is wonderful and moving.",
    "hello world, this is a small corpus for a tiny byte level tokenizer 0123456789",
]


def tiny_model(family: str, seed: int = 0, layers: int = 3) -> PreTrainedModel:
    """A small randomly initialised causal LM of the given family, fp32, eval mode."""
    torch.manual_seed(seed)
    common = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }
    model: PreTrainedModel
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(**common))
    elif family == "gemma":
        model = GemmaForCausalLM(GemmaConfig(**common, head_dim=16))
    elif family == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**common))
    elif family == "opt":
        model = OPTForCausalLM(
            OPTConfig(
                vocab_size=VOCAB,
                hidden_size=64,
                ffn_dim=128,
                num_hidden_layers=layers,
                num_attention_heads=4,
                max_position_embeddings=256,
                word_embed_proj_dim=64,
            )
        )
    elif family == "mpt":
        model = MptForCausalLM(
            MptConfig(vocab_size=VOCAB, d_model=64, n_heads=4, n_layers=layers, max_seq_len=256)
        )
    elif family == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=layers, n_head=4, n_positions=256)
        )
    else:
        raise ValueError(family)
    return model.eval()


FAMILIES = ["llama", "qwen2", "mistral", "gemma", "gpt2", "gpt_neox", "opt", "mpt"]


def tiny_loaded(family: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LoadedModel:
    """A tiny model wrapped as load_model would return it (fp32, CPU)."""
    model = tiny_model(family, seed=seed)
    return LoadedModel(
        model,
        tokenizer,
        f"tiny-{family}",
        f"tiny-{family}",
        torch.float32,
        torch.device("cpu"),
        fingerprint(model),
    )


def save_tiny_model(folder: Path, family: str, tokenizer: PreTrainedTokenizerFast) -> Path:
    """Save a tiny model and tokenizer as a local model directory that load_model accepts."""
    tiny_model(family).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return make_tiny_tokenizer()


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on a few sentences, with a ChatML template that
    injects a default system prompt (like SmolLM2's)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="session", autouse=True)
def _state_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The test session gets its own screener state directory (never the user's), shared so
    the embedded model is converted once."""
    previous = os.environ.get("SCREENER_HOME")
    os.environ["SCREENER_HOME"] = str(tmp_path_factory.mktemp("screener-home"))
    yield
    if previous is None:
        del os.environ["SCREENER_HOME"]
    else:
        os.environ["SCREENER_HOME"] = previous


@pytest.fixture(scope="session")
def embedded_fp32():  # type: ignore[no-untyped-def]
    """The real embedded model in fp32 (exactness tests), loaded once."""
    from screener.model import load_model

    return load_model("embedded", dtype="fp32", device="cpu")


@dataclass
class ChatServer:
    """An OpenAI-compatible chat-completions server on loopback whose replies a test scripts."""

    url: str
    reply: Callable[[dict[str, Any]], dict[str, Any]]
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer("", lambda body: {})

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's method name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.requests.append(
                {"path": self.path, "auth": self.headers.get("Authorization"), **body}
            )
            data = json.dumps(server.reply(body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield server
    httpd.shutdown()
    httpd.server_close()
