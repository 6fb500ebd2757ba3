"""Locate-and-edit: the pieces ROME, MEMIT, AlphaEdit, UnKE and AnyEdit share, written once.

These methods edit a *located* weight so that a key (the hidden state at one token) maps to a new
value. Notation: at decoder layer l the MLP's output matrix W (``down_proj``; GPT-2's ``c_proj``) maps
its input k (the key, size d_ff) to the MLP output W k (size d). Everything below is shared:

* **sites** (`site`): W at layer l, with GPT-2's Conv1D layout ([in, out]) hidden behind `Site.add`;
* **key positions** (`key_position`): the subject's last token of the rendered prompt (ROME, MEMIT,
  AlphaEdit) or the last prompt token (UnKE's "cause-driven" key; AnyEdit; and the documented
  fallback for requests without a subject, which is how AnyEdit runs MEMIT on UnKEBench);
* **context prefixes** (`context_prefixes`): short texts the model itself generates, prepended to
  the prompt so that keys and values do not depend on one phrasing (ROME Eq. 3 averages the key over
  them); the bare prompt is the first "prefix";
* **keys** (`keys`): W's input at given (row, position) pairs, one forward pass that stops at l;
* **values** (`optimize_deltas`): a vector δ added to a module's output (the MLP's for ROME, the
  decoder layer's for the others) at the key positions, optimised with Adam so that the model
  produces the target: the mean NLL of the target tokens over all prefixed prompts, plus
  ``kl_factor`` x KL(p_δ || p_0) of the next-token distribution at the subject of "{subject} is a"
  (ROME's essence term, off for UnKE/AnyEdit), plus ``v_weight_decay`` x ||δ|| / ||h||², with ||δ||
  clamped to ``clamp_norm`` x ||h|| after every step (ROME/MEMIT `compute_v`/`compute_z`);
* **second moments** (`second_moment`): C = E[k kᵀ] (uncentred) of W's input over a text corpus,
  batched, cached on disk, guarded for memory;
* **the closed-form solve** (`solve`): Δ = R Kᵀ (λ C + K Kᵀ + extra)⁻¹, MEMIT's least-squares update,
  which with one key and λ → 0 is ROME's rank-one update (Sherman-Morrison);
* **null-space projection** (`null_space`): P = Û Ûᵀ over the eigenvectors of C with eigenvalues
  below a threshold (AlphaEdit).

Sources: Meng et al. 2022 (ROME, §3), Meng et al. 2023 (MEMIT, §4), Fang et al. 2025 (AlphaEdit),
Deng et al. 2024 (UnKE), Jiang et al. 2025 (AnyEdit), and our reading of kmeng01/rome, kmeng01/memit,
jianghoucheng/AlphaEdit, TrustedLLM/UnKE and zjunlp/EasyEdit; no code was copied.

Statistics: the originals compute C from 100,000 Wikipedia documents. Offline we use text that
ships with the benchmarks: by default the MMLU test and dev questions with their choices (14,327
passages, 1,242,345 tokens on SmolLM2's tokenizer cut at 256 each; ``mom2_tokens`` caps what is
used, 100,000 by default, drawn in a seeded order), or a
user's corpus (a .txt file, one passage per line, or a .jsonl with a "text" field). Exam questions
are shorter and more formal than encyclopaedia text, so C (and AlphaEdit's null space) describes
a narrower distribution of keys than the papers'.
"""
from __future__ import annotations

import functools
import hashlib
import json
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import data, placement, resources
from ..components import family_table, resolve
from ..errors import ConfigError, DataError, EditError
from ..models import cache_argument, cache_dir, input_device, spec, tensor_sums
from ..prompts import IGNORE, Encoded, collate, encode, position_ids, prompt_ids
from .prefix import PrefixCache


class _Stop(Exception):
    """Raised by a hook once what is needed has been captured: the layers above never run."""


