"""Verdicts by rules fixed before the runs: paired differences over seeds and their 95 % interval.

A claim says that one arm beats another on a metric (higher, or lower, is better). Every seed *s*
edits its own block of requests, the same block for both arms, so the arms are compared seed by
seed:

1. d_s = metric(arm, seed s) - metric(other arm, seed s), for every seed both arms have;
2. the interval is mean(d) ± t(0.975, n-1) · sd(d) / √n (Student t, n seeds);
3. **reproduced** when the mean lies in the paper's direction and the interval excludes zero;
   **not reproduced** when the interval excludes zero on the other side; **inconclusive**
   otherwise, and always with fewer than two paired seeds (no interval).

A claim of *no loss* (LocFT-BF: capability kept "without degradation", "<2 %") cannot be shown by
an interval that merely fails to exclude zero: absence of evidence is not evidence of absence. It
is a non-inferiority claim with a margin m fixed before the runs (from the paper where it gives
one): **reproduced** when the whole interval lies above -m in the paper's direction (the arm is at
most m worse, at 95 %), **not reproduced** when the whole interval lies below -m, **inconclusive**
otherwise.

Third edition (issue 44), for the claims marked ``edition: 3``: the unedited model is an arm; where
the claim is about editing success (``floor``), a rival counts only if it beats the unedited arm by
rule 3 on the score; the verdict is the one against the strongest counting rival, **inconclusive**
when none counts. Seeds follow a sequential rule: the listed seeds first, then one more at a time up
to ``seeds_max`` while the interval spans zero, every interval at 1 − 0.05/(seeds_max − 1)
(Bonferroni over the looks at 2 .. seeds_max seeds). `RULES_3` says so in the report.

`RULES` is that text, printed at the top of the report; `paired` and `verdict` apply it, nothing
else decides a verdict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

RULES = (
    "Each claim names an arm, the arm it is compared with, a metric and the paper's direction (higher or lower "
    "is better). Seed *s* edits its own block of requests, the same block for both arms, so the arms are "
    "compared seed by seed: d_s = arm − other. The 95 % interval is mean(d) ± t(0.975, n−1) · sd(d) / √n over "
    "the n paired seeds. **reproduced**: the mean is in the paper's direction and the interval excludes zero. "
    "**not reproduced**: the interval excludes zero on the other side. **inconclusive**: otherwise, and "
    "whenever fewer than two seeds are paired. These rules were written before the runs; the renderer "
    "applies them, no verdict is typed by hand. A claim of no loss names a margin m before its runs "
    "(non-inferiority): **reproduced** when the whole interval lies above −m in the paper's direction (the arm "
    "is at most m worse), **not reproduced** when it lies wholly below −m, **inconclusive** otherwise.")

RULES_3 = (
    "Third edition (claims marked *3rd ed.*; written before their runs, issue 44): **the unedited model is an "
    "arm** (the claim's own method run with lr 0: it moves no weight and is scored by the same code on the same "
    "requests). Where the claim is about editing success, **a rival counts only if it beats the unedited model** "
    "by the rule above on the claim's score; the verdict is the one against the strongest counting rival, and "
    "**inconclusive (no rival beats the unedited model)** when none counts. **Seeds:** the seeds listed first "
    "(2, or the 3 already stored), then one more at a time, up to 5, while the interval against the strongest "
    "counting rival spans zero; every interval of such a claim is at 1 − 0.05/4 = 98.75 % (Bonferroni over "
    "the four looks at 2, 3, 4 and 5 seeds) instead of 95 %. The summary shows the arm's lead over the unedited "
    "model beside the paper's number.")


def counts(p: "Paired", direction: str) -> bool | None:
    """Whether a rival counts under the floor rule: its difference from the unedited arm (`p`: rival −
    unedited) is "reproduced" in the claim's direction; None while they share no two seeds."""
    if p.n < 2:
        return None
    return verdict(p, direction) == "reproduced"


@dataclass(frozen=True)
class Paired:
    """The seed-by-seed difference of two arms on one metric."""

    n: int  # paired seeds
    mean: float  # mean of d_s (NaN when n = 0)
    half: float  # half-width of the 95 % t-interval (NaN when n < 2)
    diffs: tuple[float, ...]  # d_s, in seed order

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half


def paired(df: pd.DataFrame, axis: str, arm, other, metric: str, pair: str = "seed", level: float = 0.95) -> Paired:
    """d_s = `metric` of `arm` minus that of `other` (values of column `axis`) for every value of
    `pair` (the seed) that both have, and the Student-t interval of their mean."""
    from scipy import stats

    def by_seed(value):
        part = df[(df[axis] == value) & df[metric].notna()] if metric in df else df.iloc[:0]
        return dict(zip(part[pair], part[metric].astype(float)))

    a, b = by_seed(arm), by_seed(other)
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    n = len(d)
    if n == 0:
        return Paired(0, math.nan, math.nan, ())
    mean = sum(d) / n
    if n < 2:
        return Paired(n, mean, math.nan, tuple(d))
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return Paired(n, mean, stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n), tuple(d))


def verdict(p: Paired, direction: str, margin: float | None = None) -> str:
    """The rules of the module docstring: `direction` is the paper's, ``"higher"`` (the arm's metric is
    larger) or ``"lower"``; a `margin` makes it a claim of no loss (non-inferiority by at most
    `margin`, in the metric's units) instead of a claim of a difference."""
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction={direction!r}: 'higher' or 'lower'")
    if margin is not None and not margin >= 0:
        raise ValueError(f"margin={margin!r}: a non-negative number in the metric's units")
    if p.n < 2 or math.isnan(p.half):
        return "inconclusive"
    sign = 1 if direction == "higher" else -1
    lo, hi = sorted((sign * p.lo, sign * p.hi))  # in the paper's direction: positive supports it
    bound = 0.0 if margin is None else -margin  # a difference must clear zero; no loss, only -margin
    if lo > bound:
        return "reproduced"
    if hi < bound:
        return "not reproduced"
    return "inconclusive"
