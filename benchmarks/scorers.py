"""Both scoring protocols side by side, on the unedited and on the FT-UKE-edited model.

    python benchmarks/scorers.py --n 20            # SmolLM2, the first 20 UnKEBench requests, single editing

The UnKE lineage (UnKE, AnyEdit, EasyEdit's unstructured editing: what FT-UKE compares with) scores
with the sentence-embedding cosine of all-MiniLM-L6-v2 ("BERT Score") and the `rouge` package's
ROUGE-L recall; we also report bert-score's token-matching F1 and rouge-score's ROUGE-L F1. This
prints, per split, each pair for the unedited model and after each request is edited alone (FT-UKE
preset, scored, reverted), so a reader sees how far apart the protocols put the same generations.
"""
import argparse
import time

import pandas as pd

import workbench as wb
from workbench.evaluation import protocols_for, summarize

PAIRS = [("sentence_cosine", "bertscore_f1"), ("rougeL_recall", "rougeL_f1")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--preset", default="ft-uke")
    ap.add_argument("--splits", default="ori,para")
    args = ap.parse_args()
    model, tok = wb.load(args.model, device="cpu")
    reqs = wb.data.load("unkebench", n=args.n)
    ecfg = wb.EvalConfig.preset("uke").replace(splits=tuple(args.splits.split(",")))
    cfg = wb.preset(args.preset)
    t0 = time.perf_counter()
    before = wb.evaluate(model, tok, reqs, ecfg).summary
    t_eval = time.perf_counter() - t0
    tables, seconds = [], []
    for r in reqs:
        res = wb.edit(model, tok, [r], cfg, progress=False)
        try:
            tables.append(wb.evaluate(model, tok, [r], ecfg).per_probe)
        finally:
            res.revert()
        seconds.append(res.timings["total_s"])
    after = summarize(pd.concat(tables, ignore_index=True), protocols_for(ecfg))
    rows = []
    for name, s in (("unedited", before), ("edited", after)):
        got = {(x.split, x.metric): x.value for x in s.itertuples()}
        for split in ecfg.splits:
            row = {"model": name, "split": split}
            for lineage, ours in PAIRS:
                row[f"{lineage} (lineage)"] = got.get((split, lineage))
                row[f"{ours} (ours)"] = got.get((split, ours))
            rows.append(row)
    pd.set_option("display.width", 200)
    print(f"{args.model}, first {args.n} UnKEBench requests, {args.preset} single editing "
          f"(each edit alone, scored, reverted); greedy, chat template, {ecfg.max_new_tokens} new tokens")
    print(pd.DataFrame(rows).round(3).to_string(index=False))
    print(f"edit {sum(seconds) / len(seconds):.1f} s per edit; unedited evaluation {t_eval:.0f} s")


if __name__ == "__main__":
    main()