def frozen(edit_fn):
    """Decorator for a method's ``edit``: it runs under `frozen_eval`."""
    @functools.wraps(edit_fn)
    def edit(model, tok, requests: list, cfg, progress: bool = True):
        with frozen_eval(model):
            return edit_fn(model, tok, requests, cfg, progress)
    return edit


def layers_of(model, cfg) -> list[int]:
    """The edited layers of `cfg`, as non-negative indices in ascending order."""
    if cfg.layers == "all":
        raise ConfigError(f"{cfg.method} needs explicit layers, not 'all'")
    return sorted(layer_index(model, layer) for layer in cfg.layers)


def timings(t0: float, n: int) -> dict:
    """An EditResult's timings for a method that has no separate encoding phase."""
    t = placement.clock() - t0
    return {"encode_s": 0.0, "train_s": t, "total_s": t, "s_per_edit": t / n}


@contextmanager
def frozen_eval(model):
    """Eval mode (no dropout) and no parameter requiring grad, restored afterwards: the methods
    optimise their own vectors or choose their own trainable weights."""
    was, flags = model.training, {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
        model.train(was)


# ---------------------------------------------------------------------------------------- sites
@dataclass(frozen=True)
class Site:
    """The MLP output matrix W of one decoder layer."""

    layer: int
    name: str  # module path, e.g. "model.layers.5.mlp.down_proj"
    module: nn.Module
    conv1d: bool  # GPT-2's Conv1D stores W as [in, out]

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    def matrix(self) -> torch.Tensor:
        """W as [out, in] (a float32 copy)."""
        w = self.weight.detach().float()
        return w.T.clone() if self.conv1d else w.clone()

    @torch.no_grad()
    def add(self, delta: torch.Tensor) -> None:
        """W += delta ([out, in]), in W's own dtype and device."""
        d = delta.T if self.conv1d else delta
        self.weight.add_(d.to(self.weight.device, self.weight.dtype))


def site(model: nn.Module, layer: int) -> Site:
    """The MLP output matrix of `layer` (the family table's ``down``)."""
    target = resolve(model, ("down",), (layer,))[0]
    module = model.get_submodule(target.name)
    placement.trainable_on_device(model, [f"{target.name}.weight"])  # an offloaded W would lose the update
    return Site(target.layer, target.name, module, type(module).__name__ == "Conv1D")


def decoder_layer(model: nn.Module, layer: int) -> nn.Module:
    return model.get_submodule(family_table(model)["layers"])[layer]


def layer_index(model: nn.Module, layer: int) -> int:
    return resolve(model, ("down",), (layer,))[0].layer


# -------------------------------------------------------------------------------- key positions
def key_position(tok, prompt: str, subject: str, chat_template: bool, where: str) -> int:
    """Index, in the rendered prompt's tokens (`prompts.prompt_ids`), of the token whose hidden state is
    the key: the last token of the subject's last occurrence (``subject_last``) or the last prompt
    token (``prompt_last``)."""
    ids = prompt_ids(tok, prompt, chat_template)
    if where == "prompt_last":
        return len(ids) - 1
    if not subject:
        raise ConfigError("this request has no subject, and key_position='subject_last' needs one (UnKEBench "
                          "questions have none): set key_position='prompt_last', the last prompt token, as UnKE "
                          "and AnyEdit do")
    if chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    else:
        text = prompt
        enc = tok(prompt, return_offsets_mapping=True)
    if enc["input_ids"] != ids:
        raise ConfigError("the tokenizer's offsets do not match its encoding of the prompt; use key_position='prompt_last'")
    end = text.rfind(subject)
    if end < 0:
        raise DataError(f"the subject {subject!r} does not occur in the prompt {prompt!r}", field="subject")
    end += len(subject)
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > a]
    return inside[-1]


# ------------------------------------------------------------------------------ context prefixes
_PREFIXES = "_workbench_prefixes"  # on the model: (n, length, seed) -> prefixes (carried state, `result.carried`)


