"""Edit throughput: the `locft-bf` preset through `wb.edit` against a plain PyTorch loop.

    python benchmarks/edit_speed.py throughput --n 100 --epochs 3     # ratio vs a plain loop, FLOP/s
    python benchmarks/edit_speed.py scaling --sizes 100 1000 10000    # time and peak memory per edit

``throughput`` (issue 6 a and b). The plain loop, written below, is what one writes by hand: the
same examples (tokenised once), the same parameters (only layer 20's down_proj requires grad, so
autograd stops there too), the same batches in the same order, the same loss (per-example mean,
then batch mean) and Adam; each step runs the whole model and the full ``[B, T, vocab]`` logits.
Early stopping is off in both so that both take exactly ``epochs * n / batch_size`` steps, and the
final weights of the two are compared, so the ratio is between two runs of the same optimisation.
FLOP/s: `torch.utils.flop_counter` counts the FLOPs of an identical (untimed) run of ours; dividing
by our timed run gives the achieved rate, which is compared with the best rate of a large fp32
matmul measured here in the same process.

``scaling`` (issue 6 c) runs the full `locft-bf` preset on 100, 1K, 10K edits, each in its own
process (so peak RSS is per size), and prints seconds and peak memory per edit. The edits are the
first n of LocFT's ZsRE, CounterFact and WikiBigEdit files (3K each) and KnowEdit's ZsRE, in that order.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import workbench as wb
from workbench import data, prompts
from workbench.components import family_table, resolve
from workbench.models import input_device, spec
from workbench.methods.ft import make_optimizer
from workbench.prompts import position_ids


def plain_loop(model, tok, requests, cfg, freeze: bool = True) -> float:
    """A hand-written fine-tuning loop over the same batches as `wb.edit`'s breadth-first schedule.

    With ``freeze=False`` only the optimiser is restricted to the selected weights and everything
    else keeps ``requires_grad=True``, as many hand-written loops leave it: autograd then computes
    gradients for the whole model.
    """
    examples = [prompts.encode(tok, r.prompt, r.target, cfg.loss_scope, cfg.chat_template, cfg.max_length)
                for r in requests]
    pad_id = spec(tok).pad_id
    for p in model.parameters():
        p.requires_grad_(not freeze)
    params = [model.get_submodule(t.name).weight for t in resolve(model, cfg.components, cfg.layers)]
    for p in params:
        p.requires_grad_(True)
    opt = make_optimizer(cfg, params)
    device = input_device(model)
    gen = torch.Generator().manual_seed(cfg.seed)  # the order wb.edit draws
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(examples), generator=gen).tolist()
        for s in range(0, len(order), cfg.batch_size):
            b = prompts.collate([examples[i] for i in order[s:s + cfg.batch_size]], pad_id)
            b = {k: v.to(device) for k, v in b.items()}
            mask = b["attention_mask"]
            logits = model(input_ids=b["input_ids"], attention_mask=mask, position_ids=position_ids(mask)).logits.float()
            target = b["labels"][:, 1:]
            tok_loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                                       ignore_index=prompts.IGNORE, reduction="none").view(target.shape)
            loss = (tok_loss.sum(1) / (target != prompts.IGNORE).sum(1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    return elapsed


def matmul_peak(n: int = 1024, repeats: int = 20) -> float:
    """Best fp32 FLOP/s of an n x n matmul on this machine, now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


class _Clock:
    """Wall time spent inside modules' forward calls (pre/post hooks; CPU ops are synchronous)."""

    def __init__(self, modules: dict):
        self.seconds = dict.fromkeys(modules, 0.0)
        self._start, self._handles = {}, []
        for name, m in modules.items():
            self._handles.append(m.register_forward_pre_hook(lambda _m, _a, n=name: self._start.__setitem__(n, time.perf_counter())))
            self._handles.append(m.register_forward_hook(lambda _m, _a, _o, n=name: self._tick(n)))

    def _tick(self, name: str) -> None:
        self.seconds[name] += time.perf_counter() - self._start.pop(name)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def deeper_prefix_bound(model, tok, requests, cfg) -> tuple[float, float]:
    """What a deeper prefix (caching layer L's attention output and down_proj's input, issue 20 item 1)
    could save at most: the training-time forward of layer L outside its down_proj, which that cache
    would skip (nothing below down_proj requires grad, so layer L has no backward outside it either).
    Returns (seconds in layer L outside down_proj, the edit's total seconds)."""
    layer = model.get_submodule(family_table(model)["layers"])[cfg.layers[0]]
    clock = _Clock({"layer": layer, "down": layer.mlp.down_proj})
    try:
        r = wb.edit(model, tok, requests, cfg, progress=False)
    finally:
        clock.remove()
    r.revert()
    # The cache fill stops at layer L's input (prefix._Stop fires before L runs), so every timed call is a step's.
    return clock.seconds["layer"] - clock.seconds["down"], r.timings["total_s"]


