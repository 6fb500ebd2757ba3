"""What the report's runs cost and what is still to run, priced from the runs already stored.

Every stored run records its seconds editing (``edit_s``), its whole wall time (``run_s``, scoring
included) and its seconds per edit. `plan` prices every owed run before anything runs, and a
campaign writes each price down before its run starts (`record`: ``<experiment>/prices.log``), so
the budget can show what its runs were priced at against what the store recorded they took
(`priced_since`). A `Ledger` goes over the report's calibrations and claims once
each (`Ledger.add`) and keeps: the compute behind the report (a run two claims read counts once),
the runs each entry still lacks (`missing_line`, for "What is still not done") and a guess of the
hours they need (`owed_line`): an entry's missing runs at the mean wall time of its own stored
runs; an entry with none stored by its editing alone, at the median seconds per edit of the stored
runs of the same `kind` (method, protocol, long-form text or not), a floor, since scoring and the
capability probes come on top.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .claimsfile import Claim, Runs, stored_runs
from .spec import LONG_FORM, RunSpec


def spent_since(root: Path, since: str, stored: list[tuple[str, float]] | None = None) -> tuple[int, float]:
    """(runs, CPU-hours of their whole wall time) of the stored runs finished at or after `since` (an ISO
    time, compared with each experiment's ``runs.log``; `stored`: `stored_since`'s list, read once by a
    caller that needs it twice): what a budget set at that time has paid."""
    seconds = [s for _, s in (stored if stored is not None else stored_since(Path(root), since))]
    return len(seconds), sum(seconds) / 3600


PRICES = "prices.log"  # per experiment: "<time> <run folder> <seconds> <how priced>", written before the run starts


def record(df: pd.DataFrame, root: Path) -> int:
    """Write `plan`'s price of each owed run in `df` into its experiment's ``prices.log``, before it runs;
    a run priced before keeps its first price (a campaign started again re-prices nothing). Returns how
    many runs it priced now."""
    import time

    done = set(_prices(Path(root)))
    new = 0
    for row in df.to_dict("records"):
        folder = Path(row["folder"]) if row["folder"] else None
        if folder is None or str(folder) in done or row["seconds"] != row["seconds"]:  # waits for a calibration; unpriced
            continue
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / PRICES, "a") as f:  # one short line: an atomic append on POSIX
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {folder.name} {row['seconds']:.0f} {row['priced by']}\n")
        done.add(str(folder))
        new += 1
    return new


def _prices(root: Path) -> dict[str, float]:
    """Run folder -> the seconds it was first priced at (every experiment's ``prices.log`` under `root`)."""
    out = {}
    for log in Path(root).glob(f"*/{PRICES}"):
        for line in log.read_text().splitlines():
            parts = line.split(maxsplit=3)
            if len(parts) >= 3:
                out.setdefault(str(log.parent / parts[1]), float(parts[2]))
    return out


def priced_since(root: Path, since: str, stored: list[tuple[str, float]] | None = None) -> tuple[int, float, float]:
    """Of the runs stored at or after `since` (`spent_since`, `stored` as there), those priced before they
    ran: (runs, CPU-hours they were priced at, CPU-hours they recorded)."""
    prices, n, priced, took = _prices(Path(root)), 0, 0.0, 0.0
    for folder, run_s in (stored if stored is not None else stored_since(Path(root), since)):
        if folder in prices:
            n, priced, took = n + 1, priced + prices[folder], took + run_s
    return n, priced / 3600, took / 3600


def stored_since(root: Path, since: str) -> list[tuple[str, float]]:
    """(folder, run_s) of the stored runs whose ``runs.log`` line is at or after `since`."""
    folders = set()
    for log in Path(root).glob("*/runs.log"):
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[0] >= since:
                folders.add(log.parent / parts[3])
    out = []
    for f in sorted(folders):
        run_s = json.loads((f / "metrics.json").read_text()).get("run_s") if (f / "metrics.json").exists() else None
        if run_s:
            out.append((str(f), float(run_s)))
    return out


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


# ------------------------------------------------------------------------- the plan: every owed run priced
def price(spec: RunSpec, own: pd.DataFrame, rates: dict, walls: dict, scoring: dict | None = None,
          unedited: bool = False) -> tuple[float | None, str]:
    """Seconds one owed run of `spec` should take, and how it was priced: the mean wall time of the stored
    runs of the same arm's kind in the same entry (`own`: the entry's stored runs of this `kind`, with
    the same number of edits), else the median whole-run seconds per edit of stored runs of its `kind`
    (`walls`: kind -> [run_s / n_edits]) times its edits, else its editing alone (`rates`), a floor."""
    if len(own) and own["run_s"].notna().any():
        return float(own["run_s"].dropna().mean()), "its arm's stored runs"
    k = kind(spec)
    if unedited and (scoring or {}).get(k):  # lr 0, one step or epoch: its scoring is all it costs
        return statistics.median(scoring[k]) * spec.n_edits, "scoring of runs of its kind (it trains nothing)"
    if walls.get(k):
        return statistics.median(walls[k]) * spec.n_edits, "runs of its kind (whole runs)"
    per_edit = [s for kk, s in rates.values() if kk == k]
    if per_edit:
        return statistics.median(per_edit) * spec.n_edits, "runs of its kind (editing only: a floor)"
    return None, "no stored run of its kind"


def plan(claims_file, root: Path, names: list[str] | None = None, ceiling: bool = True) -> pd.DataFrame:
    """One row per owed run of the named entries (default: all), priced before anything runs: entry,
    arm, seed, kind, edits, seconds, how they were priced, its folder (empty while it waits for a
    calibration) and whether its claim's verdict reads it (``judged``: the arm, its rivals and the
    unedited arm; a figure's other points are not judged). A claim under the seed rule (`seeds_max`)
    is priced at its listed seeds (``owed: now``) and, with `ceiling`, at every seed the rule may add
    (``owed: if undecided``). A run two entries share is one row (the first entry's)."""
    from .claimsfile import table

    chosen = claims_file.chosen(root)
    items = [*claims_file.calibrations, *claims_file.claims]
    items = [i for i in items if names is None or i.name in names]
    # rates from every stored run of every entry: seconds per edit of editing, and of the whole run
    rates, walls, scoring, tables = {}, {}, {}, {}
    for item in [*claims_file.calibrations, *claims_file.claims]:
        df = table(item, root, chosen)
        tables[item.name] = df
        rates.update(globals()["rates"](item, df, root, chosen))
        runs = stored_runs(df)
        folders = {str(item.folder(root, s)): s for _, _, s in item.runs(chosen) if s is not None}
        for f, w, e in zip(runs.get("folder", []), runs.get("run_s", []), runs.get("edit_s", [])):
            if f in folders and w == w and w:  # NaN and 0: not recorded
                walls.setdefault(kind(folders[f]), []).append(float(w) / folders[f].n_edits)
                scoring.setdefault(kind(folders[f]), []).append(max(float(w) - float(e), 0.0) / folders[f].n_edits)
    rows, seen, stages = [], set(), []
    for item in items:
        stages.append((item, "now", item))
        if getattr(item, "seeds_max", None):  # the seed rule: the seeds it asks for now, then those it may add
            from .claimsfile import seeds_due

            due = seeds_due(item, table(item.with_seeds(item.ceiling()), root, chosen, rule=False))
            stages[-1] = (item, "now", item.with_seeds(due))
            extra = [s for s in item.ceiling() if s not in due]
            if ceiling and extra:
                stages.append((item, "if undecided", item.with_seeds(extra)))
    stages.sort(key=lambda st: st[1] != "now")  # stable: every entry's runs owed now before the rule's extra seeds
    for item, when, it in stages:
        df = stored_runs(tables[item.name])
        for label, seed, spec in it.runs(chosen):
            key = (item.name, label, seed) if spec is None else str(it.folder(root, spec))
            if key in seen or (spec is not None and (Path(key) / "metrics.json").exists()):
                continue
            seen.add(key)
            judged = label in it.judged() if isinstance(it, Claim) else True  # a calibration's choice reads every point
            if spec is None:  # waits for a calibration: priced at its entry's stored runs' mean wall time
                guess = mean_run_s(tables[item.name])
                rows.append({"entry": item.name, "arm": label, "seed": seed, "owed": when, "kind": "waits for a calibration",
                             "edits": item.base.n_edits, "seconds": math.nan if guess is None else guess,
                             "priced by": "its entry's stored runs (after its calibration)", "folder": "",
                             "judged": judged})
                continue
            own = df[(df["label"] == label)] if len(df) else df
            s, how = price(spec, own, rates, walls, scoring, label == getattr(item, "unedited", None))
            chunk = it.sequence(spec)
            k = kind(spec)
            rows.append({"entry": item.name, "arm": label, "seed": seed, "owed": when,
                         "kind": f"{k[0]} {k[1]}{' chunks of %d' % chunk if chunk else ''}"
                                 f"{' long-form' if k[2] else ''}",
                         "edits": spec.n_edits, "seconds": math.nan if s is None else s, "priced by": how,
                         "folder": key, "judged": judged})
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


PLAN_COLUMNS = ["entry", "arm", "seed", "owed", "kind", "edits", "seconds", "priced by", "folder", "judged"]


def plan_text(df: pd.DataFrame) -> str:
    """`plan` as a table per entry and in total: runs and CPU-hours owed now and if the seed rule asks
    for every seed it may add; runs that cannot be priced yet counted apart."""
    if not len(df):
        return "Nothing is owed: every run of the named entries is in the store.\n"
    lines = ["| entry | owed now: runs | CPU-h | if undecided (seed rule): runs | CPU-h | unpriced runs |",
             "|---|---|---|---|---|---|"]

    def part(d, when):
        d = d[d["owed"] == when]
        return len(d), d["seconds"].sum(skipna=True) / 3600

    for entry, d in df.groupby("entry", sort=False):
        n0, h0 = part(d, "now")
        n1, h1 = part(d, "if undecided")
        lines.append(f"| {entry} | {n0} | {h0:.2f} | {n1} | {h1:.2f} | {int(d['seconds'].isna().sum())} |")
    n0, h0 = part(df, "now")
    n1, h1 = part(df, "if undecided")
    lines.append(f"| **total** | {n0} | {h0:.2f} | {n1} | {h1:.2f} | {int(df['seconds'].isna().sum())} |")
    return ("Owed runs, priced from the store's measured rates (one worker, one thread, this machine): an arm's own "
            "stored runs' mean wall time where it has some, else the median whole-run seconds per edit of stored runs "
            "of the same method, protocol and kind of text, else their editing alone (a floor).\n\n"
            + "\n".join(lines) + "\n")
