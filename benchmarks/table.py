"""The table every ratio benchmark ends with: one row per setting, the speed-up over the first row."""
from __future__ import annotations

import pandas as pd


def speedups(rows: list[dict], title: str, digits: int = 3) -> pd.DataFrame:
    """Print `rows` (each with ``wall_s``) under `title`, with ``speed-up`` = the first row's wall
    time over each row's, all measured in this process; return the table."""
    df = pd.DataFrame(rows)
    df["speed-up"] = df.wall_s.iloc[0] / df.wall_s
    print(f"\n{title}")
    print(df.round(digits).to_string(index=False))
    return df
