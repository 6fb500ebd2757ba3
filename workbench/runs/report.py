"""The reproduction report, rendered from the tracked store: every number generated, every verdict by rule.

A claims file (``docs/claims.yaml``) says, per claim, what the paper says, which runs answer it (a
base `RunSpec`, the arms as sweep points, the seeds, single runs or a `lifelong` sequence) and how
to compare them (the arm, the arms it is compared with, the score: the mean of one or more metrics
per run, and the paper's direction). `render` reads the finished runs of each claim from the store
(``store/`` in the repository, `store.py`), computes the seed-by-seed differences and applies the
verdict rules (`verdicts.py`), and writes Markdown: the rules, a summary table, a section per claim
(its arms' means ± 95 % half-widths over seeds, its differences and verdicts, what differs from the
paper, the command that regenerates it) and what is still not done, with the runs each claim still
lacks counted from the store. Prose in the claims file carries no number of ours; a test renders
the report again and diffs it with the committed file, so the text cannot drift from the store.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..data import PROJECT_ROOT
from ..errors import ConfigError
from .claims import STALE_S
from .spec import LONG_FORM, RunSpec
from .verdicts import RULES, Paired, paired, verdict

STORE = PROJECT_ROOT / "store"  # the tracked store the report reads (README, "The store")
CLAIMS = PROJECT_ROOT / "docs" / "claims.yaml"
REPORT = PROJECT_ROOT / "docs" / "REPRODUCTION.md"
TRIES = 3  # attempts at each figure: kaleido's browser fails now and then on a loaded machine


@dataclass
class Runs:
    """The runs behind a claim or a calibration: a base spec, arms as sweep points, seeds."""

    name: str
    title: str
    experiment: str  # the store's experiment folder
    base: RunSpec
    points: list[dict]  # sweep points, each with an optional "label" (default: its preset), or "calibrated: <name>"
    seeds: list[int]
    score: list[str]  # a run's score: the mean of these metrics
    direction: str  # "higher" or "lower": which way is better (claims: which way the paper says the arm differs)
    chunk_size: int | None = None  # a lifelong sequence in chunks of this size (None: one run per point and seed)
    score_every: int = 1  # sequences: score and probe capability after every k-th chunk and the last (lifelong)
    before: bool = False  # sequences: each run's stage 0 (the unedited model's probes) is also an arm, "<label> before"

    def runs(self, chosen: dict | None = None) -> list[tuple[str, int, RunSpec | None]]:
        """(label, seed, spec) of every run, as `sweep.seeded` places seeds. A point ``calibrated: X``
        takes calibration X's preset and chosen values (`chosen[X]`); while X is not finished its
        runs have no spec yet (None)."""
        from .sweep import seeded

        out = []
        for point in self.points:
            point = dict(point)
            cal = point.pop("calibrated", None)
            label = point.pop("label", point.get("preset", cal))
            if cal is not None:
                values = (chosen or {}).get(cal)
                if values is None:
                    out += [(label, s, None) for s in self.seeds]
                    continue
                point = {**values, **point}
            out += [(label, p["seed"], self.base.replace(**p)) for p in seeded([point], self.seeds, self.base)]
        return out

    def labels(self, chosen: dict | None = None) -> list[str]:
        """The arms' labels in order, with each "<label> before" after its arm when `before` is set."""
        labels = list(dict.fromkeys(label for label, _, _ in self.runs(chosen)))
        return [x for label in labels for x in ([label, f"{label} before"] if self.shows_before else [label])]

    @property
    def shows_before(self) -> bool:
        return self.before and self.chunk_size is not None

    def folder(self, root: Path, spec: RunSpec) -> Path:
        from .sweep import sequence_name

        name = spec.hash() if self.chunk_size is None else sequence_name(spec, self.chunk_size, self.score_every)
        return root / self.experiment / name


