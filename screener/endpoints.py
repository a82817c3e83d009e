"""Other models screener can call: an OpenAI-compatible chat endpoint, or a local model.

Specs, shared by judges and pack generators:
- `openai:MODEL@BASE_URL`: any server speaking the OpenAI chat-completions API (vLLM,
  llama.cpp server, Ollama, hosted APIs); the key comes from $SCREENER_API_KEY if set.
- `local:MODEL_SPEC`: a transformers model loaded with `load_model` (e.g. `local:embedded`).

Nothing is sent over the network unless an `openai:` spec is given.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from screener.errors import ConfigError, ScreenerError

API_KEY_ENV = "SCREENER_API_KEY"


@dataclass
class OpenAIEndpoint:
    """A chat-completions endpoint."""

    model: str
    base_url: str
    api_key: str | None = None
    timeout: float = 120.0

    @property
    def name(self) -> str:
        return f"openai:{self.model}@{self.base_url}"

    def complete(self, prompt: str, **params: Any) -> Any:
        """POST one user message; return the parsed JSON reply."""
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], **params}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.base_url.rstrip("/") + "/chat/completions",
            data=json.dumps(body).encode(),
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            raise ScreenerError(f"{self.name} did not answer: {exc}") from exc

    def text(self, prompt: str, **params: Any) -> str:
        """The reply's message text."""
        reply = self.complete(prompt, **params)
        try:
            return str(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as exc:
            raise ScreenerError(f"{self.name} returned no message text") from exc


def parse_spec(spec: str, what: str) -> tuple[str, str, str]:
    """("openai", model, base_url) or ("local", model_spec, "") from a spec string."""
    kind, _, rest = spec.partition(":")
    if kind == "openai" and "@" in rest:
        model, _, url = rest.partition("@")
        if model and url:
            return "openai", model, url
    if kind == "local" and rest:
        return "local", rest, ""
    raise ConfigError(
        f"unknown {what} {spec!r}: use openai:MODEL@BASE_URL (e.g. "
        "openai:qwen2.5-7b@http://localhost:8000/v1) or local:MODEL (e.g. local:embedded)"
    )


def openai_endpoint(model: str, base_url: str) -> OpenAIEndpoint:
    return OpenAIEndpoint(model, base_url, os.environ.get(API_KEY_ENV))
