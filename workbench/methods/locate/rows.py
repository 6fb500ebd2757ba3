"""Keys: the rows a request is encoded into, the token whose hidden state is the key, and the keys.

* **key positions** (`key_position`): the subject's last token of the rendered prompt (ROME, MEMIT,
  AlphaEdit) or the last prompt token (UnKE's "cause-driven" key; AnyEdit; and the documented
  fallback for requests without a subject);
* **context prefixes** (`context_prefixes`): short texts the model itself generates, prepended to the
  prompt (ROME Eq. 3 averages the key over them); the bare prompt is the first "prefix";
* **rows** (`rows_for`, `Rows`): one labelled row per prefixed prompt, plus ROME's KL row "{subject} is a";
* **keys** (`keys`, `mean_keys`): W's input at the key positions, one forward pass that stops at W
  (`sites.capture`), averaged over a request's prefixes; `bare_outputs` is a module's output at the
  bare prompt's key token.

Named ``rows`` rather than ``keys`` so that ``locate.keys`` stays the function.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ...errors import ConfigError, DataError
from ...models import input_device, spec
from ...prompts import Encoded, collate, encode, prompt_ids
from .sites import Site, capture, outputs


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


def keys(model, s: Site, batch: dict, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """W's input (the key) at each (row, position): [N, d_in] float32."""
    k = capture(model, s.module, batch, output=False)
    return k[rows.to(k.device), positions.to(k.device)].float()


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
