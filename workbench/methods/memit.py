"""MEMIT and AlphaEdit: batched closed-form updates spread over a range of MLP output matrices
(methods ``memit`` and ``alphaedit``).

**MEMIT** (Meng et al. 2023, "Mass-Editing Memory in a Transformer", §4). For the batch of requests:

1. a target hidden state z_i per request: δ added to the *output of the last edited layer* L at the
   key token, optimised for the target (`locate.optimize_deltas`, KL term included, ``value_batch``
   requests at once); z_i = h_i + δ_i;
2. for each edited layer l_j in ascending order, on the model as already edited below it: the keys K
   (W's input at the key token, the mean over the context prefixes), the current h_i at layer L, and
   the residual spread over the layers still to edit, R = (z - h) / (number of layers from l_j up);
3. Δ = R Kᵀ (λ C + K Kᵀ)⁻¹ (`locate.solve`; λ = ``mom2_weight``, C = E[k kᵀ]): the least-squares fit
   of the new keys with a penalty on moving the preserved ones. With one layer and one key this is
   ROME's rank-one update scaled by κ/(λ + κ), κ = kᵀC⁻¹k (Sherman-Morrison): equal as λ → 0.

**AlphaEdit** (Fang et al. 2025, "Null-Space Constrained Knowledge Editing"). The same z, K and R,
but the update is projected onto the null space of the preserved keys, P = Û Ûᵀ over the
eigenvectors of C below ``nullspace_threshold`` (`locate.null_space`), and fits the keys of earlier
edits too: Δ = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹ with α = ``alphaedit_l2``. Δ = Δ P, so Δ k₀ = Δ P k₀ ≈ 0
for every key the statistics saw. K_p K_pᵀ accumulates the keys of the edits already applied to
this model (recomputed after each edit, as the original code does); ``revert()`` takes them back.

Differs from the originals: statistics from offline text (`locate`); one key definition for both
(the mean over the bare prompt and the prefixes: MEMIT averages the prefix mean with the bare key);
λ of the presets scaled to the model's MLP width (see the preset files).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch

from ..config import EditConfig, register_method
from . import locate
from .locate.params import KeyParams
from .result import EditResult
from .weights import restore

_KEYS = "_workbench_alphaedit_keys"  # on the model: layer -> Σ k kᵀ of the keys of edits applied so far


@locate.frozen
def edit(model, tok, requests: list, cfg: EditConfig, progress: bool = True) -> EditResult:
    """Edit `model` in place (see the module docstring); the result reverts it bitwise."""
    t0 = time.perf_counter()
    layers = locate.layers_of(model, cfg)
    sites = [locate.site(model, l) for l in layers]
    top = locate.decoder_layer(model, layers[-1])
    stats = locate.second_moments(model, tok, [s.layer for s in sites], cfg.mom2_corpus, cfg.mom2_tokens,
                                  progress=progress) if cfg.mom2_tokens else {}
    prefixes = locate.context_prefixes(model, tok, cfg.n_prefixes, cfg.prefix_tokens, cfg.seed)
    rows = [locate.rows_for(tok, r, prefixes, cfg) for r in requests]
    originals = {f"{s.name}.weight": s.weight.detach().clone() for s in sites}
    previous = dict(getattr(model, _KEYS, {}))
    log = []
    try:
        v = locate.values(model, top, rows, cfg)  # value_batch requests at a time
        z = (v.h + v.delta.to(v.h.device)).T  # [d, n]
        for j, s in enumerate(sites):
            k = locate.mean_keys(model, s, rows, cfg.value_batch, cfg.key_mean == "two_group").T  # [d_in, n], on this layer's device
            h = locate.bare_outputs(model, top, rows, cfg.value_batch).T  # on the model as edited so far
            resid = (z.to(h.device) - h) / (len(sites) - j)
            if cfg.method == "alphaedit":
                p = projector(stats[s.layer], cfg.nullspace_threshold, k.device)
                update = alphaedit_solve(resid, k, p, getattr(model, _KEYS, {}).get(s.layer), cfg.alphaedit_l2)
            else:
                update = locate.solve(resid, k, stats.get(s.layer), cfg.mom2_weight)
            s.add(update)
            log.append({"layer": s.layer, "residual_norm": float(resid.norm()), "update_norm": float(update.norm()),
                        "steps": sum(v.steps) if j == 0 else 0, "skipped": False})
        if cfg.method == "alphaedit":  # the keys of this edit join the preserved ones, as the edited model sees them
            acc = dict(getattr(model, _KEYS, {}))
            for s in sites:
                k = locate.mean_keys(model, s, rows, cfg.value_batch, cfg.key_mean == "two_group").T
                acc[s.layer] = acc.get(s.layer, 0) + k @ k.T
            setattr(model, _KEYS, acc)
    except BaseException:
        restore(model, originals)
        setattr(model, _KEYS, previous)
        raise
    undo = [lambda: setattr(model, _KEYS, previous)] if cfg.method == "alphaedit" else []
    return EditResult(model, cfg, [r.id for r in requests], originals, pd.DataFrame(log),
                      locate.timings(t0, len(requests)),
                      sum(s.weight.numel() for s in sites), prefix_cache="n/a (closed form)", undo=undo)


_P: dict = {}


def projector(c: torch.Tensor, threshold: float, device) -> torch.Tensor:
    """AlphaEdit's projector for statistics `c` (kept on the CPU), computed once on `device`, where the
    keys are: the eigendecomposition of a d_in x d_in matrix takes minutes on a CPU at 8B."""
    key = (id(c), threshold, str(device))
    if key not in _P:
        _P[key] = locate.null_space(locate.beside(c, torch.empty(0, device=device), "the statistics C"), threshold)
    return _P[key]


def alphaedit_solve(resid: torch.Tensor, k: torch.Tensor, p: torch.Tensor, previous: torch.Tensor | None,
                    alpha: float) -> torch.Tensor:
    """Δ = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹, [d_out, d_in], computed as the transpose of
    (P (K_p K_pᵀ + K Kᵀ) + α I)⁻¹ P K Rᵀ (P is symmetric)."""
    k = k.double()
    p = locate.beside(p, k, "the null-space projector P").double()
    r = locate.beside(resid, k, "the residuals R").double()
    a = k @ k.T
    if previous is not None:  # a resumed sequence's keys come back on the CPU
        a = a + locate.beside(previous, k, "the preserved keys' K_p K_pᵀ").double()
    lhs = p @ a + alpha * torch.eye(len(p), dtype=torch.float64, device=k.device)
    return torch.linalg.solve(lhs, p @ k @ r.T).T.float()


@dataclass(frozen=True)
class MemitParams(KeyParams):
    mom2_weight: float = 15000.0  # MEMIT's λ: weight of the preserved keys' statistics in the solve

    NON_NEGATIVE = KeyParams.NON_NEGATIVE + ("mom2_weight",)


@dataclass(frozen=True)
class AlphaEditParams(KeyParams):
    nullspace_threshold: float = 2e-2  # AlphaEdit: eigenvalues of C below this span the null space
    alphaedit_l2: float = 10.0  # AlphaEdit's ridge term α

    NON_NEGATIVE = KeyParams.NON_NEGATIVE + ("nullspace_threshold", "alphaedit_l2")


# This module's door: the methods it edits with, each with its parameters (config.register_method).
register_method("memit", MemitParams, edit)
register_method("alphaedit", AlphaEditParams, edit)
