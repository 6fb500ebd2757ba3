"""The first thing to run on a GPU machine (through `benchmarks/gpu_check.sh`): timed sections, each
appending one JSON line to ``OUT/gpu_check.jsonl``, under one time budget (a section that would start
past it writes a ``"skipped"`` line instead). No package is installed: the device image's python3
runs the project from its folder (PYTHONPATH), with what it reads carried in ``.gpu_check/``.

Sections, in order:

* ``env``: the card, torch / transformers / accelerate versions, and which SmolLM2 runs: the real
  weights when the cache holds them, else ``random:smollm2-135m`` (the same shape, random weights:
  the weights, 514 MB in fp32, cannot travel; every timing still holds, no editing number does);
* ``probes``: every method (ft, lora, adalora, rome, memit, alphaedit, unke, anyedit) edits two ZsRE
  requests on the card, in bf16, and reverts bitwise: seconds, peak memory, the trained weights' dtype;
* ``loop``: the ``locft-bf`` preset on 1,000 ZsRE edits (early stop off) against the plain PyTorch loop
  of `benchmarks/edit_speed.py` (same batches, loss and Adam), fp32: seconds per edit and the ratio;
* ``single``: one ``ft-uke`` edit of one UnKEBench request (its 25 steps), fp32: seconds per edit;
* ``edit_each``: K = 8 single edits at once (`wb.edit_each`) against 8 sequential `wb.edit` calls;
* ``scale``: the ``random:llama-3-8b`` shape in bf16 with the ``locft-bf-llama3-8b`` recipe (layer 22
  down_proj, batch 100) on 1,000 ZsRE requests for one epoch: seconds per step, peak memory against
  weights + the memory guard's estimate, achieved TFLOP/s against the best bf16 matmul measured here;
* ``stats``: second-moment statistics of one layer (100,000 MMLU tokens on SmolLM2's shape; 20,000
  on the 8B shape), computed from an empty cache: seconds;
* ``repeat``: the same ``locft-bf`` edit twice on 100 edits: the largest weight difference (0 when the
  card's kernels are deterministic for this edit).

``--dry-run`` runs every section at toy sizes on whatever device is here (the CPU in CI): it checks
the script, measures nothing, and says so in every line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workbench as wb  # noqa: E402
from workbench import data, files, models, placement, prompts, resources  # noqa: E402
from workbench.config import applicable  # noqa: E402
from workbench.components import num_layers, resolve  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def peak_reset() -> None:
    if CUDA:
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if CUDA else None


def smollm2() -> str:
    """The embedded model where its weights are here, else its shape with random weights."""
    if (files.cache_root() / "models" / models.DEFAULT_MODEL / "model.safetensors").exists():
        return models.DEFAULT_MODEL
    return "random:smollm2-135m"


class Check:
    """The sections' shared state: sizes, the budget, the output file."""

    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.out = Path(args.out) / "gpu_check.jsonl"
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.budget
        self.model_name = "tiny-random-llama-untied" if self.dry else smollm2()
        self.n = {"zsre": 16, "uke": 1, "k": 2, "repeat": 8, "stats": 300, "stats8b": 300} if self.dry else \
            {"zsre": 1000, "uke": 1, "k": 8, "repeat": 100, "stats": 100_000, "stats8b": 20_000}
        self.card = torch.cuda.get_device_name(0) if CUDA else "CPU (dry run: toy sizes, nothing measured)"

    def write(self, section: str, **fields) -> None:
        line = {"section": section, "card": self.card, "dry_run": self.dry, "model": self.model_name, **fields}
        with open(self.out, "a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)

    def run(self, section: str, fn, estimate_s: float) -> None:
        """Run `fn` unless less than `estimate_s` (its expected cost) is left in the budget."""
        left = self.deadline - time.monotonic()
        if left < (0 if self.dry else estimate_s):
            self.write(section, status="skipped", reason=f"{left:.0f} s left of the budget, needs ~{estimate_s:.0f} s")
            return
        t = time.perf_counter()
        try:
            fields = fn(self)
            self.write(section, status="ok", seconds=round(time.perf_counter() - t, 2), **fields)
        except Exception as e:  # one section's failure is a finding: the others still run
            self.write(section, status="error", error=f"{type(e).__name__}: {e}"[:2000],
                       traceback=traceback.format_exc()[-3000:])
        finally:
            if CUDA:
                torch.cuda.empty_cache()


def load(check: Check, dtype: str):
    return wb.load(check.model_name, device=DEVICE, dtype=dtype)


def env(check: Check) -> dict:
    import accelerate
    import transformers

    return {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "weights": "real" if check.model_name == models.DEFAULT_MODEL
            else "random (shape only: timings hold, editing numbers do not)",
            "gpus": torch.cuda.device_count() if CUDA else 0}


def probes(check: Check) -> dict:
    model, tok = load(check, "bfloat16")
    reqs = data.load("zsre", n=2)
    n = num_layers(model)
    mid = n // 2
    locate = dict(mom2_tokens=200 if check.dry else 2000, v_steps=3 if check.dry else 10, n_prefixes=2,
                  prefix_tokens=3, unke_steps=3 if check.dry else 10, key_position="prompt_last")
    cfgs = {"ft": wb.preset("locft-bf", epochs=2, early_stop_loss=0.0, layers=(mid,)),
            "lora": wb.EditConfig(method="lora", layers=(mid,), epochs=2, early_stop_loss=0.0),
            "adalora": wb.EditConfig(method="adalora", layers=(mid,), epochs=2, early_stop_loss=0.0),
            "rome": wb.EditConfig(method="rome", layers=(mid,), **applicable("rome", locate)),
            "memit": wb.EditConfig(method="memit", layers=(mid - 1, mid), **applicable("memit", locate)),
            "alphaedit": wb.EditConfig(method="alphaedit", layers=(mid - 1, mid), **applicable("alphaedit", locate)),
            "unke": wb.EditConfig(method="unke", layers=(mid,), **applicable("unke", locate)),
            "anyedit": wb.EditConfig(method="anyedit", layers=(mid,), **applicable("anyedit", locate))}
    before = models.state_hash(model)
    out = {}
    for name, cfg in cfgs.items():
        peak_reset()
        t = time.perf_counter()
        try:
            res = wb.edit(model, tok, reqs, cfg.replace(model_name=check.model_name), progress=False)
            sync()
            seconds = time.perf_counter() - t
            dtypes = sorted({str(d.dtype).removeprefix("torch.") for d in res.deltas().values()})
            res.revert()
            out[name] = {"ok": models.state_hash(model) == before, "seconds": round(seconds, 2),
                         "peak_gib": peak_gib(), "delta_dtypes": dtypes}
        except Exception as e:
            out[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    return {"methods": out, "all_ok": all(v["ok"] for v in out.values())}


def loop(check: Check) -> dict:
    from edit_speed import _restore, plain_loop

    model, tok = load(check, "float32")
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    reqs = data.load("zsre", n=check.n["zsre"])
    cfg = wb.preset("locft-bf", early_stop_loss=0.0, epochs=2 if check.dry else 3)
    if check.dry:
        cfg = cfg.replace(layers=(2,), batch_size=8)
    wb.edit(model, tok, reqs[:cfg.batch_size], cfg.replace(epochs=1), progress=False).revert()  # warm-up
    ours = wb.edit(model, tok, reqs, cfg, progress=False)
    t_ours, steps = ours.timings["total_s"], ours.steps
    ours.revert()
    sync()
    t_plain = plain_loop(model, tok, reqs, cfg)
    sync()
    _restore(model, snapshot)
    return {"edits": len(reqs), "epochs": cfg.epochs, "steps": steps, "ours_s_per_edit": t_ours / len(reqs),
            "plain_s_per_edit": t_plain / len(reqs), "ratio": t_plain / t_ours, "prefix_cache": ours.prefix_cache}


def single(check: Check) -> dict:
    model, tok = load(check, "float32")
    reqs = data.load("unkebench", n=check.n["uke"])
    cfg = wb.preset("ft-uke", early_stop_loss=0.0)
    if check.dry:
        cfg = cfg.replace(layers=(2,), steps_per_edit=3)
    wb.edit(model, tok, reqs[:1], cfg.replace(steps_per_edit=1), progress=False).revert()  # warm-up
    res = wb.edit(model, tok, reqs, cfg, progress=False)
    res.revert()
    return {"requests": len(reqs), "steps": res.steps, "s_per_edit": res.timings["s_per_edit"]}


def edit_each(check: Check) -> dict:
    model, tok = load(check, "float32")
    k = check.n["k"]
    reqs = data.load("unkebench", n=k)
    cfg = wb.preset("ft-uke", early_stop_loss=0.0, steps_per_edit=3 if check.dry else 25)
    if check.dry:
        cfg = cfg.replace(layers=(2,))
    sync()
    t = time.perf_counter()
    together = wb.edit_each(model, tok, reqs, cfg, progress=False)
    sync()
    t_each = time.perf_counter() - t
    t = time.perf_counter()
    last = []
    for r in reqs:
        res = wb.edit(model, tok, [r], cfg, progress=False)
        last.append(res.log.loss.iloc[-1])
        res.revert()
    sync()
    t_seq = time.perf_counter() - t
    diff = max(abs(a.log.loss.iloc[-1] - b) for a, b in zip(together, last))
    return {"k": k, "edit_each_s": t_each, "sequential_s": t_seq, "ratio": t_seq / t_each, "last_loss_max_diff": diff}


def scale(check: Check) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    name = "tiny-random-llama-untied" if check.dry else "random:llama-3-8b"
    cfg = wb.preset("locft-bf-llama3-8b", epochs=1, early_stop_loss=0.0, model_name=name, dtype="bfloat16")
    if check.dry:
        cfg = cfg.replace(layers=(2,), batch_size=8)
    t = time.perf_counter()
    model, tok = wb.load(name, device=DEVICE, dtype="bfloat16")
    load_s = time.perf_counter() - t
    reqs = data.load("zsre", n=check.n["zsre"])
    examples = [prompts.encode(tok, r.prompt, r.target, cfg.loss_scope, cfg.chat_template, cfg.max_length) for r in reqs]
    targets = resolve(model, cfg.components, cfg.layers)
    trained = sum(p.numel() for t_ in targets for p in model.get_submodule(t_.name).parameters())
    parts = resources.edit_bytes(model, cfg, examples, trained, min(t_.layer for t_ in targets), num_layers(model))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    wb.edit(model, tok, reqs[:cfg.batch_size], cfg, progress=False).revert()  # warm-up
    peak_reset()
    res = wb.edit(model, tok, reqs, cfg, progress=False)
    peak = peak_gib()
    res.revert()
    with FlopCounterMode(display=False) as counter:
        wb.edit(model, tok, reqs[:cfg.batch_size], cfg, progress=False).revert()
    flops = counter.get_total_flops() * res.steps  # one step's FLOPs (batches differ little in length)
    n = 8192 if CUDA else 256
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(10):
        sync()
        t = time.perf_counter()
        a @ a
        sync()
        best = min(best, time.perf_counter() - t)
    matmul = 2 * n**3 / best
    achieved = flops / res.timings["train_s"]
    return {"shape": name, "dtype": "bfloat16", "edits": len(reqs), "steps": res.steps, "load_s": load_s,
            "s_per_step": res.timings["train_s"] / max(res.steps, 1), "s_per_edit": res.timings["s_per_edit"],
            "peak_gib": peak, "weights_gib": weights / 2**30, "guard_estimate_gib": sum(parts.values()) / 2**30,
            "guard_parts_gib": {k: v / 2**30 for k, v in parts.items()},
            "achieved_tflops": achieved / 1e12, "best_bf16_matmul_tflops": matmul / 1e12,
            "share_of_matmul": achieved / matmul, "prefix_cache": res.prefix_cache}


def stats(check: Check) -> dict:
    from workbench.methods import locate

    out = {}
    for name, tokens in ((check.model_name, check.n["stats"]),
                         ("tiny-random-llama" if check.dry else "random:llama-3-8b", check.n["stats8b"])):
        model, tok = wb.load(name, device=DEVICE, dtype="bfloat16" if "8b" in name else "float32")
        layer = num_layers(model) // 2
        locate.STATS.clear()  # computed, not read back: this layer's cached file goes first
        key = locate.stats_key(model, layer, data.corpus("mmlu")[1], tokens)
        (files.cache_root() / "stats" / f"{key}.pt").unlink(missing_ok=True)
        sync()
        t = time.perf_counter()
        c = locate.second_moments(model, tok, [layer], n_tokens=tokens, progress=False)[layer]
        sync()
        out[name] = {"layer": layer, "tokens": tokens, "seconds": time.perf_counter() - t, "d_in": c.shape[0],
                     "finite": bool(torch.isfinite(c).all())}
        del model
    locate.STATS.clear()
    return out


def repeat(check: Check) -> dict:
    model, tok = load(check, "float32")
    reqs = data.load("zsre", n=check.n["repeat"])
    cfg = wb.preset("locft-bf", early_stop_loss=0.0, epochs=2)
    if check.dry:
        cfg = cfg.replace(layers=(2,), batch_size=4)
    got = []
    for _ in range(2):
        res = wb.edit(model, tok, reqs, cfg, progress=False)
        got.append(res.deltas())
        res.revert()
    diff = max(float((got[0][k] - got[1][k]).abs().max()) for k in got[0])
    return {"edits": len(reqs), "max_abs_weight_diff": diff, "bitwise_equal": diff == 0.0}


SECTIONS = {"env": (env, 1), "probes": (probes, 90), "loop": (loop, 120), "single": (single, 20),
            "edit_each": (edit_each, 40), "scale": (scale, 150), "stats": (stats, 60), "repeat": (repeat, 40)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sections", nargs="*", help=f"some of {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.jsonl")
    ap.add_argument("--budget", type=float, default=360, help="seconds for all sections together")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on this device: checks the script only")
    args = ap.parse_args()
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    if not CUDA and not args.dry_run:
        print("gpu_check.py: no CUDA device here; nothing measured (--dry-run runs every section at toy sizes)")
        return 0
    check = Check(args)
    for name in args.sections or list(SECTIONS):
        fn, estimate = SECTIONS[name]
        check.run(name, fn, estimate)
    lines = [json.loads(x) for x in check.out.read_text().splitlines()]
    return 1 if any(x["status"] == "error" for x in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
