"""Base answers from a serving engine: any server speaking the OpenAI completions API.

Users who already serve the target model with vLLM, SGLang, TGI, llama.cpp's server or
`transformers serve` can let that server write the base answers, many requests in flight at
once. Each prompt is rendered here with the model's own chat template and sent as raw text to
`/completions`, so the server answers exactly the prompt the in-process generator would see.
ΔP is meaningful only when the server serves the same weights as `--model`: the activations
are still taken in-process, from `--model`.

    server = AnswerServer("http://localhost:8000/v1", "qwen2.5-7b-instruct")
    texts = served_responses(server, ["<|im_start|>user\\nHi<|im_end|>\\n..."], settings)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

from screener.endpoints import OpenAIEndpoint, openai_endpoint
from screener.errors import ConfigError, EndpointError
from screener.generate import GenerationSettings

DEFAULT_CONCURRENCY = 16
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class AnswerServer:
    """Where base answers come from: `url` (the API root, e.g. http://host:8000/v1) and the
    model name the server knows the target model by; `concurrency` requests in flight, each
    given `timeout_s` seconds."""

    url: str
    model: str
    concurrency: int = DEFAULT_CONCURRENCY
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(
                f"--generator-url {self.url!r} should be an http(s) URL such as "
                "http://localhost:8000/v1"
            )
        if not self.model:
            raise ConfigError("--generator-model is needed: the name the server serves")
        if self.concurrency < 1 or self.timeout_s <= 0:
            raise ConfigError("the server's concurrency and timeout must be positive")

    def endpoint(self) -> OpenAIEndpoint:
        return openai_endpoint(self.model, self.url, self.timeout_s)


def served_models(server: AnswerServer) -> list[str]:
    """The model names the server lists at `/models` (empty when it lists none)."""
    reply = server.endpoint().request("/models")
    data = reply.get("data") if isinstance(reply, dict) else None
    return [str(m.get("id")) for m in data or [] if isinstance(m, dict)]


def check_server(server: AnswerServer) -> None:
    """Fail now, before any model loads, when the server is down or does not serve the model."""
    names = served_models(server)
    if names and server.model not in names:
        raise EndpointError(
            f"the server at {server.url} does not serve {server.model!r} (it lists "
            f"{', '.join(names[:8])}): check --generator-model"
        )


def _answer(endpoint: OpenAIEndpoint, text: str, settings: GenerationSettings) -> str:
    body = {
        "model": endpoint.model,
        "prompt": text,
        "max_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "seed": settings.seed,
    }
    reply = endpoint.request("/completions", body)
    try:
        return str(reply["choices"][0]["text"]).strip()
    except (KeyError, IndexError, TypeError) as exc:
        raise EndpointError(
            f"{endpoint.name} answered /completions without choices[0].text"
        ) from exc


def served_responses(
    server: AnswerServer,
    prompt_texts: Sequence[str],
    settings: GenerationSettings,
    *,
    on_answer: Callable[[int, str], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """The server's answer to each rendered prompt, in prompt order.

    on_answer(i, text) is called as each answer arrives, so a caller can keep what is done if
    a later request fails; progress(n) with the number of answers so far. The first failure
    stops the requests not yet sent and is raised."""
    endpoint = server.endpoint()
    answers: list[str | None] = [None] * len(prompt_texts)
    report_every = max(1, len(prompt_texts) // 20)  # about 20 progress lines per call
    finished = 0
    with ThreadPoolExecutor(max_workers=server.concurrency) as pool:
        pending = {
            pool.submit(_answer, endpoint, text, settings): index
            for index, text in enumerate(prompt_texts)
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            failure: BaseException | None = None
            for future in done:  # keep every answer that arrived before raising a failure
                index = pending.pop(future)
                if future.exception() is not None:
                    failure = failure or future.exception()
                    continue
                answers[index] = future.result()
                if on_answer is not None:
                    on_answer(index, future.result())
                finished += 1
                if progress is not None and (
                    finished % report_every == 0 or finished == len(prompt_texts)
                ):
                    progress(finished)
            if failure is not None:
                for other in pending:
                    other.cancel()
                raise failure
    return [a or "" for a in answers]
