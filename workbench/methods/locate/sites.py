"""Sites and hooks: which weight an edit changes, and what a forward pass that stops early captures.

A *site* (`site`) is the MLP output matrix W of one decoder layer (``down_proj``; GPT-2's ``c_proj``,
whose Conv1D layout [in, out] `Site` hides). The capture hooks (`capture`, `capture_inputs`) read a
module's input or output on a batch from one forward pass that raises once it has what it needs, so
the layers above never run: W's input there is the key, a layer's output the value's base.

Also the frame every locate-and-edit method runs in: `frozen` / `frozen_eval` (eval mode, no
parameter requiring grad), `layers_of` and `timings`.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from ... import placement
from ...components import family_table, resolve
from ...errors import ConfigError
from ...models import input_device
from ...prompts import forward


class _Stop(Exception):
    """Raised by a hook once what is needed has been captured: the layers above never run."""


def frozen(edit_fn):
    """Decorator for a method's ``edit``: it runs under `frozen_eval`."""
    @functools.wraps(edit_fn)
    def edit(model, tok, requests: list, cfg, progress: bool = True):
        with frozen_eval(model):
            return edit_fn(model, tok, requests, cfg, progress)
    return edit


def layers_of(model, cfg) -> list[int]:
    """The edited layers of `cfg`, as non-negative indices in ascending order."""
    if cfg.layers == "all":
        raise ConfigError(f"{cfg.method} needs explicit layers, not 'all'")
    return sorted(layer_index(model, layer) for layer in cfg.layers)


def timings(t0: float, n: int) -> dict:
    """An EditResult's timings for a method that has no separate encoding phase."""
    t = placement.clock() - t0
    return {"encode_s": 0.0, "train_s": t, "total_s": t, "s_per_edit": t / n}


@contextmanager
def frozen_eval(model):
    """Eval mode (no dropout) and no parameter requiring grad, restored afterwards: the methods
    optimise their own vectors or choose their own trainable weights."""
    was, flags = model.training, {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
        model.train(was)


# ---------------------------------------------------------------------------------------- sites
@dataclass(frozen=True)
class Site:
    """The MLP output matrix W of one decoder layer."""

    layer: int
    name: str  # module path, e.g. "model.layers.5.mlp.down_proj"
    module: nn.Module
    conv1d: bool  # GPT-2's Conv1D stores W as [in, out]

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    def matrix(self) -> torch.Tensor:
        """W as [out, in] (a float32 copy)."""
        w = self.weight.detach().float()
        return w.T.clone() if self.conv1d else w.clone()

    @torch.no_grad()
    def add(self, delta: torch.Tensor) -> None:
        """W += delta ([out, in]), in W's own dtype and device."""
        d = delta.T if self.conv1d else delta
        self.weight.add_(d.to(self.weight.device, self.weight.dtype))


def site(model: nn.Module, layer: int) -> Site:
    """The MLP output matrix of `layer` (the family table's ``down``)."""
    target = resolve(model, ("down",), (layer,))[0]
    module = model.get_submodule(target.name)
    placement.trainable_on_device(model, [f"{target.name}.weight"])  # an offloaded W would lose the update
    return Site(target.layer, target.name, module, type(module).__name__ == "Conv1D")


def decoder_layer(model: nn.Module, layer: int) -> nn.Module:
    return model.get_submodule(family_table(model)["layers"])[layer]


def layer_index(model: nn.Module, layer: int) -> int:
    return resolve(model, ("down",), (layer,))[0].layer


def layer_of(model: nn.Module, module: nn.Module) -> int:
    """The index of the decoder layer that holds `module` (or is it)."""
    for i, block in enumerate(model.get_submodule(family_table(model)["layers"])):
        if any(m is module for m in block.modules()):
            return i
    raise ValueError(f"{type(module).__name__} is in no decoder layer")


def on_device(batch: dict, device) -> dict:
    """Every tensor of `batch` on `device`."""
    return {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------- hooks
def capture(model, module: nn.Module, batch: dict, output: bool, grad: bool = False) -> torch.Tensor:
    """`module`'s input (``output=False``) or output on `batch` ([B, T, ·], with autograd when
    `grad`), from one forward pass that stops there: the layers above never run."""
    if not output:
        return capture_inputs(model, [module], batch, grad)[0]
    captured = {}

    def after(mod, args, out):
        captured["x"] = out[0] if isinstance(out, tuple) else out
        raise _Stop

    handle = module.register_forward_hook(after)
    try:
        _run_until_stop(model, on_device(batch, input_device(model)), grad)
    finally:
        handle.remove()
    return captured["x"]


def capture_inputs(model, modules: list[nn.Module], batch: dict, grad: bool = False) -> list[torch.Tensor]:
    """The inputs of `modules` (in the order the forward pass reaches them) on `batch`, from one
    forward pass that stops at the last of them."""
    captured: dict[int, torch.Tensor] = {}

    def hook(j):
        def before(mod, args):
            captured[j] = args[0]
            if len(captured) == len(modules):
                raise _Stop  # every input is in: nothing above is needed
        return before

    handles = [m.register_forward_pre_hook(hook(j)) for j, m in enumerate(modules)]
    try:
        _run_until_stop(model, on_device(batch, input_device(model)), grad)
    finally:
        for h in handles:
            h.remove()
    return [captured[j] for j in range(len(modules))]


def _run_until_stop(model, b: dict, grad: bool) -> None:
    try:
        with torch.set_grad_enabled(grad):
            forward(model, b, use_cache=False)
    except _Stop:
        pass


def layer_outputs(model, module: nn.Module, batch: dict, grad: bool = False) -> torch.Tensor:
    """`module`'s whole output on `batch`, [B, T, d]."""
    return capture(model, module, batch, output=True, grad=grad)


def outputs(model, module: nn.Module, batch: dict, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`module`'s output at each (row, position): [N, d] float32."""
    h = layer_outputs(model, module, batch)
    return h[rows.to(h.device), positions.to(h.device)].float()
