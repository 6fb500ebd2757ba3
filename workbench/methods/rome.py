"""ROME: a rank-one update of one MLP output matrix per fact (Meng et al. 2022, "Locating and Editing
Factual Associations in GPT", §3; method ``rome``).

For each request, in order (each on the model the previous ones edited):

1. the key: k̄, the mean over the context prefixes of W's input at the key token (the subject's
   last token), and k, the same at the bare prompt;
2. the value: δ added to the MLP output at the key token of every prefixed prompt, optimised for the
   target with the KL term at "{subject} is a" (`locate.optimize_deltas`); v* = W k + δ;
3. the closed form: with u = C⁻¹ k̄ (C = E[k kᵀ], `locate.second_moment`; u = k̄ with
   ``mom2_tokens=0``, as EasyEdit's Llama presets), W' = W + (v* - W k) uᵀ / (uᵀ k), so that
   W' k = v* exactly and any input orthogonal to u is mapped as before.

Differs from the original: the statistics come from text that ships offline (`locate`), the
prefixes are sampled with a seed, and one prefix length is used (ROME: 10 of 5 and 10 of 10 tokens).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch

from ..config import EditConfig, register_method
from ..errors import ConfigError
from . import locate
from .locate.params import KeyParams
from .result import EditResult
from .weights import restore


@locate.frozen
def edit(model, tok, requests: list, cfg: EditConfig, progress: bool = True) -> EditResult:
    """Edit `model` in place (see the module docstring); the result reverts it bitwise."""
    if len(locate.layers_of(model, cfg)) != 1:
        raise ConfigError(f"rome edits one layer; layers={list(cfg.layers)} (use memit for several)")
    t0 = time.perf_counter()
    s = locate.site(model, locate.layers_of(model, cfg)[0])
    c = locate.second_moment(model, tok, s.layer, cfg.mom2_corpus, cfg.mom2_tokens, progress=progress) \
        if cfg.mom2_tokens else None
    prefixes = locate.context_prefixes(model, tok, cfg.n_prefixes, cfg.prefix_tokens, cfg.seed)
    originals = {f"{s.name}.weight": s.weight.detach().clone()}
    rows = []
    try:
        for req in requests:
            r = locate.rows_for(tok, req, prefixes, cfg)
            k_bar = locate.mean_keys(model, s, [r], 1, cfg.key_mean == "two_group")[0]
            k = locate.keys(model, s, r.batch, torch.tensor([0]), r.positions[:1])[0]
            _, delta, steps = locate.value(model, s.module, r, cfg)  # δ at the MLP output
            update = rank_one(s.matrix(), k, k_bar, delta, c)
            s.add(update)
            rows.append({"request": req.id, "delta_norm": float(delta.norm()), "update_norm": float(update.norm()),
                         "steps": steps[0], "skipped": False})
    except BaseException:
        restore(model, originals)
        raise
    return EditResult(model, cfg, [r.id for r in requests], originals, pd.DataFrame(rows),
                      locate.timings(t0, len(requests)),
                      s.weight.numel(), prefix_cache="n/a (closed form)")


def rank_one(w: torch.Tensor, k: torch.Tensor, k_bar: torch.Tensor, delta: torch.Tensor,
             c: torch.Tensor | None) -> torch.Tensor:
    """ROME's update [d_out, d_in]: (v* - W k) uᵀ / (uᵀ k) with v* = W k + δ and u = C⁻¹ k̄ (or k̄),
    computed on the keys' device (C comes from the CPU: `locate.beside`)."""
    k, k_bar = k.double(), locate.beside(k_bar, k, "the mean key k̄").double()
    w, delta = locate.beside(w, k, "W").double(), locate.beside(delta, k, "δ").double()
    u = k_bar if c is None else torch.linalg.solve(locate.beside(c, k, "the second-moment statistics C").double(), k_bar)
    v_star = w @ k + delta
    return (torch.outer(v_star - w @ k, u) / (u @ k)).float()


@dataclass(frozen=True)
class RomeParams(KeyParams):
    """ROME's parameters: the value optimisation and the prefix-averaged key (locate/params.py); its solve
    needs nothing more."""


register_method("rome", RomeParams, edit)  # this module's door
