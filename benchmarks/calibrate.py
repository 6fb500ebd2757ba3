"""Calibrate a preset on the embedded model: a small cached sweep, printed as a table.

    python benchmarks/calibrate.py locft-bf --benchmark zsre --n 100 --grid lr=5e-3,1e-2 batch_size=10,20
    python benchmarks/calibrate.py ft-uke --benchmark unkebench --n 10 --protocol single --grid lr=1e-3,5e-3

Runs go through `wb.runs.sweep` into results/calibrate-<preset>/, so a rerun only computes new
points. LocFT-style presets are scored with LocFT-BF's protocol (normalised exact match),
long-form benchmarks with FT-UKE's (ROUGE-L, BERTScore).
"""
import argparse
import ast

import pandas as pd

import workbench as wb
from workbench.runs import RunSpec, sweep


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("preset")
    ap.add_argument("--benchmark", default="zsre")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--protocol", default="batch", choices=["batch", "single"])
    ap.add_argument("--splits", default="ori,para")
    ap.add_argument("--grid", nargs="*", default=[])
    args = ap.parse_args()
    grid = {k: [ast.literal_eval(v) for v in vs.split(",")] for k, vs in (g.split("=", 1) for g in args.grid)}
    spec = RunSpec(edit=wb.preset(args.preset), benchmark=args.benchmark, n_edits=args.n, protocol=args.protocol,
                   splits=tuple(args.splits.split(",")))
    df = sweep(spec, grid, f"calibrate-{args.preset}")
    keep = [c for c in df.columns if c in grid or c.split(".")[-1] in ("exact_match", "rougeL_f1", "bertscore_f1",
                                                                       "token_acc") or c in ("steps", "s_per_edit")]
    pd.set_option("display.width", 200)
    print(f"{args.preset} on {args.n} {args.benchmark} requests ({args.protocol}), {spec.edit.model_name}")
    print(df[keep].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
