"""Values: the vector δ added to a module's output that makes the model produce the target.

`optimize_deltas` optimises, for each request, one δ added to a module's output (the MLP's for ROME,
the decoder layer's for the others) at its rows' key positions, with Adam: the mean NLL of the target
tokens over all prefixed prompts, plus ``kl_factor`` x KL(p_δ || p_0) of the next-token distribution
at the subject of "{subject} is a" (ROME's essence term, off for UnKE/AnyEdit), plus
``v_weight_decay`` x ||δ|| / ||h||², with ||δ|| clamped to ``clamp_norm`` x ||h|| after every step
(ROME/MEMIT `compute_v`/`compute_z`). `values` batches requests; `Before` and `prefix.PrefixCache`
keep a step from recomputing what δ cannot change.

Named ``deltas`` rather than ``values`` so that ``locate.values`` stays the function.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import prompts
from ...components import family_table
from ...models import cache_argument, input_device
from ...prompts import IGNORE, collate, position_ids
from ..prefix import PrefixCache
from .rows import Rows, padded_positions
from .sites import layer_of, on_device


class Values(NamedTuple):
    """The value optimisation's outcome for n requests."""

    h: torch.Tensor  # [n, d] the unperturbed output at each request's key token (bare prompt)
    delta: torch.Tensor  # [n, d] the optimised δ
    steps: list[int]  # Adam steps each request took (fewer than v_steps when its loss fell below v_stop_loss)


def value(model, module: nn.Module, r: Rows, cfg) -> Values:
    """(h, δ, steps) of one request (`values`)."""
    h, delta, steps = values(model, module, [r], cfg)
    return Values(h[0], delta[0], steps)


def values(model, module: nn.Module, groups: list[Rows], cfg) -> Values:
    """`optimize_deltas` over the requests' rows, ``value_batch`` requests at a time: δ at the key token
    of every prefixed prompt, with the KL row (where a request has one) for the KL term, for each
    request's bare prompt."""
    out = [optimize_deltas(model, module, groups[i:i + cfg.value_batch], cfg)
           for i in range(0, len(groups), cfg.value_batch)]
    return Values(torch.cat([v.h for v in out]), torch.cat([v.delta for v in out]), [s for v in out for s in v.steps])


# ---------------------------------------------------------------------------------------- values
class _AddAt:
    """A forward hook adding vectors to a module's output at (row, position) pairs."""

    def __init__(self, module: nn.Module):
        self.module, self.adds, self.first = module, [], None
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, out):
        h = out[0] if isinstance(out, tuple) else out
        if self.first is None:
            self.first = h.detach()
        if self.adds:
            h = h.clone()
            for rows, pos, vec in self.adds:  # δ lives on the input device; this layer may be on another GPU
                rows, pos = rows.to(h.device), pos.to(h.device)
                h[rows, pos] = h[rows, pos] + vec.to(h.device, h.dtype)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def remove(self):
        self.handle.remove()


class Before:
    """The keys and values, at every layer, of the positions of a batch before a given one: computed
    once (no grad) for a set of rows and a split, and handed to every step as the model's cache, so
    that a step runs only the positions from the split on. Exact (to float rounding: the attention of
    the later positions sums over the same keys in two pieces) when nothing before the split depends
    on what is optimised, as for δ added at key tokens and nowhere earlier.

    The model's own forward still builds the masks and positions: it is given the full attention
    mask and the later positions' ids. With the prefix cache on, the layers below L do not run (so
    hold no keys); they get a one-wide placeholder of the split's length, which is what the mask
    builders read the past length from (the first layer's cache)."""

    def __init__(self, model: nn.Module, cache: PrefixCache | None):
        self.model, self.cache, self.made, self.kv = model, cache, None, None
        self.name = cache_argument(model.base_model)

    def inputs(self, idx: list[int], b: dict, start: int) -> tuple[dict, dict]:
        """Batch `b` (rows `idx`, with ``position_ids``) cut to positions `start`.. and the model's cache
        argument holding the positions before (nothing when `start` is 0). The past is computed when
        the rows or the split change (a request stopped), else reused."""
        if start == 0:
            return b, {}
        from transformers import DynamicCache

        if self.made != (tuple(idx), start):
            self.kv = self._run(idx, *(b[k][:, :start] for k in ("input_ids", "attention_mask", "position_ids")))
            self.made = (tuple(idx), start)
        cut = {**b, **{k: b[k][:, start:] for k in ("input_ids", "labels", "position_ids")}}  # the mask spans the past too
        return cut, {self.name: DynamicCache(ddp_cache_data=self.kv)}  # a fresh one: a step appends to it

    @torch.no_grad()
    def _run(self, idx, input_ids, mask, ids) -> list:
        from transformers import DynamicCache

        past = DynamicCache()
        if self.cache is not None:
            self.cache.replay(idx, 0, input_ids.shape[1])
        # the decoder without the head: only the keys and values are wanted
        prompts.forward(self.model.base_model, {"input_ids": input_ids, "attention_mask": mask, "position_ids": ids},
                use_cache=True, **{self.name: past})
        n = len(self.model.get_submodule(family_table(self.model)["layers"]))
        blank = input_ids.new_zeros((input_ids.shape[0], 1, input_ids.shape[1], 1), dtype=torch.float32)
        return [(past.layers[i].keys, past.layers[i].values) if i < len(past.layers) and past.layers[i].is_initialized
                else (blank, blank) for i in range(n)]


