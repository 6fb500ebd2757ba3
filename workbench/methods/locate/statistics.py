"""Second moments: C = E[k kᵀ] (uncentred) of W's input over a text corpus, batched, cached, guarded.

The corpus is read by `data.corpus` (the MMLU questions by default, or a user's .txt / .jsonl); C is
cached in memory (`STATS`) and on disk under ``$WORKBENCH_CACHE/stats/``, keyed by `stats_key` (the
model's weights other than the edited matrices, the layer, the corpus and the token count), and the
accumulator's memory is checked before it is allocated (`resources.check`).
"""
from __future__ import annotations

import hashlib
import json
import random

import torch
from tqdm.auto import tqdm

from ... import data, files, placement, resources
from ...components import family_table
from ...models import spec, tensor_sums
from ...prompts import IGNORE, Encoded, collate
from .sites import capture_inputs, site


def stats_key(model, layer: int, corpus: str, n_tokens: int) -> str:
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


STATS: dict[str, torch.Tensor] = {}  # stats_key -> C, this process's copies (clear() to read the disk again)


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
    texts, corpus_id = data.corpus(corpus)
    keys = {layer: stats_key(model, layer, corpus_id, n_tokens) for layer in sites}
    folder = files.cache_root() / "stats"

    def cached() -> dict:
        for layer, key in keys.items():
            if key not in STATS and (folder / f"{key}.pt").exists():
                STATS[key] = torch.load(folder / f"{key}.pt")
        return {layer: STATS[key] for layer, key in keys.items() if key in STATS}

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
                with files.atomic(path) as tmp:
                    torch.save(c, tmp)
                files.write_text(path.with_suffix(".json"), json.dumps({"layer": s.layer, "module": s.name, "corpus": corpus_id,
                                                                 "tokens": count,
                                                                 "model": getattr(model, "name_or_path", "")}))
                STATS[keys[s.layer]] = c
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
