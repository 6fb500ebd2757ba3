"""Metrics of an edit. Every score names its protocol, because the literature mixes them up.

* ``token_accuracy`` (teacher-forced): feed prompt + target and count the target tokens that are
  the argmax prediction. Cheap and common (EasyEdit), but *not* what a user sees.
"""
from __future__ import annotations

import torch

from . import data
from .models import spec


@torch.no_grad()
def token_accuracy(model, tok, prompts: list[str], targets: list[str], chat_template: bool = True,
                   batch_size: int = 32) -> list[float]:
    """Teacher-forced accuracy of each target given its prompt (fraction of target tokens, end-of-turn
    included, that are the model's argmax), one value per pair."""
    from .train import position_ids

    device = next(model.parameters()).device
    scores: list[float] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = range(start, min(start + batch_size, len(prompts)))
            ex = [data.encode(tok, prompts[i], targets[i], "target", chat_template) for i in chunk]
            b = {k: v.to(device) for k, v in data.collate(ex, spec(tok).pad_id).items()}
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                           position_ids=position_ids(b["attention_mask"]), use_cache=False).logits
            pred, gold = logits[:, :-1].argmax(-1), b["labels"][:, 1:]
            has = gold != data.IGNORE
            scores += ((pred == gold) & has).sum(1).div(has.sum(1).clamp(min=1)).tolist()
    finally:
        model.train(was_training)
    return scores
