"""Speed and memory where our users run: one CUDA GPU. Exits without a GPU (``--cpu-check`` runs every
part at toy sizes on the CPU, to check the script itself, and says so in every line).

    python benchmarks/gpu.py                      # all parts, the sizes of issue 17
    python benchmarks/gpu.py loop eval            # some parts

Parts, each measured in this one process:

* ``loop``: SmolLM2-135M-Instruct fp32 on the GPU, `wb.edit` against the hand-written loop of
  `benchmarks/edit_speed.py` (same batches, same loss, same Adam) for the ``locft-bf`` preset on
  1,000 ZsRE edits (early stop off, so both take the same steps) and for ``ft-uke`` on 10 UnKEBench
  requests one at a time (50 steps each); seconds per edit and the ratio.
* ``scale``: ``random:llama-3-8b`` (Llama-3-8B's shape, random weights: speed and memory only) in
  bf16, the ``locft-bf-llama3-8b`` recipe (layer 22 down_proj, batch 100) on 1,000 ZsRE requests for
  ``--epochs`` epochs: seconds per edit, peak GPU memory against weights + `resources.edit_bytes`,
  and achieved TFLOP/s (FLOPs counted by `torch.utils.flop_counter` on one epoch) against the best
  bf16 matmul rate measured here, and the card's published dense bf16 peak when known.
* ``eval``: `wb.evaluate` (batched, length-sorted, KV cache) on Ori + Para of 100 UnKEBench
  requests against one probe at a time (`benchmarks/eval_speed.py`'s loop) on 10: probes per second.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workbench as wb  # noqa: E402
from workbench import data, metrics, resources  # noqa: E402
from workbench.evaluation import probes  # noqa: E402
from workbench.methods.ft import _selected_parameters, _trainable_estimate  # noqa: E402
from workbench.components import num_layers, resolve  # noqa: E402
from workbench import prompts  # noqa: E402

# dense bf16 TFLOP/s from the vendors' data sheets (without sparsity), for context only
PUBLISHED_BF16 = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "A10": 125, "RTX 4090": 165}


def card() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (--cpu-check: sizes are toys)"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(dtype, n: int, device: str, repeats: int = 10) -> float:
    """Best FLOP/s of an n x n matmul at `dtype` on `device`, now."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def loop(args, device: str) -> None:
    from edit_speed import _restore, plain_loop

    model, tok = wb.load(device=device, dtype="float32")
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}  # the plain loop does not revert
    zsre = data.load("zsre", n=args.n_zsre)
    cfg = wb.preset("locft-bf", early_stop_loss=0.0, epochs=args.epochs)
    wb.edit(model, tok, zsre[:cfg.batch_size], cfg.replace(epochs=1), progress=False).revert()  # warm-up
    ours = wb.edit(model, tok, zsre, cfg, progress=False)
    t_ours = ours.timings["total_s"]
    ours.revert()
    t_plain = plain_loop(model, tok, zsre, cfg)
    _restore(model, snapshot)
    print(f"[{card()}] locft-bf, {len(zsre)} ZsRE edits, {cfg.epochs} epochs, batch {cfg.batch_size}, SmolLM2 fp32: "
          f"ours {t_ours / len(zsre):.4f} s/edit, plain loop {t_plain / len(zsre):.4f} s/edit, "
          f"ratio {t_plain / t_ours:.2f}x  [{ours.prefix_cache}]", flush=True)

    uke = data.load("unkebench", n=args.n_uke)
    cfg = wb.preset("ft-uke", early_stop_loss=0.0)
    t_ours = t_plain = 0.0
    for r in uke:
        res = wb.edit(model, tok, [r], cfg, progress=False)
        t_ours += res.timings["total_s"]
        res.revert()
        t_plain += plain_loop(model, tok, [r], cfg.replace(schedule="breadth_first", epochs=cfg.steps_per_edit))
        _restore(model, snapshot)
    print(f"[{card()}] ft-uke, {len(uke)} UnKEBench requests one at a time, {cfg.steps_per_edit} steps, SmolLM2 fp32: "
          f"ours {t_ours / len(uke):.3f} s/edit, plain loop {t_plain / len(uke):.3f} s/edit, "
          f"ratio {t_plain / t_ours:.2f}x", flush=True)