@dataclass
class Claim(Runs):
    """One claim of the claims file (see the module docstring and ``docs/claims.yaml``)."""

    paper: str = ""  # which paper, where
    says: str = ""  # the paper's words and number
    arm: str = ""  # the label of the arm the paper favours
    others: list[str] = field(default_factory=list)  # the labels it is compared with
    margin: float | None = None  # a claim of no loss: the arm is at most this much worse (verdicts.py), fixed before the runs
    paper_arms: dict[str, str] = field(default_factory=dict)  # arm label -> the paper's number for it, quoted (a "paper" column)
    metrics: list[str] = field(default_factory=list)  # the arms table's columns
    setting: str = ""
    differs: str = ""
    regenerate: str = ""


@dataclass
class Calibration(Runs):
    """A grid over a preset on held-apart requests; the rule picks one point before any claim runs.
    Rule: the highest mean score over the seeds (lowest, with direction "lower"); a tie goes to the
    earlier point in grid order, so list the paper's values first."""

    preset: str = ""
    grid: dict = field(default_factory=dict)
    why: str = ""
    # config fields every grid point sets beside the preset, not part of the arms' labels (the settings the
    # stored runs computed with, where a preset changed since: docs/claims.yaml's pre-issue-42 pins)
    fixed: dict = field(default_factory=dict)

    def __post_init__(self):
        from .sweep import grid_points

        self.points = [{"label": ", ".join(f"{k}={v}" for k, v in p.items()), "preset": self.preset, **self.fixed, **p}
                       for p in grid_points(self.grid)]

    def choose(self, root: Path = STORE) -> dict | None:
        """The chosen grid point's values (with ``preset``), or None until every run is stored."""
        df = stored_runs(table(self, root))
        if len(df) < len(self.runs()):
            return None
        means = df.groupby("label", sort=False)["score"].mean()
        order = [p["label"] for p in self.points]
        sign = 1 if self.direction == "higher" else -1
        best = max(order, key=lambda label: (sign * means[label], -order.index(label)))
        point = dict(self.points[order.index(best)])
        point.pop("label")
        return point


@dataclass
class Plan:
    """A claims file: its header (title, intro, todo), calibrations and claims."""

    doc: dict
    calibrations: list[Calibration]
    claims: list[Claim]

    def chosen(self, root: Path = STORE) -> dict[str, dict | None]:
        return {c.name: c.choose(root) for c in self.calibrations}


def calibrated(name: str, claims_path=CLAIMS, root: Path = STORE) -> dict:
    """The grid point calibration `name` of the claims file chose (its preset and chosen values), read
    from the store: a notebook passes it to `RunSpec.replace` to run a method as the claims run it."""
    cals = {c.name: c for c in read(claims_path).calibrations}
    if name not in cals:
        raise ConfigError.bad_choice("calibration", name, sorted(cals))
    point = cals[name].choose(root)
    if point is None:
        raise ConfigError(f"calibration {name!r} is not finished in {root}: run `workbench report --run {name}` "
                          f"(or pass the preset's own values)")
    return point


def tasks(item: Runs, root: Path = STORE, chosen: dict | None = None) -> list:
    """A claim's or calibration's runs as executor tasks (`executors.Task`), seed-major, so that a
    campaign cut short leaves every arm with the same seeds; sequences resume from their
    checkpoints. Runs waiting for a calibration are left out."""
    from functools import partial

    from .executors import Task
    from .sweep import execute, lifelong

    out = []
    runs = sorted(item.runs(chosen), key=lambda r: item.seeds.index(r[1]))  # stable: arms in order within a seed
    for label, seed, spec in runs:
        if spec is None:
            continue
        fn = partial(execute, spec, item.experiment) if item.chunk_size is None else \
            partial(lifelong, spec, item.chunk_size, item.experiment, False, score_every=item.score_every)
        out.append(Task(item.folder(root, spec), fn, spec.run_config().model_name, f"{item.name} {label} seed {seed}"))
    return out