def optimize_deltas(model, module: nn.Module, groups: list[Rows], cfg) -> Values:
    """Optimise, for each request (a group of rows), one vector δ added to `module`'s output at its
    rows' key positions so that the model produces the request's target. Returns `Values`: the
    unperturbed output at each request's first (bare-prompt) row, δ, and the steps each took. Call it
    under `frozen_eval` (the model's own weights must not collect gradients).

    Each request's loss: the mean NLL of the target over its rewrite rows, plus ``kl_factor`` x
    KL(p_δ || p_0) at its KL row's key token (when it has one), plus ``v_weight_decay`` x ||δ|| / ||h||²;
    Adam at ``v_lr`` for at most ``v_steps`` steps, ||δ|| clamped to ``clamp_norm`` x ||h|| after each.

    **Batched, with one-at-a-time semantics.** The requests share each forward pass, but nothing
    else: request g's rows only ever receive δ_g, so the gradient of the summed loss with respect to
    δ_g is that of g's own loss; Adam is elementwise, so the rows of one [G, d] parameter are G
    independent optimisers as long as they step together; a request stops on its own (its loss
    below ``v_stop_loss``, checked before its step, as the originals break out of their loop; the
    official thresholds: ROME, MEMIT, AlphaEdit 5e-2, AnyEdit 5e-3 and 1e-2 on MEMIT, UnKE never), after
    which its rows leave the batch and its δ is held. The result equals G separate calls to float
    rounding (`tests/test_locate.py`): the padding differs, nothing else. On a GPU a request's few
    short rows leave the device idle, so batching them is the speed-up; on the CPU it is the prefix
    cache below.

    **Prefix cache.** The hidden states entering `module`'s decoder layer do not depend on δ: with
    ``prefix_cache`` they are computed once (`prefix.PrefixCache`) and each step runs that layer and
    the ones above it only. Nor, attention being causal, does anything at a position before the first
    one δ (or a fixed vector) is added at, in any layer: those positions run once per set of rows and
    their keys and values are handed to each step as the model's cache (`Before`), so a step runs
    only the key token and what follows it (on ZsRE with MEMIT's prefixes about a third of the tokens).
    """
    device = input_device(model)
    d = model.config.get_text_config().hidden_size
    rows = [(g, i) for g, r in enumerate(groups) for i in range(r.n_rewrite)]
    kls = [g for g, r in enumerate(groups) if r.n_rewrite < len(r.examples)] if cfg.kl_factor else []
    examples = [groups[g].examples[i] for g, i in rows] + [groups[g].examples[-1] for g in kls]
    keys = [groups[g].keys[i] for g, i in rows] + [groups[g].keys[-1] for g in kls]
    owner = [g for g, _ in rows] + kls
    first = [rows.index((g, 0)) for g in range(len(groups))]  # each request's bare-prompt row
    pad_id = groups[0].pad_id
    layer = layer_of(model, module)
    cache = PrefixCache(model, layer, examples, pad_id) if cfg.prefix_cache and layer > 0 and cfg.v_steps > 1 else None
    before = Before(model, cache) if cfg.prefix_cache and cfg.v_steps > 1 else None
    hook = _AddAt(module)
    delta = torch.zeros(len(groups), d, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.v_lr)
    active = torch.ones(len(groups), dtype=torch.bool)
    steps = torch.zeros(len(groups), dtype=torch.long)
    h0, kl0 = None, None

    n_rewrite = len(rows)

    def forward(idx: list[int]):
        """One pass over rows `idx` (rewrite rows first, then KL rows) with their requests' δ added at
        the key tokens (and, on rewrite rows, the fixed vectors). Returns each rewrite row's mean target
        NLL, each KL row's next-token log-probabilities at its key token, and every row's key position
        among the positions that ran (those from the first one anything is added at)."""
        exs = [examples[j] for j in idx]
        kl_row = torch.tensor([j >= n_rewrite for j in idx], device=device)
        pos = padded_positions(exs, [keys[j] for j in idx]).to(device)
        rows_ = torch.arange(len(idx), device=device)
        adds = [(rows_, pos, delta[torch.tensor([owner[j] for j in idx], device=device)])]
        width = pos.new_tensor([max(len(e.input_ids) for e in exs) - len(e.input_ids) for e in exs])
        for j, row in zip(idx, rows_):
            for p, vec in groups[owner[j]].fixed if j < n_rewrite else ():
                adds.append((row, width[row] + p, vec.to(device)))
        start = min(int(p.min()) for _, p, _ in adds) if before is not None else 0
        b = on_device(collate(exs, pad_id), device)
        b["labels"] = b["labels"].masked_fill(kl_row[:, None], IGNORE)  # a KL row is read at its key token only
        b["position_ids"] = position_ids(b["attention_mask"])
        hook.adds = []  # the positions before `start` run (once per set of rows) with nothing added
        inputs, past = before.inputs(idx, b, start) if before is not None else (b, {})
        if cache is not None:
            cache.replay(idx, start)
        hook.first, hook.adds = None, [(r, p - start, v) for r, p, v in adds]
        key, labels = pos - start, inputs["labels"]
        # The head (49K x 576 on SmolLM2) runs only at the positions read: those that predict a target
        # token, and the KL rows' key tokens.
        target = labels[:, 1:]  # position q predicts target[:, q]
        reads = torch.zeros(labels.shape[1], dtype=torch.bool, device=device)
        reads[:-1] = (target != IGNORE).any(0)
        reads[key[kl_row]] = True
        keep = reads.nonzero().squeeze(1)
        column = torch.full_like(reads, -1, dtype=torch.long)
        column[keep] = torch.arange(len(keep), device=device)
        logits = prompts.forward(model, inputs, logits_to_keep=keep, use_cache=bool(past), **past).logits
        r, q = (target != IGNORE).nonzero(as_tuple=True)
        token_nll = -torch.log_softmax(logits[r, column[q]].float(), -1).gather(1, target[r, q, None])[:, 0]
        nll = torch.zeros(len(idx), device=device).index_add(0, r, token_nll) / \
            (target != IGNORE).sum(1).clamp(min=1)
        logp = torch.log_softmax(logits[rows_[kl_row], column[key[kl_row]]].float(), -1)
        return nll[~kl_row], logp, key, kl_row

    try:
        if cache is not None:
            cache.install()
        for step in range(cfg.v_steps):
            idx = [j for j in range(len(examples)) if active[owner[j]]]
            nll, logp, pos, kl_row = forward(idx)
            if h0 is None:  # the unperturbed outputs, before δ was added (the hook saw them first)
                at = hook.first.device  # the module's own device (another GPU on a dispatched model)
                h0 = hook.first[torch.tensor(first, device=at), pos[first].to(at)].float().to(device)
            own = torch.tensor([owner[j] for j in idx], device=device)
            own, kl_own = own[~kl_row], own[kl_row]
            count = torch.zeros(len(groups), device=device).index_add_(0, own, torch.ones_like(nll))
            loss = torch.zeros(len(groups), device=device).index_add(0, own, nll) / count.clamp(min=1)
            if len(kl_own):
                if kl0 is None:
                    kl0 = torch.zeros(len(groups), logp.shape[-1], device=device).index_copy(0, kl_own, logp.detach())
                kl = F.kl_div(kl0[kl_own], logp, log_target=True, reduction="none").sum(-1)
                loss = loss.index_add(0, kl_own, cfg.kl_factor * kl)
            loss = loss + cfg.v_weight_decay * delta.norm(dim=1) / h0.norm(dim=1) ** 2
            stop = (loss.detach().double().cpu() < cfg.v_stop_loss) | (step == cfg.v_steps - 1)
            stepping = active & ~stop
            active = stepping
            if not stepping.any():
                break
            held = delta.detach()[~stepping.to(device)].clone()
            opt.zero_grad()
            loss[stepping.to(device)].sum().backward()
            opt.step()
            steps += stepping
            with torch.no_grad():
                delta[~stepping.to(device)] = held  # Adam's momentum would move a request that stopped
                limit = cfg.clamp_norm * h0.norm(dim=1)  # keep each stepped δ within clamp_norm x ||h||
                norm = delta.norm(dim=1)
                over = stepping.to(device) & (norm > limit)
                delta.mul_(torch.where(over, limit / norm, torch.ones_like(norm))[:, None])
    finally:
        hook.remove()
        if cache is not None:
            cache.remove()
    return Values(h0.detach(), delta.detach(), steps.tolist())