def throughput(args) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    model, tok = wb.load(device="cpu")
    requests = data.load("zsre", n=args.n)
    cfg = wb.preset("locft-bf", epochs=args.epochs, early_stop_loss=0.0, device="cpu")
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}

    # warm-up both paths on a few requests (first-call allocations, thread pools)
    wb.edit(model, tok, requests[:cfg.batch_size], cfg.replace(epochs=2), progress=False).revert()
    plain_loop(model, tok, requests[:cfg.batch_size], cfg.replace(epochs=1))
    _restore(model, snapshot)

    ours = wb.edit(model, tok, requests, cfg, progress=False)
    t_ours, steps = ours.timings["total_s"], ours.steps
    w_ours = {n: p.detach().clone() for n, p in ours.deltas().items()}
    ours.revert()
    t_plain = plain_loop(model, tok, requests, cfg)
    diff = max((model.get_parameter(n).detach() - snapshot[n] - d).abs().max().item() for n, d in w_ours.items())
    _restore(model, snapshot)
    t_unfrozen = plain_loop(model, tok, requests, cfg, freeze=False)
    _restore(model, snapshot)
    uncached = wb.edit(model, tok, requests, cfg.replace(prefix_cache=False), progress=False)
    t_uncached = uncached.timings["total_s"]
    uncached.revert()

    with FlopCounterMode(display=False) as counter:
        wb.edit(model, tok, requests, cfg, progress=False).revert()
    flops = counter.get_total_flops()
    peak = matmul_peak()
    print(f"locft-bf on {args.n} ZsRE edits, {cfg.epochs} epochs, batch {cfg.batch_size}: {steps} steps each, "
          f"SmolLM2-135M fp32, {torch.get_num_threads()} threads")
    print(f"  wb.edit                {t_ours:8.1f} s  ({t_ours / steps:.3f} s/step)  [{ours.prefix_cache}]")
    print(f"  wb.edit, no prefix     {t_uncached:8.1f} s  ({t_uncached / steps:.3f} s/step)")
    print(f"  plain PyTorch loop     {t_plain:8.1f} s  ({t_plain / steps:.3f} s/step)")
    print(f"  plain, rest unfrozen   {t_unfrozen:8.1f} s  ({t_unfrozen / steps:.3f} s/step)  "
          f"(optimiser restricted, requires_grad left on: {t_unfrozen / t_ours:.2f}x ours)")
    print(f"  max |weight difference| ours vs plain after training: {diff:.2e}")
    print(f"  speed-up vs plain loop: {t_plain / t_ours:.2f}x   (prefix cache alone: {t_uncached / t_ours:.2f}x)")
    saved, total = deeper_prefix_bound(model, tok, requests, cfg)
    print(f"  deeper prefix bound: layer {cfg.layers[0]}'s forward outside down_proj takes {saved:.2f} s of an "
          f"edit's {total:.1f} s ({saved / total:.1%}): the most caching its attention and down_proj's input "
          f"could save (at most {total / (total - saved):.3f}x)")
    print(f"  achieved {flops / t_ours / 1e9:.1f} GFLOP/s ({flops / 1e9:.0f} GFLOP counted) vs fp32 matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s: {flops / t_ours / peak:.0%} of peak")


def _restore(model, snapshot) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(snapshot[n])


def one_scale(n: int, benchmarks: str, epochs: int | None, checkpoint: str | None) -> dict:
    model, tok = wb.load(device="cpu")
    requests = [r for name in benchmarks.split(",") for r in data.load(name)][:n]
    if len(requests) < n:
        raise SystemExit(f"only {len(requests)} requests in {benchmarks}")
    cfg = wb.preset("locft-bf", device="cpu", **({"epochs": epochs} if epochs else {}))
    r = wb.edit(model, tok, requests, cfg, progress=False, checkpoint=checkpoint)
    return {"n": n, "epochs_run": int(r.log["epoch"].max()) + 1, "steps": r.steps, "total_s": r.timings["total_s"],
            "s_per_edit": r.timings["s_per_edit"], "final_loss": float(r.log["loss"].iloc[-1]),
            "resumed_s": r.timings.get("resumed_s", 0.0),  # seconds of earlier, killed attempts (in total_s)
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def scaling(args) -> None:
    rows = []
    for n in args.sizes:
        ckpt = str(Path(args.checkpoint_dir) / f"scaling-{n}-{args.epochs or 25}.pt") if args.checkpoint_dir else ""
        cmd = [sys.executable, __file__, "_one", str(n), args.benchmark, str(args.epochs or 0), ckpt]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"  {r['n']:>6} edits: {r['total_s']:8.1f} s, {r['s_per_edit']:.3f} s/edit, {r['steps']} steps over "
              f"{r['epochs_run']} epochs, final loss {r['final_loss']:.3f}, peak RSS {r['peak_rss_mib']:.0f} MiB"
              + (f" (resumed: {r['resumed_s']:.0f} s of it in earlier, killed processes; RSS is the last one's)"
                 if r["resumed_s"] else ""), flush=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        grow = (b["peak_rss_mib"] - a["peak_rss_mib"]) / (b["n"] - a["n"]) * 1024
        print(f"  peak memory grows {grow:.1f} KiB per extra edit from {a['n']} to {b['n']} edits "
              f"(peak at {a['n']} edits: {a['peak_rss_mib']:.0f} MiB, mostly the process, torch and the model)")


if __name__ == "__main__":
    if sys.argv[1] == "_one":  # a child process of `scaling`
        print(json.dumps(one_scale(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) or None, sys.argv[5] or None)))
        sys.exit()
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--n", type=int, default=100)
    t.add_argument("--epochs", type=int, default=3)
    s = sub.add_parser("scaling")
    s.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    # LocFT's files hold 3K edits each, so 10K edits are their union (plus KnowEdit's ZsRE)
    s.add_argument("--benchmark", default="zsre,counterfact,wikibigedit,knowedit-zsre")
    s.add_argument("--epochs", type=int, default=0, help="cap the preset's epochs (0 = the preset's 25)")
    s.add_argument("--checkpoint-dir", default="", help="keep each size's epoch checkpoint here: a killed run, "
                   "started again, resumes from its last epoch (10K edits take hours on 2 cores)")
    args = ap.parse_args()
    print(f"edit_speed {args.cmd}: {time.strftime('%Y-%m-%d')}, torch {torch.__version__}", flush=True)
    throughput(args) if args.cmd == "throughput" else scaling(args)
