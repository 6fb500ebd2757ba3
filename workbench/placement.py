"""Where a model's weights live: one device, or whole decoder layers spread over several.

An edit trains one matrix (or a few), so a model too big for one GPU needs no FSDP or DeepSpeed:
it needs its *frozen* layers put somewhere, and the edited layer on a device with room for the
edit. accelerate does the moving (`dispatch_model`: a hook on each placed module moves activations
to its device and, for modules offloaded to ``"cpu"`` behind a GPU or to ``"disk"``, loads their
weights just for their forward). This module decides the placement and makes the rest of the
workbench indifferent to it:

* `plan` walks the model's modules in execution order (embedding, decoder layers, final norm, head)
  and fills the given devices in order, greedily, never splitting a decoder layer. The device that
  receives an edited layer keeps ``reserve`` bytes free for the edit (`resources.edit_bytes`:
  gradients, optimiser state, activations), and is never "cpu" behind a GPU nor "disk" (offloaded,
  its updates would be lost). With ``offload_below=True``, when the GPUs cannot hold everything, the
  decoder layers *below* the lowest edited one go to ``"cpu"`` (then ``"disk"``) first: with the
  prefix cache they run once per example, not once per step, so the fast devices are kept for the
  layers the edit trains through. The embedding always stays on a fast device (the inputs go there).
  accelerate's ``infer_auto_device_map`` balances memory but knows nothing about which layer trains.
* `load_shape` builds a model of a published architecture (Llama-3-8B, Qwen2.5-7B, Qwen2.5-72B,
  Mistral-7B) from a config we ship (``data/shapes/``) with *random* weights: for speed and memory
  measurements and placement plans without a download. Its ``name_or_path`` starts with ``random:``
  and the results store and the report refuse it as a result.
* `layer_devices`, `head_device` and `trainable_on_device` tell the memory guard and the edit where
  each part runs; `state_dict` reads a dispatched model's tensors, offloaded ones included, so hashes
  and `EditResult.revert` checks work on it.

EasyEdit's ``model_parallel`` passes ``device_map="auto"`` and its tracker collects "Expected all
tensors to be on the same device" reports (#39, #103, #196, #204, #383, #419, #516): our code never
asks a model for ``next(model.parameters()).device`` but for where it takes its inputs
(`models.input_device`) and lets accelerate's hooks move activations on.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from .components import family_table
from .errors import ConfigError
from .resources import check

SHAPES_DIR = Path(__file__).resolve().parents[1] / "data" / "shapes"
RANDOM_PREFIX = "random:"
SLOW = ("cpu", "disk")  # where offload_below puts the frozen bottom, in this order


def shapes() -> list[str]:
    """Names accepted by ``load("random:<name>")``."""
    return sorted(p.stem for p in SHAPES_DIR.glob("*.json"))


def shape_config(name: str):
    """The transformers config of a shipped architecture (``llama-3-8b``, ``qwen2.5-72b``, ...)."""
    from transformers import AutoConfig

    name = name.removeprefix(RANDOM_PREFIX)
    path = SHAPES_DIR / f"{name}.json"
    if not path.exists():
        raise ConfigError.bad_choice("random shape", name, shapes())
    raw = json.loads(path.read_text())
    raw.pop("_source", None)
    return AutoConfig.for_model(**raw)


def is_random(model_or_name) -> bool:
    """True for a model (or name) built by `load_shape`: its numbers measure speed, never editing."""
    name = model_or_name if isinstance(model_or_name, str) else getattr(model_or_name, "name_or_path", "")
    return str(name).startswith(RANDOM_PREFIX)


def load_shape(name: str, dtype: torch.dtype, device: str, seed: int = 0) -> nn.Module:
    """A model of the shipped architecture `name` with random weights, built directly on `device`
    (``"meta"``: no memory at all, for placement plans)."""
    from transformers import AutoModelForCausalLM

    config = shape_config(name)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.name_or_path = RANDOM_PREFIX + name.removeprefix(RANDOM_PREFIX)
    return model.eval()


# ----------------------------------------------------------------------------------- plans
def units(model: nn.Module) -> list[str]:
    """Module names that are placed whole, in execution order: every decoder layer is one unit,
    and so is every other child of the modules that contain the layer list."""
    layers = family_table(model)["layers"]
    out = []

    def walk(prefix: str, module: nn.Module):
        for child_name, child in module.named_children():
            full = f"{prefix}.{child_name}" if prefix else child_name
            if full == layers:
                out.extend(f"{full}.{i}" for i in range(len(child)))
            elif layers.startswith(full + "."):
                walk(full, child)
            else:
                out.append(full)

    walk("", model)
    return out


def unit_bytes(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, int]:
    """Bytes of every unit's parameters and buffers (at `dtype` for floating tensors, when given);
    a tensor shared by two units (tied embeddings) counts for the first."""
    seen, out = set(), {}
    for name in units(model):
        module, total = model.get_submodule(name), 0
        for t in list(module.parameters()) + list(module.buffers()):
            if id(t) in seen:
                continue
            seen.add(id(t))
            item = dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size()
            total += t.numel() * item
        out[name] = total
    return out


def bytes_of(value) -> int:
    """``"20GiB"``, ``"500MB"`` or a number of bytes, as bytes."""
    if isinstance(value, str):
        from accelerate.utils import convert_file_size_to_int

        return convert_file_size_to_int(value)
    return int(value)


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _budget(value) -> float:
    return float("inf") if value is None else bytes_of(value)


def plan(model: nn.Module, max_memory: dict, dtype: torch.dtype | None = None, edited_layers=(), reserve: int = 0,
         offload_below: bool = False) -> dict[str, int | str]:
    """A device map ``{unit: device}`` for `dispatch_model` / ``from_pretrained(device_map=...)``.

    Args:
        model: the model, usually on the meta device (only shapes are read).
        max_memory: ``{device: budget}`` in fill order, budgets as bytes or ``"20GiB"``; ``"disk"``
            has no limit. E.g. ``{0: "70GiB", 1: "70GiB", "cpu": "100GiB", "disk": None}``.
        dtype: the dtype the weights will be loaded in (default: as they are).
        edited_layers: decoder layer indices the edit trains.
        reserve: bytes the edited layers' device must keep free for the edit.
        offload_below: when the model does not fit on the GPUs, put the decoder layers below the lowest
            edited one on "cpu"/"disk" first (the embedding stays on a GPU).
    Raises:
        ConfigError: the model does not fit in `max_memory`, or an edited layer would land on "disk"
            (or on "cpu" when there are GPUs: offloaded there, its updates would be lost). Raised here,
            before anything is loaded.
    """
    if offload_below:
        # offloading the frozen bottom only pays when the fast devices cannot hold everything: layers
        # on "cpu" behind a GPU are copied to it at every forward (the prefix cache's first pass)
        try:
            whole = plan(model, max_memory, dtype, edited_layers, reserve, offload_below=False)
            if not set(whole.values()) & set(SLOW):
                return whole
        except ConfigError:
            pass
    sizes = unit_bytes(model, dtype)
    devices = list(max_memory)
    fast = [d for d in devices if d not in SLOW]
    left = {d: _budget(max_memory[d]) for d in devices}
    prefix = family_table(model)["layers"] + "."
    edited = {f"{prefix}{i}" for i in edited_layers}
    lowest = min(edited_layers) if edited_layers else None
    tied = getattr(model.config.get_text_config(), "tie_word_embeddings", False)
    out: dict[str, int | str] = {}
    cursor = 0

    def layer_of(unit: str) -> int | None:
        return int(unit[len(prefix):]) if unit.startswith(prefix) else None

    def place(unit: str, choices: list, extra: int = 0):
        for d in choices:
            if sizes[unit] + extra <= left[d]:
                left[d] -= sizes[unit] + extra
                out[unit] = d
                return devices.index(d)
        raise ConfigError(f"{unit} ({_size(sizes[unit])}{f' + {_size(extra)} for the edit' if extra else ''})"
                          f" fits on none of {choices} (max_memory {max_memory}); add devices, raise the budgets "
                          "or add 'disk'")

    for unit in units(model):
        layer = layer_of(unit)
        # the frozen bottom: the decoder layers below the lowest edited one. The embedding stays on the
        # fast devices: it is where the inputs go (`models.input_device`), and small beside the layers.
        below = offload_below and lowest is not None and layer is not None and layer < lowest
        if tied and unit == "lm_head" and "model.embed_tokens" in out:
            out[unit] = out["model.embed_tokens"]  # shares the embedding's weight: place them together
        elif below and any(d in devices for d in SLOW):
            place(unit, [d for d in SLOW if d in devices])
        elif unit in edited:
            # a trained layer must hold real weights: "cpu" behind a GPU is an offload (meta placeholders,
            # reloaded at every forward, so an update would be lost), and so is "disk"
            home = [d for d in devices[cursor:] if d in fast] if fast else [d for d in devices[cursor:] if d != "disk"]
            cursor = place(unit, home, reserve)
            reserve = 0  # one reservation covers the edit, whichever edited layer lands first
        else:
            cursor = place(unit, devices[cursor:])
    return out


def check_plan(model: nn.Module, device_map: dict, dtype: torch.dtype | None = None) -> dict:
    """Refuse a device map whose weights do not fit in what each device has free now (the memory
    guard, per device; "disk" is not checked). Returns bytes per device."""
    sizes, per = unit_bytes(model, dtype), {}
    for unit, d in device_map.items():
        per[d] = per.get(d, 0) + sizes.get(unit, 0)
    for d, need in per.items():
        if d != "disk":
            check(need, torch.device("cuda", d) if isinstance(d, int) else torch.device(d),
                  f"the weights placed on {d!r}", "Lower that device's budget in max_memory or add 'disk'.")
    return per


def dispatch(model: nn.Module, device_map: dict, offload_dir: str | None = None) -> nn.Module:
    """Place `model` (on CPU) over the devices of `device_map` with accelerate's hooks."""
    from accelerate import dispatch_model

    if "disk" in device_map.values() and offload_dir is None:
        raise ConfigError("device_map puts modules on 'disk': pass offload_dir= (a folder for their weights)")
    return dispatch_model(model, device_map=device_map, offload_dir=offload_dir)


