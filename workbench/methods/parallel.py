"""Parallel single edits: K requests, each edited alone on the unedited model, trained at once.

Single editing (FT-UKE's protocol, the playground's) edits one request, scores it and reverts it
before the next. Done one at a time, every optimiser step is a forward and backward pass over one
short example: on a GPU a batch of one leaves the card idle, and on a CPU the small matrix
products under-use the cores. `edit_each` runs K such edits as one batch:

* every trained matrix W gets K copies W_1 .. W_K (float32 masters, as `ft` trains them), and
  while the edit runs the module computes row b of the batch with the copy of the edit that row
  belongs to (one batched matrix product, `_Stacked`);
* the objective is the *sum* of the edits' own losses, and rows never see each other (attention
  is within a row), so the gradient that reaches W_k is exactly edit k's;
* Adam and AdamW are element-wise, so one optimiser over all copies is K independent optimisers;
  an edit whose loss falls below ``early_stop_loss`` leaves the batch and its copy gets no
  gradient (``grad = None``), which torch's optimisers skip entirely (its state is untouched):
  per-edit early stopping. Gradient clipping and FT-L's norm constraint are applied per copy;
* the frozen layers below the lowest edited one run once per example (`prefix.PrefixCache`).

With one example per edit the depth-first and breadth-first schedules are the same loop: up to
``steps_per_edit`` (depth-first) or ``epochs`` (breadth-first) steps, each measuring the loss
first and stopping, without a step, once it is below ``early_stop_loss``. So the result of edit k is
that of ``wb.edit(model, tok, [request_k], cfg)`` up to float rounding (tests/test_parallel.py holds
weights and losses to 1e-5).

The model is unchanged when `edit_each` returns: each `EditResult` is *pending*. ``apply()`` writes
its weights into the model and ``revert()`` takes them out (bitwise), so a single-editing loop is
``for res in results: res.apply(); score(); res.revert()``, or `runs.protocols.score_each` scores all K
at once with the same routing of rows to copies (`routed`). Method ``ft`` only, on Linear (or
GPT-2 Conv1D) weights: adapters and the locate-and-edit methods keep their own loops.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager

import pandas as pd
import torch
import torch.nn as nn

from .. import placement, prompts, resources, threads
from ..components import num_layers, resolve
from ..config import EditConfig
from ..errors import ConfigError, EditError, WorkbenchError
from ..models import input_device, spec
from . import prefix
from .ft import constrain, example_losses, make_optimizer, selected_parameters, to_device
from .locate import frozen_eval
from .result import EditResult


class _Stacked:
    """A Linear (or Conv1D) computing each batch row with its own edit's copy of the weights."""

    def __init__(self, module: nn.Module, copies: list[dict[str, nn.Parameter]]):
        self.module, self.copies, self.rows = module, copies, []
        self.conv1d = type(module).__name__ == "Conv1D"  # GPT-2 stores W as [in, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(set(self.rows)) < len(self.rows):
            return self._grouped(x)
        w = torch.stack([self.copies[k]["weight"] for k in self.rows])  # [B, out, in] (Conv1D: [B, in, out])
        y = torch.bmm(x.to(w.dtype), w if self.conv1d else w.transpose(1, 2))
        if "bias" in self.copies[0]:
            y = y + torch.stack([self.copies[k]["bias"] for k in self.rows])[:, None, :]
        return y.to(x.dtype)  # a low-precision model gets its dtype back, as `weights.float32_master` does

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """Scoring: several rows (an edit's probes) share an edit, so one product per edit present
        rather than a stacked copy of the weights per row."""
        owner = torch.tensor(self.rows, device=x.device)
        y = None
        for k in dict.fromkeys(self.rows):
            idx = (owner == k).nonzero().squeeze(1)
            w, b = self.copies[k]["weight"], self.copies[k].get("bias")
            part = nn.functional.linear(x[idx].to(w.dtype), w.T if self.conv1d else w, b)
            if y is None:
                y = part.new_empty(*x.shape[:-1], part.shape[-1])
            y[idx] = part
        return y.to(x.dtype)

    def install(self) -> None:
        self.module.forward = self.forward

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