@torch.no_grad()
def context_prefixes(model, tok, n: int, length: int, seed: int = 0) -> list[str]:
    """``[""]`` and `n` short texts of `length` tokens sampled from the model itself (top-5 sampling,
    seeded), each ending in ". ", to prepend to a prompt (ROME's context templates). Sampled once per
    model and kept on it, as the originals keep theirs for the process: the later edits of a sequence
    use the prefixes the unedited model gave, and a resumed sequence gets them back from its
    checkpoint (they are state the model carries, `result.carried`)."""
    if n == 0:
        return [""]
    cache = getattr(model, _PREFIXES, None)
    if cache is None:
        cache = {}
        setattr(model, _PREFIXES, cache)
    key = (n, length, seed)
    if key not in cache:
        starts = ["The", "Therefore", "Because", "I", "You"]
        gen = torch.Generator().manual_seed(seed)
        out = []
        device = input_device(model)
        for i in range(n):
            ids = tok(starts[i % len(starts)], add_special_tokens=False)["input_ids"]
            for _ in range(length):
                logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float().cpu()
                top = logits.topk(5)
                pick = top.indices[torch.multinomial(top.values.softmax(-1), 1, generator=gen)].item()
                ids.append(pick)
            text = tok.decode(ids, skip_special_tokens=True).replace("{", " ").replace("}", " ").strip()
            out.append(text.rstrip(".") + ". ")
        cache[key] = [""] + out
    return cache[key]


# ------------------------------------------------------------------------------------------ rows
@dataclass
class Rows:
    """The rows of one request for its key and value: each prefixed prompt with the target (labelled),
    then, when there is one, ROME's KL row "{subject} is a"."""

    examples: list[Encoded]
    keys: list[int]  # the key position in each example, an index into its own tokens
    n_rewrite: int  # rows that carry the target (the rest: the KL row)
    pad_id: int
    fixed: list = field(default_factory=list)  # [(position, vector)] added to every rewrite row and kept fixed (AnyEdit's earlier chunks)

    @functools.cached_property
    def batch(self) -> dict:
        """The rows left-padded together (`prompts.collate`)."""
        return collate(self.examples, self.pad_id)

    @property
    def positions(self) -> torch.Tensor:
        """[R] the key position of each row in `batch`."""
        return padded_positions(self.examples, self.keys)


def padded_positions(examples: list[Encoded], keys: list[int]) -> torch.Tensor:
    """Where each example's key position lands once `prompts.collate` left-pads them together."""
    width = max(len(e.input_ids) for e in examples)
    return torch.tensor([width - len(e.input_ids) + k for e, k in zip(examples, keys)])


def rows_for(tok, req, prefixes: list[str], cfg, kl: bool | None = None) -> Rows:
    """One row per prefix: the prefixed prompt and the target, labelled (closed by the end-of-turn only
    with ``target_eot``: ROME's, MEMIT's and AlphaEdit's code trains the target alone); and with `kl`
    (default: when ``kl_factor`` is on and the request has a subject) ROME's essence prompt "{subject} is a"."""
    if kl is None:
        kl = bool(cfg.kl_factor and req.subject)
    texts = [p + req.prompt for p in prefixes]
    exs, pos = [], []
    for text in texts:
        e = encode(tok, text, req.target, "target", cfg.chat_template, cfg.max_length, eot=cfg.target_eot)
        exs.append(e)
        k = key_position(tok, text, req.subject, cfg.chat_template, cfg.key_position)
        pos.append(k - (len(prompt_ids(tok, text, cfg.chat_template)) - e.n_prompt))  # the prompt may be cut on the left
    if kl:
        text = f"{req.subject} is a"
        e = encode(tok, text, " ", "target", cfg.chat_template, cfg.max_length)
        exs.append(e)
        pos.append(key_position(tok, text, req.subject, cfg.chat_template, "subject_last"))
    if min(pos) < 0:
        raise ConfigError(f"request {req.id}: the key token was cut off by max_length={cfg.max_length}")
    return Rows(exs, pos, len(texts), spec(tok).pad_id)


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


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------ keys
def capture(model, module: nn.Module, batch: dict, output: bool, grad: bool = False) -> torch.Tensor:
    """`module`'s input (``output=False``) or output on `batch` ([B, T, ·], with autograd when
    `grad`), from one forward pass that stops there: the layers above never run."""
    if not output:
        return capture_inputs(model, [module], batch, grad)[0]
    captured = {}

    def after(mod, args, out):
        captured["x"] = out[0] if isinstance(out, tuple) else out
        raise _Stop

    handle = module.register_forward_hook(after)
    try:
        _run_until_stop(model, _to(batch, input_device(model)), grad)
    finally:
        handle.remove()
    return captured["x"]


