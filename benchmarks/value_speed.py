"""The locate-and-edit value optimisation, one request at a time vs batched, in one process.

    python benchmarks/value_speed.py --n 16 --preset memit       # the first 16 ZsRE requests
    python benchmarks/value_speed.py --n 100 --batches 10 100 --device cuda   # on a GPU

MEMIT, AlphaEdit, ROME, UnKE and AnyEdit spend nearly all their editing time optimising δ, the
vector added at a request's key token (`locate.optimize_deltas`): 25 Adam steps, each a forward
pass over the request's prefixed prompts (6 short rows for MEMIT on ZsRE) and ROME's KL row, and a
backward pass from the head down to the value layer. The originals do this one request at a time
over the whole network. Rows printed, each on the same requests from the same unedited model:

* ``one at a time, full forward``: the originals' loop (``value_batch=1, prefix_cache=False``): every
  step runs each request's rows, its KL row among them, through the whole network;
* ``one at a time, prefix cache``: what δ cannot change runs once: the layers below the value layer
  (once per row) and, above it, every position before the first key token (once per set of rows,
  handed to each step as the model's key/value cache), so a step runs the key token and the target;
* ``value_batch=B``: B requests share every forward and backward pass (each its own δ, Adam state
  and early stop).

Printed per row: seconds, seconds per request, the speed-up over the first row, and the largest
relative difference of any request's δ from the first row's (float rounding: the same values).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import workbench as wb
from workbench.methods import locate  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table import add_device, default_model, speedups  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--preset", default="memit")
    ap.add_argument("--benchmark", default="zsre")
    ap.add_argument("--batches", type=int, nargs="+", default=[4, 16])
    add_device(ap)
    args = ap.parse_args()
    model, tok = default_model(args.device)
    reqs = wb.data.load(args.benchmark, n=args.n)
    cfg = wb.config.preset(args.preset)
    layers = locate.layers_of(model, cfg)
    module = locate.decoder_layer(model, layers[-1]) if cfg.method != "rome" else locate.site(model, layers[0]).module
    prefixes = locate.context_prefixes(model, tok, cfg.n_prefixes, cfg.prefix_tokens, cfg.seed)
    rows = [locate.rows_for(tok, r, prefixes, cfg) for r in reqs]
    settings = {"one at a time, full forward": dict(value_batch=1, prefix_cache=False),
                "one at a time, prefix cache": dict(value_batch=1)}
    settings.update({f"value_batch={b}": dict(value_batch=b) for b in args.batches})
    out, first = [], None
    for name, change in settings.items():
        with locate.frozen_eval(model):
            t = time.perf_counter()
            v = locate.values(model, module, rows, cfg.replace(**change))
            wall = time.perf_counter() - t
        first = v if first is None else first
        diff = ((v.delta - first.delta).norm(dim=1) / first.delta.norm(dim=1).clamp(min=1e-12)).max().item()
        out.append({"setting": name, "wall_s": wall, "s_per_request": wall / len(rows), "steps": sum(v.steps),
                    "max_rel_diff": diff})
        print(out[-1], flush=True)
    speedups(out, f"{args.preset} values, the first {args.n} {args.benchmark} requests, SmolLM2-135M-Instruct "
                  f"{next(model.parameters()).dtype}, {next(model.parameters()).device}, {torch.get_num_threads()} threads",
             digits=4)


if __name__ == "__main__":
    main()
