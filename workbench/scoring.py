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

from . import threads
from .data import Request, find
from .models import cache_argument, input_device, spec
from .prompts import IGNORE, Encoded, collate, encode, forward, prompt_ids, target_ids


def _forward(model, tok, examples: list[Encoded]):
    device = input_device(model)
    b = {k: v.to(device, non_blocking=True) for k, v in collate(examples, spec(tok).pad_id).items()}
    logits = forward(model, b, use_cache=False).logits
    return logits[:, :-1].float(), b["labels"][:, 1:]


@threads.active()  # its share of the cores (threads.py)
def _batched(model, items, batch_size, fn, on_batch=None):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = []
            for start in range(0, len(items), batch_size):
                if on_batch is not None:  # the rows' positions in `items` (see generation.generate)
                    on_batch(list(range(start, min(start + batch_size, len(items)))))
                out += fn(items[start:start + batch_size])
            return out
    finally:
        model.train(was_training)


def token_accuracy(model, tok, prompts: list[str], targets: list[str], chat_template: bool = True,
                   batch_size: int = 32, on_batch=None) -> list[float]:
    """Teacher-forced accuracy of each target given its prompt: the fraction of target tokens
    (end-of-turn included) that are the model's argmax. One value per pair."""
    def run(chunk):
        logits, gold = _forward(model, tok, [encode(tok, p, t, "target", chat_template) for p, t in chunk])
        has = gold != IGNORE
        return ((logits.argmax(-1) == gold) & has).sum(1).div(has.sum(1).clamp(min=1)).tolist()

    return _batched(model, list(zip(prompts, targets, strict=True)), batch_size, run, on_batch)


def token_predictions(model, tok, prompts: list[str], targets: list[str], chat_template: bool = True,
                      batch_size: int = 32, on_batch=None) -> list[list[int]]:
    """The argmax token at every target position (teacher-forced): locality compares these pre/post."""
    def run(chunk):
        logits, gold = _forward(model, tok, [encode(tok, p, t, "target", chat_template) for p, t in chunk])
        pred, has = logits.argmax(-1).cpu(), (gold != IGNORE).cpu()  # one copy to the host per batch, not per row
        return [pred[i][has[i]].tolist() for i in range(len(chunk))]

    return _batched(model, list(zip(prompts, targets, strict=True)), batch_size, run, on_batch)


@threads.active()
def mean_logprobs(model, tok, prompts: list[str], continuations: list[str], chat_template: bool = False,
                  batch_size: int = 16) -> list[float]:
    """Mean per-token log-probability of each continuation given its prompt (its closing EOS excluded).

    Each distinct prompt runs once, and its keys and values at every layer are the cache its
    continuations run against: MMLU's four choices share one question, which is most of the tokens
    (2.6x faster than a pass per pair on SmolLM2: `benchmarks/mmlu_speed.py`). The head runs at the
    prompt's last position and the continuations' positions only. Prompts are sorted by length
    (little padding) and `batch_size` of them run at once. Equal to one full pass per pair to float
    rounding (`tests/test_scoring.py`)."""
    if len(continuations) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts and {len(continuations)} continuations: give one per prompt")
    groups: dict[str, list[int]] = {}  # prompt -> the indices of its continuations
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    encoded = {p: prompt_ids(tok, p, chat_template) for p in groups}

    def run(chunk):
        rows = [(j, i) for j, p in enumerate(chunk) for i in groups[p]]
        conts = [target_ids(tok, continuations[i], chat_template)[:-1] for _, i in rows]  # drop EOS/EOT
        lps = _continuation_logprobs(model, tok, [encoded[p] for p in chunk], [j for j, _ in rows], conts)
        return [(i, lp) for (_, i), lp in zip(rows, lps)]

    out = [0.0] * len(prompts)
    for i, lp in _batched(model, sorted(groups, key=lambda p: len(encoded[p])), batch_size, run):
        out[i] = lp
    return out


def _continuation_logprobs(model, tok, prompts: list[list[int]], owner: list[int], conts: list[list[int]]) -> list[float]:
    """Mean log-probability of each token list `conts[r]` after prompt `prompts[owner[r]]`: the prompts
    run once (left-padded, with the cache), the continuations once against their prompt's keys and
    values (right-padded: their padding comes after every real token, so it changes none of them)."""
    from transformers import DynamicCache

    device, pad = input_device(model), spec(tok).pad_id
    b = collate([Encoded(p, [IGNORE] * len(p), len(p), False) for p in prompts], pad)  # left-padded
    ids, mask = b["input_ids"].to(device), b["attention_mask"].to(device)
    past = DynamicCache()  # every layer keeps every key (a sliding window is the mask's business)
    name = cache_argument(model)
    first = forward(model, {"input_ids": ids, "attention_mask": mask}, use_cache=True, logits_to_keep=1,
                    **{name: past}).logits[:, -1].float().log_softmax(-1)  # predicts token 1
    kv = [(layer.keys, layer.values) for layer in past.layers]
    n = torch.tensor([len(c) for c in conts], device=device)
    lp = first[torch.tensor(owner, device=device)].gather(
        -1, torch.tensor([c[0] if c else 0 for c in conts], device=device)[:, None])[:, 0] * (n > 0)
    # tokens 2.. are predicted from the continuation's own positions: rows sorted by length and run in
    # groups as wide as the prompts' batch, so a long choice does not pad every row to its length
    by_length = sorted((r for r, c in enumerate(conts) if len(c) > 1), key=lambda r: len(conts[r]))
    for start in range(0, len(by_length), len(prompts)):
        group = by_length[start:start + len(prompts)]
        rows = torch.tensor([owner[r] for r in group], device=device)
        longest = len(conts[group[-1]])
        cont = torch.full((len(group), longest), pad, dtype=torch.long)
        for k, r in enumerate(group):
            cont[k, :len(conts[r])] = torch.tensor(conts[r])
        cont = cont.to(device)
        has = torch.arange(longest, device=device)[None, :] < n[group][:, None]
        pos = mask.sum(1)[rows][:, None] + torch.arange(longest, device=device)[None, :]
        logits = model(input_ids=cont, attention_mask=torch.cat([mask[rows], has.long()], 1), position_ids=pos,
                       use_cache=True, **{name: DynamicCache(ddp_cache_data=[(k[rows], v[rows]) for k, v in kv])}
                       ).logits[:, :-1].float()
        later = logits.log_softmax(-1).gather(-1, cont[:, 1:, None])[..., 0]
        lp[group] = lp[group] + (later * has[:, 1:]).sum(1)
    return (lp / n.clamp(min=1)).tolist()


def mmlu_prompt(req: Request) -> str:
    return f"Question: {req.prompt}\nAnswer:"


@threads.active()
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


@threads.active()
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
        return [tuple(torch.stack([nll.sum().double(), has.sum().double()]).tolist())]  # one read per batch

    parts = _batched(model, texts, batch_size, run)
    return float(torch.exp(torch.tensor(sum(p[0] for p in parts) / sum(p[1] for p in parts))))


LM_EVAL_TASKS = Path(__file__).resolve().parents[1] / "data" / "lm_eval"


@threads.active()
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