def scale(args, device: str) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    name = "random:llama-3-8b" if torch.cuda.is_available() else "tiny-random-llama"
    cfg = wb.preset("locft-bf-llama3-8b", epochs=args.epochs, early_stop_loss=0.0, model_name=name, dtype="bfloat16")
    if not torch.cuda.is_available():
        cfg = cfg.replace(layers=(2,), batch_size=10)
    t = time.perf_counter()
    model, tok = wb.load(name, device=device, dtype="bfloat16")
    load_s = time.perf_counter() - t
    reqs = data.load("zsre", n=args.n_zsre)
    examples = [prompts.encode(tok, r.prompt, r.target, cfg.loss_scope, cfg.chat_template, cfg.max_length) for r in reqs]
    targets = resolve(model, cfg.components, cfg.layers)
    lowest = min(x.layer for x in targets)
    selected = _selected_parameters(model, targets)
    parts = resources.edit_bytes(model, cfg, examples, _trainable_estimate(model, targets, cfg, selected), lowest,
                                 num_layers(model))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    wb.edit(model, tok, reqs[:cfg.batch_size], cfg.replace(epochs=1), progress=False).revert()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    res = wb.edit(model, tok, reqs, cfg, progress=False)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else float("nan")
    res.revert()
    with FlopCounterMode(display=False) as counter:
        wb.edit(model, tok, reqs, cfg.replace(epochs=1), progress=False).revert()
    flops = counter.get_total_flops() * cfg.epochs
    achieved = flops / res.timings["train_s"]
    best = matmul_peak(torch.bfloat16, 8192 if torch.cuda.is_available() else 512, device)
    published = next((v for k, v in PUBLISHED_BF16.items() if k in card()), None)
    print(f"[{card()}] {name} bf16 (random weights: speed and memory only), locft-bf-llama3-8b recipe, "
          f"{len(reqs)} ZsRE edits, batch {cfg.batch_size}, {cfg.epochs} epochs, {res.steps} steps: "
          f"{res.timings['s_per_edit']:.4f} s/edit (load {load_s:.0f} s) [{res.prefix_cache}]", flush=True)
    print(f"[{card()}]   peak GPU memory {peak / 2**30:.2f} GiB; estimate: weights {weights / 2**30:.2f} GiB + edit "
          f"{sum(parts.values()) / 2**30:.2f} GiB ({', '.join(f'{k} {v / 2**30:.2f}' for k, v in parts.items())})",
          flush=True)
    print(f"[{card()}]   achieved {achieved / 1e12:.1f} TFLOP/s; best bf16 matmul here {best / 1e12:.1f} TFLOP/s "
          f"({achieved / best:.0%})" + (f"; published dense bf16 peak {published} TFLOP/s ({achieved / 1e12 / published:.1%})"
                                        if published else ""), flush=True)


def evaluation(args, device: str) -> None:
    from eval_speed import per_sample

    model, tok = wb.load(device=device)
    reqs = data.load("unkebench", n=args.n_uke_eval)
    cfg = wb.EvalConfig(splits=("ori", "para"), metrics=("rougeL", "bertscore"), max_new_tokens=128)
    metrics.bert_scorer()
    wb.evaluate(model, tok, reqs[:2], cfg)  # warm-up
    t = time.perf_counter()
    report = wb.evaluate(model, tok, reqs, cfg)
    ours = (time.perf_counter() - t) / len(report.per_probe)
    table = probes(reqs[:args.n_baseline], cfg.splits)
    t = time.perf_counter()
    per_sample(model, tok, table, cfg)
    base = (time.perf_counter() - t) / len(table)
    print(f"[{card()}] evaluation, SmolLM2 {str(wb.models.model_dtype(model))[6:]}, Ori+Para, 128 new tokens: "
          f"batched {1 / ours:.1f} probes/s ({len(report.per_probe)} probes), one at a time {1 / base:.1f} probes/s "
          f"({len(table)}): {base / ours:.1f}x", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", help="loop, scale, eval (default: all)")
    ap.add_argument("--cpu-check", action="store_true", help="toy sizes on the CPU: checks the script, measures nothing")
    ap.add_argument("--epochs", type=int, default=25)
    args = ap.parse_args()
    parts = {"loop": loop, "scale": scale, "eval": evaluation}
    unknown = sorted(set(args.parts) - set(parts))
    if unknown:
        ap.error(f"unknown part(s) {unknown}; valid: {', '.join(parts)}")
    if not torch.cuda.is_available() and not args.cpu_check:
        print("benchmarks/gpu.py: no CUDA device here; nothing measured (--cpu-check runs the script at toy sizes)")
        return 0
    small = not torch.cuda.is_available()
    args.n_zsre, args.n_uke, args.n_uke_eval, args.n_baseline = (20, 1, 4, 2) if small else (1000, 10, 100, 10)
    if small:
        args.epochs = min(args.epochs, 2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for part in args.parts or list(parts):
        parts[part](args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