def capture_inputs(model, modules: list[nn.Module], batch: dict, grad: bool = False) -> list[torch.Tensor]:
    """The inputs of `modules` (in the order the forward pass reaches them) on `batch`, from one
    forward pass that stops at the last of them."""
    captured: dict[int, torch.Tensor] = {}

    def hook(j):
        def before(mod, args):
            captured[j] = args[0]
            if len(captured) == len(modules):
                raise _Stop  # every input is in: nothing above is needed
        return before

    handles = [m.register_forward_pre_hook(hook(j)) for j, m in enumerate(modules)]
    try:
        _run_until_stop(model, _to(batch, input_device(model)), grad)
    finally:
        for h in handles:
            h.remove()
    return [captured[j] for j in range(len(modules))]


def _run_until_stop(model, b: dict, grad: bool) -> None:
    try:
        with torch.set_grad_enabled(grad):
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                  position_ids=position_ids(b["attention_mask"]), use_cache=False)
    except _Stop:
        pass


def keys(model, s: Site, batch: dict, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """W's input (the key) at each (row, position): [N, d_in] float32."""
    k = capture(model, s.module, batch, output=False)
    return k[rows.to(k.device), positions.to(k.device)].float()


def layer_outputs(model, module: nn.Module, batch: dict, grad: bool = False) -> torch.Tensor:
    """`module`'s whole output on `batch`, [B, T, d]."""
    return capture(model, module, batch, output=True, grad=grad)


def outputs(model, module: nn.Module, batch: dict, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`module`'s output at each (row, position): [N, d] float32."""
    h = layer_outputs(model, module, batch)
    return h[rows.to(h.device), positions.to(h.device)].float()


def stacked(groups: list[Rows], bare: bool = False) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Several requests' rewrite rows (with `bare`, each one's bare prompt alone) collated into one
    batch: (batch, each row's key position in it, each row's request index)."""
    exs, where, owner = [], [], []
    for g, r in enumerate(groups):
        n = 1 if bare else r.n_rewrite
        exs += r.examples[:n]
        where += r.keys[:n]
        owner += [g] * n
    return collate(exs, groups[0].pad_id), padded_positions(exs, where), torch.tensor(owner)


def mean_keys(model, s: Site, groups: list[Rows], per_pass: int, two_group: bool = False) -> torch.Tensor:
    """The key of each request: the mean of W's input at its key token over its prefixed prompts (ROME
    Eq. 3; ROME's compute_u), [n, d_in]; with `two_group`, the mean of the bare prompt's key and the
    prefixed prompts' mean key (MEMIT's and AlphaEdit's compute_ks average per group of context
    templates, then over the groups). `per_pass` requests' rows per forward pass (the same keys to
    float rounding as one request per pass: only the padding differs)."""
    out = []
    for i in range(0, len(groups), per_pass):
        part = groups[i:i + per_pass]
        batch, pos, owner = stacked(part)
        k = keys(model, s, batch, torch.arange(len(pos)), pos)
        owner = owner.to(k.device)
        if two_group:  # each request's first row is its bare prompt (`rows_for`): a group of its own
            bare = torch.zeros(len(owner), dtype=torch.bool, device=k.device)
            bare[torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(owner.cpu())[:-1].cumsum(0)]).to(k.device)] = True
            first = k[bare]
            rest = torch.zeros(len(part), k.shape[1], device=k.device).index_add_(0, owner[~bare], k[~bare])
            count = torch.bincount(owner[~bare], minlength=len(part))[:, None]
            out.append(torch.where(count > 0, (first + rest / count.clamp(min=1)) / 2, first))
            continue
        total = torch.zeros(len(part), k.shape[1], device=k.device).index_add_(0, owner, k)
        out.append(total / torch.bincount(owner, minlength=len(part))[:, None])
    return torch.cat(out)


def bare_outputs(model, module: nn.Module, groups: list[Rows], per_pass: int) -> torch.Tensor:
    """`module`'s output at each request's key token of its bare prompt, [n, d], `per_pass` requests
    per forward pass."""
    out = []
    for i in range(0, len(groups), per_pass):
        batch, pos, _ = stacked(groups[i:i + per_pass], bare=True)
        out.append(outputs(model, module, batch, torch.arange(len(pos)), pos))
    return torch.cat(out)


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
        self.model.base_model(input_ids=input_ids, attention_mask=mask, position_ids=ids, use_cache=True,
                              **{self.name: past})
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
    layer = _layer_of(model, module)
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
        b = _to(collate(exs, pad_id), device)
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
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       position_ids=inputs["position_ids"], logits_to_keep=keep, use_cache=bool(past), **past).logits
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


def _layer_of(model: nn.Module, module: nn.Module) -> int:
    """The index of the decoder layer that holds `module` (or is it)."""
    for i, block in enumerate(model.get_submodule(family_table(model)["layers"])):
        if any(m is module for m in block.modules()):
            return i
    raise ValueError(f"{type(module).__name__} is in no decoder layer")


# -------------------------------------------------------------------------------- second moments
def corpus_texts(source: str) -> tuple[list[str], str]:
    """See `_corpus_texts`; read once per process and file version."""
    path = Path(source)
    stamp = path.stat().st_mtime if source != "mmlu" and path.is_file() else None
    texts, digest = _corpus_texts(source, stamp)
    return list(texts), digest


@lru_cache(maxsize=4)
def _corpus_texts(source: str, stamp) -> tuple[tuple[str, ...], str]:
    """Passages for the statistics and a hash naming them: ``"mmlu"`` (every MMLU test and dev
    question with its four choices, from the data folder) or a .txt (one passage per line) / .jsonl
    ("text" field) file."""
    if source == "mmlu":
        import csv

        folder = data.find("mmlu-probe").parent
        texts = []
        for path in sorted(folder.glob("*/*.csv")):
            with open(path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    texts.append(" ".join([row["question"]] + [row[f"choice{i}"] for i in range(4)]))
        if not texts:
            raise DataError("no MMLU CSVs (test/*.csv, dev/*.csv) beside the probe file", file=folder)
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
        return tuple(texts), f"mmlu-{digest}"
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"mom2_corpus={source!r}: give 'mmlu' or a .txt / .jsonl file")
    if path.suffix == ".jsonl":
        records = data.read_records(path)
        texts = [r.get("text", "") if isinstance(r, dict) else "" for r in records]
    else:
        texts = path.read_text(encoding="utf-8").splitlines()
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError("no text in the corpus", file=path)
    return tuple(texts), f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


def _stats_key(model, layer: int, corpus: str, n_tokens: int) -> str:
    """The model's weights other than its MLP output matrices (which these methods edit: statistics
    computed before a sequence of edits are reused through it, as MEMIT and AlphaEdit use the
    unedited model's), the layer, the corpus and the token count."""
    out_suffix = family_table(model)["down"]
    out_suffix = out_suffix if isinstance(out_suffix, str) else out_suffix[0]
    h = hashlib.sha256(f"{getattr(model, 'name_or_path', '')}|{layer}|{corpus}|{n_tokens}".encode())
    params = dict(model.named_parameters())
    if placement.offloaded(model):  # offloaded weights are meta placeholders: read their values back
        stored = placement.state_dict(model)
        params = {name: stored[name] for name in params}
    for name, p in params.items():
        if not name.endswith(f"{out_suffix}.weight") and not name.endswith(f"{out_suffix}.bias"):
            h.update(f"{name}{tuple(p.shape)}{p.dtype}{tensor_sums(p)}".encode())
    return h.hexdigest()[:16]


