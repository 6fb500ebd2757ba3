"""Why do UnKE and AnyEdit barely move UnKEBench answers on SmolLM2-135M? Each edit, stage by stage.

    python benchmarks/baseline_diagnosis.py --offset 950 --n 3 --out docs/baselines_diagnosis.json

For each held-apart UnKEBench request (950 on: no claim or calibration of docs/claims.yaml edits them)
and each arm (a preset, optionally changed), edited alone on the unedited model and reverted:

1. **value**: the answer's mean NLL per token (end-of-turn included when trained) with the optimised δs
   added at their key tokens, against the unedited model's; the value's Adam steps; ‖δ‖/‖h‖ per chunk
   (the clamp is ``clamp_norm``);
2. **layer fit**: after `wb.edit` trained the layer, how much of each δ its output carries at the key
   token (1 - ‖out - (h + δ)‖/‖δ‖: 1 = written exactly, 0 = nothing, on the text the layer was trained
   on), and the answer's NLL per token through the edited weights, teacher-forced;
3. **answer**: the greedy answer to the question (chat template, 160 new tokens, the UKE scoring's
   settings), scored against the target with the UnKE lineage's sentence cosine and ROUGE-L recall,
   beside the unedited model's answer.

The δs are those `wb.edit`'s own value stage returned (recorded on the way); h and the value's NLL are
read on the unedited model, the fit and the answer on the edited one. Writes one JSON file (per request
and arm, and means).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import workbench as wb
from workbench import generation, metrics
from workbench.methods import locate, unke
from workbench.methods.weights import restore
from workbench.prompts import IGNORE, Encoded, collate, position_ids

ARMS = {  # label -> (preset, changes)
    "unke": ("unke", {}),
    "anyedit": ("anyedit", {}),
    "unke pre-42": ("unke", {"v_stop_loss": 5e-2, "preserve_set": "mmlu_fixed", "decay_norms": True}),
}


@torch.no_grad()
def answer_nll(model, seq: Encoded, block=None, adds=()) -> float:
    """Mean NLL per labelled token of `seq` (teacher-forced), with each (position, δ) of `adds` added to
    `block`'s output."""
    batch = collate([seq], 0)
    handle = None
    if adds:
        def hook(mod, args, out):
            h = (out[0] if isinstance(out, tuple) else out).clone()
            for pos, d in adds:
                h[0, pos] += d.to(h.dtype)
            return (h, *out[1:]) if isinstance(out, tuple) else h
        handle = block.register_forward_hook(hook)
    try:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=position_ids(batch["attention_mask"])).logits[0, :-1].float()
    finally:
        if handle is not None:
            handle.remove()
    labels = batch["labels"][0, 1:]
    keep = labels != IGNORE
    return float(torch.nn.functional.cross_entropy(logits[keep], labels[keep]))


@torch.no_grad()
def layer_fit(model, block, seq: Encoded, positions, deltas, h) -> list[float]:
    """1 - ‖out - (h + δ)‖/‖δ‖ at each key position, on `seq` through the (edited) model."""
    out = locate.layer_outputs(model, block, collate([seq], 0))[0].float()
    return [1 - float((out[p] - (h_ + d)).norm() / d.norm()) for p, d, h_ in zip(positions, deltas, h)]


def score(preds, refs) -> dict:
    cos = metrics.sentence_cosine(preds, refs)
    rl = [r["rougeL"] for r in metrics.rouge_recall(preds, refs)]
    return {"sentence_cosine": cos, "rougeL_recall": rl}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--offset", type=int, default=950)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--out", default="docs/baselines_diagnosis.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = wb.load(device="cpu", dtype="float32")
    values = unke.values
    torch.set_num_threads(1)  # a shared 2-core machine
    requests = wb.data.load("unkebench")[args.offset:args.offset + args.n]
    refs = [r.target for r in requests]
    t0 = time.perf_counter()
    before = generation.generate(model, tok, [r.prompt for r in requests], max_new_tokens=args.max_new_tokens)
    out = {"model": "smollm2-135m-instruct (fp32, CPU)", "benchmark": "unkebench",
           "requests": [r.id for r in requests], "offset": args.offset, "torch_threads": torch.get_num_threads(),
           "machine": platform.node(), "unedited": {"answers": before, **score(before, refs)}, "arms": {}}
    for label in args.arms:
        name, changes = ARMS[label]
        cfg = wb.preset(name, device="cpu", dtype="float32", **changes)
        layer = cfg.layers[0]
        block = locate.decoder_layer(model, layer)
        originals = {n: p.detach().clone() for n, p in unke.layer_parameters(model, layer).items()}
        rows = []
        for req in requests:
            t = time.perf_counter()
            seen = []

            def recording(*a, **kw):  # what the edit's own value stage returns
                seen.append(values(*a, **kw))
                return seen[-1]

            unke.values = recording
            try:
                result = wb.edit(model, tok, [req], cfg, progress=False)
            finally:
                unke.values = values
            log = result.log.iloc[0]
            seq, positions, deltas, v_steps = seen[0]
            assert int(log.value_steps) == v_steps
            with locate.frozen_eval(model):
                trained = {n: p.detach().clone() for n, p in unke.layer_parameters(model, layer).items()}
                result.revert()  # the unedited model: h and the value's NLL
                h = locate.outputs(model, block, collate([seq], 0), torch.zeros(len(positions), dtype=torch.long),
                                   torch.tensor(positions))
                nll0 = answer_nll(model, seq)
                nll_value = answer_nll(model, seq, block, list(zip(positions, deltas)))
                restore(model, trained)  # the edited layer again
            trained_on = seq if name == "anyedit" else Encoded(seq.input_ids[:seq.n_prompt], [IGNORE] * seq.n_prompt,
                                                                seq.n_prompt, False)
            with locate.frozen_eval(model):
                fit = layer_fit(model, block, trained_on, positions, deltas, h)
                nll_edited = answer_nll(model, seq)
            answer = generation.generate(model, tok, [req.prompt], max_new_tokens=args.max_new_tokens)[0]
            restore(model, originals)
            rows.append({"request": req.id, "chunks": len(positions), "answer_tokens": len(seq.input_ids) - seq.n_prompt, "value_steps": v_steps,
                         "value_steps_max": len(positions) * (cfg.v_steps - 1),
                         "delta_over_h": [float(d.norm() / h_.norm()) for d, h_ in zip(deltas, h)],
                         "nll_unedited": nll0, "nll_with_delta": nll_value, "layer_last_loss": float(log.loss),
                         "fit": fit, "nll_edited": nll_edited, "answer": answer, "seconds": time.perf_counter() - t,
                         **{k: v[0] for k, v in score([answer], [req.target]).items()}})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "answer"}), flush=True)
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in
                ("nll_unedited", "nll_with_delta", "nll_edited", "sentence_cosine", "rougeL_recall")}
        mean["fit"] = sum(sum(r["fit"]) / len(r["fit"]) for r in rows) / len(rows)
        for k in ("sentence_cosine", "rougeL_recall"):
            mean[f"{k}_unedited"] = sum(out["unedited"][k]) / len(rows)
        out["arms"][label] = {"preset": name, "changes": changes, "config": cfg.to_dict(), "rows": rows, "mean": mean}
        print(label, json.dumps(mean), flush=True)
    out["seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
