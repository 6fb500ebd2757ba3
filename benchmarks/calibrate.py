"""Calibrate the presets on the embedded model: a small sweep, printed as a table.

    python benchmarks/calibrate.py locft-bf --n 100 --grid lr=5e-3,1e-2 batch_size=10,20
    python benchmarks/calibrate.py ft-uke --n 10 --grid lr=1e-3,5e-3 steps_per_edit=25,50

LocFT-BF-style presets are scored with LocFT-BF's protocol on ZsRE (reliability = normalised exact
match on the edit question, generalisation on the paraphrase); FT-UKE-style presets with ROUGE-L F1
on UnKEBench (Ori, Para). Each grid point starts from the unedited model (the edit is reverted).
"""
import argparse
import ast
import itertools
import time

import workbench as wb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("preset")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--benchmark", default=None)
    ap.add_argument("--grid", nargs="*", default=[])
    args = ap.parse_args()
    base = wb.preset(args.preset)
    uke = base.chat_template
    bench = args.benchmark or ("unkebench" if uke else "zsre")
    eval_cfg = (wb.EvalConfig.preset("uke").replace(metrics=("rougeL",), splits=("ori", "para")) if uke
                else wb.EvalConfig.preset("locft").replace(splits=("ori", "para"), metrics=("exact_match",)))
    axes = {k: [ast.literal_eval(v) for v in vs.split(",")] for k, vs in (g.split("=") for g in args.grid)}
    model, tok = wb.load(base.model_name)
    reqs = wb.data.load(bench, n=args.n)
    print(f"{args.preset} on {len(reqs)} {bench} requests, {model.name_or_path}; scored with {eval_cfg.decoding()}")
    for values in itertools.product(*axes.values()) if axes else [()]:
        cfg = base.replace(**dict(zip(axes, values)))
        t = time.perf_counter()
        result = wb.edit(model, tok, reqs, cfg, progress=False)
        took = time.perf_counter() - t
        s = wb.evaluate(model, tok, reqs, eval_cfg).scores()
        result.revert()
        metric = "rougeL_f1" if uke else "exact_match"
        print(dict(zip(axes, values)), f"ori {s[f'ori.{metric}']:.3f} para {s[f'para.{metric}']:.3f}",
              f"final loss {result.log.loss.iloc[-1]:.4f} steps {result.steps} {took:.1f}s ({took / len(reqs):.2f} s/edit)",
              flush=True)


if __name__ == "__main__":
    main()