_STATS: dict[str, torch.Tensor] = {}


def second_moment(model, tok, layer: int, corpus: str = "mmlu", n_tokens: int = 100_000, batch_size: int = 16,
                  max_length: int = 256, progress: bool = True) -> torch.Tensor:
    """C = E[k kᵀ] of the MLP output matrix's input at `layer` (`second_moments` of one layer)."""
    return second_moments(model, tok, [layer], corpus, n_tokens, batch_size, max_length, progress)[site(model, layer).layer]


@torch.no_grad()
def second_moments(model, tok, layers: list[int], corpus: str = "mmlu", n_tokens: int = 100_000,
                   batch_size: int = 16, max_length: int = 256, progress: bool = True) -> dict[int, torch.Tensor]:
    """C = E[k kᵀ] of the MLP output matrix's input at each of `layers` over `n_tokens` tokens of
    `corpus` (every non-padding token counts once), {layer: [d_in, d_in] float32 on the CPU}.

    Cached in memory and on disk (``$WORKBENCH_CACHE/stats/``) by model weights, layer, corpus hash
    and token count. The layers not cached yet are computed together: one forward pass per batch,
    stopped after the highest of them, captures every layer's input (the same numbers as a pass per
    layer; MEMIT's five layers cost one pass instead of five). Processes sharing the cache take turns
    (a file lock): a second campaign worker waits for the first's statistics instead of computing
    the same ones beside it."""
    from filelock import FileLock

    sites = {s.layer: s for s in (site(model, layer) for layer in layers)}
    texts, corpus_id = corpus_texts(corpus)
    keys = {layer: _stats_key(model, layer, corpus_id, n_tokens) for layer in sites}
    folder = cache_dir() / "stats"

    def cached() -> dict:
        for layer, key in keys.items():
            if key not in _STATS and (folder / f"{key}.pt").exists():
                _STATS[key] = torch.load(folder / f"{key}.pt")
        return {layer: _STATS[key] for layer, key in keys.items() if key in _STATS}

    if len(cached()) == len(keys):
        return cached()
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "compute.lock")):
        have = cached()
        todo = [sites[layer] for layer in sorted(sites) if layer not in have]
        if todo:
            for s, c, count in _accumulate(model, tok, todo, texts, corpus_id, n_tokens, batch_size, max_length,
                                           progress):
                path = folder / f"{keys[s.layer]}.pt"
                torch.save(c, path.with_suffix(".part"))
                path.with_suffix(".part").replace(path)
                path.with_suffix(".json").write_text(json.dumps({"layer": s.layer, "module": s.name, "corpus": corpus_id,
                                                                 "tokens": count,
                                                                 "model": getattr(model, "name_or_path", "")}))
                _STATS[keys[s.layer]] = c
    return cached()