def edit_each(model: nn.Module, tok, requests: list, cfg: EditConfig, progress: bool = True) -> list[EditResult]:
    """Edit each request alone, all at once (see the module docstring); returns one pending
    `EditResult` per request (``apply()`` it to score it, ``revert()`` after). The model is unchanged."""
    if cfg.method != "ft":
        raise ConfigError(f"edit_each trains copies of plain weights (method 'ft'); for method {cfg.method!r} "
                          "call wb.edit once per request")
    t0 = time.perf_counter()
    examples = [prompts.encode(tok, r.prompt, r.target, cfg.loss_scope, cfg.chat_template, cfg.max_length)
                for r in requests]
    prompts.warn_truncated(sum(e.truncated for e in examples), cfg.max_length)
    targets, params, masks, _ = _selection(model, cfg)
    placement.trainable_on_device(model, params)
    lowest = min(t.layer for t in targets)
    cache_note = prefix.why_off(cfg, lowest, model, examples)
    per_copy = sum(p.numel() for p in params.values())
    resources.check_edit(model, cfg, examples, per_copy * len(requests), lowest, num_layers(model),
                         prefix.host_bytes(model, examples, cfg) if cache_note is None else 0,
                         placement.layer_devices(model), placement.head_device(model))
    originals = {n: p.detach().clone() for n, p in params.items()}
    # edit k's copies: float32 masters of the selected weights, named as in the model
    copies = [{n: nn.Parameter(p.detach().float().clone()) for n, p in params.items()} for _ in requests]
    stacked = _stack(model, copies)
    logs: list[list[dict]] = [[] for _ in requests]
    cache = None
    with frozen_eval(model):
        try:
            if cache_note is None:
                t = time.perf_counter()
                cache = prefix.PrefixCache(model, lowest, examples, spec(tok).pad_id, dtype=cfg.prefix_cache_dtype)
                cache.install()
                cache_note = cache.note(placement.clock() - t)
            for s in stacked:
                s.install()
            _train(model, cfg, examples, [r.id for r in requests], copies, stacked, masks, originals, cache, logs,
                   spec(tok).pad_id, progress)
        finally:
            for s in stacked:
                s.remove()
            if cache is not None:
                cache.remove()
    wall = placement.clock() - t0
    timings = {"encode_s": 0.0, "train_s": wall, "total_s": wall / len(requests), "s_per_edit": wall / len(requests),
               "parallel_edits": len(requests)}  # each edit's share of the batch's wall time
    n_trainable = sum(int(torch.count_nonzero(masks[n])) if n in masks else p.numel() for n, p in params.items())
    return [EditResult(model, cfg, [r.id], originals, pd.DataFrame(log), dict(timings), n_trainable, int(e.truncated),
                       cache_note, reverted=True, pending={n: c[n].detach() for n in params})
            for r, e, c, log in zip(requests, examples, copies, logs)]


def _stack(model: nn.Module, copies: list[dict[str, torch.Tensor]]) -> list[_Stacked]:
    """One `_Stacked` per module that owns a trained weight; `copies[k]` maps a weight's name in the
    model (``model.layers.15.mlp.down_proj.weight``) to edit k's value of it."""
    owners = {n.rsplit(".", 1)[0] for n in copies[0]}
    return [_Stacked(model.get_submodule(owner),
                     [{n.rsplit(".", 1)[1]: v for n, v in c.items() if n.rsplit(".", 1)[0] == owner} for c in copies])
            for owner in sorted(owners)]


@contextmanager
def routed(model: nn.Module, results: list[EditResult]):
    """Put K pending results (`edit_each`'s) into the model side by side, for scoring them at once
    (`runs.protocols.score_each`): yields ``route(rows)``, which says whose edit each row of the next
    batch is (an index into `results`); the trained modules then compute each row with that edit's
    weights, one product per edit present in the batch. The model is as before on exit, and each
    result stays pending."""
    if any(r.pending is None or not r.reverted for r in results):
        raise WorkbenchError("routed() takes edit_each's pending (not applied) results")
    stacked = _stack(model, [r.pending for r in results])

    def route(rows: list[int]) -> None:
        for s in stacked:
            s.rows = rows

    try:
        for s in stacked:
            s.install()
        yield route
    finally:
        for s in stacked:
            s.remove()


