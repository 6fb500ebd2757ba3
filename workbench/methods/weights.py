"""The weights an edit touches: put them back exactly, and train them in float32.

* `restore` writes saved originals back into a model's parameters, bitwise, dtype included (a
  parameter upcast for training gets its original tensor back);
* `float32_master` upcasts low-precision trained parameters in place and makes their modules compute
  in float32 (inputs cast up, outputs cast back to the model's dtype): Adam on a bf16 weight rounds
  every update below the weight's resolution (about 1e-4 for a weight of 0.02) back to nothing,
  which silently freezes the lr 5e-5 .. 5e-4 recipes; `remove_hooks` undoes the casts.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def restore(model: nn.Module, originals: dict[str, torch.Tensor]) -> None:
    """Write `originals` (parameter name -> saved tensor) back into `model`, bitwise."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in originals.items():
            if params[name].dtype != value.dtype:  # upcast for the edit: put the original tensor back
                params[name].data = value.clone()
            else:
                params[name].copy_(value)


def remove_hooks(handles: list) -> None:
    for h in handles:
        h.remove()
    handles.clear()


def float32_master(model: nn.Module, trainable: dict[str, nn.Parameter]) -> list:
    """Upcast low-precision trainable parameters to float32 in place and make their modules compute in
    float32 (inputs cast up, outputs cast back to the model's dtype). Returns the hook handles."""
    handles, owners = [], {}
    for name, p in trainable.items():
        if p.dtype in (torch.bfloat16, torch.float16):
            owners.setdefault(name.rsplit(".", 1)[0], p.dtype)
            p.data = p.data.float()
    for module_name, low in owners.items():
        module = model.get_submodule(module_name)

        def up(mod, args, kwargs):
            return _cast(args, torch.float32), _cast(kwargs, torch.float32)

        def down(mod, args, output, low=low):
            return _cast(output, low)

        handles += [module.register_forward_pre_hook(up, with_kwargs=True), module.register_forward_hook(down)]
    return handles


def _cast(value, dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value
