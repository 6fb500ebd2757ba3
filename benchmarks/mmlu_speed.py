"""The MMLU capability probe: one full pass per (question, choice) pair vs the shared-prompt path.

    python benchmarks/mmlu_speed.py --n 57           # the first 57 probe items
    python benchmarks/mmlu_speed.py --n 570 --device cuda

Our probe (`scoring.mmlu_accuracy`) scores each of an item's four choices by its mean per-token
log-likelihood after ``Question: ...\\nAnswer:``. Sequential claims run it after every chunk (10
times per 1,000-edit sequence), so on the CPU it was the larger part of a LocFT-BF sequence's wall
time. Rows printed, on the same items and the same unedited model:

* ``one pass per pair``: the plain loop, as the probe ran before: question + choice as one row, four
  rows per item, batches of 16 rows, the head over every position;
* ``shared prompt``: `scoring.mean_logprobs` now: each question runs once (sorted by length, batches
  of 16 questions) and its choices run against its key/value cache, the head only where a choice token
  is predicted.

Printed per row: seconds, seconds per item, the accuracy (it must be equal), the largest difference
of any choice's mean log-probability between the rows, and the speed-up over the first row.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import workbench as wb
from workbench import scoring
from workbench.prompts import Encoded, encode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table import add_device, default_model, speedups  # noqa: E402


def one_pass_per_pair(model, tok, prompts, conts, batch_size=16) -> list[float]:
    def run(chunk):
        exs = []
        for p, c in chunk:
            e = encode(tok, p, c, "target", False)
            exs.append(Encoded(e.input_ids[:-1], e.labels[:-1], e.n_prompt, e.truncated))  # drop EOS
        logits, gold = scoring._forward(model, tok, exs)
        lp = torch.log_softmax(logits, -1).gather(-1, gold.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        has = gold != scoring.IGNORE
        return ((lp * has).sum(1) / has.sum(1).clamp(min=1)).tolist()

    return scoring._batched(model, list(zip(prompts, conts)), batch_size, run)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=57)
    add_device(ap)
    args = ap.parse_args()
    model, tok = default_model(args.device)
    items = wb.data.load("mmlu-probe", n=args.n)
    prompts = [scoring.mmlu_prompt(r) for r in items for _ in r.choices]
    conts = [c for r in items for c in r.choices]
    answers = [r.answer_index for r in items]

    def accuracy(scores):
        per = [scores[4 * i:4 * i + 4] for i in range(len(items))]
        return sum(p.index(max(p)) == a for p, a in zip(per, answers)) / len(items)

    out, first = [], None
    for name, fn in (("one pass per pair", one_pass_per_pair), ("shared prompt", scoring.mean_logprobs)):
        t = time.perf_counter()
        scores = fn(model, tok, prompts, conts)
        wall = time.perf_counter() - t
        first = scores if first is None else first
        out.append({"setting": name, "wall_s": wall, "s_per_item": wall / len(items), "accuracy": accuracy(scores),
                    "max_abs_diff": max(abs(a - b) for a, b in zip(scores, first))})
        print(out[-1], flush=True)
    speedups(out, f"MMLU probe, the first {args.n} items, SmolLM2-135M-Instruct {next(model.parameters()).dtype}, "
                  f"{next(model.parameters()).device}, {torch.get_num_threads()} threads", digits=4)


if __name__ == "__main__":
    main()
