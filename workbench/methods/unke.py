"""UnKE and AnyEdit: editing unstructured answers through a whole decoder layer (methods ``unke`` and
``anyedit``).

**UnKE** (Deng et al. 2024, "Everything is Editable", arXiv 2405.15349). Keys and values are a
whole layer's input and output ("non-local block key-value storage"), and the key token is the last
prompt token ("cause-driven": the question, not a subject, causes the answer). Per request:

1. the value: δ added to the output of decoder layer l at the last prompt token, optimised for the
   whole answer (NLL over every target token, no KL term; `locate.optimize_deltas`); z = h + δ;
2. the layer: *every* parameter of layer l is trained (``unke_steps`` steps of ``optimizer`` at
   ``lr``) on two mean-squared errors: the layer's outputs on the question, with the key token's
   target moved to z and every other position kept, and its outputs on ``n_preserve`` unrelated
   passages, kept as they were. The layer is run inside the model's own forward (the layers below
   replay their cached outputs, `prefix.PrefixCache`, and the forward stops after layer l), so
   masks and positions are the model's own.

**AnyEdit** (Jiang et al. 2025, "AnyEdit: Edit Any Knowledge Encoded in Language Models",
arXiv 2502.05628). A long answer is edited autoregressively in chunks of ``chunk_tokens`` tokens:
chunk c's key token is the one before it (the last prompt token for the first chunk, else the last
token of chunk c-1), its δ_c is optimised for that chunk given the question and the earlier chunks
(teacher-forced) with the earlier δs applied, and then all chunk targets are written at once by the
base method, ``anyedit_base``: UnKE's layer training on the whole question + answer, or MEMIT's
solve with the keys of the sequence's other tokens preserved, Δ = R Kᵀ (λ C + K_p K_pᵀ + K Kᵀ)⁻¹.
With ``chunk_tokens`` ≥ the answer's length AnyEdit on UnKE is UnKE.

As the official code runs them (TrustedLLM/UnKE, jianghoucheng/AnyEdit; the presets): the answer is
closed by the end-of-turn (their data appends it), UnKE's value loop never stops early and AnyEdit's
stops below 5e-3 (1e-2 on MEMIT: ``v_stop_loss``), the preserved samples are drawn afresh for each
edit in the chat format (``preserve_set: chat_per_edit``) and AdamW leaves the layer norms undecayed
(``decay_norms: false``). Differs from the originals: the preserved samples are MMLU questions with
their right choice as the reply (UnKE draws Alpaca samples, which are not offline here); the
mean-squared errors average over real tokens only (UnKE's include padding); the layer runs inside
the model's forward, so masks and positions are the model's own (the originals rebuild them for
Llama-3 and Qwen2.5 only); one request per update (UnKE's batch size 1).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch

from .. import data, placement
from ..components import family_table
from ..config import EditConfig, register_method
from ..errors import ConfigError
from ..models import spec
from ..prompts import IGNORE, Encoded, collate, encode
from . import locate
from .locate.params import ValueParams
from .ft import make_optimizer
from .prefix import PrefixCache
from .result import EditResult
from .weights import float32_master, remove_hooks, restore


@locate.frozen
def edit(model, tok, requests: list, cfg: EditConfig, progress: bool = True) -> EditResult:
    """Edit `model` in place (see the module docstring); the result reverts it bitwise."""
    t0 = time.perf_counter()
    layers = locate.layers_of(model, cfg)
    use_memit = cfg.method == "anyedit" and cfg.anyedit_base == "memit"
    if not use_memit and len(layers) != 1:
        raise ConfigError(f"{cfg.method} trains one decoder layer; layers={list(cfg.layers)}")
    block = locate.decoder_layer(model, layers[-1])
    if use_memit:
        sites = [locate.site(model, l) for l in layers]
        originals = {f"{s.name}.weight": s.weight.detach().clone() for s in sites}
    else:
        originals = {n: p.detach().clone() for n, p in layer_parameters(model, layers[0]).items()}
        preserve = preserved(tok, cfg) if cfg.preserve_set == "mmlu_fixed" else None
    log, casts = [], []
    try:
        for req in requests:
            seq, positions, deltas, v_steps = values(model, tok, block, req, cfg)
            if use_memit:
                memit_write(model, tok, sites, block, seq, positions, deltas, cfg, progress)
                log.append({"request": req.id, "chunks": len(positions), "steps": v_steps,
                            "skipped": False})
            else:
                if cfg.method == "unke":  # UnKE trains on the question alone; AnyEdit on question + answer
                    seq = Encoded(seq.input_ids[:seq.n_prompt], [IGNORE] * seq.n_prompt, seq.n_prompt, False)
                keep = preserve if preserve is not None else preserved(tok, cfg, req)  # UnKE: drawn per edit
                losses, casts = train_layer(model, tok, layers[0], seq, positions, deltas, keep, cfg, casts)
                # value_steps at chunks x (v_steps - 1), the most it can take, says the value never converged
                # (benchmarks/value_convergence.py); "steps" stays the layer's, as the result counts them
                log.append({"request": req.id, "chunks": len(positions), "loss": losses[-1],
                            "steps": cfg.unke_steps, "value_steps": v_steps, "skipped": False})
    except BaseException:
        restore(model, originals)
        remove_hooks(casts)
        raise
    n_trainable = sum(v.numel() for v in originals.values())
    return EditResult(model, cfg, [r.id for r in requests], originals, pd.DataFrame(log),
                      locate.timings(t0, len(requests)),
                      n_trainable, prefix_cache="n/a", casts=casts)


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk of `size` target tokens (one chunk for ``unke``)."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def sequence(tok, req, cfg) -> Encoded:
    """The edit sequence: the question and the whole answer, labelled, closed by the end-of-turn with
    ``target_eot`` (UnKE's and AnyEdit's data append it to the answer)."""
    return encode(tok, req.prompt, req.target, "target", cfg.chat_template, cfg.max_length, eot=cfg.target_eot)


def values(model, tok, block, req, cfg) -> tuple[Encoded, list[int], list[torch.Tensor], int]:
    """The edit sequence (prompt + target), the key position of each chunk in it, each chunk's δ, and
    the value optimisation's Adam steps over the chunks."""
    full = sequence(tok, req, cfg)
    n_p, target = full.n_prompt, full.input_ids[full.n_prompt:]
    spans = chunks(len(target), cfg.chunk_tokens if cfg.method == "anyedit" else len(target))
    positions, deltas, fixed, steps = [], [], [], 0
    for start, end in spans:
        ids = full.input_ids[:n_p + end]
        labels = [IGNORE] * (n_p + start) + target[start:end]
        pos = n_p - 1 + start  # the token before the chunk
        rows = locate.Rows([Encoded(ids, labels, n_p, False)], [pos], 1, spec(tok).pad_id, fixed=list(fixed))
        _, delta, taken = locate.value(model, block, rows, cfg)
        fixed.append((pos, delta))
        positions.append(pos)
        deltas.append(delta)
        steps += taken[0]
    return full, positions, deltas, steps


