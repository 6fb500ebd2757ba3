"""What the ratio benchmarks share: the ``--device`` option and the fp32 default model they load, and
the table every one ends with (one row per setting, the speed-up over the first row)."""
from __future__ import annotations

import argparse

import pandas as pd


def add_device(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")


def default_model(device: str):
    """SmolLM2-135M-Instruct in fp32 on `device` (``auto``: CUDA when present): fp32 everywhere, so
    that the rows of a benchmark agree to rounding."""
    import torch

    import workbench as wb

    return wb.load("smollm2-135m-instruct", device=None if device == "auto" else device, dtype=torch.float32)


def speedups(rows: list[dict], title: str, digits: int = 3) -> pd.DataFrame:
    """Print `rows` (each with ``wall_s``) under `title`, with ``speed-up`` = the first row's wall
    time over each row's, all measured in this process; return the table."""
    df = pd.DataFrame(rows)
    df["speed-up"] = df.wall_s.iloc[0] / df.wall_s
    print(f"\n{title}")
    print(df.round(digits).to_string(index=False))
    return df
