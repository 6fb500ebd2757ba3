"""The reproduction report, rendered from the tracked store: every number generated, every verdict by rule.

`render` reads the claims file (``docs/claims.yaml``, `claimsfile.py`) and each entry's finished runs
from the store (``store/`` in the repository), computes the seed-by-seed differences and applies the
verdict rules (`verdicts.py`), and writes Markdown: the rules, a summary table, a section per claim
(its arms' means ± 95 % half-widths over seeds, its differences and verdicts, what differs from the
paper, the command that regenerates it) and what is still not done, with the runs each claim still
lacks counted from the store and priced from the stored ones (`cost.py`). `write` also draws each
claim's `figure`. Prose in the claims file carries no number of ours; a test renders the report
again and diffs it with the committed file, so the text cannot drift from the store.

The claims model (`read`, `table`, `stored_runs`, `CLAIMS`, `STORE`, ...) lives in `claimsfile.py` and
the campaign that fills the store (`run`) in `campaign.py`; both are importable from here as before.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .. import files
from .campaign import run, same_computation, tasks  # noqa: F401  (the campaign, reachable from here as before)
from .claimsfile import (CLAIMS, STORE, Calibration, Claim, ClaimsFile, Runs, calibrated, computed,  # noqa: F401
                         read, stages, stored_runs, table, where, with_score)
from .cost import Ledger
from .verdicts import RULES, RULES_3, Paired, counts, paired, verdict

REPORT = files.PROJECT_ROOT / "docs" / "REPRODUCTION.md"
TRIES = 3  # attempts at each figure: kaleido's browser fails now and then on a loaded machine


BELOW_FLOOR = "does not beat the unedited model: does not count"
FLOOR = "the magnitude (no verdict)"  # the arm against the unedited model, shown last in a claim's comparisons


def level(claim) -> float:
    return getattr(claim, "level", 0.95)


def comparisons(claim: Claim, df: pd.DataFrame) -> list[tuple[str, Paired, str]]:
    """(other arm, paired difference of the score, verdict) for each arm the claim compares with. Under
    the floor rule (`Claim.floor`, third edition) a rival that does not beat the unedited arm gets
    `BELOW_FLOOR` instead of a verdict."""
    if not len(df):
        return [(o, Paired(0, math.nan, math.nan, ()), "inconclusive") for o in claim.others]
    out = []
    for other in claim.others:
        p = paired(df, "label", claim.arm, other, "score", level=level(claim))
        v = verdict(p, claim.direction, claim.margin)
        if getattr(claim, "floor", False) and counts(floor_diff(claim, df, other), claim.direction) is False:
            v = BELOW_FLOOR
        out.append((other, p, v))
    if getattr(claim, "unedited", None):  # the magnitude: the arm over the unedited model, beside the verdicts
        metric = getattr(claim, "magnitude", None)
        name = f"{claim.unedited} (`{metric}`)" if metric else claim.unedited
        out.append((name, floor_diff(claim, df, claim.arm, metric or "score"), FLOOR))
    return out


def floor_diff(claim: Claim, df: pd.DataFrame, label: str, metric: str = "score") -> Paired:
    """`label`'s arm minus the unedited arm on `metric` (the score), seed by seed (at the claim's level)."""
    if not getattr(claim, "unedited", None) or not len(df) or metric not in df:
        return Paired(0, math.nan, math.nan, ())
    return paired(df, "label", label, claim.unedited, metric, level=level(claim))


def headline(claim: Claim, comps: list) -> tuple[str, Paired, str] | None:
    """The comparison the summary shows: against the strongest other arm (the best mean difference
    for it, i.e. the smallest lead of the arm), among those with a paired seed."""
    have = [c for c in comps if c[1].n and c[2] not in (BELOW_FLOOR, FLOOR)]
    if not have:
        return None
    sign = 1 if claim.direction == "higher" else -1
    return min(have, key=lambda c: sign * c[1].mean)


def summary_cells(claim: Claim, comps: list, stored: int = 0) -> tuple[str, str]:
    """The summary row's "ours" and "verdict" cells: the comparison with the strongest other arm
    that has a paired seed, and its verdict, marked provisional while some other arm has none (an
    unrun rival could be the stronger one). `stored`: the claim's stored runs (`stored_runs`), which
    may be there with no pair yet (runs it shares with another claim, or one arm's first seed)."""
    floor = [c for c in comps if c[2] == FLOOR]
    comps = [c for c in comps if c[2] != FLOOR]
    ours, judged = _summary_cells(claim, comps, stored)
    if not floor:
        return ours, judged
    below = [o for o, _, v in comps if v == BELOW_FLOOR]
    none_counts = bool(below) and len(below) == len(comps)
    if none_counts:  # still show the lead over the strongest rival
        top = headline(claim, [(o, p, "not counted") for o, p, _ in comps])
        ours = f"vs {top[0]} (not counted): {_diff_at(top[1], claim)}" if top else ours
    f = floor[0][1]
    on = f" (`{claim.magnitude}`)" if getattr(claim, "magnitude", None) else ""
    ours += f"; {claim.arm} − unedited{on}: {_diff_at(f, claim)}" if f.n else "; unedited arm: no seed paired yet"
    if below:
        ours += f"; not above the unedited model, not counted: {', '.join(below)}"
    if none_counts:
        judged = "**inconclusive** (no rival beats the unedited model)"
    return ours, judged


def _summary_cells(claim: Claim, comps: list, stored: int = 0) -> tuple[str, str]:
    top = headline(claim, comps)
    if top is None and stored:
        return (f"no seed of `{claim.arm}` paired with another arm yet ({stored} runs stored)",
                "**inconclusive** (no pair yet)")
    if top is None:
        return "no runs stored yet", "**inconclusive** (not run yet)"
    unpaired = [o for o, p, v in comps if not p.n and v != BELOW_FLOOR]
    if not unpaired:
        return f"vs {top[0]}: {_diff_at(top[1], claim)}", f"**{top[2]}**"
    return (f"vs {top[0]}: {_diff_at(top[1], claim)}; not yet paired: {', '.join(unpaired)}",
            f"**{top[2]}** (so far: {len(comps) - len(unpaired)} of {len(comps)} others)")


def _num(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _diff(p: Paired) -> str:
    if not p.n:
        return "no paired seed yet"
    if p.n < 2:
        return f"{p.mean:+.3f} (1 seed: no interval)"
    return f"{p.mean:+.3f} [{p.lo:+.3f}, {p.hi:+.3f}], {p.n} seeds"


def _diff_at(p: Paired, claim) -> str:
    """`_diff`, naming the interval's level where it is not 95 % (the third edition's seed rule)."""
    text = _diff(p)
    return text if level(claim) == 0.95 or p.n < 2 else text.replace(" seeds", f" seeds, {level(claim):.2%} interval")


def arms_table(item: Runs, df: pd.DataFrame, columns: list[str], chosen: dict | None = None,
               mark: str | None = None) -> str:
    """Each arm's mean ± 95 % half-width over its seeds for `columns` and the score, with its seed
    count and seconds per edit; the arm labelled `mark` in bold (a calibration's choice)."""
    from .stats import over_seeds

    labels = item.labels(chosen)
    cols = [*columns, "score"]
    quoted = getattr(item, "paper_arms", {})  # the paper's own number per arm, where it gives one
    head = ("| arm | " + ("paper | " if quoted else "") + "seeds | " + " | ".join(cols) + " | s / edit |\n"
            + "|---" * (len(cols) + 3 + bool(quoted)) + "|\n")
    stats = over_seeds(df, "label", [*cols, "s_per_edit"]) if len(df) else pd.DataFrame(columns=["label"])
    lines = []
    for label in labels:
        row = stats[stats["label"] == label]
        name = f"**{label}** (chosen)" if label == mark else label
        if quoted:
            name += f" | {quoted.get(label, '–')}"
        if not len(row):
            lines.append(f"| {name} | 0 | " + " | ".join("–" for _ in cols) + " | – |")
            continue
        r = row.iloc[0]

        def cell(m):
            if m not in r or pd.isna(r[m]):
                return "–"
            ci = r.get(f"{m}.ci")
            return _num(r[m]) if ci is None or pd.isna(ci) else f"{_num(r[m])} ± {_num(ci)}"

        lines.append(f"| {name} | {int(r['n_seeds'])} | " + " | ".join(cell(m) for m in cols) +
                     f" | {_num(r.get('s_per_edit'), 1)} |")
    return head + "\n".join(lines) + "\n"


def stages_table(item: Runs, df: pd.DataFrame, columns: list[str]) -> str:
    """A sequence claim's metrics after every chunk: per arm and metric, the mean over its stored seeds
    at each number of edits so far (0: the unedited model, where a metric was measured before the
    first chunk). Empty for claims of single runs and before any run is stored."""
    df = stored_runs(df)
    if item.chunk_size is None or not len(df):
        return ""
    per_stage = stages(df)
    have = [m for m in columns if m in per_stage and per_stage[m].notna().any()]
    per_stage = per_stage.dropna(subset=have, how="all")  # stages a `score_every` sequence did not score
    means = per_stage.groupby(["label", "n_edits"], sort=False)[have].mean()
    counts = sorted(per_stage["n_edits"].unique())
    head = ("| arm | metric | " + " | ".join(str(n) for n in counts) + " |\n" + "|---" * (len(counts) + 2) + "|\n")
    rows = [f"| {label} | {m} | " + " | ".join(_num(means[m].get((label, n), math.nan)) for n in counts) + " |"
            for label in dict.fromkeys(df["label"]) for m in have]
    return ("**After every chunk** (mean over the stored seeds; columns: edits so far, 0 the unedited model):\n\n"
            + head + "\n".join(rows) + "\n\n")


FIGURES = "reproduction-2"  # beside the report: <claim>.png, written by `write` where kaleido can render


def figure(claim: Claim, df: pd.DataFrame):
    """The claim's arms as bars (the score and its metrics, mean ± 95 % half-width over seeds); a
    sequence claim's as lines over the edits so far (the score and the capability probes, each stage
    averaged over the seeds), where whether early edits survive later ones shows."""
    from .. import plots
    from .stats import over_seeds

    on = ", ".join(sorted({str(computed(f)["device"]).upper() for f in df["folder"]})) if len(df) else "not run"
    title = f"{claim.title} (SmolLM2-135M, {on})"
    if claim.chunk_size is not None and len(stored_runs(df)):
        cols = ["score", *[m for m in claim.metrics if m.startswith("capability.")]]
        per_stage = with_score(stages(df), claim)
        per_stage = over_seeds(per_stage.dropna(subset=[c for c in cols if c in per_stage], how="all"),
                               ["label", "n_edits"], cols)
        fig = plots.lines(per_stage, "n_edits", cols, title=title, color="label")
        return fig.update_layout(xaxis_title="edits so far (0: the unedited model); mean over seeds ± 95 % half-width",
                                 yaxis_range=[0, 1.05])
    cols = [*claim.metrics, "score"]
    fig = plots.bars(over_seeds(df, "label", cols), "label", cols, title=title)
    return fig.update_layout(xaxis_title="arm (bars: mean over seeds ± 95 % half-width)")


def _png(claim: Claim, out: Path) -> Path:
    """Where `write` puts the claim's figure, beside the report `out`."""
    return out.parent / FIGURES / f"{claim.name}.png"


def _figure_line(claim: Claim, out: Path) -> str:
    return f"![{claim.title}]({FIGURES}/{claim.name}.png)\n\n" if _png(claim, out).exists() else ""


def _runs_line(item: Runs, df: pd.DataFrame, need: int) -> str:
    df, b = stored_runs(df), item.base
    held = f", without the requests of `{b.exclude}`" if b.exclude else ""
    places = pd.Series([where(f) for f in df["folder"]]).value_counts() if len(df) else pd.Series(dtype=int)
    on = "; ".join(f"{n} on {p}" for p, n in places.items())
    return (f"**Runs.** {len(df)} of {need} stored in `store/{item.experiment}/` ({len(item.seeds)} seed(s) per arm; seed "
            f"*s* edits {b.n_edits} `{b.benchmark}` requests from {b.offset} + {b.n_edits}·s on{held}"
            + (f", in chunks of {item.chunk_size}" if item.chunk_size else "")
            + (f", scored every {item.score_every} chunks and after the last" if item.score_every > 1 else "")
            + ")" + (f"; computed: {on}" if on else "")
            + ".\n\n")


def render(claims_path=CLAIMS, root: Path = STORE, out: Path = REPORT) -> str:
    """The report's Markdown, from the claims file and the finished runs under `root` (a claim's
    figure is linked where `write` left one beside `out`)."""
    claims_file = read(claims_path)
    doc, chosen = claims_file.doc, claims_file.chosen(root)
    judged_now = {}  # claim number -> this edition's verdict cell, for the list of second-edition verdicts
    parts = [f"# {doc.get('title', 'Reproduction report')}\n",
             "> Generated by `workbench report` from `docs/claims.yaml` and the finished runs in `store/` (tracked "
             "in git: each run's spec, package versions, git sha, per-probe answers and metrics). Do not edit this "
             "file: edit the claims file or add runs, then render again; `tests/test_report.py` fails when the two "
             "disagree.\n", doc.get("intro", "").strip() + "\n"]
    if doc.get("changes"):
        parts += ["## What changed from the second edition, and why\n",
                  "\n".join(f"- {c.strip()}" for c in doc["changes"]) + "\n", "<!-- second-edition verdicts -->"]
    parts += ["## Verdict rules\n", RULES + "\n", *([RULES_3 + "\n"] if doc.get("changes") else []),
             "Calibrations: " + " ".join(Calibration.__doc__.split()) + "\n", "## Summary\n",
             "| # | claim | paper | ours: arm − strongest (counting) other, score (95 % interval unless named); "
             "arm − unedited model | verdict |\n|---|---|---|---|---|"]
    sections, ledger = [], Ledger()  # what the runs cost and what is still to run, each run counted once
    owed, budget, spent = None, doc.get("budget"), (0, 0.0)  # spent: (runs, hours) since the budget was set
    priced = (0, 0.0, 0.0)  # of them, those priced before they ran: (runs, priced hours, recorded hours)
    if doc.get("changes"):
        from .cost import plan, priced_since, spent_since, stored_since

        owed = plan(claims_file, root)
        if budget and budget.get("since"):
            since = str(budget["since"])
            stored = stored_since(root, since)  # runs.log and each run's metrics, read once per render
            spent, priced = spent_since(root, since, stored), priced_since(root, since, stored)
    split = budget_split(budget, owed, spent[1])
    beyond = split[1]
    undecidable = []  # claims still inconclusive whose owed runs the budget cannot pay
    if claims_file.calibrations:
        sections.append("## Calibration\n\nEach preset number that a claim uses from a calibration is chosen here, by "
                        "the rule above, on requests no claim edits.\n")
    for k, cal in enumerate(claims_file.calibrations, 1):
        df = table(cal, root)
        ledger.add(cal, df, root, chosen)
        pick = chosen[cal.name]
        label = None if pick is None else ", ".join(f"{k2}={v}" for k2, v in pick.items()
                                                    if k2 != "preset" and (k2 not in cal.fixed or k2 in cal.grid))
        result = f"chosen: **{label}**" if pick else "not chosen yet (the grid is not finished)"
        score = " and ".join(f"`{m}`" for m in cal.score)
        sections.append(f"### C{k}. {cal.title}\n\n" + (f"{cal.why.strip()}\n\n" if cal.why else "")
                        + _runs_line(cal, df, len(cal.runs())) + f"Preset `{cal.preset}`; the score is the mean "
                        f"of {score} per run ({cal.direction} is better); {result}.\n\n"
                        + arms_table(cal, df, [], mark=label))
    for i, claim in enumerate(claims_file.claims, 1):
        df = table(claim, root, chosen)
        comps = comparisons(claim, df)
        ours, judged = summary_cells(claim, comps, len(stored_runs(df)))
        if claim.name in beyond and judged.startswith("**inconclusive**"):
            undecidable.append(f"claim {i} ({claim.name}: its runs owed now price at {beyond[claim.name]})")
        judged_now[i] = (claim.title, judged)
        third = " *(3rd ed.)*" if claim.edition == 3 else ""
        parts.append(f"| {i} | {claim.title}{third} | {claim.says} | {ours} | {judged} |")
        ledger.add(claim, df, root, chosen)
        diffs = "\n".join(f"| {claim.arm} − {o} | {_diff_at(p, claim)} | {v} |" for o, p, v in comps)
        score = " and ".join(f"`{m}`" for m in claim.score)
        sections.append(
            f"## {i}. {claim.title}\n\n**The paper** ({claim.paper}). {claim.says}\n\n"
            + (f"**Setting.** {claim.setting.strip()}\n\n" if claim.setting else "")
            + _runs_line(claim, df, len(claim.runs(chosen)))
            + f"Each arm: mean ± 95 % half-width over its seeds. The score is the mean of {score} per run.\n\n"
            + arms_table(claim, df, claim.metrics, chosen) + "\n" + stages_table(claim, df, claim.metrics)
            + _figure_line(claim, Path(out))
            + f"\n**Differences and verdicts** (paper's direction: the arm's score is {claim.direction}"
            + (f"; a claim of no loss, margin {claim.margin:g}: the arm at most that much worse" if claim.margin is not None
               else "") + "):\n\n"
            + "| comparison | difference of the score | verdict |\n|---|---|---|\n" + diffs + "\n\n"
            + (f"**What differs from the paper.** {claim.differs.strip()}\n\n" if claim.differs else "")
            + (f"**Regenerate.** `{claim.regenerate.strip()}`\n" if claim.regenerate else ""))
    if undecidable:
        parts.append(f"\n**Cannot decide at 135M on a CPU in this edition's {budget['cpu_hours']:g} CPU-hours** "
                     f"(the budget pays the runs verdicts read first, in the claims file's order, *What is owed* below): "
                     f"{'; '.join(undecidable)}. The prices are this machine's measured rates (one worker, one thread); "
                     "the runs are the same on a GPU or a bigger model, where `workbench report --run` decides them "
                     "(their cost there is not measured yet: no GPU was lent to this edition).\n")
    parts.append(ledger.compute_line())
    if owed is not None:
        from .cost import plan_text

        parts.append("## What is owed, priced before it runs\n\n`workbench report --plan` prices every owed run from "
                     "the store's measured rates; `workbench report --run <claims>` runs them (`--arms <labels>` for "
                     "some arms). Claims this budget cannot decide say so in the summary.\n\n"
                     + plan_text(owed) + (budget_line(budget, split, spent, priced) if budget else ""))
    parts += sections
    todo = [f"- {t.strip()}" for t in doc.get("todo", [])]
    parts.append("## What is still not done\n\n" + "\n".join([m for m in ledger.missing if m] + todo) + "\n")
    if "<!-- second-edition verdicts -->" in parts:
        parts[parts.index("<!-- second-edition verdicts -->")] = no_longer_hold(judged_now)
    return "\n".join(parts)


def budget_split(budget: dict | None, owed: pd.DataFrame | None, used: float = 0.0) -> tuple[dict, dict, float, dict]:
    """The claims file's budget (``budget: {cpu_hours, order, since}``), less the `used` hours of the runs
    stored since ``since`` (`cost.spent_since`), spent in its order on each entry's runs owed now that its
    verdict reads (`cost.plan`'s ``judged``), then, once every such entry is paid, with what is left, on the
    figures' other points (while a verdict is unpaid, what is left goes to the seeds the seed rule adds): (entries
    it pays for, entries it cannot: name -> their price, as "5.62 h[, k runs unpriced]"; hours left; the
    figures' points it pays for, name -> price). An entry it cannot pay cannot be decided within it."""
    if not budget or owed is None:
        return {}, {}, 0.0, {}
    now = owed[owed["owed"] == "now"]
    judged = now["judged"].astype(bool) if "judged" in now else pd.Series(True, index=now.index)

    def pay(rows: pd.DataFrame, names: list[str], left: float) -> tuple[dict, dict, float]:
        paid, unpaid = {}, {}
        for name in names:
            d = rows[rows["entry"] == name]
            hours, unpriced = d["seconds"].sum(skipna=True) / 3600, int(d["seconds"].isna().sum())
            price = f"{hours:.2f} h" + (f", {unpriced} runs unpriced" if unpriced else "")
            if hours <= left and not unpriced:
                left -= hours
                paid[name] = price
            else:
                unpaid[name] = price
        return paid, unpaid, left

    paid, unpaid, left = pay(now[judged], budget["order"], float(budget["cpu_hours"]) - used)
    figures = {}
    if not unpaid:  # a figure waits while a verdict is unpaid: what is left buys the seed rule's seeds first
        rest = now[~judged]
        figures, _, left = pay(rest, [n for n in budget["order"] if n in set(rest["entry"])], left)
    return paid, unpaid, left, figures


def budget_line(budget: dict, split: tuple[dict, dict, float, dict], spent: tuple[int, float],
                priced: tuple[int, float, float] = (0, 0.0, 0.0)) -> str:
    """The budget's sentence under the plan: what it has paid (`spent`: runs, hours; `priced`: those of them
    priced before they ran, `cost.priced_since`: runs, priced hours, recorded hours), what it pays for and
    what it cannot decide (`split`, from `budget_split`)."""
    paid, unpaid, left, figures = split

    def cells(d):
        return ", ".join(f"{name} ({price})" for name, price in d.items())
    before = (f"; {priced[0]} of them were priced before they ran (`report --plan`'s price, prices.log) at "
              f"{priced[1]:.2f} h and took {priced[2]:.2f} h" if priced[0] else
              "; none of them was priced before it ran (prices.log starts with this edition's later runs)")
    return (f"\n**The budget** ({budget['cpu_hours']:g} CPU-hours, issue 44): {spent[1]:.2f} h spent on the {spent[0]} "
            f"runs stored since {budget.get('since', 'it was set')} (their recorded wall time, runs.log){before}. The "
            f"rest, in the claims file's order at the runs owed now, pays first for the runs the verdicts read: "
            f"{cells(paid) or 'none'}; then for the figures' other points: "
            f"{cells(figures) or ('none while a verdict is unpaid' if unpaid else 'none')}; {left:.2f} h "
            f"left. It cannot decide {cells(unpaid) or 'nothing'}: their runs are priced above; more seeds under the "
            "seed rule come on top.\n")


SECOND = files.PROJECT_ROOT / "docs" / "reproduction-3" / "second-edition.md"  # the second edition, frozen


def second_edition_verdicts(path: Path = SECOND) -> dict[int, tuple[str, str]]:
    """The second edition's summary, as committed: claim number -> (title, verdict cell)."""
    rows = {}
    for line in Path(path).read_text().splitlines() if Path(path).exists() else []:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].isdigit():
            rows[int(cells[0])] = (cells[1], cells[4])
    return rows


def _word(cell: str) -> str:
    return cell.split("**")[1] if cell.count("**") >= 2 else cell


def no_longer_hold(now: dict[int, tuple[str, str]], path: Path = SECOND) -> str:
    """The second edition's verdicts that this edition's rules and runs do not repeat (the verdict word
    changed, or a decided verdict is no longer one), read from the frozen second edition."""
    old = second_edition_verdicts(path)
    gone = [f"- Claim {n} ({title}): second edition **{_word(cell)}**, now {now[n][1]}."
            for n, (title, cell) in old.items() if n in now and _word(cell) != _word(now[n][1])]
    head = (f"**Second-edition verdicts that no longer hold** (from [the second edition](reproduction-3/second-edition.md), "
            f"frozen as committed):\n\n")
    return head + ("\n".join(gone) if gone else "- none") + "\n"


def write(claims_path=CLAIMS, out=REPORT, root: Path = STORE) -> Path:
    """Write each claim's figure (PNG, where kaleido and a Chromium can render; otherwise none and the
    report links none) and then the report."""
    import logging
    import time

    out = Path(out)
    claims_file = read(claims_path)
    chosen = claims_file.chosen(root)
    log = logging.getLogger("workbench")
    try:
        import kaleido  # noqa: F401  (the `report` extra)
    except ImportError:
        kaleido = None
        log.warning("no figures: kaleido is not installed (pip install -e '.[report]')")
    for claim in claims_file.claims:
        df = table(claim, root, chosen)
        png = _png(claim, out)
        png.unlink(missing_ok=True)  # a claim without runs, or whose figure fails, links none
        if not len(df) or kaleido is None:
            continue
        fig = figure(claim, df)
        png.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, TRIES + 1):  # on a loaded machine the browser now and then fails to start,
            try:                                # or runs kaleido's script before its page has loaded
                fig.write_image(png, width=1000, height=450, scale=2)
                break
            except Exception as e:  # no browser, or it failed to start
                log.warning("no figure for %s (try %d of %d): %r", claim.name, attempt, TRIES, e)
                png.unlink(missing_ok=True)
                if attempt < TRIES:  # no pause after the last try
                    time.sleep(2 * attempt)
    return files.write_text(out, render(claims_path, root, out))
