"""Find the decoder blocks and final norm of any supported causal language model.

Layer numbers follow docs/method.md: layer `l` is `hidden_states[l]` of transformers'
`output_hidden_states`, so `0` is the embedding output, `1..L-1` are the outputs of decoder
blocks `0..L-2`, and `L` is the last block's output after the model's final norm (transformers
reports the normed state as the last hidden state). Negative numbers count from the end
(`-1` is `L`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from screener.errors import ConfigError, ModelLoadError

LAYER_CONVENTION = "row l = hidden_states[l]; 0 = embeddings, L = last block after final norm"

# Paths from the causal-LM wrapper to its list of decoder blocks, by architecture family.
_BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma, Phi3, OLMo
    "model.language_model.layers",  # multimodal wrappers (Gemma3, Llama4)
    "transformer.h",  # GPT-2, GPT-J, Bloom, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)
_FINAL_NORM_NAMES = ("norm", "ln_f", "norm_f", "final_layer_norm", "final_layernorm", "final_norm")


@dataclass(frozen=True)
class DecoderLayout:
    """Where the residual stream of a model can be read."""

    blocks: nn.ModuleList
    final_norm: nn.Module | None
    # False when the model reports the last hidden state before its final norm.
    last_state_is_normed: bool

    @property
    def num_layers(self) -> int:
        """L: the number of decoder blocks (hidden-state rows are 0..L)."""
        return len(self.blocks)


def _get_path(root: nn.Module, path: str) -> nn.Module | None:
    module: nn.Module | None = root
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def find_layout(model: nn.Module) -> DecoderLayout:
    """Locate the decoder blocks and the final norm of `model` (or of the model inside a peft
    wrapper, whose `get_base_model` returns it with the adapters in place)."""
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model):
        model = get_base_model()
    for path in _BLOCK_PATHS:
        blocks = _get_path(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            parent = _get_path(model, path.rsplit(".", 1)[0])
            break
    else:
        raise ModelLoadError(
            f"cannot find the decoder blocks of {type(model).__name__}: screener supports models "
            f"whose blocks live at one of {', '.join(_BLOCK_PATHS)}"
        )
    final_norm = next(
        (
            getattr(parent, n)
            for n in _FINAL_NORM_NAMES
            if isinstance(getattr(parent, n, None), nn.Module)
        ),
        None,
    )
    config = getattr(model, "config", None)
    tie_last = getattr(config, "tie_last_hidden_states", None)
    return DecoderLayout(
        blocks=blocks,
        final_norm=final_norm,
        last_state_is_normed=final_norm is not None and tie_last is not False,
    )


def resolve_layers(layers: list[int] | tuple[int, ...], num_layers: int) -> list[int]:
    """Turn requested layer numbers (negative allowed) into sorted unique numbers in 0..L."""
    resolved = set()
    for layer in layers:
        index = layer + num_layers + 1 if layer < 0 else layer
        if not 0 <= index <= num_layers:
            raise ConfigError(
                f"layer {layer} does not exist: this model has hidden states 0..{num_layers} "
                f"(or -{num_layers + 1}..-1 counting from the end)"
            )
        resolved.add(index)
    if not resolved:
        raise ConfigError("no layers requested: pass at least one layer number")
    return sorted(resolved)


@dataclass(frozen=True)
class Tap:
    """Where hidden state `layer` can be read or changed: the output of `module`, or with
    `pre` its first input (the embedding output enters the first block that way)."""

    layer: int
    module: nn.Module
    pre: bool


def tap(layout: DecoderLayout, layer: int) -> Tap:
    """The module position that carries `hidden_states[layer]` (layer in 0..L)."""
    if layer == 0:
        return Tap(layer, layout.blocks[0], pre=True)
    if layer == layout.num_layers and layout.last_state_is_normed and layout.final_norm is not None:
        return Tap(layer, layout.final_norm, pre=False)
    return Tap(layer, layout.blocks[layer - 1], pre=False)
