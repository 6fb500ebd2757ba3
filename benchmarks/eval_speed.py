"""Evaluation throughput: wb.evaluate (batched, length-sorted, KV cache) vs per-sample generation.

Scores Ori + Para + Loc of `--n` UnKEBench requests (our UnKEBench-Loc for locality) on the
embedded model with ROUGE-L and BERTScore, and a plain loop, written here, that generates and
scores one probe at a time on `--n-baseline` of the same requests. Both run in this process, on the
same prompts and decoding settings; the printed ratio is seconds per probe, baseline / ours.

    python benchmarks/eval_speed.py --n 100 --n-baseline 10
"""
import argparse
import time

import torch

import workbench as wb
from workbench import locality, metrics
from workbench.prompts import prompt_ids
from workbench.evaluation import probes
from workbench.models import spec


def per_sample(model, tok, table, cfg):
    """The baseline: one probe at a time, generate then score it alone."""
    s = spec(tok)
    out = []
    for row in table.itertuples():
        ids = torch.tensor([prompt_ids(tok, row.prompt, cfg.chat_template)])
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=cfg.max_new_tokens, eos_token_id=[s.eos_id, s.eot_id],
                                 pad_token_id=s.pad_id, temperature=None, top_p=None, top_k=None)
        text = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()
        out.append((metrics.rouge_l([text], [row.reference])[0]["f1"],
                    metrics.bertscore([text], [row.reference])[0]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--n-baseline", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = wb.load()
    requests = locality.load("unkebench-loc", n=args.n)
    cfg = wb.EvalConfig(metrics=("rougeL", "bertscore"), max_new_tokens=args.max_new_tokens)
    pre = wb.pre_edit(model, tok, requests, cfg)
    metrics.bert_scorer()  # both paths share the loaded scorer: load time is not what is compared

    t = time.perf_counter()
    report = wb.evaluate(model, tok, requests, cfg, pre=pre)
    ours = time.perf_counter() - t
    n_ours = len(report.per_probe)

    table = probes(requests[:args.n_baseline], cfg.splits)
    table.loc[table.split == "loc", "reference"] = table.prompt[table.split == "loc"].map(pre.generations)
    t = time.perf_counter()
    base = per_sample(model, tok, table, cfg)
    baseline = time.perf_counter() - t

    same = report.per_probe[report.per_probe.request.isin([r.id for r in requests[:args.n_baseline]])]
    agree = sum(abs(a - b[0]) < 1e-6 for a, b in zip(same.rougeL_f1, base)) / len(base)
    print(f"model {model.name_or_path}, {torch.get_num_threads()} threads, max_new_tokens {cfg.max_new_tokens}")
    print(f"ours:     {n_ours} probes ({args.n} requests, Ori+Para+Loc) in {ours:.1f} s = {ours / n_ours:.3f} s/probe")
    print(f"baseline: {len(base)} probes ({args.n_baseline} requests) one at a time in {baseline:.1f} s "
          f"= {baseline / len(base):.3f} s/probe")
    print(f"ROUGE-L identical on {agree:.0%} of the shared probes (batched greedy vs one-by-one greedy)")
    print(f"speed-up (s/probe, baseline / ours): {(baseline / len(base)) / (ours / n_ours):.1f}x")
    print(report.uke_table().round(3).to_string())


if __name__ == "__main__":
    main()
