"""What the report's runs cost and what is still to run, priced from the runs already stored.

Every stored run records its seconds editing (``edit_s``), its whole wall time (``run_s``, scoring
included) and its seconds per edit. A `Ledger` goes over the report's calibrations and claims once
each (`Ledger.add`) and keeps: the compute behind the report (a run two claims read counts once),
the runs each entry still lacks (`missing_line`, for "What is still not done") and a guess of the
hours they need (`owed_line`): an entry's missing runs at the mean wall time of its own stored
runs; an entry with none stored by its editing alone, at the median seconds per edit of the stored
runs of the same `kind` (method, protocol, long-form text or not), a floor, since scoring and the
capability probes come on top.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .claimsfile import Runs, stored_runs
from .spec import LONG_FORM, RunSpec


def mean_run_s(df: pd.DataFrame) -> float | None:
    """The mean wall time of `table`'s stored runs that recorded one (None: no run to time the item by)."""
    timed = stored_runs(df)["run_s"].dropna() if len(df) and "run_s" in df else pd.Series(dtype=float)
    return float(timed.mean()) if len(timed) else None


def kind(spec: RunSpec) -> tuple[str, str, bool]:
    """What prices a run's editing time when its claim has no stored run: its method, its protocol,
    and whether it edits long-form text (a paragraph target costs far more per edit than a ZsRE answer)."""
    return spec.run_config().method, spec.protocol, spec.benchmark in LONG_FORM


def spent(df: pd.DataFrame) -> dict:
    """Run folder -> (seconds editing, seconds of the whole run or NaN where it was not recorded)."""
    if not len(df):
        return {}
    walls = df["run_s"] if "run_s" in df else pd.Series(math.nan, index=df.index)
    return {f: (float(e), float(w)) for f, e, w in zip(df["folder"], df["edit_s"], walls.fillna(math.nan))}


def rates(item: Runs, df: pd.DataFrame, root: Path, chosen: dict) -> dict:
    """Run folder -> (`kind`, seconds per edit) for `table`'s stored runs of `item`."""
    runs = stored_runs(df)
    per_edit = dict(zip(runs["folder"], runs["s_per_edit"])) if len(runs) and "s_per_edit" in runs else {}
    folders = {str(item.folder(root, spec)): spec for _, _, spec in item.runs(chosen) if spec is not None}
    return {f: (kind(folders[f]), float(s)) for f, s in per_edit.items() if f in folders and not math.isnan(s)}


def owed(item: Runs, df: pd.DataFrame, root: Path, chosen: dict) -> dict:
    """The runs of `item` that `table` (its `df`) did not find in the store, each with a guess of its
    seconds (the item's own stored runs' mean; None where it has none), its `kind` and its number
    of edits (None while its spec waits for a calibration). A run is named by its folder (a run two
    claims share is one entry) or, waiting for a calibration without a spec yet, by (item, label, seed)."""
    stored, guess = (set(df["folder"]) if len(df) else set()), mean_run_s(df)
    return {(item.name, label, seed) if spec is None else str(item.folder(root, spec)):
            (guess, None if spec is None else kind(spec), None if spec is None else spec.n_edits)
            for label, seed, spec in item.runs(chosen) if spec is None or str(item.folder(root, spec)) not in stored}


def merge(owed: dict, more: dict) -> dict:
    """Owed runs of several items: a run two claims share is one entry, timed where either can time it."""
    return owed | {k: owed[k] if k in owed and owed[k][0] is not None else v for k, v in more.items()}


