"""Second-moment statistics of several layers: a pass per layer vs one pass for all, in one process.

    python benchmarks/stats_speed.py --tokens 20000                  # MEMIT's layers 4-8 on SmolLM2
    python benchmarks/stats_speed.py --tokens 100000 --device cuda

MEMIT, AlphaEdit and AnyEdit-on-MEMIT need C = E[k kᵀ] of the MLP output matrix's input at each
edited layer (`locate.second_moments`; 100,000 tokens of MMLU text by default). Computed a layer at
a time, each layer re-runs the decoder up to itself over the whole corpus sample: 4+5+6+7+8 = 30
layer passes for MEMIT's layers 4-8, where one pass stopped after layer 8, capturing every layer's
input on the way, runs 9. The outer products (k kᵀ in float64) are the same work either way. Rows
printed, each from an empty cache (a temporary `$WORKBENCH_CACHE`):

* ``a pass per layer``: `second_moments` called for one layer at a time (what each layer cost before);
* ``one pass``: `second_moments` for all the layers at once.

Printed per row: seconds and the speed-up over the first row; the statistics must be equal (bitwise:
the same tokens in the same batches reach each layer).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench.methods import locate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table import add_device, default_model, speedups  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 5, 6, 7, 8])
    add_device(ap)
    args = ap.parse_args()
    model, tok = default_model(args.device)
    out, results = [], []
    for name in ("a pass per layer", "one pass"):
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["WORKBENCH_CACHE"] = tmp  # nothing cached: every statistic computed here
            locate.STATS.clear()
            t = time.perf_counter()
            if name == "one pass":
                stats = locate.second_moments(model, tok, args.layers, "mmlu", args.tokens, progress=False)
            else:
                stats = {layer: locate.second_moments(model, tok, [layer], "mmlu", args.tokens, progress=False)[layer]
                         for layer in args.layers}
            out.append({"setting": name, "wall_s": time.perf_counter() - t})
            results.append(stats)
        print(out[-1], flush=True)
    equal = all(torch.equal(results[0][layer], results[1][layer]) for layer in args.layers)
    speedups(out, f"E[kk^T] at layers {args.layers}, {args.tokens} MMLU tokens, SmolLM2-135M-Instruct fp32, "
                  f"{next(model.parameters()).device}, {torch.get_num_threads()} threads; statistics equal: {equal}")


if __name__ == "__main__":
    main()
