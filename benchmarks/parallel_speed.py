"""Parallel single edits: `wb.edit_each` with K edits at once against K sequential `wb.edit` calls.

    python benchmarks/parallel_speed.py --k 8          # FT-UKE single editing, the first 8 UnKEBench requests
    python benchmarks/parallel_speed.py --k 8 --score  # and then scoring them: K apply/evaluate/revert rounds vs score_each

Both sides run the `ft-uke` preset (one down_proj, all target tokens, chat template, up to 50 steps,
stop below 1e-2) on the same requests in one process, one after the other; the ratio is sequential
seconds over parallel seconds. The per-edit results are compared too: each edit's step count and its
last loss (they agree to float rounding when the batched loop is the same optimisation).

``--score`` then scores the K pending edits with FT-UKE's scoring (Ori, Para and the rebuilt Loc
probes of ``unkebench-loc``, 160 generated tokens) both ways: K rounds of ``apply(); evaluate();
revert()`` against one `score_each`, and counts the probes whose generated text is the same.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

import workbench as wb
from workbench.runs.sweep import requests_for


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--preset", default="ft-uke")
    ap.add_argument("--benchmark", default="unkebench")
    ap.add_argument("--steps", type=int, default=0, help="cap steps_per_edit (0 = the preset's)")
    ap.add_argument("--score", action="store_true", help="also time scoring the K edits one by one vs score_each")
    args = ap.parse_args()
    model, tok = wb.load("smollm2-135m-instruct")
    cfg = wb.config.preset(args.preset)
    if args.steps:
        cfg = cfg.replace(steps_per_edit=args.steps)
    if args.score:  # the requests with their rebuilt locality probes, as the reproduction's runs read them
        reqs = requests_for(wb.runs.RunSpec(edit=cfg, benchmark=f"{args.benchmark}-loc", n_edits=args.k))
    else:
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
    if args.score:
        score(model, tok, reqs, parallel)


def score(model, tok, reqs, results) -> None:
    from workbench.runs.protocols import score_each

    ecfg = wb.EvalConfig.preset("uke")
    pre = wb.pre_edit(model, tok, reqs, ecfg)
    t = time.perf_counter()
    rounds = []
    for r, res in zip(reqs, results):
        res.apply()
        rounds.append(wb.evaluate(model, tok, [r], ecfg, pre=pre).per_probe)
        res.revert()
    t_seq = time.perf_counter() - t
    t = time.perf_counter()
    together = score_each(model, tok, reqs, results, ecfg, pre).per_probe
    t_par = time.perf_counter() - t
    alone = pd.concat(rounds, ignore_index=True)
    same = int((together.generation == alone.generation).sum())
    worst = (together.sentence_cosine - alone.sentence_cosine).abs().max()
    print(f"scoring {len(alone)} probes ({', '.join(f'{n} {s}' for s, n in alone.split.value_counts().items())}), "
          f"{ecfg.max_new_tokens} new tokens at most")
    print(f"apply/evaluate/revert x{len(reqs)}: {t_seq:.1f} s; score_each: {t_par:.1f} s; ratio {t_seq / t_par:.2f}x; "
          f"same generated text {same}/{len(alone)}; largest sentence-cosine difference {worst:.2e}")


if __name__ == "__main__":
    main()