def run(names: list[str] | None = None, executor: str | None = None, claims_path=CLAIMS, progress: bool = True,
        root: Path = STORE, stale_s: float = STALE_S) -> None:
    """Execute every run the named claims and calibrations (default: all) still lack, into the
    tracked store, with `executor` (``serial``, ``local:N``, ``submitit``: see `executors`); the
    calibrations a claim names run first. Any number of these can run at once, on any machines
    sharing the store: runs are claimed, finished ones are read back.

    Two passes: the first runs, entry by entry, what no other campaign holds; the second waits for
    (or takes over, once stale: `stale_s`) the runs others held, and then runs the arms that waited
    for a calibration another campaign was finishing. So a campaign never idles on one entry's run
    that another campaign holds while a later entry has free runs."""
    import os

    from . import executors

    plan = read(claims_path)
    items = {c.name: c for c in [*plan.calibrations, *plan.claims]}
    unknown = sorted(set(names or []) - set(items))
    if unknown:
        raise ConfigError.bad_choice("claim", unknown[0], list(items))
    wanted = [items[n] for n in names] if names else list(items.values())
    needed = {p["calibrated"] for c in wanted for p in c.points if "calibrated" in p}
    wanted = [c for c in plan.calibrations if c.name in needed and c not in wanted] + wanted
    os.environ["WORKBENCH_RESULTS"] = str(root)  # the report reads store/; spawned workers inherit it
    for item in wanted:
        same_computation(item, root, plan.chosen(root), claims_path)
    wanted.sort(key=lambda c: not isinstance(c, Calibration))  # stable: calibrations first, else as named
    for wait in (False, True):
        for item in wanted:
            executors.run(tasks(item, root, plan.chosen(root)), executor, progress=progress, desc=item.name,
                          wait=wait, stale_s=stale_s)


def same_computation(item: Runs, root: Path, chosen: dict, claims_path) -> None:
    """Refuse to add runs to a claim whose stored runs computed in another dtype than this machine
    would: a spec with ``dtype="auto"`` is fp32 on the CPU and bf16 on a GPU, the same folder for
    another computation, and a verdict pairs seeds as if they were alike."""
    from ..models import resolved_dtype

    cfg = item.base.run_config()
    here = str(resolved_dtype(cfg)).removeprefix("torch.")
    df = table(item, root, chosen)
    stored = sorted({computed(f)["dtype"] for f in df["folder"]} - {None}) if len(df) else []
    if stored and stored != [here]:
        raise ConfigError(f"{claims_path}: {item.name}: its stored runs computed in {', '.join(stored)}, and on "
                          f"this machine dtype={cfg.dtype!r} is {here}: the same runs would compute another way. "
                          f"Run it where that dtype is {stored[0]}, or pin `dtype` in the entry's base (the stored "
                          f"runs keep theirs: a pinned dtype is another spec, in new folders)")


