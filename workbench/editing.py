"""The one edit entry point: `edit(model, tok, requests, cfg)` (ROME's ``apply_*_to_model`` shape).

It accepts `Request`s or dicts in our, ROME's or EasyEdit's field names, and hands them to the edit
function registered for ``cfg.method`` (`config.register_method`; the built-in ones are in `methods/`).
Every method returns an `EditResult` whose ``revert()`` restores the
model bitwise and whose ``save()`` writes the weight delta (`apply_delta` loads one).

Named presets are thin partials over `edit` (`ft_uke`, `locft_bf`, ...), each reading its YAML file.
"""
from __future__ import annotations

import warnings

import torch.nn as nn

from . import checks, threads
from .config import EditConfig, method, preset
from .data import as_requests
from .errors import ConfigError, OverwriteWarning, WorkbenchError
from .methods.result import EditResult, apply_delta

__all__ = ["edit", "edit_each", "EditResult", "apply_delta", "ft_uke", "locft_bf", "ft_m", "ft_l", "lora", "adalora_uke"]


def edit(model: nn.Module, tok, requests, cfg: EditConfig, progress: bool = True, checkpoint=None, *,
         sequential: bool | None = None, check: bool = False) -> EditResult:
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
        sequential: a depth-first config (``ft-uke``, ``ft-m``, ``ft-l``) trains its batches one after
            another, each to convergence, so with more requests than ``batch_size`` a later fact can
            overwrite an earlier one (sequential editing). ``None`` (default): warn (`OverwriteWarning`,
            naming the alternatives); ``True``: this is the sequential editing you want, no warning;
            ``False``: refuse (`ConfigError`).
        check: score the edited facts and a fixed set of unrelated questions before and after, in the
            edit's prompt format (`checks.py`; "before" cached by the weights' fingerprint): the
            result's ``check`` (``print(result.check.to_text())``).
    Returns:
        An `EditResult`; ``result.revert()`` restores the model bitwise, ``result.generate(prompts)``
        asks the edited model in the format it was trained with.
    """
    requests = as_requests(requests)
    if not requests:
        raise WorkbenchError("no requests to edit")
    if sequential is not True and (problem := overwrites(cfg, len(requests))):
        if sequential is False:
            raise ConfigError(problem)
        warnings.warn(problem, OverwriteWarning, stacklevel=2)
    plan = checks.Plan.of(tok, requests, cfg.chat_template) if check else None
    before = plan.ask(model, tok) if check else None  # cached by the unedited weights' fingerprint
    extra = {}
    if checkpoint is not None:
        if cfg.method != "ft" or cfg.schedule != "breadth_first":
            raise ConfigError(f"checkpoint: epoch checkpoints are for method='ft' with schedule='breadth_first' "
                              f"(got method={cfg.method!r}, schedule={cfg.schedule!r})")
        extra["checkpoint"] = checkpoint
    with threads.active():  # this process's share of the cores while it computes (threads.py)
        result = method(cfg.method).edit(model, tok, requests, cfg, progress=progress, **extra)
    result.requests, result.tok = list(requests), tok
    if check:
        result.check = checks.compare(plan, before, plan.ask(model, tok))
    return result


def overwrites(cfg: EditConfig, n: int) -> str:
    """Why `n` requests edited at once with `cfg` may overwrite each other ("" when they cannot): a
    depth-first fine-tuning schedule trains each batch of ``batch_size`` requests to convergence,
    then the next, with nothing holding the earlier ones in place."""
    if cfg.method not in ("ft", "lora", "adalora") or cfg.schedule != "depth_first" or n <= cfg.batch_size:
        return ""
    return (f"this config trains depth-first (schedule='depth_first', batch_size={cfg.batch_size}): the {n} requests "
            f"are trained {-(-n // cfg.batch_size)} batches one after another, each to convergence, so a later fact can "
            "overwrite an earlier one (sequential editing). For every fact in one model: wb.preset('locft-bf') "
            f"(breadth-first) or cfg.replace(batch_size={n}) (batch editing, all at once); to edit and score each "
            "fact alone: wb.edit_each. Pass sequential=True if sequential editing is what you want.")


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
        results = run(model, tok, requests, cfg, progress=progress)
    for r, res in zip(requests, results):
        res.requests, res.tok = [r], tok
    return results


def _preset_edit(preset_name: str, doc: str):
    def run(model, tok, requests, progress: bool = True, sequential: bool | None = None, check: bool = False,
            **overrides):
        return edit(model, tok, requests, preset(preset_name, **overrides), progress=progress, sequential=sequential,
                    check=check)

    run.__name__ = preset_name.replace("-", "_")
    run.__doc__ = doc + f"\n\nReads ``configs/{preset_name}.yaml``; keyword arguments override its fields."
    return run


ft_uke = _preset_edit("ft-uke", "FT-UKE: one middle-layer down_proj, loss on all target tokens, the chat template.")
locft_bf = _preset_edit("locft-bf", "LocFT-BF: breadth-first mini-batch fine-tuning of a later-layer down_proj.")
ft_m = _preset_edit("ft-m", "FT-M: cross-entropy on the target tokens only, depth-first (EasyEdit's baseline).")
ft_l = _preset_edit("ft-l", "FT-L: EasyEdit's prompt_last objective with a norm constraint, depth-first.")
lora = _preset_edit("lora", "LoRA through peft on the selected modules.")
adalora_uke = _preset_edit("adalora-uke", "AdaLoRA-UKE: AdaLoRA on attention q/k/v/o of all layers, all-token loss.")
