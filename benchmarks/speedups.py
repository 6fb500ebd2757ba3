"""The opt-in speed-ups that change the optimisation, against the preset they modify, in one process.

    python benchmarks/speedups.py --n 100                 # locft-bf on the first 100 ZsRE edits

Each row edits the same requests from the same unedited model with the full `locft-bf` preset (25
epochs, early stop 1e-2) plus one option, and scores them with LocFT's protocol (exact match and
token accuracy on the edit prompts and their paraphrases): ``skip_converged`` (converged examples
leave later epochs), ``length_buckets`` (batches of similar length), ``prefix_cache_dtype=bfloat16``
(the cache rounded to bf16). Printed: wall seconds, optimiser steps, example visits, and the scores,
with the ratio of wall time to the preset's.
"""
from __future__ import annotations

import argparse
import time

import sys
from pathlib import Path

import torch

import workbench as wb
from workbench.evaluation import LOCFT

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table import speedups  # noqa: E402

OPTIONS = {"preset": {}, "skip_converged": {"skip_converged": True}, "length_buckets": {"length_buckets": True},
           "bf16 prefix cache": {"prefix_cache_dtype": "bfloat16"},
           "skip_converged + length_buckets": {"skip_converged": True, "length_buckets": True}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--preset", default="locft-bf")
    ap.add_argument("--benchmark", default="zsre")
    args = ap.parse_args()
    model, tok = wb.load("smollm2-135m-instruct")
    reqs = wb.data.load(args.benchmark, n=args.n)
    rows = []
    for name, change in OPTIONS.items():
        cfg = wb.config.preset(args.preset).replace(**change)
        t = time.perf_counter()
        res = wb.edit(model, tok, reqs, cfg, progress=False)
        wall = time.perf_counter() - t
        scores = wb.evaluate(model, tok, reqs, LOCFT.replace(splits=("ori", "para"))).scores()
        res.revert()
        rows.append({"option": name, "wall_s": wall, "steps": res.steps,
                     "visits": int(res.log.requests.map(len).sum()), **{k: scores[k] for k in
                     ("ori.exact_match", "ori.token_acc", "para.exact_match", "para.token_acc")}})
        print(rows[-1], flush=True)
    speedups(rows, f"{args.preset}, the first {args.n} {args.benchmark} edits, SmolLM2-135M-Instruct fp32, "
                   f"{torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
