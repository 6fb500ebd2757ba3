"""Which way of editing several facts at once learns them all and keeps unrelated answers?

    python benchmarks/own_facts.py --data unkebench facts-fixture --n 10 [--out results/own_facts.json]

On the embedded SmolLM2-135M-Instruct (fp32, CPU), each arm edits the first `--n` requests of each
data set in ONE `wb.edit` call, then `wb.checks` asks every edited question and the 8 fixed unrelated
questions (`checks.UNRELATED`) before and after, in both prompt formats (the chat template and plain
text): a fact is learnt when the answer holds >= 90 % of the target's words in order (ROUGE-L
recall), an unrelated answer is kept when it is the same text. The model is reverted between arms.

Arms: the presets as they are (`ft-uke`: depth-first, one request after another; `locft-bf`:
breadth-first mini-batches, no template) and the two ways of putting every fact in at once with the
FT-UKE recipe (batch editing: `batch_size` = n) and LocFT-BF's schedule with the chat template.
This is the measurement behind docs/methods.md's "Several facts in one call".
"""
import argparse
import json
import time
from pathlib import Path

import torch

import workbench as wb
from workbench import checks

ARMS = {  # label -> (preset, overrides); n is filled in for batch editing
    "ft-uke (depth-first: one fact after another)": ("ft-uke", {}),
    "ft-uke, batch editing (batch_size=n)": ("ft-uke", {"batch_size": "n"}),
    "ft-uke, batch editing, lr 5e-3": ("ft-uke", {"batch_size": "n", "lr": 5e-3}),
    "locft-bf (breadth-first, no template)": ("locft-bf", {}),
    "locft-bf + chat template": ("locft-bf", {"chat_template": True}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=["unkebench", "facts-fixture"])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--arms", nargs="*", default=None, help="labels (substrings) of the arms to run")
    ap.add_argument("--out", default="results/own_facts.json")
    args = ap.parse_args()
    model, tok = wb.load(device="cpu")
    rows = []
    for name in args.data:
        facts = wb.data.load(name, n=args.n)
        plans = {fmt: checks.Plan.of(tok, facts, fmt) for fmt in (True, False)}
        before = {fmt: p.ask(model, tok) for fmt, p in plans.items()}  # the unedited model (cached)
        for label, (preset, over) in ARMS.items():
            if args.arms and not any(a in label for a in args.arms):
                continue
            cfg = wb.preset(preset, **{k: len(facts) if v == "n" else v for k, v in over.items()})
            torch.manual_seed(0)
            t = time.perf_counter()
            res = wb.edit(model, tok, facts, cfg, progress=False, sequential=True)
            edit_s = time.perf_counter() - t
            row = {"data": name, "n": len(facts), "arm": label, "edit_s": round(edit_s, 1), "steps": res.steps,
                   "trained_with_template": cfg.chat_template}
            for fmt, plan in plans.items():
                c = checks.compare(plan, before[fmt], plan.ask(model, tok))
                key = "chat" if fmt else "plain"
                row[f"learnt_{key}"], row[f"kept_{key}"] = c.learnt, c.kept
                row[f"recall_{key}"] = round(float(c.facts.recall.mean()), 3)
            res.revert()
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": "smollm2-135m-instruct (fp32, CPU)", "torch_threads":
                                          torch.get_num_threads(), "rows": rows}, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
