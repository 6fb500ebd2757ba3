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
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..data import PROJECT_ROOT
from ..errors import ConfigError
from .spec import RunSpec
from .verdicts import RULES, Paired, paired, verdict

STORE = PROJECT_ROOT / "store"  # the tracked store the report reads (README, "The store")
CLAIMS = PROJECT_ROOT / "docs" / "claims.yaml"
REPORT = PROJECT_ROOT / "docs" / "REPRODUCTION-2.md"


@dataclass
class Claim:
    """One claim of the claims file (see the module docstring and ``docs/claims.yaml``)."""

    name: str
    title: str
    paper: str  # which paper, where
    says: str  # the paper's words and number
    experiment: str  # the store's experiment folder
    base: RunSpec
    points: list[dict]  # the arms: sweep points, each with an optional "label" (default: its preset)
    seeds: list[int]
    arm: str  # the label of the arm the paper favours
    others: list[str]  # the labels it is compared with
    score: list[str]  # a run's score: the mean of these metrics
    direction: str  # "higher" or "lower": which way the paper says the arm differs
    metrics: list[str]  # the arms table's columns
    chunk_size: int | None = None  # a lifelong sequence in chunks of this size (None: one run per point and seed)
    setting: str = ""
    differs: str = ""
    regenerate: str = ""
    extra: dict = field(default_factory=dict)

    def runs(self) -> list[tuple[str, int, RunSpec]]:
        """(label, seed, spec) of every run the claim needs, as `sweep.seeded` places seeds."""
        out = []
        for point in self.points:
            point = dict(point)
            label = point.pop("label", point.get("preset"))
            for s in self.seeds:
                out.append((label, s, self.base.replace(**point, seed=s, offset=self.base.offset + s * self.base.n_edits)))
        return out

    def folder(self, root: Path, spec: RunSpec) -> Path:
        name = spec.hash() if self.chunk_size is None else f"{spec.hash()}-chunk{self.chunk_size}"
        return root / self.experiment / name


def tasks(claim: Claim, root: Path = STORE) -> list:
    """The claim's runs as executor tasks (`executors.Task`), seed-major, so that a campaign cut
    short leaves every arm with the same seeds; sequences resume from their checkpoints."""
    from functools import partial

    from .executors import Task
    from .sweep import execute, lifelong

    out = []
    runs = sorted(claim.runs(), key=lambda r: claim.seeds.index(r[1]))  # stable: arms in order within a seed
    for label, seed, spec in runs:
        fn = partial(execute, spec, claim.experiment) if claim.chunk_size is None else \
            partial(lifelong, spec, claim.chunk_size, claim.experiment, False)
        out.append(Task(claim.folder(root, spec), fn, spec.run_config().model_name, f"{claim.name} {label} seed {seed}"))
    return out


def run(names: list[str] | None = None, executor: str | None = None, claims_path=CLAIMS, progress: bool = True,
        root: Path = STORE) -> None:
    """Execute every run the named claims (default: all) still lack, into the tracked store, with
    `executor` (``serial``, ``local:N``, ``submitit``: see `executors`). Any number of these can run
    at once, on any machines sharing the store: runs are claimed, finished ones are read back."""
    import os

    from . import executors

    _, claims = read_claims(claims_path)
    unknown = sorted(set(names or []) - {c.name for c in claims})
    if unknown:
        raise ConfigError.bad_choice("claim", unknown[0], [c.name for c in claims])
    os.environ["WORKBENCH_RESULTS"] = str(root)  # the report reads store/; spawned workers inherit it
    for claim in claims:
        if not names or claim.name in names:
            executors.run(tasks(claim, root), executor, progress=progress, desc=claim.name)