def read(path=CLAIMS) -> Plan:
    """The claims file, checked field by field (errors name the file, the entry and the field)."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    out = {"calibrations": [], "claims": []}
    common = {"title", "experiment", "base", "seeds", "score"}
    kinds = {"calibrations": (Calibration, common | {"preset", "grid"}),
             "claims": (Claim, common | {"paper", "says", "points", "arm", "others", "direction"})}
    for section, (cls, need) in kinds.items():
        for name, c in (doc.get(section) or {}).items():
            what = f"{path}: {section[:-1]} {name!r}"
            missing = sorted(need - set(c))
            if missing:
                raise ConfigError(f"{what} lacks {missing}")
            known = set(cls.__dataclass_fields__) - {"name"} - ({"points"} if cls is Calibration else set())
            unknown = sorted(set(c) - known)
            if unknown:
                raise ConfigError(f"{what} has unknown field(s) {unknown}; valid: {sorted(known)}")
            if c.get("direction", "higher") not in ("higher", "lower"):
                raise ConfigError(f"{what}: direction={c['direction']!r}, give 'higher' or 'lower'")
            margin = c.get("margin")
            if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0):
                raise ConfigError(f"{what}: margin={margin!r}, give a non-negative number in the score's units")
            every = c.get("score_every", 1)
            if isinstance(every, bool) or not isinstance(every, int) or every < 1 or (every > 1 and "chunk_size" not in c):
                raise ConfigError(f"{what}: score_every={every!r}, give a whole number of chunks, 1 or more, "
                                  "and only with chunk_size")
            c = dict(c, base=RunSpec.from_dict(c["base"]))
            c.setdefault("direction", "higher")
            if cls is Claim:
                c.setdefault("metrics", list(c["score"]))
            else:
                c["points"] = []
            out[section].append(cls(name=name, **c))
    cals = {c.name for c in out["calibrations"]}
    for claim in out["claims"]:
        bad = sorted({p["calibrated"] for p in claim.points if "calibrated" in p} - cals)
        if bad:
            raise ConfigError.bad_choice(f"claim {claim.name!r}: calibrated", bad[0], sorted(cals))
        bad = sorted(set(claim.paper_arms) - set(claim.labels()))
        if bad:  # a quote under a label no arm has would never be shown
            raise ConfigError.bad_choice(f"{path}: claim {claim.name!r}: paper_arms", bad[0], claim.labels())
    return Plan(doc, out["calibrations"], out["claims"])


def table(item: Runs, root: Path = STORE, chosen: dict | None = None) -> pd.DataFrame:
    """One row per finished run of a claim or calibration: label, seed, its metrics, and ``score``."""
    rows = []
    for label, seed, spec in item.runs(chosen):
        path = item.folder(root, spec) / "metrics.json" if spec is not None else None
        if path is not None and path.exists():
            metrics = json.loads(path.read_text())
            if "s_per_edit" not in metrics and metrics.get("n_edits"):  # a sequence: its last stage's totals
                metrics["s_per_edit"] = metrics["edit_s"] / metrics["n_edits"]
            rows.append({"label": label, "seed": seed, **metrics, "folder": str(path.parent), "before": False})
            if item.shows_before:  # stage 0: the probes (capability) of the unedited model, before the first chunk
                first = json.loads((path.parent / "stages.jsonl").read_text().splitlines()[0])
                rows.append({"label": f"{label} before", "seed": seed, **first, "folder": str(path.parent),
                             "before": True})
    df = pd.DataFrame(rows, columns=["label", "seed", "before"] if not rows else None)
    return _with_score(df, item) if len(df) else df


def _with_score(df: pd.DataFrame, item: Runs) -> pd.DataFrame:
    """`df` with ``score``: the mean of the item's score metrics per row (NaN where one is missing)."""
    have = [m for m in item.score if m in df]
    return df.assign(score=df[have].mean(axis=1, skipna=False) if len(have) == len(item.score) else math.nan)


def stored_runs(df: pd.DataFrame) -> pd.DataFrame:
    """`table`'s rows of runs, without the stage-0 ("before") arms read from them."""
    return df[~df["before"].astype(bool)] if len(df) else df


def comparisons(claim: Claim, df: pd.DataFrame) -> list[tuple[str, Paired, str]]:
    """(other arm, paired difference of the score, verdict) for each arm the claim compares with."""
    if not len(df):
        return [(o, Paired(0, math.nan, math.nan, ()), "inconclusive") for o in claim.others]
    out = []
    for other in claim.others:
        p = paired(df, "label", claim.arm, other, "score")
        out.append((other, p, verdict(p, claim.direction, claim.margin)))
    return out


def headline(claim: Claim, comps: list) -> tuple[str, Paired, str] | None:
    """The comparison the summary shows: against the strongest other arm (the best mean difference
    for it, i.e. the smallest lead of the arm), among those with a paired seed."""
    have = [c for c in comps if c[1].n]
    if not have:
        return None
    sign = 1 if claim.direction == "higher" else -1
    return min(have, key=lambda c: sign * c[1].mean)


def summary_cells(claim: Claim, comps: list, stored: int = 0) -> tuple[str, str]:
    """The summary row's "ours" and "verdict" cells: the comparison with the strongest other arm
    that has a paired seed, and its verdict, marked provisional while some other arm has none (an
    unrun rival could be the stronger one). `stored`: the claim's stored runs (`stored_runs`), which
    may be there with no pair yet (runs it shares with another claim, or one arm's first seed)."""
    top = headline(claim, comps)
    if top is None and stored:
        return (f"no seed of `{claim.arm}` paired with another arm yet ({stored} runs stored)",
                "**inconclusive** (no pair yet)")
    if top is None:
        return "no runs stored yet", "**inconclusive** (not run yet)"
    unpaired = [o for o, p, _ in comps if not p.n]
    if not unpaired:
        return f"vs {top[0]}: {_diff(top[1])}", f"**{top[2]}**"
    return (f"vs {top[0]}: {_diff(top[1])}; not yet paired: {', '.join(unpaired)}",
            f"**{top[2]}** (so far: {len(comps) - len(unpaired)} of {len(comps)} others)")


