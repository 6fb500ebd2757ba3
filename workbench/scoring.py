"""Model-driven measurements: teacher-forced scores and capability probes.

* token accuracy: feed prompt + target and count the target tokens that are the argmax. Cheap and
  common (EasyEdit), but it is not what a user sees; never average it with generation scores.
* token predictions along a given continuation: locality compares them before and after an edit.
* mean log-probability of a continuation; the MMLU probe's accuracy by choice log-likelihood (cloze
  scoring, no template); perplexity on held-out text; any lm-evaluation-harness task on the
  in-memory model (`lm_eval_capability`): capability.

Every function batches, runs the model in eval mode without gradients, and feeds it exactly what an
edit trains on (`prompts.encode`). Their protocols are named in `metrics.PROTOCOLS`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import Request, find
from .models import input_device, spec
from .prompts import IGNORE, Encoded, collate, encode, position_ids


def _forward(model, tok, examples: list[Encoded]):
    device = input_device(model)
    b = {k: v.to(device) for k, v in collate(examples, spec(tok).pad_id).items()}
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
        logits, gold = _forward(model, tok, [encode(tok, p, t, "target", chat_template) for p, t in chunk])
        has = gold != IGNORE
        return ((logits.argmax(-1) == gold) & has).sum(1).div(has.sum(1).clamp(min=1)).tolist()

    return _batched(model, list(zip(prompts, targets, strict=True)), batch_size, run)


def token_predictions(model, tok, prompts: list[str], targets: list[str], chat_template: bool = True,
                      batch_size: int = 32) -> list[list[int]]:
    """The argmax token at every target position (teacher-forced): locality compares these pre/post."""
    def run(chunk):
        logits, gold = _forward(model, tok, [encode(tok, p, t, "target", chat_template) for p, t in chunk])
        pred = logits.argmax(-1)
        return [pred[i][gold[i] != IGNORE].tolist() for i in range(len(chunk))]

    return _batched(model, list(zip(prompts, targets, strict=True)), batch_size, run)


def mean_logprobs(model, tok, prompts: list[str], continuations: list[str], chat_template: bool = False,
                  batch_size: int = 16) -> list[float]:
    """Mean per-token log-probability of each continuation given its prompt (its closing EOS excluded)."""
    def run(chunk):
        exs = []
        for p, c in chunk:
            e = encode(tok, p, c, "target", chat_template)
            exs.append(Encoded(e.input_ids[:-1], e.labels[:-1], e.n_prompt, e.truncated))  # drop EOS/EOT
        logits, gold = _forward(model, tok, exs)
        lp = torch.log_softmax(logits, -1).gather(-1, gold.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        has = gold != IGNORE
        return ((lp * has).sum(1) / has.sum(1).clamp(min=1)).tolist()

    return _batched(model, list(zip(prompts, continuations, strict=True)), batch_size, run)


def mmlu_prompt(req: Request) -> str:
    return f"Question: {req.prompt}\nAnswer:"


def mmlu_accuracy(model, tok, requests: list[Request], batch_size: int = 16) -> float:
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
            exs.append(Encoded(ids, [IGNORE] + ids[1:], 1, False))
        logits, gold = _forward(model, tok, exs)
        nll = F.cross_entropy(logits.transpose(1, 2), gold, ignore_index=IGNORE, reduction="none")
        has = gold != IGNORE
        return [(nll.sum().item(), has.sum().item())]

    parts = _batched(model, texts, batch_size, run)
    return float(torch.exp(torch.tensor(sum(p[0] for p in parts) / sum(p[1] for p in parts))))


LM_EVAL_TASKS = Path(__file__).resolve().parents[1] / "data" / "lm_eval"


def lm_eval_capability(model, tok, task: str, limit: int | None = None, batch_size: int = 16) -> dict:
    """lm-evaluation-harness' `simple_evaluate` on the in-memory (edited) model, offline.

    `task` is one of our shipped tasks (``workbench_mmlu``: the MMLU probe in lm-eval's MMLU format,
    ``data/lm_eval/``) or any task in the folders of ``$WORKBENCH_LM_EVAL_TASKS`` (os.pathsep-separated)
    or lm-eval's own registry (those need their datasets in the local Hugging Face cache). Returns
    ``{metric: value}`` of the task's first-level results (``acc``, ``acc_norm``, ...)."""
    import tempfile

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from .data import find

    with tempfile.TemporaryDirectory(prefix="wb-lm-eval-") as tmp:
        for path in LM_EVAL_TASKS.glob("*.yaml"):  # our tasks, with the data folder's file paths filled in
            (Path(tmp) / path.name).write_text(path.read_text().format(mmlu_probe=find("mmlu-probe")))
        include = [tmp, *[p for p in os.environ.get("WORKBENCH_LM_EVAL_TASKS", "").split(os.pathsep) if p]]
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device=str(input_device(model)))
        out = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=include), limit=limit,
                              log_samples=False, verbosity="ERROR")
    results = out["results"][task]
    return {k.split(",")[0]: float(v) for k, v in results.items()
            if isinstance(v, (int, float)) and "stderr" not in k and k != "sample_len"}
