"""General capability two ways: lm-evaluation-harness' MMLU format against our MMLU probe.

    python benchmarks/capability.py --n-edits 100

Both score the same 570 MMLU test items (10 per subject, data/benchmarks.yaml: mmlu-probe) on
SmolLM2-135M-Instruct, first unedited, then after the `locft-bf` preset edits the first `--n-edits`
ZsRE facts (reverted at the end):

* lm-eval (`EvalConfig(capability=("lm_eval:workbench_mmlu",))`, task file data/lm_eval/): the
  question with lettered choices, "Answer:", the log-likelihood of each letter;
* ours (`capability=("mmlu",)`, `scoring.mmlu_accuracy`): the mean per-token log-likelihood of each
  choice's text after "Question: ...\\nAnswer:" (cloze). A 135M model barely knows letters from
  choices, so the two can differ a lot; the difference between them is the scoring, not the items.
"""
import argparse
import time

import workbench as wb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-edits", type=int, default=100)
    ap.add_argument("--n", type=int, default=570, help="MMLU items")
    args = ap.parse_args()
    model, tok = wb.load(device="cpu")
    cfg = wb.EvalConfig(splits=(), metrics=(), capability=("lm_eval:workbench_mmlu", "mmlu"), n_mmlu=args.n)

    def measure(label):
        t = time.perf_counter()
        cap = wb.evaluate(model, tok, [], cfg).capability
        print(f"{label}: lm-eval MMLU (letters) {cap['lm_eval_workbench_mmlu_acc']:.4f}, our probe (cloze) "
              f"{cap['mmlu_acc']:.4f}  [{args.n} items, {time.perf_counter() - t:.0f} s]", flush=True)

    measure("unedited SmolLM2-135M-Instruct")
    res = wb.edit(model, tok, wb.data.load("zsre", n=args.n_edits), wb.preset("locft-bf"), progress=False)
    measure(f"after locft-bf on {args.n_edits} ZsRE edits ({res.steps} steps)")
    res.revert()


if __name__ == "__main__":
    main()
