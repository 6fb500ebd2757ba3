"""Parallel single edits: `wb.edit_each` with K edits at once against K sequential `wb.edit` calls.

    python benchmarks/parallel_speed.py --k 8          # FT-UKE single editing, the first 8 UnKEBench requests

Both sides run the `ft-uke` preset (one down_proj, all target tokens, chat template, up to 50 steps,
stop below 1e-2) on the same requests in one process, one after the other; the ratio is sequential
seconds over parallel seconds. The per-edit results are compared too: each edit's step count and its
last loss (they agree to float rounding when the batched loop is the same optimisation).
"""
from __future__ import annotations

import argparse
import time

import torch

import workbench as wb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--preset", default="ft-uke")
    ap.add_argument("--benchmark", default="unkebench")
    ap.add_argument("--steps", type=int, default=0, help="cap steps_per_edit (0 = the preset's)")
    args = ap.parse_args()
    model, tok = wb.load("smollm2-135m-instruct")
    cfg = wb.config.preset(args.preset)
    if args.steps:
        cfg = cfg.replace(steps_per_edit=args.steps)
    reqs = wb.data.load(args.benchmark, n=args.k)
    before = wb.models.state_hash(model)

    t = time.perf_counter()
    sequential = []
    for r in reqs:
        res = wb.edit(model, tok, [r], cfg, progress=False)
        sequential.append(res)
        res.revert()
    t_seq = time.perf_counter() - t

    t = time.perf_counter()
    parallel = wb.edit_each(model, tok, reqs, cfg, progress=False)
    t_par = time.perf_counter() - t
    assert wb.models.state_hash(model) == before

    steps_equal = sum(a.steps == b.steps for a, b in zip(sequential, parallel))
    last = max(abs(a.log.loss.iloc[-1] - b.log.loss.iloc[-1]) for a, b in zip(sequential, parallel))
    tokens = [len(wb.prompts.encode(tok, r.prompt, r.target, cfg.loss_scope, cfg.chat_template).input_ids) for r in reqs]
    print(f"{args.preset} single editing, {args.k} {args.benchmark} requests ({min(tokens)}-{max(tokens)} tokens), "
          f"torch threads {torch.get_num_threads()}")
    print(f"sequential wb.edit: {t_seq:.1f} s ({t_seq / args.k:.2f} s/edit, steps {[r.steps for r in sequential]})")
    print(f"edit_each K={args.k}:  {t_par:.1f} s ({t_par / args.k:.2f} s/edit, steps {[r.steps for r in parallel]})")
    print(f"ratio: {t_seq / t_par:.2f}x; equal step counts {steps_equal}/{args.k}; largest last-loss difference {last:.2e}")


if __name__ == "__main__":
    main()
