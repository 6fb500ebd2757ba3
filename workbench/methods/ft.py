"""Gradient fine-tuning of the selected weights, or of a peft adapter on them (methods ft, lora, adalora).

`edit(model, tok, requests, cfg)` (reached through `workbench.edit`):

1. tokenises every request once (`prompts.encode`: the loss scope is a label mask);
2. makes *only* the selected parameters trainable. Nothing below the lowest edited layer then
   requires grad, so autograd keeps no activations there for backward;
3. when the schedule visits each example more than once, runs the frozen layers below the lowest
   edited one once per example and replays their output at every step (`prefix.PrefixCache`, in this package);
4. runs one of two schedules:

   * **depth-first** (the editing literature's habit): edits, or batches of ``batch_size`` edits,
     in order; each is optimised up to ``steps_per_edit`` steps or until its loss falls below
     ``early_stop_loss``, with a fresh optimiser, and the changes accumulate;
   * **breadth-first** (LocFT-BF, ordinary training): ``epochs`` passes over all edits, reshuffled
     each epoch, in mini-batches of ``batch_size``; a batch whose loss is already below
     ``early_stop_loss`` is skipped and training stops when an epoch's mean loss is below it.

   A batch is split into micro-batches of ``micro_batch_size`` whose gradients accumulate, so the
   batch-size ablation changes the optimisation, not the memory. The loss is LocFT's: the mean over
   each example's labelled tokens, then the mean over the batch. Logits are computed only for the
   positions that carry labels (left padding puts them at the end), which saves the
   ``[B, T, vocab]`` projection that dominates small models.

5. returns an `EditResult` holding the original value of every touched tensor: ``revert()`` puts
   them back bitwise, ``save()`` writes the delta as safetensors (`apply_delta` loads one).

Precision: the trained weights are float32 even when the frozen model runs in bf16 or fp16. Adam on
a bf16 weight rounds every update below the weight's resolution (about 1e-4 for a weight of 0.02)
back to nothing, which silently freezes the lr 5e-5 .. 5e-4 recipes. So a trained parameter is
upcast in place for the edit and its module computes in float32, its inputs cast up and its output
cast back to the model's dtype (`weights.float32_master`); the edited model keeps the float32 weight until
``revert()`` puts the original tensor, dtype and all, back.

The frozen model runs in eval mode (no dropout); an adapter's ``lora_dropout`` is active.
A NaN/inf loss reverts the model and raises `EditError` naming the step and the requests; any other
exception, KeyboardInterrupt included, reverts the model and re-raises.

One module at ~470 lines because the loop, its two schedules, the epoch checkpoint and the memory estimate
share one state (the trainable weights, their originals and masks, the optimiser) that splitting would
have to pass around; the adapter and prefix-cache parts it uses are modules of their own.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import files, placement, prompts, resources, threads
from ..components import Target, num_layers, resolve
from ..config import EditConfig, MethodParams, register_method
from ..errors import EditError
from ..models import fingerprint, input_device, spec
from ..prompts import IGNORE
from . import prefix
from .adapters import AdapterHandle, AdapterParams, attach_adapter, linear_targets
from .result import EditResult
from .weights import float32_master, remove_hooks, restore

log = logging.getLogger("workbench")


@dataclass(frozen=True)
class FtParams(MethodParams):
    """The parameters of method ``ft`` beyond the shared loss, schedule and optimiser fields."""

    norm_constraint: float = 0.0  # FT-L: keep every edited weight within +-this of its original; 0 = off

    NON_NEGATIVE = ("norm_constraint",)


# ------------------------------------------------------------------------------------ the loss
def example_losses(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over each example's labelled tokens.

    Args:
        batch: ``input_ids, attention_mask, labels`` of shape [B, T], left-padded (`prompts.collate`), and
            optionally ``bag`` [B] (loss scope ``prompt_last``: every label read from one position).
    Returns:
        [B] float32 losses.
    """
    labels = batch["labels"]
    T = labels.shape[1]
    # Labels sit at the right end; the first labelled position f is predicted from f-1, so the last
    # T - f_min + 1 logits are all we need. `to_device` counts them on the host, before the copy:
    # reading them from a GPU tensor would wait for the device (a sync per micro-batch).
    keep = batch["keep"] if "keep" in batch else logits_needed(labels)
    # The model slices the last `keep` positions out of [B, T, d]; a non-contiguous input sends the
    # head's matmul down a batched path that is 4x slower on CPU than the full projection (measured:
    # 0.33 s vs 0.08 s for SmolLM2's 49K-token head, forward + backward, 10 x 6 positions), so the
    # slice is made contiguous first.
    handle = model.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
    try:
        out = prompts.forward(model, batch, logits_to_keep=keep, use_cache=False)
    finally:
        handle.remove()
    logits = out.logits[:, :-1].float()  # positions T-keep .. T-2 predict tokens T-keep+1 .. T-1
    target = labels[:, T - keep + 1:]
    bag = batch.get("bag")
    # `to_device` decides this on the host: a device tensor in an `if` would wait for the device
    has_bag = batch["has_bag"] if "has_bag" in batch else (bag is not None and bool(bag.any()))
    if has_bag:
        # prompt_last (EasyEdit's FT-L): every labelled token of a bag example is scored against the
        # distribution at its last prompt position, the one that predicts its first labelled token.
        anchor = logits[torch.arange(len(logits), device=logits.device), (target != IGNORE).int().argmax(1)]
        logits = torch.where(bag.to(logits.device)[:, None, None], anchor[:, None, :], logits)
    tok_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                               ignore_index=IGNORE, reduction="none").view(target.shape)
    counts = (target != IGNORE).sum(1).clamp(min=1)
    return tok_loss.sum(1) / counts


