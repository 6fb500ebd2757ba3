"""Does `torch.compile` speed up the edit step? The `locft-bf` preset through `wb.edit`, the same run
with the trained decoder layers compiled, in one process.

    python benchmarks/compile_speed.py --n 100 --epochs 3

The layers from the edited one up are compiled (``nn.Module.compile``, inductor, ``dynamic=True``
because batch widths vary); the layers below run once per example through the prefix cache and are
left alone. Early stopping is off so both runs take the same steps. Printed: wall time of each
(the compiled run includes its compilation, and is also timed a second time, warm), the ratio,
and the largest difference of the final weights.
"""
from __future__ import annotations

import argparse
import time

import torch

import workbench as wb
from workbench.components import family_table


def timed_edit(model, tok, reqs, cfg):
    t = time.perf_counter()
    res = wb.edit(model, tok, reqs, cfg, progress=False)
    wall = time.perf_counter() - t
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if n in res.originals}
    res.revert()
    return wall, weights


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    model, tok = wb.load("smollm2-135m-instruct")
    cfg = wb.config.preset("locft-bf").replace(epochs=args.epochs, early_stop_loss=0.0)
    reqs = wb.data.load("zsre", n=args.n)
    eager, w_eager = timed_edit(model, tok, reqs, cfg)
    layers = model.get_submodule(family_table(model)["layers"])
    for layer in layers[cfg.layers[0]:]:
        layer.compile(dynamic=True)
    cold, _ = timed_edit(model, tok, reqs, cfg)
    warm, w_comp = timed_edit(model, tok, reqs, cfg)
    diff = max((w_eager[n] - w_comp[n]).abs().max().item() for n in w_eager)
    print(f"locft-bf, {args.n} ZsRE edits, {args.epochs} epochs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"eager {eager:.1f} s; compiled {cold:.1f} s with compilation, {warm:.1f} s warm")
    print(f"ratio eager / compiled (warm): {eager / warm:.2f}x; with compilation {eager / cold:.2f}x; "
          f"largest weight difference {diff:.2e}")


if __name__ == "__main__":
    main()