def preserved(tok, cfg, req=None) -> list[Encoded]:
    """``n_preserve`` passages whose layer outputs must not move. ``preserve_set: mmlu_fixed``: a seeded
    draw from the statistics corpus, the same for every edit; ``chat_per_edit``: instruction samples
    in the chat template (`instruction_samples`), drawn for request `req` (seeded by the config's seed
    and the request's id, so an edit's samples do not depend on which edits ran before it)."""
    if cfg.preserve_set == "chat_per_edit":
        if req is None:
            raise ConfigError("preserve_set='chat_per_edit' draws the preserved samples per request: pass it")
        return instruction_samples(tok, cfg, random.Random(f"preserve-{cfg.seed}-{req.id}"))
    texts, _ = data.corpus(cfg.mom2_corpus)
    picks = random.Random(f"preserve-{cfg.seed}").sample(range(len(texts)), min(cfg.n_preserve, len(texts)))
    out = []
    for i in picks:
        ids = tok(texts[i], truncation=True, max_length=min(cfg.max_length, 128))["input_ids"]
        out.append(Encoded(ids, [IGNORE] * len(ids), len(ids), False))
    return out


def _mmlu_rows() -> list[tuple[str, list[str], int]]:
    """(question, four choices, index of the right one) of every MMLU test and dev question."""
    import csv

    from .. import data

    out = []
    for path in sorted(data.find("mmlu-probe").parent.glob("*/*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            out += [(r["question"], [r[f"choice{i}"] for i in range(4)], int(r["answer"])) for r in csv.DictReader(f)]
    return out


def instruction_samples(tok, cfg, rng: random.Random) -> list[Encoded]:
    """``n_preserve`` instruction samples as UnKE preserves them: the instruction rendered as a user
    turn with the generation prompt, then the reply, no end-of-turn after it (UnKE's code: its chat
    prefix + instruction + input, then output). UnKE draws them from Alpaca, which is not offline here:
    ours are MMLU questions (the data folder) with their choices as the instruction and the right
    choice as the reply. Without ``chat_template`` the plain question, a space and the reply."""
    from ..prompts import prompt_ids

    rows = _mmlu_rows()
    out = []
    for i in rng.sample(range(len(rows)), min(cfg.n_preserve, len(rows))):
        question, choices, answer = rows[i]
        instruction = question + "\n" + "\n".join(f"{'ABCD'[j]}. {c}" for j, c in enumerate(choices))
        reply = f"{'ABCD'[answer]}. {choices[answer]}"
        ids = prompt_ids(tok, instruction, cfg.chat_template) + \
            tok(reply if cfg.chat_template else " " + reply, add_special_tokens=False)["input_ids"]
        ids = ids[:min(cfg.max_length, 256)]
        out.append(Encoded(ids, [IGNORE] * len(ids), len(ids), False))
    return out


def train_layer(model, tok, layer: int, seq: Encoded, positions: list[int], deltas: list[torch.Tensor],
                preserve: list[Encoded], cfg, casts: list) -> tuple[list[float], list]:
    """UnKE's step 2: train every parameter of `layer` so that its outputs on `seq` move by each δ at
    its position and stay elsewhere, and its outputs on `preserve` stay. Returns the losses and the
    float32 compute hooks (for revert)."""
    block = locate.decoder_layer(model, layer)
    examples = [seq, *preserve]
    pad_id = spec(tok).pad_id
    batch = collate(examples, pad_id)
    width = batch["input_ids"].shape[1]
    with torch.no_grad():
        goal = locate.layer_outputs(model, block, batch).clone()
        for pos, delta in zip(positions, deltas):
            goal[0, width - len(seq.input_ids) + pos] += delta.to(goal.device, goal.dtype)
    real = batch["attention_mask"].bool().to(goal.device)
    trainable = layer_parameters(model, layer)
    casts = casts + float32_master(model, trainable)
    for p in trainable.values():
        p.requires_grad_(True)
    cache = PrefixCache(model, layer, examples, pad_id) if layer > 0 else None
    norms = {id(p) for m in block.modules() if "norm" in type(m).__name__.lower() for p in m.parameters()}
    if cfg.decay_norms or not cfg.weight_decay:
        groups = list(trainable.values())
    else:  # UnKE's code exempts the layer norms from AdamW's decay
        groups = [{"params": [p for p in trainable.values() if id(p) not in norms]},
                  {"params": [p for p in trainable.values() if id(p) in norms], "weight_decay": 0.0}]
    opt = make_optimizer(cfg, groups)
    losses = []
    try:
        if cache is not None:
            cache.install()
        for _ in range(cfg.unke_steps):
            if cache is not None:
                cache.replay(list(range(len(examples))))
            out = locate.layer_outputs(model, block, batch, grad=True).float()
            err = (out - goal.float()).pow(2).mean(-1)  # [B, T]
            edit_term = err[0][real[0]].mean()
            keep_term = err[1:][real[1:]].mean() if len(examples) > 1 else err.new_zeros(())
            loss = edit_term + keep_term
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())  # read once, after the loop: no host-device sync per step
    finally:
        if cache is not None:
            cache.remove()
        for p in trainable.values():  # back to frozen, as `locate.frozen` left them
            p.requires_grad_(False)
    return torch.stack(losses).tolist() if losses else [], casts


def layer_parameters(model, layer: int) -> dict:
    """Every parameter of decoder layer `layer`, by its full name in the model."""
    name = f"{family_table(model)['layers']}.{layer}"
    params = {f"{name}.{n}": p for n, p in model.get_submodule(name).named_parameters()}
    placement.trainable_on_device(model, params)  # an offloaded layer would lose the update
    return params


def memit_write(model, tok, sites, top, seq: Encoded, positions: list[int], deltas: list[torch.Tensor], cfg,
                progress: bool) -> None:
    """AnyEdit on MEMIT: each chunk's target written by MEMIT's solve, the keys of the sequence's
    other tokens preserved (K_p K_pᵀ inside the inverse)."""
    stats = locate.second_moments(model, tok, [s.layer for s in sites], cfg.mom2_corpus, cfg.mom2_tokens,
                                  progress=progress) if cfg.mom2_tokens else {}
    batch = collate([seq], spec(tok).pad_id)
    n = len(seq.input_ids)
    rows, pos = torch.zeros(len(positions), dtype=torch.long), torch.tensor(positions)
    h0 = locate.outputs(model, top, batch, rows, pos)
    z = (h0 + torch.stack(deltas).to(h0.device)).T  # [d, chunks]
    other = torch.tensor([i for i in range(n) if i not in set(positions)])
    for j, s in enumerate(sites):
        every = locate.keys(model, s, batch, torch.zeros(n, dtype=torch.long), torch.arange(n))  # [n, d_in]
        k = every[pos].T
        rest = every[other] if len(other) else every[:0]
        h = locate.outputs(model, top, batch, rows, pos).T
        update = locate.solve((z - h) / (len(sites) - j), k, stats.get(s.layer), cfg.mom2_weight,
                              extra=rest.T @ rest)
        s.add(update)


@dataclass(frozen=True)
class UnkeParams(ValueParams):
    unke_steps: int = 50  # optimiser steps (`optimizer`, `lr`) on the decoder layer
    n_preserve: int = 20  # unrelated passages whose layer outputs are kept
    # what they are. "mmlu_fixed": the same n_preserve MMLU questions (plain text) for every edit;
    # "chat_per_edit": n_preserve instruction samples in the chat template (an MMLU question with its choices, the
    # right choice as the reply), drawn afresh for each edit (UnKE's code draws 20 Alpaca samples per edit)
    preserve_set: Literal["mmlu_fixed", "chat_per_edit"] = "mmlu_fixed"
    decay_norms: bool = True  # weight decay on the layer norms too (false: exempt, as UnKE's code)

    AT_LEAST_ONE = ValueParams.AT_LEAST_ONE + ("unke_steps",)
    NON_NEGATIVE = ValueParams.NON_NEGATIVE + ("n_preserve",)
    SMOKE = {**ValueParams.SMOKE, "unke_steps": 5, "n_preserve": 4}


@dataclass(frozen=True)
class AnyEditParams(UnkeParams):
    chunk_tokens: int = 40  # answer tokens per chunk
    anyedit_base: Literal["unke", "memit"] = "unke"  # the method that writes the chunks' values
    mom2_weight: float = 15000.0  # the MEMIT base's λ (anyedit_base: memit)

    AT_LEAST_ONE = UnkeParams.AT_LEAST_ONE + ("chunk_tokens",)
    NON_NEGATIVE = UnkeParams.NON_NEGATIVE + ("mom2_weight",)


# This module's door: the methods it edits with, each with its parameters (config.register_method).
register_method("unke", UnkeParams, edit)
register_method("anyedit", AnyEditParams, edit)
