"""Abstract component names -> module paths, per model family.

Both papers ablate *where* to fine-tune: FT-UKE compares q/k/v/o/gate/up/down and picks ``down``;
LocFT-BF locates a single later-layer ``down_proj``. A config names components abstractly
(``components=("down",)``, ``layers=(20,)``) and this table turns them into module paths for each
architecture, in the spirit of pyvene's per-family mappings and ROME's ``rewrite_module_tmp``.

For the locate-and-edit methods (`methods/locate/`) ``down`` is the MLP *output* matrix W (Llama,
Qwen2, Mistral, Gemma: ``mlp.down_proj``; GPT-2: ``mlp.c_proj``) and its input, the key, is what the
MLP's *input* matrices (``gate``/``up``; GPT-2: ``up`` = ``mlp.c_fc``) produce after the activation.

GPT-2 fuses q, k and v into one ``attn.c_attn`` matrix (a Conv1D of shape ``[d, 3d]``). Asking for
``q`` there selects only its column slice: the edit trains the whole tensor but the other slices
are copied back after every step, so they stay bitwise untouched.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .errors import ConfigError

COMPONENTS = ("q", "k", "v", "o", "gate", "up", "down", "mlp", "attn", "block")

_LLAMA_LIKE = {
    "layers": "model.layers",
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
    "mlp": "mlp", "attn": "self_attn", "block": "",
}
_GPT2 = {
    "layers": "transformer.h",
    # q/k/v live in one fused Conv1D; the slice (index of the third along the output dim) is kept.
    "q": ("attn.c_attn", 0), "k": ("attn.c_attn", 1), "v": ("attn.c_attn", 2),
    "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj",
    "mlp": "mlp", "attn": "attn", "block": "",
}

# model_type (config.model_type) -> table. Add a row here to support a new family.
FAMILIES: dict[str, dict] = {
    **{t: _LLAMA_LIKE for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                "olmo", "olmo2", "phi3", "granite")},
    "gemma3": {**_LLAMA_LIKE, "layers": "model.language_model.layers"},
    "gpt2": _GPT2,
}


@dataclass(frozen=True)
class Target:
    """One module selected for editing."""

    name: str  # full module path, e.g. "model.layers.20.mlp.down_proj"
    layer: int
    component: str  # the abstract name it came from
    fused_slice: int | None = None  # GPT-2 c_attn: which third of the output columns (q=0, k=1, v=2)


def family_table(model: nn.Module) -> dict:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        raise ConfigError(
            f"model_type {model_type!r} has no component table; known families: {', '.join(sorted(FAMILIES))}. "
            "Add a row to FAMILIES in workbench/components.py."
        )
    return FAMILIES[model_type]


def num_layers(model: nn.Module) -> int:
    return len(model.get_submodule(family_table(model)["layers"]))


def resolve(model: nn.Module, components, layers) -> list[Target]:
    """Module paths for every (component, layer) pair.

    Args:
        components: abstract names from `COMPONENTS`.
        layers: layer indices; negative ones count from the end (-1 = last layer); or "all".
    Raises:
        ConfigError: an unknown component, one the family lacks (GPT-2 has no ``gate``), or a layer
            out of range.
    """
    table = family_table(model)
    n = num_layers(model)
    if layers == "all":
        layers = range(n)
    targets = []
    for comp in components:
        if comp not in COMPONENTS:
            raise ConfigError.bad_choice("components", comp, COMPONENTS)
        if comp not in table:
            have = [c for c in COMPONENTS if c in table]
            raise ConfigError(f"component {comp!r} does not exist in {model.config.model_type}; it has: {', '.join(have)}")
        for layer in layers:
            idx = layer + n if layer < 0 else layer
            if not 0 <= idx < n:
                raise ConfigError(f"layer {layer} is out of range for a {n}-layer model (valid: 0..{n - 1} or -{n}..-1)")
            path, part = (table[comp], None) if isinstance(table[comp], str) else table[comp]
            name = f"{table['layers']}.{idx}" + (f".{path}" if path else "")
            targets.append(Target(name=name, layer=idx, component=comp, fused_slice=part))
    return targets