def _accumulate(model, tok, sites: list, texts, corpus_id: str, n_tokens: int, batch_size: int, max_length: int,
                progress: bool) -> list[tuple]:
    """(site, C, tokens) for each of `sites` (in layer order), from one pass per batch of the corpus.

    Each layer's sum accumulates in float64 where its keys are computed: on a GPU each batch's k kᵀ is
    a float32 product there (an fp64 matmul is up to 64x slower on most cards; the sum of a batch's
    few thousand tokens loses nothing that matters beside the corpus sample), on the CPU a float64
    product, as before. Only the mean comes back to the CPU."""
    totals = []
    for s in sites:
        d_in = s.weight.shape[0] if s.conv1d else s.weight.shape[1]
        where = placement.execution_device(s.module)
        resources.check(2 * d_in * d_in * 8, where, f"the second-moment statistics of layer {s.layer} "
                        f"({d_in} x {d_in})", "Use a smaller model or fewer layers.")
        totals.append(torch.zeros(d_in, d_in, dtype=torch.float64, device=where))
    count = 0
    rng = random.Random(f"stats-{corpus_id}")
    order = list(range(len(texts)))
    rng.shuffle(order)  # a seeded sample of the corpus, not its first subjects
    pad = spec(tok).pad_id
    layers = ", ".join(str(s.layer) for s in sites)
    bar = tqdm(total=n_tokens, desc=f"E[kk^T] layer{'s' if len(sites) > 1 else ''} {layers}", disable=not progress,
               leave=False)
    i = 0
    while count < n_tokens and i < len(order):
        enc = [tok(texts[j], truncation=True, max_length=max_length)["input_ids"] for j in order[i:i + batch_size]]
        i += batch_size
        batch = collate([Encoded(e, [IGNORE] * len(e), len(e), False) for e in enc], pad)
        real = batch["attention_mask"].bool()
        for k, total in zip(capture_inputs(model, [s.module for s in sites], batch), totals):
            flat = k[real.to(k.device)]  # every real token once
            flat = flat.double() if flat.device.type == "cpu" else flat.float()
            total += (flat.T @ flat).to(total.device, torch.float64)
        count += int(real.sum())
        bar.update(int(real.sum()))
    bar.close()
    return [(s, (total / max(count, 1)).float().cpu(), count) for s, total in zip(sites, totals)]


