"""Statistics over seeds: means and Student-t confidence intervals of a sweep's metrics."""
from __future__ import annotations

import json
import math

import pandas as pd

from .store import plain


def over_seeds(df: pd.DataFrame, by: str | list[str], metrics: list[str], level: float = 0.95) -> pd.DataFrame:
    """Mean of each metric over the seeds of every value of `by` (a column or a list of columns),
    with ``<metric>.ci``: the half-width of the two-sided Student-t interval at `level` (NaN with one
    seed). Rows keep the first-seen order of `by`'s values."""
    from scipy import stats

    by = [by] if isinstance(by, str) else list(by)
    keys = df[by].apply(lambda row: json.dumps(plain(list(row))), axis=1)  # lists (layers) are not hashable
    rows = []
    for key in dict.fromkeys(keys):
        part = df[keys == key]
        row = {**{b: part[b].iloc[0] for b in by}, "n_seeds": len(part)}
        for m in metrics:
            if m not in part or part[m].isna().all():
                continue
            values = part[m].dropna().astype(float)
            row[m] = values.mean()
            n = len(values)
            row[f"{m}.ci"] = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)
