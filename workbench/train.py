"""The one edit entry point: `edit(model, tok, requests, cfg)` (ROME's ``apply_*_to_model`` shape).

It accepts `Request`s or dicts in our, ROME's or EasyEdit's field names, and hands them to the
method family that ``cfg.method`` names (`methods/`): gradient fine-tuning of the selected weights
or of an adapter on them today. Every family returns an `EditResult` whose ``revert()`` restores the
model bitwise and whose ``save()`` writes the weight delta (`apply_delta` loads one).

Named presets are thin partials over `edit` (`ft_uke`, `locft_bf`, ...), each reading its YAML file.
"""
from __future__ import annotations

import torch.nn as nn

from . import threads
from .config import EditConfig, preset
from .data import as_requests
from .errors import ConfigError, WorkbenchError
from .methods import family
from .methods.result import EditResult, apply_delta

__all__ = ["edit", "edit_each", "EditResult", "apply_delta", "ft_uke", "locft_bf", "ft_m", "ft_l", "lora", "adalora_uke"]


def edit(model: nn.Module, tok, requests, cfg: EditConfig, progress: bool = True, checkpoint=None) -> EditResult:
    """Edit `model` in place so that it answers each request's prompt with its target.

    Args:
        model: a causal LM from `wb.load` (or any transformers model of a family in components.py).
        tok: its tokenizer.
        requests: `Request`s, or dicts in our, ROME's or EasyEdit's field names.
        cfg: an `EditConfig` (`wb.config.preset("ft-uke")`, ...).
        progress: show a tqdm bar.
        checkpoint: a file (method ``ft``, breadth-first): the edit saves its state there after every
            epoch and resumes from it when it exists, so a long edit survives its process being
            killed (`methods.ft.EpochCheckpoint`); the file is deleted when the edit finishes.
    Returns:
        An `EditResult`; ``result.revert()`` restores the model bitwise.
    """
    requests = as_requests(requests)
    if not requests:
        raise WorkbenchError("no requests to edit")
    extra = {}
    if checkpoint is not None:
        if cfg.method != "ft" or cfg.schedule != "breadth_first":
            raise ConfigError(f"checkpoint: epoch checkpoints are for method='ft' with schedule='breadth_first' "
                              f"(got method={cfg.method!r}, schedule={cfg.schedule!r})")
        extra["checkpoint"] = checkpoint
    with threads.active():  # this process's share of the cores while it computes (threads.py)
        return family(cfg.method).edit(model, tok, requests, cfg, progress=progress, **extra)


def edit_each(model: nn.Module, tok, requests, cfg: EditConfig, progress: bool = True) -> list[EditResult]:
    """Edit each request *alone* on the unedited model, all of them trained at once (single editing,
    `methods/parallel.py`): the same per-edit results as one `edit` call per request, up to float
    rounding. Returns one pending `EditResult` per request; the model is unchanged until
    ``result.apply()``, and ``result.revert()`` takes the edit out again. Method ``ft`` only."""
    from .methods.parallel import edit_each as run

    requests = as_requests(requests)
    if not requests:
        raise WorkbenchError("no requests to edit")
    with threads.active():
        return run(model, tok, requests, cfg, progress=progress)


def _preset_edit(preset_name: str, doc: str):
    def run(model, tok, requests, progress: bool = True, **overrides):
        return edit(model, tok, requests, preset(preset_name, **overrides), progress=progress)

    run.__name__ = preset_name.replace("-", "_")
    run.__doc__ = doc + f"\n\nReads ``configs/{preset_name}.yaml``; keyword arguments override its fields."
    return run


ft_uke = _preset_edit("ft-uke", "FT-UKE: one middle-layer down_proj, loss on all target tokens, the chat template.")
locft_bf = _preset_edit("locft-bf", "LocFT-BF: breadth-first mini-batch fine-tuning of a later-layer down_proj.")
ft_m = _preset_edit("ft-m", "FT-M: cross-entropy on the target tokens only, depth-first (EasyEdit's baseline).")
ft_l = _preset_edit("ft-l", "FT-L: EasyEdit's prompt_last objective with a norm constraint, depth-first.")
lora = _preset_edit("lora", "LoRA through peft on the selected modules.")
adalora_uke = _preset_edit("adalora-uke", "AdaLoRA-UKE: AdaLoRA on attention q/k/v/o of all layers, all-token loss.")