def _num(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _diff(p: Paired) -> str:
    if not p.n:
        return "no paired seed yet"
    if p.n < 2:
        return f"{p.mean:+.3f} (1 seed: no interval)"
    return f"{p.mean:+.3f} [{p.lo:+.3f}, {p.hi:+.3f}], {p.n} seeds"


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
    stages = _stages(df)
    have = [m for m in columns if m in stages and stages[m].notna().any()]
    stages = stages.dropna(subset=have, how="all")  # stages a `score_every` sequence did not score
    means = stages.groupby(["label", "n_edits"], sort=False)[have].mean()
    counts = sorted(stages["n_edits"].unique())
    head = ("| arm | metric | " + " | ".join(str(n) for n in counts) + " |\n" + "|---" * (len(counts) + 2) + "|\n")
    rows = [f"| {label} | {m} | " + " | ".join(_num(means[m].get((label, n), math.nan)) for n in counts) + " |"
            for label in dict.fromkeys(df["label"]) for m in have]
    return ("**After every chunk** (mean over the stored seeds; columns: edits so far, 0 the unedited model):\n\n"
            + head + "\n".join(rows) + "\n\n")


def _stages(df: pd.DataFrame) -> pd.DataFrame:
    """Every stage of `table`'s stored sequences: one row per run and number of edits so far (0: the
    unedited model), with the run's arm and seed."""
    df = stored_runs(df)
    return pd.concat([pd.read_json(Path(f) / "stages.jsonl", lines=True).assign(label=label, seed=seed)
                      for label, seed, f in zip(df["label"], df["seed"], df["folder"])], ignore_index=True)


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
        stages = _with_score(_stages(df), claim)
        stages = over_seeds(stages.dropna(subset=[c for c in cols if c in stages], how="all"), ["label", "n_edits"], cols)
        fig = plots.lines(stages, "n_edits", cols, title=title, color="label")
        return fig.update_layout(xaxis_title="edits so far (0: the unedited model); mean over seeds ± 95 % half-width",
                                 yaxis_range=[0, 1.05])
    cols = [*claim.metrics, "score"]
    fig = plots.bars(over_seeds(df, "label", cols), "label", cols, title=title)
    return fig.update_layout(xaxis_title="arm (bars: mean over seeds ± 95 % half-width)")


def _figure_line(claim: Claim, out: Path) -> str:
    png = out.parent / FIGURES / f"{claim.name}.png"
    return f"![{claim.title}]({FIGURES}/{claim.name}.png)\n\n" if png.exists() else ""


def _compute(df: pd.DataFrame) -> dict:
    """Run folder -> (seconds editing, seconds of the whole run or NaN where it was not recorded)."""
    if not len(df):
        return {}
    walls = df["run_s"] if "run_s" in df else pd.Series(math.nan, index=df.index)
    return {f: (float(e), float(w)) for f, e, w in zip(df["folder"], df["edit_s"], walls.fillna(math.nan))}


def computed(folder) -> dict:
    """Where a stored run computed (its env.json: device, dtype, chip). Runs stored before env.json
    recorded it ran on a CPU-only torch build (its version says ``+cpu``), where ``"auto"`` is fp32."""
    env = json.loads((Path(folder) / "env.json").read_text())
    if "device" in env:
        return {k: env[k] for k in ("device", "dtype", "chip")}
    if env.get("versions", {}).get("torch", "").endswith("+cpu"):
        return {"device": "cpu", "dtype": "float32", "chip": None}
    return {"device": None, "dtype": None, "chip": None}


def where(folder) -> str:
    """`computed` in words."""
    c = computed(folder)
    if c["device"] is None:
        return "not recorded"
    return f"{c['device']}, {c['dtype']}" + (f" ({c['chip']})" if c["chip"] else "")


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


def _mean_run_s(df: pd.DataFrame) -> float | None:
    """The mean wall time of `table`'s stored runs that recorded one (None: no run to time the item by)."""
    timed = stored_runs(df)["run_s"].dropna() if len(df) and "run_s" in df else pd.Series(dtype=float)
    return float(timed.mean()) if len(timed) else None


def _kind(spec: RunSpec) -> tuple[str, str, bool]:
    """What prices a run's editing time when its claim has no stored run: its method, its protocol,
    and whether it edits long-form text (a paragraph target costs far more per edit than a ZsRE answer)."""
    return spec.run_config().method, spec.protocol, spec.benchmark in LONG_FORM


def _rates(item: Runs, df: pd.DataFrame, root: Path, chosen: dict) -> dict:
    """Run folder -> (`_kind`, seconds per edit) for `table`'s stored runs of `item`."""
    runs = stored_runs(df)
    per_edit = dict(zip(runs["folder"], runs["s_per_edit"])) if len(runs) and "s_per_edit" in runs else {}
    folders = {str(item.folder(root, spec)): spec for _, _, spec in item.runs(chosen) if spec is not None}
    return {f: (_kind(folders[f]), float(s)) for f, s in per_edit.items() if f in folders and not math.isnan(s)}


def _owed(item: Runs, df: pd.DataFrame, root: Path, chosen: dict) -> dict:
    """The runs of `item` that `table` (its `df`) did not find in the store, each with a guess of its
    seconds (the item's own stored runs' mean; None where it has none), its `_kind` and its number
    of edits (None while its spec waits for a calibration). A run is named by its folder (a run two
    claims share is one entry) or, waiting for a calibration without a spec yet, by (item, label, seed)."""
    stored, guess = (set(df["folder"]) if len(df) else set()), _mean_run_s(df)
    return {(item.name, label, seed) if spec is None else str(item.folder(root, spec)):
            (guess, None if spec is None else _kind(spec), None if spec is None else spec.n_edits)
            for label, seed, spec in item.runs(chosen) if spec is None or str(item.folder(root, spec)) not in stored}


def _missing(item: Runs, df: pd.DataFrame, chosen: dict) -> str | None:
    runs, mean_s = item.runs(chosen), _mean_run_s(df)
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


def _owed_line(owed: dict, rates: dict) -> str:
    """How much is still to run: the runs of items with stored runs at each item's own mean wall
    time; the others priced by their editing alone, at the median seconds per edit of the stored
    runs of their `_kind` (`rates`), a floor: scoring and probes come on top."""
    if not owed:
        return ""
    timed = [g for g, _, _ in owed.values() if g is not None]
    if len(timed) == len(owed):
        return (f" Still to run: {len(owed)} runs, roughly {sum(timed) / 3600:.0f} h more on the same machine at each "
                f"one's own claim's mean run time.")
    per_edit = {}
    for kind, s in rates.values():
        per_edit.setdefault(kind, []).append(s)
    floor = [n * statistics.median(per_edit[kind]) for g, kind, n in owed.values() if g is None and kind in per_edit]
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


def _merge(owed: dict, more: dict) -> dict:
    """Owed runs of several items: a run two claims share is one entry, timed where either can time it."""
    return owed | {k: owed[k] if k in owed and owed[k][0] is not None else v for k, v in more.items()}


def render(claims_path=CLAIMS, root: Path = STORE, out: Path = REPORT) -> str:
    """The report's Markdown, from the claims file and the finished runs under `root` (a claim's
    figure is linked where `write` left one beside `out`)."""
    plan = read(claims_path)
    doc, chosen = plan.doc, plan.chosen(root)
    parts = [f"# {doc.get('title', 'Reproduction report')}\n",
             "> Generated by `workbench report` from `docs/claims.yaml` and the finished runs in `store/` (tracked "
             "in git: each run's spec, package versions, git sha, per-probe answers and metrics). Do not edit this "
             "file: edit the claims file or add runs, then render again; `tests/test_report.py` fails when the two "
             "disagree.\n", doc.get("intro", "").strip() + "\n", "## Verdict rules\n", RULES + "\n",
             "Calibrations: " + " ".join(Calibration.__doc__.split()) + "\n", "## Summary\n",
             "| # | claim | paper | ours: arm − strongest other, score (95 % interval) | verdict |\n|---|---|---|---|---|"]
    sections, missing, compute = [], [], {}  # run folder -> (edit_s, run_s): a run two claims read counts once
    owed = {}  # runs still to do, each once -> (a guess of its seconds or None, its kind, its edits): `_owed`
    rates = {}  # stored run folder -> (its kind, seconds per edit): what prices the runs nothing else times
    if plan.calibrations:
        sections.append("## Calibration\n\nEach preset number that a claim uses from a calibration is chosen here, by "
                        "the rule above, on requests no claim edits.\n")
    for k, cal in enumerate(plan.calibrations, 1):
        df = table(cal, root)
        compute.update(_compute(df))
        missing.append(_missing(cal, df, chosen))
        owed = _merge(owed, _owed(cal, df, root, chosen))
        rates.update(_rates(cal, df, root, chosen))
        pick = chosen[cal.name]
        label = None if pick is None else ", ".join(f"{k2}={v}" for k2, v in pick.items()
                                                    if k2 != "preset" and (k2 not in cal.fixed or k2 in cal.grid))
        result = f"chosen: **{label}**" if pick else "not chosen yet (the grid is not finished)"
        score = " and ".join(f"`{m}`" for m in cal.score)
        sections.append(f"### C{k}. {cal.title}\n\n" + (f"{cal.why.strip()}\n\n" if cal.why else "")
                        + _runs_line(cal, df, len(cal.runs())) + f"Preset `{cal.preset}`; the score is the mean "
                        f"of {score} per run ({cal.direction} is better); {result}.\n\n"
                        + arms_table(cal, df, [], mark=label))
    for i, claim in enumerate(plan.claims, 1):
        df = table(claim, root, chosen)
        comps = comparisons(claim, df)
        ours, judged = summary_cells(claim, comps, len(stored_runs(df)))
        parts.append(f"| {i} | {claim.title} | {claim.says} | {ours} | {judged} |")
        missing.append(_missing(claim, df, chosen))
        owed = _merge(owed, _owed(claim, df, root, chosen))
        rates.update(_rates(claim, df, root, chosen))
        compute.update(_compute(df))
        diffs = "\n".join(f"| {claim.arm} − {o} | {_diff(p)} | {v} |" for o, p, v in comps)
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
    edit_s = sum(e for e, _ in compute.values())
    timed = [w for _, w in compute.values() if not math.isnan(w)]
    parts.append(f"\nCompute behind this report: {len(compute)} runs; editing (seconds in `wb.edit`, as each run "
                 f"recorded it) {edit_s / 3600:.2f} h; whole runs, scoring included, {sum(timed) / 3600:.2f} h over the "
                 f"{len(timed)} runs that recorded it." + _owed_line(owed, rates) + "\n")
    parts += sections
    todo = [f"- {t.strip()}" for t in doc.get("todo", [])]
    parts.append("## What is still not done\n\n" + "\n".join([m for m in missing if m] + todo) + "\n")
    return "\n".join(parts)


def write(claims_path=CLAIMS, out=REPORT, root: Path = STORE) -> Path:
    """Write each claim's figure (PNG, where kaleido and a Chromium can render; otherwise none and the
    report links none) and then the report."""
    import logging
    import time

    out = Path(out)
    plan = read(claims_path)
    chosen = plan.chosen(root)
    log = logging.getLogger("workbench")
    try:
        import kaleido  # noqa: F401  (the `report` extra)
    except ImportError:
        kaleido = None
        log.warning("no figures: kaleido is not installed (pip install -e '.[report]')")
    for claim in plan.claims:
        df = table(claim, root, chosen)
        png = out.parent / FIGURES / f"{claim.name}.png"
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
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(render(claims_path, root, out))
    tmp.replace(out)
    return out