# ------------------------------------------------------------------------------ where it runs
def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its accelerate hook's execution device on a dispatched model (its
    weights may be ``meta`` placeholders, loaded from cpu/disk for each forward), else its weights'."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
        if h is not None and getattr(h, "execution_device", None) is not None:
            d = h.execution_device
            return torch.device("cuda", d) if isinstance(d, int) else torch.device(d)
    for t in module.parameters():
        return t.device
    return torch.device("cpu")


def clock() -> float:
    """`time.perf_counter()` once the GPU has finished what was queued: CUDA kernels run
    asynchronously, so a timer read without a sync measures how fast work was *queued*."""
    import time

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def layer_devices(model: nn.Module) -> list[torch.device]:
    """The device each decoder layer computes on."""
    return [execution_device(layer) for layer in model.get_submodule(family_table(model)["layers"])]


def head_device(model: nn.Module) -> torch.device:
    """Where the logits are computed."""
    return execution_device(model.get_output_embeddings())


def offloaded(model: nn.Module) -> bool:
    """True when some weights live off their module (accelerate's cpu/disk offload: meta placeholders)."""
    return any(p.device.type == "meta" for p in model.parameters())


def trainable_on_device(model: nn.Module, names) -> None:
    """Refuse to train parameters accelerate offloads (they are reloaded from cpu/disk at every forward,
    so an update would be lost)."""
    params = dict(model.named_parameters())
    bad = [n for n in names if params[n].device.type == "meta"]
    if bad:
        raise ConfigError(f"the edit trains {bad[0]}, which is offloaded to cpu/disk by the device map; place the "
                          "edited layers on a device (placement.plan(..., edited_layers=...) does)")


def state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict, with offloaded tensors read back from cpu/disk."""
    if not offloaded(model):
        return model.state_dict()
    from accelerate.utils.modeling import get_state_dict_offloaded_model

    return get_state_dict_offloaded_model(model)
