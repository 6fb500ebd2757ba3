"""Memory guards: estimate what a load or an edit needs before doing it, and refuse with advice.

A sweep left running overnight should stop in its first second with a reason, not an hour later at
the hands of the OOM killer. Two checks, both against the memory free *now* on the target device
(``torch.cuda.mem_get_info`` on a GPU, ``MemAvailable`` of /proc/meminfo on CPU):

* before a load: parameters x bytes per element, counted from the model's config on the meta
  device (nothing is allocated);
* before an edit, for the trainable part: its original copy (for `revert`), its gradient and the
  optimiser's state (Adam keeps two moments); for backward, the activations of every layer from the
  lowest edited one up, for one micro-batch of the longest examples; the labelled positions' logits;
  and the prefix cache (its size is passed in: this module takes numbers, not caches).

The activation term is a deliberate over-estimate per token and layer (``12 d + 5 i + heads * T``
values: the inputs saved by the norms, q/k/v/o, the attention weights and the gated MLP), so a
refusal is a real risk, not a rounding error. Set ``WORKBENCH_NO_MEMORY_GUARD=1`` to skip the checks.
"""
from __future__ import annotations

import os
from collections import Counter

import torch

from . import files
from .errors import ResourceError

HEADROOM = 0.9  # refuse when the estimate exceeds this share of the free memory


def guard_disabled() -> bool:
    return files.flag("WORKBENCH_NO_MEMORY_GUARD")


def available_bytes(device) -> int:
    """Memory free now on `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        # PyTorch's caching allocator keeps freed blocks reserved: the driver counts them as used, but
        # they are ours to reuse (a notebook's earlier edit, a sweep's previous run)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def check(need: int, device, what: str, advice: str) -> None:
    """Raise `ResourceError` when `need` bytes will not fit in what `device` has free."""
    if guard_disabled() or torch.device(device).type == "meta":  # meta: shapes only, nothing is allocated
        return
    free = available_bytes(device)
    if need > HEADROOM * free:
        raise ResourceError(f"{what} needs about {_gib(need)} but {torch.device(device)} has {_gib(free)} free. "
                            f"{advice} (Set WORKBENCH_NO_MEMORY_GUARD=1 to try anyway.)")


def parameter_count(config) -> int:
    """Parameters of the causal LM `config` describes, counted without allocating them."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def check_load(config, dtype: torch.dtype, device) -> int:
    """Refuse to load a model whose weights cannot fit; returns the estimate in bytes."""
    need = parameter_count(config) * dtype.itemsize
    check(need, device, f"loading {getattr(config, '_name_or_path', '') or config.model_type}",
          "Use a smaller model, dtype='bfloat16', or a GPU with more memory.")
    return need


def edit_bytes(model, cfg, examples, n_trainable: int, lowest_layer: int, n_layers: int, prefix_bytes: int = 0) -> dict:
    """Estimated bytes of an edit beyond the loaded weights, by part (`prefix_bytes`: what the prefix
    cache will hold, 0 when it does not run)."""
    item = model.get_input_embeddings().weight.dtype.itemsize
    c = model.config.get_text_config()  # multimodal wrappers (Gemma 3) keep the LM in text_config
    d, inter = c.hidden_size, getattr(c, "intermediate_size", None) or 4 * c.hidden_size
    heads = c.num_attention_heads
    width = max(len(e.input_ids) for e in examples)
    labelled = max(sum(1 for x in e.labels if x >= 0) for e in examples) + 1
    tokens = cfg.micro * width
    moments = 0 if cfg.optimizer == "sgd" else 2
    return {
        # original copy (model dtype) + float32 weight, gradient and optimiser state (trained weights are float32)
        "trainable": n_trainable * (item + 4 * (1 + moments)),
        "activations": tokens * (n_layers - lowest_layer) * (12 * d + 5 * inter + heads * width) * item,
        "logits": cfg.micro * labelled * c.vocab_size * 4 * 3,  # fp32 logits, softmax and their gradient
        "prefix_cache": prefix_bytes,
    }


def check_edit(model, cfg, examples, n_trainable: int, lowest_layer: int, n_layers: int, prefix_bytes: int = 0,
               layer_devices: list | None = None, head_device=None) -> dict:
    """Refuse an edit that cannot fit; returns the estimate by part.

    On one device everything is checked against it (where the model takes its inputs). On a model
    spread over devices (`layer_devices`: the device of each decoder layer, `head_device`: the
    logits'), each device is budgeted for its share: the trained weights and the prefix cache on
    the lowest edited layer's device, the activations on the devices of the layers they pass
    through (layers >= `lowest_layer`), the logits on the head's."""
    parts = edit_bytes(model, cfg, examples, n_trainable, lowest_layer, n_layers, prefix_bytes)
    detail = ", ".join(f"{k} {_gib(v)}" for k, v in parts.items())
    advice = ("Lower micro_batch_size (gradients still accumulate to batch_size) or max_length, edit fewer "
              "layers or components, use method='lora', or turn prefix_cache off.")
    if not layer_devices or len({str(d) for d in layer_devices}) == 1:
        device = layer_devices[0] if layer_devices else model.get_input_embeddings().weight.device
        check(sum(parts.values()), device, f"this edit ({detail})", advice)
        return parts
    need: Counter = Counter()
    need[str(layer_devices[lowest_layer])] += parts["trainable"] + parts["prefix_cache"]
    above = layer_devices[lowest_layer:]
    for dev in above:
        need[str(dev)] += parts["activations"] // len(above)
    need[str(head_device if head_device is not None else layer_devices[-1])] += parts["logits"]
    for dev, n in need.items():
        check(n, dev, f"this edit's share on {dev} ({detail})", advice)
    return {**parts, "by_device": need}