# ------------------------------------------------------------------------------------ the solves
def beside(t: torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor:
    """`t` on `like`'s device. The statistics (C, AlphaEdit's projector and preserved keys) are kept on
    the CPU, between edits and on disk, while keys and values live where the model computes: every
    solve brings them together here. A tensor on ``meta`` holds no values (an offloaded placeholder):
    that is a workbench bug to report, named, not torch's "Cannot copy out of meta tensor"."""
    if t.device.type == "meta" and like.device.type != "meta":
        raise EditError(f"{what} is on the meta device (a placeholder without values) while the keys are on "
                        f"{like.device}: statistics must be computed from real weights (placement.state_dict)")
    return t.to(like.device)


def solve(residuals: torch.Tensor, k: torch.Tensor, c: torch.Tensor | None, lam: float,
          extra: torch.Tensor | None = None) -> torch.Tensor:
    """MEMIT's update: Δ = R Kᵀ (λ C + K Kᵀ + extra)⁻¹, in float64.

    Args:
        residuals: R, [d_out, n] (what the n keys' outputs should gain).
        k: K, [d_in, n].
        c: C = E[k kᵀ] of preserved keys, [d_in, d_in] (None: no preservation term).
        extra: added inside the inverse (AnyEdit's K_p K_pᵀ of the sequence's other tokens).
    Returns:
        Δ, [d_out, d_in] float32: the minimiser of ||Δ K - R||² + λ tr(Δ C Δᵀ) (+ the extra term).
    """
    k = k.double()
    r = beside(residuals, k, "the residuals R").double()  # R at the top layer's device, K at this layer's
    a = k @ k.T
    if c is not None and lam:
        a = a + lam * beside(c, k, "the second-moment statistics C").double()
    if extra is not None:
        a = a + beside(extra, k, "the preserved keys' K_p K_pᵀ").double()
    return torch.linalg.solve(a, k @ r.T).T.float()  # A is symmetric: (R Kᵀ A⁻¹)ᵀ = A⁻¹ K Rᵀ


def null_space(c: torch.Tensor, threshold: float) -> torch.Tensor:
    """AlphaEdit's projector onto the null space of the preserved keys: P = Û Ûᵀ, Û the eigenvectors of
    C = E[k kᵀ] whose eigenvalues are below `threshold`. [d_in, d_in] float32; P k ≈ 0 for keys the
    statistics saw, so an update Δ P leaves their outputs unchanged."""
    values, vectors = torch.linalg.eigh(c.double())
    u = vectors[:, values < threshold]
    return (u @ u.T).float()
