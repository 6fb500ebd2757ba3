"""peft adapters for the fine-tuning loop (methods ``lora`` and ``adalora``; `ft.py` trains them).

* ``lora`` / ``adalora``: a peft adapter on the selected Linear modules. peft injects its layers into the
  model in place, so the caller's ``model`` object is the edited one; reverting unloads the adapter
  (the base weights were never touched). peft keeps adapter weights in float32 on a bf16/fp16 model
  (``autocast_adapter_dtype``), so small updates are not lost to rounding.

AdaLoRA as the baselines run it: EasyEdit's AdaLoRA trains a fixed number of steps through peft's
model, whose loss carries AdaLoRA's orthogonal regulariser (``orth_reg_weight`` x the mean over
adapted matrices of ||A Aᵀ - I||_F and ||Bᵀ B - I||_F), and never calls ``update_and_allocate``, so no
rank is pruned. We compute the loss ourselves (logits only where there are labels), so the
regulariser is added by `AdapterHandle.regularizer` (tested equal to peft's). Rank pruning runs only
when ``adalora_schedule`` gives peft's (tinit, tfinal, deltaT); it then needs the total step count
up front and a call after every optimiser step (`AdapterHandle.after_step`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..components import Target
from ..config import MethodParams
from ..errors import ConfigError


@dataclass(frozen=True)
class AdapterParams(MethodParams):
    """The parameters of methods ``lora`` and ``adalora`` (registered in ft.py, whose loop trains them)."""

    lora_rank: int = 8  # LoRA r; AdaLoRA's target rank (it starts at 1.5x this and prunes)
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    # AdaLoRA rank pruning as peft's (tinit, tfinal, deltaT); empty: no pruning, the rank stays at its start
    # (1.5 x lora_rank) as in EasyEdit's AdaLoRA, which never calls update_and_allocate
    adalora_schedule: tuple[int, ...] = ()
    adalora_orth_reg: float = 0.5  # weight of AdaLoRA's orthogonal regulariser on its A and B (peft's orth_reg_weight)
    merge_adapter: bool = False  # merge the adapter into the base weights after the edit (revert still exact)

    AT_LEAST_ONE = ("lora_rank",)
    NON_NEGATIVE = ("lora_dropout", "adalora_orth_reg")

    def __post_init__(self):
        super().__post_init__()
        s = self.adalora_schedule
        if s and (len(s) != 3 or min(s) < 0 or s[2] < 1):
            raise ConfigError(f"adalora_schedule={list(s)}: give [tinit, tfinal, deltaT] (steps >= 0, deltaT >= 1), "
                              "or [] for no rank pruning")


@dataclass
class AdapterHandle:
    """A live peft adapter: its wrapper, and how to step, measure and remove it."""

    peft_model: object
    kind: str
    prune: bool = False  # AdaLoRA: reallocate ranks after every step (adalora_schedule given)

    def parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.peft_model.named_parameters() if p.requires_grad}

    def train_dropout(self) -> None:
        """Switch on the adapter's own dropout while the rest of the model stays in eval mode."""
        for name, module in self.peft_model.named_modules():
            if name.split(".")[-2:-1] == ["lora_dropout"]:
                module.train()

    def after_step(self, global_step: int) -> None:
        if self.prune:  # rank allocation reads the gradients, so call before zero_grad
            self.peft_model.base_model.update_and_allocate(global_step)

    def regularizer(self):
        """AdaLoRA's orthogonal regulariser as peft adds it to its model's loss (None for LoRA):
        ``orth_reg_weight`` x the mean over adapter matrices of ||A Aᵀ - I||_F (A) and ||Bᵀ B - I||_F (B)."""
        if self.kind != "adalora":
            return None
        weight = self.peft_model.peft_config[self.peft_model.active_adapter].orth_reg_weight
        terms = []
        for name, p in self.peft_model.named_parameters():
            if p.requires_grad and ("lora_A" in name or "lora_B" in name):
                cov = p @ p.T if "lora_A" in name else p.T @ p
                terms.append(torch.linalg.matrix_norm(cov - torch.eye(len(cov), device=cov.device, dtype=cov.dtype)))
        return weight * torch.stack(terms).mean() if terms else None

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
        # AdaLoRA starts at init_r; with a schedule it prunes to target_r over [tinit, total_step - tfinal].
        tinit, tfinal, delta_t = cfg.adalora_schedule or (0, 0, 1)
        if cfg.adalora_schedule and tinit + tfinal >= total_steps:
            raise ConfigError(f"adalora_schedule={list(cfg.adalora_schedule)}: tinit + tfinal must be below the "
                              f"{total_steps} planned steps")
        pcfg = AdaLoraConfig(init_r=max(cfg.lora_rank * 3 // 2, cfg.lora_rank), target_r=cfg.lora_rank,
                             total_step=max(total_steps, 2), tinit=tinit, tfinal=tfinal, deltaT=delta_t,
                             orth_reg_weight=cfg.adalora_orth_reg, **common)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # adapter initialisation is part of the seed
        peft_model = get_peft_model(model, pcfg)
    return AdapterHandle(peft_model, cfg.method, prune=cfg.method == "adalora" and bool(cfg.adalora_schedule))
