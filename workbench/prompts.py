"""Prompts: how a request becomes the tokens a model is trained and probed on.

One rendering for editing, generation and teacher-forced scoring, so that what is trained is what
is asked. With ``chat_template=True`` the prompt is the tokenizer's own template with a generation
prompt and the target is closed by the template's end-of-turn token (taken from the template, never
from the model's name: `models.spec`); without it the text is ``prompt + " " + target + EOS`` (the
leading-space fix, written once).

The loss scope of an edit is *only* a label mask built here (`encode`):

* ``prompt_last``: EasyEdit's FT-L objective (``objective_optimization: prompt_last``): every target
  token is scored against the *one* distribution at the last prompt position (a bag of tokens:
  log-softmax there, gathered at all target ids, masked mean); the end-of-turn is not in the bag.
  The labels mark the target tokens as for ``target`` and `Encoded.bag` tells the loss to read them
  all from that position (causal attention makes feeding the target harmless to it);
* ``first_token``: supervise the first target token only, predicted from the last prompt position
  (``last_token`` is its old, misleading name: a deprecated alias);
* ``target``: every target token, including the closing end-of-turn / EOS token (FT-UKE, LocFT-BF);
* ``prompt_target``: every token after the first.

Batches are left-padded (`collate`) and positions skip the padding (`position_ids`), so a padded
example is encoded exactly as an unpadded one; `forward` runs a model on such a batch, the one call
that edits, statistics and scores share.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .config import LOSS_SCOPES, loss_scope_name
from .errors import ConfigError, DataError
from .models import spec

IGNORE = -100  # label of a position that carries no loss


def prompt_ids(tok, prompt: str, chat_template: bool) -> list[int]:
    """Token ids of a prompt as the model sees it at edit and at generation time."""
    if chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]
    return tok(prompt)["input_ids"]  # add_special_tokens: the family's BOS where it has one


def target_ids(tok, target: str, chat_template: bool, eot: bool = True) -> list[int]:
    """Token ids of a target answer, closed by the end-of-turn token (template) or EOS (plain); with
    ``eot=False`` the answer alone (how ROME, MEMIT and AlphaEdit train their values)."""
    s = spec(tok)
    close = [s.eot_id if chat_template else s.eos_id] if eot else []
    if chat_template:
        return tok(target, add_special_tokens=False)["input_ids"] + close
    # Leading space: the answer continues the prompt's sentence (ROME's fix, written once here).
    text = target if target[:1].isspace() else " " + target
    return tok(text, add_special_tokens=False)["input_ids"] + close


@dataclass(frozen=True)
class Encoded:
    """One tokenised edit example."""

    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss; else the token at that position
    n_prompt: int  # prompt tokens (after any truncation)
    truncated: bool  # the example was longer than max_length and was cut
    bag: bool = False  # score every labelled token from the last prompt position (loss scope prompt_last)


def encode(tok, prompt: str, target: str, loss_scope: str = "target", chat_template: bool = True,
           max_length: int | None = None, eot: bool = True) -> Encoded:
    """Tokenise `prompt` + `target` and mask labels by `loss_scope` (see the module docstring).
    ``eot=False`` leaves the closing end-of-turn / EOS out of the target (`target_ids`).

    Over `max_length`, the prompt is cut from the left first (the answer is what is learnt), then
    the target from the right.
    """
    loss_scope = loss_scope_name(loss_scope)
    if loss_scope not in LOSS_SCOPES:
        raise ConfigError.bad_choice("loss_scope", loss_scope, LOSS_SCOPES)
    if max_length is not None and max_length < 2:
        raise ConfigError(f"max_length={max_length} must be >= 2 (a prompt token and a target token)")
    p, t = prompt_ids(tok, prompt, chat_template), target_ids(tok, target, chat_template, eot)
    n_target = len(t)
    if not p:  # nothing to predict the first target token from
        raise DataError(f"the prompt {prompt!r} has no tokens (and the tokenizer adds no BOS)", field="prompt")
    truncated = bool(max_length) and len(p) + len(t) > max_length
    if truncated:
        keep_t = min(len(t), max_length - 1)
        t = t[:keep_t]
        p = p[len(p) - (max_length - keep_t):]
    ids = p + t
    if loss_scope == "target":
        labels = [IGNORE] * len(p) + t
    elif loss_scope == "prompt_last":  # the closing end-of-turn / EOS (kept unless truncated away) is not in the bag
        closed = eot and len(t) == n_target and len(t) > 1  # the closing token survived truncation
        labels = [IGNORE] * len(p) + (t[:-1] + [IGNORE] if closed else t)
    elif loss_scope == "first_token":
        labels = [IGNORE] * len(p) + t[:1] + [IGNORE] * (len(t) - 1)
    else:
        labels = [IGNORE] + ids[1:]
    return Encoded(ids, labels, len(p), truncated, bag=loss_scope == "prompt_last")


def left_pad(rows: list[list[int]], fill: int) -> torch.Tensor:
    """Rows of token ids as one [B, T] tensor, each right-aligned and `fill` to its left: decoder-only
    models continue from the last position, so every row's real tokens must end at the same column."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
    return out


def collate(examples: list[Encoded], pad_id: int):
    """Left-pad examples into tensors ``input_ids, attention_mask, labels`` of shape [B, T] and
    ``bag`` [B] (loss scope prompt_last)."""
    return {"input_ids": left_pad([e.input_ids for e in examples], pad_id),
            "attention_mask": left_pad([[1] * len(e.input_ids) for e in examples], 0),
            "labels": left_pad([e.labels for e in examples], IGNORE),
            "bag": torch.tensor([e.bag for e in examples], dtype=torch.bool)}


def warn_truncated(count: int, max_length: int) -> None:
    if count:
        warnings.warn(f"{count} example(s) longer than max_length={max_length} were truncated", stacklevel=3)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding (as generation computes them), so a left-padded example is
    encoded exactly as an unpadded one, for absolute (GPT-2) and rotary positions alike."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def forward(model, batch: dict, **kwargs):
    """`model` on a left-padded batch (``input_ids``, ``attention_mask`` [B, T]; `collate`), with the
    positions that skip the padding: ``batch["position_ids"]`` when the batch carries them (a batch cut
    after a cached past), else `position_ids` of its mask. `kwargs` go to the model as they are
    (``logits_to_keep``, ``use_cache``, a cache). Returns the model's output."""
    ids = batch["position_ids"] if "position_ids" in batch else position_ids(batch["attention_mask"])
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=ids, **kwargs)