def logits_needed(labels: torch.Tensor) -> int:
    """How many of the last positions' logits the loss reads: from the one before the first label on."""
    T = labels.shape[1]
    has_label = (labels != IGNORE).any(0)
    return T - int(torch.where(has_label, torch.arange(T, device=labels.device), T).min()) + 1


def to_device(batch: dict, device: torch.device) -> dict:
    """A collated batch (on the host) on `device`, with ``keep`` (`logits_needed`) and ``has_bag`` (any
    example scored from one position, loss scope ``prompt_last``) decided before the copy; pinned and
    non-blocking on a GPU, so the copy overlaps the previous step's kernels."""
    out = {"keep": logits_needed(batch["labels"]), "has_bag": "bag" in batch and bool(batch["bag"].any())}
    cuda = device.type == "cuda"
    for k, v in batch.items():
        out[k] = v.pin_memory().to(device, non_blocking=True) if cuda else v.to(device)
    return out


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:])


def selected_parameters(model: nn.Module, targets: list[Target]) -> tuple[dict, dict]:
    """Parameters under each target, and for fused slices a mask of the entries that may change."""
    params, masks = {}, {}
    for t in targets:
        for name, p in model.get_submodule(t.name).named_parameters(prefix=t.name):
            params[name] = p
            if t.fused_slice is not None:
                # GPT-2 Conv1D: weight [d, 3d] and bias [3d]; the slice is along the last dim.
                third = p.shape[-1] // 3
                m = masks.get(name, torch.zeros_like(p, dtype=torch.bool))
                m[..., t.fused_slice * third:(t.fused_slice + 1) * third] = True
                masks[name] = m
            else:
                masks[name] = None
    return params, {n: m for n, m in masks.items() if m is not None}