def read_claims(path=CLAIMS) -> tuple[dict, list[Claim]]:
    """The claims file: its header (title, intro, todo) and its claims, checked field by field."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text())
    claims = []
    for name, c in (doc.get("claims") or {}).items():
        need = {"title", "paper", "says", "experiment", "base", "points", "seeds", "arm", "others", "score", "direction"}
        missing = sorted(need - set(c))
        if missing:
            raise ConfigError(f"{path}: claim {name!r} lacks {missing}")
        known = {f for f in Claim.__dataclass_fields__} - {"name", "extra"}
        unknown = sorted(set(c) - known)
        if unknown:
            raise ConfigError(f"{path}: claim {name!r} has unknown field(s) {unknown}; valid: {sorted(known)}")
        if c["direction"] not in ("higher", "lower"):
            raise ConfigError(f"{path}: claim {name!r}: direction={c['direction']!r}, give 'higher' or 'lower'")
        c = dict(c, base=RunSpec.from_dict(c["base"]))
        c.setdefault("metrics", list(c["score"]))
        claims.append(Claim(name=name, **c))
    return doc, claims


def table(claim: Claim, root: Path = STORE) -> pd.DataFrame:
    """One row per finished run of `claim`: label, seed, its metrics, and ``score``."""
    rows = []
    for label, seed, spec in claim.runs():
        path = claim.folder(root, spec) / "metrics.json"
        if path.exists():
            rows.append({"label": label, "seed": seed, **json.loads(path.read_text())})
    df = pd.DataFrame(rows, columns=["label", "seed"] if not rows else None)
    if len(df):
        have = [m for m in claim.score if m in df]
        df["score"] = df[have].mean(axis=1, skipna=False) if len(have) == len(claim.score) else math.nan
    return df


def comparisons(claim: Claim, df: pd.DataFrame) -> list[tuple[str, Paired, str]]:
    """(other arm, paired difference of the score, verdict) for each arm the claim compares with."""
    if not len(df):
        return [(o, Paired(0, math.nan, math.nan, ()), "inconclusive") for o in claim.others]
    out = []
    for other in claim.others:
        p = paired(df, "label", claim.arm, other, "score")
        out.append((other, p, verdict(p, claim.direction)))
    return out


def headline(claim: Claim, comps: list) -> tuple[str, Paired, str] | None:
    """The comparison the summary shows: against the strongest other arm (the best mean difference
    for it, i.e. the smallest lead of the arm), among those with a paired seed."""
    have = [c for c in comps if c[1].n]
    if not have:
        return None
    sign = 1 if claim.direction == "higher" else -1
    return min(have, key=lambda c: sign * c[1].mean)


def _num(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _diff(p: Paired) -> str:
    if not p.n:
        return "no paired seed yet"
    if p.n < 2:
        return f"{p.mean:+.3f} (1 seed: no interval)"
    return f"{p.mean:+.3f} [{p.lo:+.3f}, {p.hi:+.3f}], {p.n} seeds"


def arms_table(claim: Claim, df: pd.DataFrame) -> str:
    """Each arm's mean ± 95 % half-width over its seeds for the claim's metrics and the score, with
    its seed count and seconds per edit."""
    from .stats import over_seeds

    labels = list(dict.fromkeys(label for label, _, _ in claim.runs()))
    cols = [*claim.metrics, "score"]
    head = "| arm | seeds | " + " | ".join(cols) + " | s / edit |\n" + "|---" * (len(cols) + 3) + "|\n"
    stats = over_seeds(df, "label", [*cols, "s_per_edit"]) if len(df) else pd.DataFrame(columns=["label"])
    lines = []
    for label in labels:
        row = stats[stats["label"] == label]
        if not len(row):
            lines.append(f"| {label} | 0 | " + " | ".join("–" for _ in cols) + " | – |")
            continue
        r = row.iloc[0]

        def cell(m):
            if m not in r or pd.isna(r[m]):
                return "–"
            ci = r.get(f"{m}.ci")
            return _num(r[m]) if ci is None or pd.isna(ci) else f"{_num(r[m])} ± {_num(ci)}"

        lines.append(f"| {label} | {int(r['n_seeds'])} | " + " | ".join(cell(m) for m in cols) +
                     f" | {_num(r.get('s_per_edit'), 1)} |")
    return head + "\n".join(lines) + "\n"


def render(claims_path=CLAIMS, root: Path = STORE) -> str:
    """The report's Markdown, from the claims file and the finished runs under `root`."""
    doc, claims = read_claims(claims_path)
    parts = [f"# {doc.get('title', 'Reproduction report')}\n",
             "> Generated by `workbench report` from `docs/claims.yaml` and the finished runs in `store/` (tracked "
             "in git: each run's spec, package versions, git sha, per-probe answers and metrics). Do not edit this "
             "file: edit the claims file or add runs, then render again; `tests/test_report.py` fails when the two "
             "disagree.\n", doc.get("intro", "").strip() + "\n", "## Verdict rules\n", RULES + "\n", "## Summary\n",
             "| # | claim | paper | ours: arm − strongest other, score (95 % interval) | verdict |\n|---|---|---|---|---|"]
    sections, missing, seconds = [], [], 0.0
    for i, claim in enumerate(claims, 1):
        df = table(claim, root)
        comps = comparisons(claim, df)
        top = headline(claim, comps)
        ours = f"vs {top[0]}: {_diff(top[1])}" if top else "no runs stored yet"
        judged = f"**{top[2]}**" if top else "**inconclusive** (not run yet)"
        parts.append(f"| {i} | {claim.title} | {claim.says} | {ours} | {judged} |")
        need, have = len(claim.runs()), len(df)
        if have < need:
            stored = {(r.label, r.seed) for r in df.itertuples()} if have else set()
            lacking = sorted({label for label, s, _ in claim.runs() if (label, s) not in stored})
            missing.append(f"- **{claim.title}**: {have} of {need} runs stored; arms still short of "
                           f"{len(claim.seeds)} seeds: {', '.join(lacking)}.")
        if have and "edit_s" in df:
            seconds += float(df["edit_s"].sum())
        diffs = "\n".join(f"| {claim.arm} − {o} | {_diff(p)} | {v} |" for o, p, v in comps)
        score = " and ".join(f"`{m}`" for m in claim.score)
        sections.append(
            f"## {i}. {claim.title}\n\n**The paper** ({claim.paper}). {claim.says}\n\n"
            + (f"**Setting.** {claim.setting.strip()}\n\n" if claim.setting else "")
            + f"**Runs.** {have} of {need} stored in `store/{claim.experiment}/` ({len(claim.seeds)} seeds per arm; seed "
            f"*s* edits requests {claim.base.offset} + {claim.base.n_edits}·s onward, {claim.base.n_edits} per seed"
            + (f", in chunks of {claim.chunk_size}" if claim.chunk_size else "") + ").\n\n"
            + f"Each arm: mean ± 95 % half-width over its seeds. The score is the mean of {score} per run.\n\n"
            + arms_table(claim, df)
            + f"\n**Differences and verdicts** (paper's direction: the arm's score is {claim.direction}):\n\n"
            + "| comparison | difference of the score | verdict |\n|---|---|---|\n" + diffs + "\n\n"
            + (f"**What differs from the paper.** {claim.differs.strip()}\n\n" if claim.differs else "")
            + (f"**Regenerate.** `{claim.regenerate.strip()}`\n" if claim.regenerate else ""))
    parts.append(f"\nEditing time of every stored run above, summed: {seconds / 3600:.2f} h (seconds spent in "
                 "`wb.edit`, as each run recorded it; scoring not included).\n")
    parts += sections
    todo = [f"- {t.strip()}" for t in doc.get("todo", [])]
    parts.append("## What is still not done\n\n" + "\n".join(missing + todo) + "\n")
    return "\n".join(parts)


def write(claims_path=CLAIMS, out=REPORT, root: Path = STORE) -> Path:
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(render(claims_path, root))
    tmp.replace(out)
    return out
