"""Short-answer scoring: generate to the token limit and cut, vs stop each row at a stop string.

    python benchmarks/stop_speed.py --n 128                 # 128 ZsRE prompts (Ori + Para)
    python benchmarks/stop_speed.py --n 512 --device cuda

LocFT-BF's protocol (`EvalConfig.preset("locft")`) scores the greedy answer up to the first "." or
newline, at most 32 tokens. Sequential claims score every edit so far after every chunk, so on the
CPU this decoding was most of a LocFT-BF sequence's wall time. Rows printed, on the same prompts and
the same unedited model:

* ``to the limit, then cut``: `generation.generate` as it ran before: every batch decodes until each
  row has ended with EOS (or 32 tokens), and the text is cut afterwards;
* ``stop strings``: `generation.generate` now: transformers' `stop_strings` end a row at "." or
  newline, and the batch ends when every row has ended.

Printed per row: seconds, seconds per prompt, how many texts differ from the first row's (it must be
0) and the speed-up over the first row.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import workbench as wb
from workbench.generation import generate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table import add_device, default_model, speedups  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=128)
    add_device(ap)
    args = ap.parse_args()
    model, tok = default_model(args.device)
    cfg = wb.EvalConfig.preset("locft")
    prompts = []
    for r in wb.data.load("zsre"):
        prompts += [r.prompt, *r.paraphrases]
        if len(prompts) >= args.n:
            break
    prompts = prompts[:args.n]

    def to_the_limit():  # the same call, with transformers' stop_strings taken out of model.generate
        plain = model.generate

        def without_stop_strings(**kw):
            kw.pop("stop_strings", None), kw.pop("tokenizer", None)
            return plain(**kw)

        model.generate = without_stop_strings
        try:
            return generate(model, tok, prompts, cfg.chat_template, cfg.max_new_tokens, cfg.stop, cfg.batch_size)
        finally:
            del model.generate  # the class's method again

    def stop_strings():
        return generate(model, tok, prompts, cfg.chat_template, cfg.max_new_tokens, cfg.stop, cfg.batch_size)

    out, first = [], None
    for name, fn in (("to the limit, then cut", to_the_limit), ("stop strings", stop_strings)):
        t = time.perf_counter()
        texts = fn()
        wall = time.perf_counter() - t
        first = texts if first is None else first
        out.append({"setting": name, "wall_s": wall, "s_per_prompt": wall / len(prompts),
                    "texts_differing": sum(a != b for a, b in zip(texts, first))})
        print(out[-1], flush=True)
    speedups(out, f"LocFT-BF answers to {len(prompts)} ZsRE prompts, SmolLM2-135M-Instruct "
                  f"{next(model.parameters()).dtype}, {next(model.parameters()).device}, "
                  f"{torch.get_num_threads()} threads", digits=4)


if __name__ == "__main__":
    main()
