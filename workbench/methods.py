"""The `method` axis: what is trained at the selected components.

* ``ft``: the selected weights themselves (FT-UKE, LocFT-BF, FT-M, FT-L are all this, differing only in
  config fields: loss scope, template, layers, schedule, norm constraint).
* ``lora`` / ``adalora``: a peft adapter on the selected Linear modules. peft injects its layers into the
  model in place, so the caller's ``model`` object is the edited one; reverting unloads the adapter
  (the base weights were never touched). AdaLoRA prunes ranks on a budget schedule, so it needs the
  total step count up front and a call after every optimiser step (`AdapterHandle.after_step`).

Named presets are thin partials over `wb.edit` (`ft_uke`, `locft_bf`, ...), each reading its YAML file.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .components import Target
from .errors import ConfigError


@dataclass
class AdapterHandle:
    """A live peft adapter: its wrapper, and how to step, measure and remove it."""

    peft_model: object
    kind: str

    def parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.peft_model.named_parameters() if p.requires_grad}

    def train_dropout(self) -> None:
        """Switch on the adapter's own dropout while the rest of the model stays in eval mode."""
        for name, module in self.peft_model.named_modules():
            if name.split(".")[-2:-1] == ["lora_dropout"]:
                module.train()

    def after_step(self, global_step: int) -> None:
        if self.kind == "adalora":  # rank allocation reads the gradients, so call before zero_grad
            self.peft_model.base_model.update_and_allocate(global_step)

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """Dense weight deltas (base parameter name -> B @ A * scale) of every adapted module."""
        from peft.tuners.lora import LoraLayer

        out = {}
        for name, module in self.peft_model.base_model.model.named_modules():
            if isinstance(module, LoraLayer):
                for adapter in module.active_adapters:
                    out[f"{name}.weight"] = module.get_delta_weight(adapter).detach().float().cpu()
        return out

    def unload(self):
        """Remove the adapter; the base model's modules are put back as they were."""
        return self.peft_model.unload()

    def merge(self):
        """Fold the adapter into the base weights and remove its modules."""
        return self.peft_model.merge_and_unload()


def linear_targets(model: nn.Module, targets: list[Target]) -> list[str]:
    """Names of the Linear modules under each target (``mlp`` -> its gate/up/down projections)."""
    names = []
    for t in targets:
        module = model.get_submodule(t.name)
        if t.fused_slice is not None:
            raise ConfigError(f"adapters cannot select one slice of the fused {t.name}; use method='ft' or component 'attn'")
        if isinstance(module, nn.Linear):
            names.append(t.name)
        else:
            names += [f"{t.name}.{n}" for n, m in module.named_modules() if isinstance(m, nn.Linear) and n]
    if not names:
        raise ConfigError("the selected components contain no Linear module for an adapter")
    return sorted(set(names))


def attach_adapter(model: nn.Module, targets: list[Target], cfg, total_steps: int) -> AdapterHandle:
    """Inject a LoRA / AdaLoRA adapter on the Linear modules of `targets` (in place)."""
    from peft import AdaLoraConfig, LoraConfig, get_peft_model

    modules = linear_targets(model, targets)
    common = dict(target_modules=modules, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none")
    if cfg.method == "lora":
        pcfg = LoraConfig(r=cfg.lora_rank, **common)
    else:
        # AdaLoRA starts at init_r and prunes to target_r over [tinit, total_step - tfinal].
        pcfg = AdaLoraConfig(init_r=max(cfg.lora_rank * 3 // 2, cfg.lora_rank), target_r=cfg.lora_rank,
                             total_step=max(total_steps, 2), tinit=0, tfinal=0, deltaT=1, **common)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # adapter initialisation is part of the seed
        peft_model = get_peft_model(model, pcfg)
    return AdapterHandle(peft_model, cfg.method)


def _preset_edit(preset_name: str, doc: str):
    def run(model, tok, requests, progress: bool = True, **overrides):
        from .config import preset
        from .train import edit

        return edit(model, tok, requests, preset(preset_name, **overrides), progress=progress)

    run.__name__ = preset_name.replace("-", "_")
    run.__doc__ = doc + f"\n\nReads ``configs/{preset_name}.yaml``; keyword arguments override its fields."
    return run


ft_uke = _preset_edit("ft-uke", "FT-UKE: one middle-layer down_proj, loss on all target tokens, the chat template.")
locft_bf = _preset_edit("locft-bf", "LocFT-BF: breadth-first mini-batch fine-tuning of a later-layer down_proj.")
ft_m = _preset_edit("ft-m", "FT-M: cross-entropy on the target tokens only, depth-first (EasyEdit's baseline).")
ft_l = _preset_edit("ft-l", "FT-L: last-token loss with a norm constraint, depth-first (ROME's FT baseline).")
lora = _preset_edit("lora", "LoRA through peft on the selected modules.")
adalora_uke = _preset_edit("adalora-uke", "AdaLoRA-UKE: AdaLoRA on attention q/k/v/o of all layers, all-token loss.")