def make_optimizer(cfg: EditConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The config's optimiser (``sgd``, ``adamw`` or ``adam``) over `params`, at ``lr`` and ``weight_decay``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class _Loop:
    """One edit's optimisation state: the batches, the optimiser, the log."""

    def __init__(self, model, cfg, examples, ids, pad_id, trainable, originals, masks, adapter, cache, bar):
        self.model, self.cfg, self.examples, self.ids, self.pad_id = model, cfg, examples, ids, pad_id
        self.trainable, self.originals, self.masks, self.adapter, self.bar = trainable, originals, masks, adapter, bar
        self.cache: prefix.PrefixCache | None = cache
        self.rows: list[dict] = []
        self.device = input_device(model)
        self.optimizer = make_optimizer(cfg, list(trainable.values()))
        self.example_loss: dict[int, float] = {}  # each example's loss when it was last in a batch
        self.checkpoint: EpochCheckpoint | None = None
        self.resumed_s = 0.0  # seconds earlier processes spent on this edit (a resumed checkpoint)

    def batch(self, idx: list[int]) -> dict:
        return to_device(prompts.collate([self.examples[i] for i in idx], self.pad_id), self.device)

    def step(self, idx: list[int], epoch: int, edit: int, skip_below: float | None) -> float:
        """Accumulate the gradient of one batch and take (or skip) one optimiser step."""
        cfg = self.cfg
        threads.rebalance()  # another process may have started or ended computing on this host
        self.optimizer.zero_grad(set_to_none=True)
        parts = []
        for start in range(0, len(idx), cfg.micro):
            part = idx[start:start + cfg.micro]
            if self.cache is not None:
                self.cache.replay(part)
            losses = example_losses(self.model, self.batch(part))
            objective = losses.sum() / len(idx)  # mean over examples, across micro-batches
            if start == 0 and (reg := self.adapter and self.adapter.regularizer()) is not None:
                objective = objective + reg  # AdaLoRA's orthogonal term, once per step (not in the logged loss)
            objective.backward()
            parts.append(losses.detach())
        # the step's losses reach the host once (the stop rule and the log need them): one sync per step
        read = torch.cat([*parts, torch.stack([p.sum() for p in parts])]).tolist()
        self.example_loss.update(zip(idx, read[:len(idx)]))  # for skip_converged
        loss = sum(read[len(idx):]) / len(idx)  # micro-batch sums added in order, as a loop reading each would
        step_no = len(self.rows)
        if not math.isfinite(loss):
            raise EditError(f"loss became {loss} at step {step_no} (epoch {epoch}) on requests "
                            f"{[self.ids[i] for i in idx]}; the model was restored. Try a lower lr or float32.")
        skipped = skip_below is not None and loss < skip_below
        if not skipped:
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(list(self.trainable.values()), cfg.max_grad_norm)
            self.optimizer.step()
            if self.adapter is not None:
                self.adapter.after_step(step_no)
            self._constrain()
        self.rows.append({"step": step_no, "epoch": epoch, "edit": edit, "loss": loss, "skipped": skipped,
                          "requests": [self.ids[i] for i in idx], "losses": [self.example_loss[i] for i in idx]})
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        return loss

    def _constrain(self) -> None:
        constrain(self.cfg, self.trainable, self.originals, self.masks)

    def depth_first(self) -> None:
        cfg, n = self.cfg, len(self.examples)
        for edit, start in enumerate(range(0, n, cfg.batch_size)):
            idx = list(range(start, min(start + cfg.batch_size, n)))
            self.optimizer = make_optimizer(cfg, list(self.trainable.values()))  # each edit starts afresh
            for _ in range(cfg.steps_per_edit):
                # The loss is measured before the update, so a converged edit stops without a step.
                if self.step(idx, epoch=0, edit=edit, skip_below=cfg.early_stop_loss or None) < cfg.early_stop_loss:
                    break

    def breadth_first(self) -> None:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        pool = list(range(len(self.examples)))  # the examples still trained (skip_converged shrinks it)
        first = 0
        if self.checkpoint is not None and (state := self.checkpoint.read()) is not None:
            first, pool = self._resume(state, gen)
        for epoch in range(first, cfg.epochs):
            order = [pool[i] for i in torch.randperm(len(pool), generator=gen).tolist()] if cfg.shuffle else list(pool)
            losses = [self.step(b, epoch=epoch, edit=-1, skip_below=cfg.early_stop_loss or None)
                      for b in self.batches(order, gen)]
            if cfg.skip_converged:  # the stop rule still reads every example (a dropped one at its last loss)
                losses = list(self.example_loss.values())
            if sum(losses) / len(losses) < cfg.early_stop_loss:
                break
            if cfg.skip_converged and cfg.early_stop_loss:
                # an example already below the stop loss (measured before its batch's update) leaves
                # the following epochs: the papers keep it, which costs a forward pass per epoch
                pool = [i for i in pool if self.example_loss[i] >= cfg.early_stop_loss]
                if not pool:
                    break
            if self.checkpoint is not None and epoch + 1 < cfg.epochs:
                self.checkpoint.write({
                    "epoch": epoch + 1, "pool": pool, "generator": gen.get_state(), "rows": self.rows,
                    "example_loss": self.example_loss, "optimizer": self.optimizer.state_dict(),
                    "weights": {n: p.detach().cpu() for n, p in self.trainable.items()},
                    "spent_s": self.resumed_s + time.perf_counter() - self.checkpoint.started})

    @torch.no_grad()
    def _resume(self, state: dict, gen: torch.Generator) -> tuple[int, list[int]]:
        """Put an interrupted edit's state back (weights, optimiser, shuffling, log); return the
        epoch to continue from and the examples still trained."""
        for name, value in state["weights"].items():
            self.trainable[name].copy_(value.to(self.trainable[name].device))
        self.optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        self.rows, self.example_loss, self.resumed_s = state["rows"], state["example_loss"], state["spent_s"]
        self.bar.update(len(self.rows))
        log.info("resumed at epoch %d from %s", state["epoch"], self.checkpoint.path)
        return state["epoch"], state["pool"]

    def batches(self, order: list[int], gen: torch.Generator) -> list[list[int]]:
        """One epoch's batches of ``batch_size``, in `order`; with ``length_buckets``, each window of
        8 batches is sorted by length before it is cut (so a batch holds examples of similar length
        and little padding), and the batches are then shuffled."""
        size = self.cfg.batch_size
        if not self.cfg.length_buckets:
            return [order[s:s + size] for s in range(0, len(order), size)]
        out = []
        for w in range(0, len(order), 8 * size):
            window = sorted(order[w:w + 8 * size], key=lambda i: len(self.examples[i].input_ids))
            out += [window[s:s + size] for s in range(0, len(window), size)]
        return [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]


@torch.no_grad()
def constrain(cfg: EditConfig, trainable: dict, originals: dict, masks: dict) -> None:
    """After a step: fused slices not selected stay as they were; FT-L keeps each weight within
    +-``norm_constraint`` of its original."""
    for name, mask in masks.items():
        p = trainable[name]
        p.copy_(torch.where(mask.to(p.device), p, originals[name].to(p.device, p.dtype)))
    eps = getattr(cfg.params, "norm_constraint", 0.0)  # FT-L's bound; an adapter's parameters have none
    if eps:
        for name, p in trainable.items():
            o = originals[name].to(p.device, p.dtype)
            p.copy_(torch.clamp(p, o - eps, o + eps))


class EpochCheckpoint:
    """A breadth-first edit's state after each epoch, in one file, so that an edit killed by a time
    limit (a SLURM job, a session's end) resumes from its last epoch instead of from nothing. The
    state is everything the next epoch reads: the trained weights, the optimiser's moments, the
    shuffling generator, the examples still trained and their last losses, the log; a resumed edit
    takes the steps an unbroken one takes (bitwise on the CPU: tests/test_train.py). The file names
    the edit it belongs to (config hash, request ids, the unedited weights' fingerprint) and is
    refused for any other; written atomically; deleted when the edit finishes."""

    def __init__(self, path, identity: dict, started: float):
        from pathlib import Path

        self.path, self.identity, self.started = Path(path), identity, started  # started: this process's t0

    def read(self) -> dict | None:
        if not self.path.exists():
            return None
        state = torch.load(self.path, weights_only=False)
        if state.get("identity") != self.identity:
            raise EditError(f"{self.path} holds the checkpoint of another edit (config, requests or model differ): "
                            f"delete it or give another path")
        return state

    def write(self, state: dict) -> None:
        with files.atomic(self.path) as tmp:
            torch.save({"identity": self.identity, **state}, tmp)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def planned_steps(cfg: EditConfig, n: int) -> int:
    """Most optimiser steps this config can take on `n` edits."""
    batches = math.ceil(n / cfg.batch_size)
    return batches * (cfg.steps_per_edit if cfg.schedule == "depth_first" else cfg.epochs)


# ----------------------------------------------------------------------------------- the edit
def edit(model: nn.Module, tok, requests: list, cfg: EditConfig, progress: bool = True,
         checkpoint=None) -> EditResult:
    """Fine-tune `model` in place so that it answers each request's prompt with its target.

    Args:
        requests: `Request`s (`workbench.edit` converts dicts and checks there is at least one).
        cfg: an `EditConfig` with method ``ft``, ``lora`` or ``adalora``.
        progress: show a tqdm bar over optimiser steps.
        checkpoint: a file path (breadth-first, method ``ft``): the state is saved there after every
            epoch and, when the file exists, the edit resumes from it (`EpochCheckpoint`).
    Returns:
        An `EditResult`; ``result.revert()`` restores the model bitwise.
    """
    t0 = time.perf_counter()
    identity = {"config": cfg.hash(), "requests": [r.id for r in requests], "model": fingerprint(model)} \
        if checkpoint is not None else None
    examples = [prompts.encode(tok, r.prompt, r.target, cfg.loss_scope, cfg.chat_template, cfg.max_length)
                for r in requests]
    n_truncated = sum(e.truncated for e in examples)
    prompts.warn_truncated(n_truncated, cfg.max_length)
    ids = [r.id for r in requests]
    t_encode = time.perf_counter() - t0

    targets = resolve(model, cfg.components, cfg.layers)
    lowest = min(t.layer for t in targets)
    cache_note = prefix.why_off(cfg, lowest, model, examples)  # None: the prefix cache will run
    selected = selected_parameters(model, targets) if cfg.method == "ft" else None  # changes nothing yet
    if selected is not None:
        placement.trainable_on_device(model, selected[0])
    resources.check_edit(model, cfg, examples, _trainable_estimate(model, targets, cfg, selected), lowest,
                         num_layers(model), prefix.host_bytes(model, examples, cfg) if cache_note is None else 0,
                         placement.layer_devices(model), placement.head_device(model))
    grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    adapter, masks, cache, casts = None, {}, None, []
    originals: dict[str, torch.Tensor] = {}
    pad_id = spec(tok).pad_id
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.method == "ft":
            trainable, masks = selected
            originals = {n: p.detach().clone() for n, p in trainable.items()}
            casts = float32_master(model, trainable)
            for p in trainable.values():
                p.requires_grad_(True)
        else:
            adapter = attach_adapter(model, targets, cfg, planned_steps(cfg, len(requests)))
            trainable = adapter.parameters()
        n_trainable = sum(int(torch.count_nonzero(masks[n])) if n in masks else p.numel() for n, p in trainable.items())

        torch.manual_seed(cfg.seed)  # adapter dropout
        # The frozen model runs in eval mode: its dropout (GPT-2 has some) would only add noise to
        # the edit's convergence. An adapter's own dropout is a setting of the method and stays on.
        model.eval()
        if adapter is not None:
            adapter.train_dropout()
        t_prefix = placement.clock()
        if cache_note is None:
            cache = prefix.PrefixCache(model, lowest, examples, pad_id, dtype=cfg.prefix_cache_dtype)
            cache.install()
            cache_note = cache.note(placement.clock() - t_prefix)
        log.info("prefix cache %s", cache_note)
        t_prefix = placement.clock() - t_prefix
        with tqdm(total=planned_steps(cfg, len(requests)), disable=not progress, desc=f"edit ({cfg.schedule})",
                  leave=False) as bar:
            loop = _Loop(model, cfg, examples, ids, pad_id, trainable, originals, masks, adapter, cache, bar)
            if checkpoint is not None:
                loop.checkpoint = EpochCheckpoint(checkpoint, identity, t0)
            {"depth_first": loop.depth_first, "breadth_first": loop.breadth_first}[cfg.schedule]()
            if loop.checkpoint is not None:
                loop.checkpoint.remove()  # the edit is complete: its result, not the file, is what lasts
        if cache is not None:
            cache.remove()
        if adapter is not None and cfg.merge_adapter:
            # The base weights were frozen while the adapter trained, so their values now are the originals.
            base = _base_parameters(adapter)
            originals = {n: base[n].detach().clone() for n in adapter.delta_weights()}
            adapter.merge()
            adapter = None
    except BaseException:
        # Whatever happened (NaN, an error, Ctrl-C), the caller gets back the model it gave us.
        if cache is not None:
            cache.remove()
        if adapter is not None:
            adapter.unload()
        restore(model, originals)
        remove_hooks(casts)
        _reset(model, grad_flags, was_training)
        raise
    _reset(model, grad_flags, was_training)
    t_total = placement.clock() - t0 + loop.resumed_s  # earlier processes' epochs count too
    timings = {"encode_s": t_encode, "prefix_s": t_prefix, "train_s": t_total - t_encode, "total_s": t_total,
               "s_per_edit": t_total / len(requests), **({"resumed_s": loop.resumed_s} if loop.resumed_s else {})}
    return EditResult(model, cfg, ids, originals, pd.DataFrame(loop.rows), timings, n_trainable, n_truncated,
                      cache_note, adapter, casts=casts)


def _trainable_estimate(model: nn.Module, targets: list[Target], cfg: EditConfig, selected: tuple | None) -> int:
    """Parameters the edit will train, counted before anything is changed (`selected`: full
    fine-tuning's `selected_parameters`)."""
    if selected is not None:
        return sum(p.numel() for p in selected[0].values())
    # an upper bound for the memory guard: LoRA trains rank x (in + out) per wrapped Linear, AdaLoRA
    # starts at 1.5x the rank (plus a singular value per rank); twice LoRA's count covers both
    linears = [model.get_submodule(n) for n in linear_targets(model, targets)]
    return sum(2 * cfg.lora_rank * (m.in_features + m.out_features) for m in linears)


def _base_parameters(adapter: AdapterHandle) -> dict[str, nn.Parameter]:
    """Base weights under a live adapter, named as they will be once it is merged."""
    out = {}
    for name, p in adapter.peft_model.base_model.model.named_parameters():
        out[name.replace(".base_layer", "")] = p
    return out


def _reset(model: nn.Module, grad_flags: dict, was_training: bool) -> None:
    for n, p in model.named_parameters():
        if n in grad_flags:
            p.requires_grad_(grad_flags[n])
    model.train(was_training)


# This module's door: the methods it edits with, each with its parameters (config.register_method).
register_method("ft", FtParams, edit)
register_method("lora", AdapterParams, edit)
register_method("adalora", AdapterParams, edit)
