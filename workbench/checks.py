"""The first thing to look at after an edit: did each fact go in, and did unrelated answers stay?

`check(model, tok, requests, chat_template, before)` generates, greedily and in one prompt format
(the edit's), the answer to every edited question and to `UNRELATED`, a small fixed set of general
questions no edit should touch, and sets them beside the answers before the edit:

* a fact is **learnt** when the answer after the edit holds at least `LEARNT_RECALL` of the target's
  words in order (ROUGE-L recall, rouge-score): exact for a one-word answer, tolerant of a word or
  two in a paragraph;
* an unrelated question is **kept** when its answer after the edit is the same string as before.

"Before" is `answers` on the unedited model, cached (in memory and under
``$WORKBENCH_CACHE/check/``) by the model's weight fingerprint, the format and the prompts, so
``wb.edit(..., check=True)`` and ``workbench edit`` need no earlier `wb.pre_edit` and a second edit
of the same base model does not ask it again. Each fact's answer is generated up to its target's
length plus a margin, never cut short of it.

This is a quick, per-fact look, not the papers' scoring (`evaluation.py` does that, with paraphrases,
locality sets and their protocols).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pandas as pd

from . import files, metrics
from .data import Request, as_requests
from .generation import generate
from .models import fingerprint
from .prompts import target_ids

# General questions a small instruct model answers, about nothing a user is likely to edit; fixed, so
# that "kept" means the same thing for every edit (`check(unrelated=...)` takes your own)
UNRELATED = (
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
    "What is the largest planet in the solar system?",
    "What is the boiling point of water in degrees Celsius?",
    "Which language is spoken in Brazil?",
    "Who painted the Mona Lisa?",
    "What gas do plants absorb from the air?",
)
UNRELATED_TOKENS = 32  # new tokens per unrelated answer
LEARNT_RECALL = 0.9  # a fact is learnt when the answer holds this share of the target's words, in order
MARGIN = 8  # new tokens allowed past a target's own length

_CACHE: dict[str, list[str]] = {}


def answers(model, tok, prompts: list[str], chat_template: bool, max_new_tokens: int, cache: bool = True) -> list[str]:
    """Greedy answers of `model` to `prompts`, cached by the weights' fingerprint (so an edited model
    is asked again and the unedited one is not)."""
    key = json.dumps([fingerprint(model), bool(chat_template), int(max_new_tokens), list(prompts)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    path = files.cache_root() / "check" / f"{digest}.json"
    if cache and digest in _CACHE:
        return list(_CACHE[digest])
    if cache and path.exists():
        out = json.loads(path.read_text())
    else:
        out = generate(model, tok, list(prompts), chat_template, max_new_tokens) if prompts else []
        if cache:
            files.write_text(path, json.dumps(out))
    if cache:
        _CACHE[digest] = list(out)
    return list(out)


@dataclass(frozen=True)
class Plan:
    """What `check` asks: the prompts of both kinds and their generation budgets."""

    facts: tuple[Request, ...]
    unrelated: tuple[str, ...]
    chat_template: bool
    fact_tokens: int  # budget of the facts' answers: the longest target (in tokens) + MARGIN

    @classmethod
    def of(cls, tok, requests, chat_template: bool, unrelated=UNRELATED) -> "Plan":
        facts = tuple(as_requests(requests))
        longest = max((len(target_ids(tok, r.target, chat_template)) for r in facts), default=0)
        return cls(facts, tuple(unrelated), bool(chat_template), longest + MARGIN)

    def ask(self, model, tok) -> tuple[list[str], list[str]]:
        """(answers to the facts' prompts, answers to the unrelated questions) of `model` now."""
        return (answers(model, tok, [r.prompt for r in self.facts], self.chat_template, self.fact_tokens),
                answers(model, tok, list(self.unrelated), self.chat_template, UNRELATED_TOKENS))


@dataclass
class Check:
    """Before/after answers of an edit (`table`: one row per fact and per unrelated question)."""

    table: pd.DataFrame  # kind ("fact" / "unrelated"), prompt, target, before, after, recall, ok
    chat_template: bool  # the prompt format both were generated in

    @property
    def facts(self) -> pd.DataFrame:
        return self.table[self.table.kind == "fact"]

    @property
    def unrelated(self) -> pd.DataFrame:
        return self.table[self.table.kind == "unrelated"]

    @property
    def learnt(self) -> int:
        return int(self.facts.ok.sum())

    @property
    def kept(self) -> int:
        return int(self.unrelated.ok.sum())

    def summary(self) -> str:
        fmt = "the chat template" if self.chat_template else "plain prompts (no template)"
        return (f"{self.learnt} of {len(self.facts)} facts learnt (ROUGE-L recall >= {LEARNT_RECALL}), "
                f"{self.kept} of {len(self.unrelated)} unrelated answers kept (same text), asked with {fmt}")

    def to_text(self, width: int = 48) -> str:
        """The table for a terminal: each answer cut to `width` characters."""
        def short(text: str) -> str:
            text = " ".join(str(text).split())
            return text if len(text) <= width else text[:width - 1] + "…"

        rows = [(r.kind, "yes" if r.ok else "NO", short(r.prompt), short(r.before), short(r.after))
                for r in self.table.itertuples()]
        head = ("", "learnt/kept", "question", "before", "after")
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *rows]]
        return "\n".join(lines + [self.summary()])

    def to_dict(self) -> dict:
        return {"learnt": self.learnt, "facts": len(self.facts), "kept": self.kept, "unrelated": len(self.unrelated),
                "chat_template": self.chat_template, "rows": self.table.to_dict(orient="records")}


def compare(plan: Plan, before: tuple[list[str], list[str]], after: tuple[list[str], list[str]]) -> Check:
    """The `Check` of two `Plan.ask` answers (before and after the edit)."""
    facts, unrelated = plan.facts, plan.unrelated
    targets = [r.target for r in facts]
    recall = [s["recall"] for s in metrics.rouge_l(after[0], targets)] if facts else []
    rows = [("fact", r.prompt, r.target, b, a, rc, rc >= LEARNT_RECALL)
            for r, b, a, rc in zip(facts, before[0], after[0], recall)]
    rows += [("unrelated", q, "", b, a, float("nan"), a == b) for q, b, a in zip(unrelated, before[1], after[1])]
    table = pd.DataFrame(rows, columns=["kind", "prompt", "target", "before", "after", "recall", "ok"])
    return Check(table, plan.chat_template)


def check(model, tok, requests, base, chat_template: bool = True, unrelated=UNRELATED) -> Check:
    """Two models side by side: `base` (the "before", e.g. the original) and `model` (the "after", e.g.
    an edited copy loaded from disk), asked each request's prompt and `unrelated` in one format."""
    plan = Plan.of(tok, requests, chat_template, unrelated)
    return compare(plan, plan.ask(base, tok), plan.ask(model, tok))
