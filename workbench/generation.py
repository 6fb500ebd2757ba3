"""Batched greedy generation, chat-template aware.

Prompts are rendered exactly as at edit time (`prompts.prompt_ids`), sorted by length so each batch
carries little padding, left-padded, and decoded greedily with the KV cache. Generation stops at
EOS, the family's end-of-turn token or, row by row, a stop string (transformers' `stop_strings`: a
row that has ended one is padded and the batch ends when every row has); the text is then cut at the
first of the given stop strings (LocFT-BF's protocol stops at "." and newline). Stopping is what
makes short-answer scoring cheap: without it every batch ran to `max_new_tokens` to cut its text
afterwards, and the cut text is the same either way (greedy rows are independent, and a row stops
only once a stop string is in its text).
"""
from __future__ import annotations

import torch

from . import threads
from .models import input_device, spec
from .prompts import left_pad, prompt_ids


@threads.active()
@torch.no_grad()
def generate(model, tok, prompts: list[str], chat_template: bool = True, max_new_tokens: int = 64,
             stop: tuple[str, ...] = (), batch_size: int = 32, progress: bool = False, on_batch=None) -> list[str]:
    """Greedy continuations of `prompts`, in their order.

    Args:
        chat_template: render each prompt with the tokenizer's chat template (as a user turn).
        max_new_tokens: most tokens generated per prompt.
        stop: cut each text at the first occurrence of any of these strings.
        batch_size: prompts per forward pass.
        on_batch: called with the positions (in `prompts`) of each batch's rows before it runs
            (`runs.protocols.score_each` routes each row to its own edit's weights with it).
    """
    from tqdm.auto import tqdm

    s = spec(tok)
    device = input_device(model)
    encoded = [prompt_ids(tok, p, chat_template) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # length bucketing
    out: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="generate", leave=False):
            idx = order[start:start + batch_size]
            if on_batch is not None:
                on_batch(idx)
            ids = left_pad([encoded[i] for i in idx], s.pad_id)
            mask = left_pad([[1] * len(encoded[i]) for i in idx], 0)
            width = ids.shape[1]
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=sorted({s.eos_id, s.eot_id}),
                                 pad_token_id=s.pad_id, temperature=None, top_p=None, top_k=None,
                                 **({"stop_strings": list(stop), "tokenizer": tok} if stop else {}))
            for row, i in enumerate(idx):
                out[i] = cut(tok.decode(gen[row, width:], skip_special_tokens=True), stop)
    finally:
        model.train(was_training)
    return out


def cut(text: str, stop: tuple[str, ...]) -> str:
    """`text` up to the first stop string, stripped."""
    for s in stop:
        pos = text.find(s)
        if pos >= 0:
            text = text[:pos]
    return text.strip()
