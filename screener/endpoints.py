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
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from screener.errors import ConfigError, EndpointError, ScreenerError

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

    def request(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET `path` (POST `body` when given) under the base URL; the parsed JSON reply.

        Each failure is one line that says what happened: the server is not reachable, it did
        not answer in time, or it refused the request (with the start of its own message)."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.base_url.rstrip("/") + path,
            data=None if body is None else json.dumps(body).encode(),
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            text = re.sub(r"<[^>]*>", " ", exc.read().decode("utf-8", "replace"))  # HTML pages
            detail = " ".join(text.split())[:300]
            raise EndpointError(f"{self.name} refused {path}: HTTP {exc.code}: {detail}") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise EndpointError(self._late(path)) from exc
            raise EndpointError(
                f"{self.name} is not reachable ({exc.reason}): is the server running at "
                f"{self.base_url}?"
            ) from exc
        except TimeoutError as exc:
            raise EndpointError(self._late(path)) from exc
        except json.JSONDecodeError as exc:
            raise EndpointError(f"{self.name} answered {path} with something not JSON") from exc

    def _late(self, path: str) -> str:
        return f"{self.name} did not answer {path} within {self.timeout:g} s"

    def complete(self, prompt: str, **params: Any) -> Any:
        """POST one user message; return the parsed JSON reply."""
        messages = [{"role": "user", "content": prompt}]
        return self.request(
            "/chat/completions", {"model": self.model, "messages": messages, **params}
        )

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


def openai_endpoint(
    model: str, base_url: str, timeout: float = OpenAIEndpoint.timeout
) -> OpenAIEndpoint:
    """An endpoint with the API key from $SCREENER_API_KEY, if set."""
    return OpenAIEndpoint(model, base_url, os.environ.get(API_KEY_ENV), timeout)