def missing_line(item: Runs, df: pd.DataFrame, chosen: dict) -> str | None:
    """The item's line in "What is still not done": its runs stored, the arms short of seeds, the
    calibration it waits for and the hours to go at its stored runs' mean (None: nothing missing)."""
    runs, mean_s = item.runs(chosen), mean_run_s(df)
    df = stored_runs(df)
    if len(df) >= len(runs):
        return None
    stored = {(r.label, r.seed) for r in df.itertuples()} if len(df) else set()
    lacking = list(dict.fromkeys(label for label, s, _ in runs if (label, s) not in stored))
    waiting = sorted({p["calibrated"] for p in item.points if "calibrated" in p and chosen.get(p["calibrated"]) is None})
    wait = f" (waiting for the calibration of {', '.join(waiting)})" if waiting else ""
    cost = (f" At its stored runs' mean of {mean_s / 3600:.2f} h, roughly {(len(runs) - len(df)) * mean_s / 3600:.1f} h "
            f"more on the same machine." if mean_s else " No run of it is stored yet to time it.")
    return (f"- **{item.title}**: {len(df)} of {len(runs)} runs stored{wait}; arms still short of "
            f"{len(item.seeds)} seed(s): {'; '.join(f'`{label}`' for label in lacking)}.{cost}")


def owed_line(owed: dict, rates: dict) -> str:
    """How much is still to run: the runs of items with stored runs at each item's own mean wall
    time; the others priced by their editing alone, at the median seconds per edit of the stored
    runs of their `kind` (`rates`), a floor: scoring and probes come on top."""
    if not owed:
        return ""
    timed = [g for g, _, _ in owed.values() if g is not None]
    if len(timed) == len(owed):
        return (f" Still to run: {len(owed)} runs, roughly {sum(timed) / 3600:.0f} h more on the same machine at each "
                f"one's own claim's mean run time.")
    per_edit = {}
    for k, s in rates.values():
        per_edit.setdefault(k, []).append(s)
    floor = [n * statistics.median(per_edit[k]) for g, k, n in owed.values() if g is None and k in per_edit]
    untimed = len(owed) - len(timed)
    line = (f" Still to run: {len(owed)} runs. {len(timed)} of them belong to claims or calibrations with stored runs: "
            f"roughly {sum(timed) / 3600:.0f} h more on the same machine at each one's own mean run time. The other "
            f"{untimed} have no stored run of their claim to time them by.")
    if not floor:
        return line
    line += (f" Their editing alone, at the median seconds per edit of the stored runs of the same method, protocol "
             f"and kind of text, comes to roughly {sum(floor) / 3600:.0f} h for the {len(floor)} of them that such "
             f"runs can price; scoring and probes come on top (a sequence scores every edit so far and runs its "
             f"capability probes after each chunk)")
    unpriced = untimed - len(floor)
    return line + (f", and the other {unpriced} have no stored run of their method and setting at all." if unpriced
                   else ".")


@dataclass
class Ledger:
    """The report's accounts, entry by entry (`add`): a run two entries read counts once."""

    spent: dict = field(default_factory=dict)  # run folder -> (edit_s, run_s)
    owed: dict = field(default_factory=dict)  # runs still to do, each once -> (guessed seconds or None, kind, edits)
    rates: dict = field(default_factory=dict)  # stored run folder -> (kind, seconds per edit): prices the untimed
    missing: list = field(default_factory=list)  # each entry's `missing_line` (None: it lacks nothing)

    def add(self, item: Runs, df: pd.DataFrame, root: Path, chosen: dict) -> None:
        """Account for `item`, whose stored runs `table` read into `df`."""
        self.spent.update(spent(df))
        self.missing.append(missing_line(item, df, chosen))
        self.owed = merge(self.owed, owed(item, df, root, chosen))
        self.rates.update(rates(item, df, root, chosen))

    def compute_line(self) -> str:
        """The report's "Compute behind this report" paragraph, with what is still to run."""
        edit_s = sum(e for e, _ in self.spent.values())
        timed = [w for _, w in self.spent.values() if not math.isnan(w)]
        return (f"\nCompute behind this report: {len(self.spent)} runs; editing (seconds in `wb.edit`, as each run "
                f"recorded it) {edit_s / 3600:.2f} h; whole runs, scoring included, {sum(timed) / 3600:.2f} h over the "
                f"{len(timed)} runs that recorded it." + owed_line(self.owed, self.rates) + "\n")