def _selection(model, cfg: EditConfig):
    """The targets, parameters, fused-slice masks and owning modules `edit_each` trains, or a
    ConfigError saying why it cannot (only Linear / Conv1D weights are stacked)."""
    targets = resolve(model, cfg.components, cfg.layers)
    params, masks = selected_parameters(model, targets)
    owners = {name.rsplit(".", 1)[0] for name in params}
    for owner in owners:
        module = model.get_submodule(owner)
        if type(module).__name__ not in ("Linear", "Conv1D") or set(dict(module.named_parameters())) - {"weight", "bias"}:
            raise ConfigError(f"edit_each trains Linear weights; {owner} is a {type(module).__name__} (components "
                              f"{list(cfg.components)}): choose matrices (q k v o gate up down) or call wb.edit per request")
        if module.__dict__.get("forward") is not None:  # accelerate's device hook on a dispatched model
            raise ConfigError(f"edit_each replaces the forward of {owner}, which already has one set on it (a device "
                              "hook of a dispatched model): call wb.edit once per request instead")
    return targets, params, masks, owners


def batchable(model, cfg: EditConfig) -> bool:
    """Whether `edit_each` can train `cfg`'s edits together (method ft on matrices of a model whose
    trained modules carry no device hook); runs fall back to one `wb.edit` per request when not."""
    if cfg.method != "ft":
        return False
    try:
        _selection(model, cfg)
    except ConfigError:
        return False
    return True


def _train(model, cfg, examples, ids, copies, stacked, masks, originals, cache, logs, pad_id, progress) -> None:
    """The shared loop: every active edit's loss in one forward, a step for those above the stop loss."""
    from tqdm.auto import tqdm

    device = input_device(model)
    optimizer = make_optimizer(cfg, [p for c in copies for p in c.values()])
    steps = cfg.steps_per_edit if cfg.schedule == "depth_first" else cfg.epochs
    active = list(range(len(examples)))
    for step in tqdm(range(steps), desc=f"edit_each ({len(examples)} edits)", disable=not progress, leave=False):
        threads.rebalance()
        optimizer.zero_grad(set_to_none=True)
        for s in stacked:
            s.rows = active
        if cache is not None:
            cache.replay(active)
        batch = to_device(prompts.collate([examples[i] for i in active], pad_id), device)
        with torch.enable_grad():
            losses = example_losses(model, batch)
            values = losses.detach().tolist()  # the step's one host-device sync: each edit's stop decision
            go = [j for j, v in enumerate(values) if not (cfg.early_stop_loss and v < cfg.early_stop_loss)]
            if go:
                losses[go].sum().backward()  # the sum: each copy gets exactly its own edit's gradient
        for j, (k, v) in enumerate(zip(active, values)):
            if not math.isfinite(v):
                raise EditError(f"loss became {v} at step {step} on request {ids[k]}; the model is unchanged. "
                                "Try a lower lr or float32.")
            logs[k].append({"step": step, "epoch": step if cfg.schedule == "breadth_first" else 0,
                            "edit": 0 if cfg.schedule == "depth_first" else -1, "loss": v, "skipped": j not in go,
                            "requests": [ids[k]], "losses": [v]})
        stepping = [active[j] for j in go]
        for k in set(active) - set(stepping):  # converged now: no step, no state change
            for p in copies[k].values():
                p.grad = None
        if cfg.max_grad_norm:
            for k in stepping:
                torch.nn.utils.clip_grad_norm_(list(copies[k].values()), cfg.max_grad_norm)
        if stepping:
            optimizer.step()
        for k in stepping:
            constrain(cfg, copies[k], originals, masks)
        active = stepping
        if not active:
            break


