"""The claims file (``docs/claims.yaml``) and the stored runs each of its entries names.

A claims file says, per claim, what the paper says, which runs answer it (a base `RunSpec`, the arms
as sweep points, the seeds, single runs or a `lifelong` sequence) and how to compare them (the arm,
the arms it is compared with, the score: the mean of one or more metrics per run, and the paper's
direction); per calibration, a grid over a preset whose best point a claim's arm then uses
(``calibrated: <name>``). `read` checks the file field by field into a `ClaimsFile` of `Calibration`s
and `Claim`s (each a `Runs`). `table` reads an entry's finished runs from the store (``store/`` in
the repository, `store.py`): one row per run with its ``score``; `computed` and `where` say on what
a stored run computed. `calibrated` gives the values a calibration chose, for a notebook that runs
a method as the claims run it. The report (`report.py`), the campaign that fills the store
(`campaign.py`) and the cost estimates (`cost.py`) all read the claims through this module.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from ..files import PROJECT_ROOT
from .spec import RunSpec

STORE = PROJECT_ROOT / "store"  # the tracked store the report reads (README, "The store")
CLAIMS = PROJECT_ROOT / "docs" / "claims.yaml"


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
    unedited: str | None = None  # the label of the arm that is the unedited model (third edition: every claim has one)

    def sequence(self, spec: RunSpec) -> int:
        """The chunk size of `spec`'s run: the entry's, or the point's own (a point with ``chunk_size``
        is a sequence among single runs: LocFT-BF's chunk-on-arrival arm beside its batch arm); 0: one run."""
        return self.chunk_size or spec.chunk_size

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

        if self.chunk_size is None:  # a point's own sequence names itself (chunk_size is in its spec)
            return root / self.experiment / spec.hash()
        name = sequence_name(spec, self.chunk_size, self.score_every)
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
    floor: bool = False  # a rival counts only if it beats the `unedited` arm (by the verdict rule, on the score)
    # the metric the arm's lead over the `unedited` arm is shown on (no verdict), where the score means nothing
    # for the unedited model (steps to converge: it trains none); default the score
    magnitude: str | None = None
    # the sequential seed rule: the seeds listed first, then one more at a time, up to this many, while the
    # interval against the strongest counting rival spans zero; intervals at 1 - 0.05 / (seeds_max - 1)
    seeds_max: int | None = None
    edition: int = 2  # the edition whose rules judge it (3: the unedited arm, the seed rule)

    @property
    def level(self) -> float:
        """The intervals' level: 95 %, or under the sequential seed rule Bonferroni over its looks
        (n = 2 .. seeds_max paired seeds: seeds_max - 1 looks)."""
        return 0.95 if not self.seeds_max else 1 - 0.05 / max(self.seeds_max - 1, 1)

    # the seeds the file lists, once `with_seeds` gave the claim the seed rule's: the figure's points the verdict
    # does not read (`judged`) keep these, so a seed the rule adds runs only the arms it compares
    listed: list[int] | None = None

    def judged(self) -> set[str]:
        """The labels of the arms the verdict reads: the arm, the arms it is compared with, the unedited arm."""
        return {self.arm, *self.others, *([self.unedited] if self.unedited else [])}

    def runs(self, chosen: dict | None = None) -> list[tuple[str, int, RunSpec | None]]:
        """`Runs.runs`; over the seeds the seed rule added, only the arms the verdict reads (`judged`)."""
        out = super().runs(chosen)
        if self.listed is None:
            return out
        judged = self.judged()
        return [r for r in out if r[0] in judged or r[1] in self.listed]

    def ceiling(self) -> list[int]:
        """Every seed the seed rule may ask for: the listed ones and the next, up to `seeds_max` in all."""
        top = self.seeds_max or len(self.seeds)
        return sorted(set(self.seeds) | set(range(max(self.seeds) + 1, max(self.seeds) + 1 + top - len(self.seeds))))

    def with_seeds(self, seeds: list[int]) -> "Claim":
        """The same claim over `seeds` (the seed rule's, or its ceiling, priced by `report --plan`); the
        seeds the file lists stay in `listed`, so the figure's other points keep only those."""
        import dataclasses

        return dataclasses.replace(self, seeds=list(seeds), listed=self.listed or list(self.seeds))


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
class ClaimsFile:
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


def read(path=CLAIMS) -> ClaimsFile:
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
            known = set(cls.__dataclass_fields__) - {"name", "listed"} - ({"points"} if cls is Calibration else set())
            unknown = sorted(set(c) - known)
            if unknown:
                raise ConfigError(f"{what} has unknown field(s) {unknown}; valid: {sorted(known)}")
            if cls is Claim and c.get("unedited") is not None and c["unedited"] not in {
                    p.get("label", p.get("preset", p.get("calibrated"))) for p in c["points"]}:
                raise ConfigError(f"{what}: unedited={c['unedited']!r} names no arm")
            if cls is Claim and c.get("floor") and not c.get("unedited"):
                raise ConfigError(f"{what}: floor needs the `unedited` arm it is judged against")
            if cls is Claim and c.get("magnitude") is not None:  # a metric no table has would show no pair, silently
                if not c.get("unedited"):
                    raise ConfigError(f"{what}: magnitude needs the `unedited` arm it is shown against")
                if c["magnitude"] not in c.get("metrics", c["score"]):
                    raise ConfigError.bad_choice(f"{what}: magnitude", c["magnitude"], c.get("metrics", c["score"]))
            smax = c.get("seeds_max")
            if smax is not None and (isinstance(smax, bool) or not isinstance(smax, int) or smax < len(c["seeds"])):
                raise ConfigError(f"{what}: seeds_max={smax!r}, give a whole number at least the seeds listed")
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
    return ClaimsFile(doc, out["calibrations"], out["claims"])


# ------------------------------------------------------------------------- the stored runs
def seeds_due(claim: "Claim", df: pd.DataFrame) -> list[int]:
    """The seeds the sequential seed rule (`verdicts.RULES_3`) asks of `claim`, given `df`: `table`'s rows
    over its `ceiling` seeds. Its listed seeds, then one more at a time, up to ``seeds_max``, while every
    seed so far is stored for the arm and its rivals and the interval against the strongest counting rival
    (under ``floor``, rivals not above the unedited arm do not count) still spans zero."""
    from .verdicts import counts, paired, verdict

    seeds, top = list(claim.seeds), claim.seeds_max or len(claim.seeds)
    sign = 1 if claim.direction == "higher" else -1
    while len(seeds) < top and len(df):
        d = df[df["seed"].isin(seeds)]
        ps = {o: paired(d, "label", claim.arm, o, "score", level=claim.level) for o in claim.others}
        if any(p.n < len(seeds) for p in ps.values()):
            break  # the seeds so far are not all stored yet: they run first
        if claim.floor and claim.unedited:
            ps = {o: p for o, p in ps.items()
                  if counts(paired(d, "label", o, claim.unedited, "score", level=claim.level), claim.direction) is not False}
        if not ps or verdict(min(ps.values(), key=lambda p: sign * p.mean), claim.direction, claim.margin) != "inconclusive":
            break
        seeds.append(max(seeds) + 1)
    return seeds


def table(item: Runs, root: Path = STORE, chosen: dict | None = None, rule: bool = True) -> pd.DataFrame:
    """One row per finished run of a claim or calibration: label, seed, its metrics, and ``score``. A
    claim under the seed rule (``seeds_max``) has the rows of the seeds the rule asks for (`seeds_due`),
    which may be more than it lists; ``rule=False``: of the seeds it lists (or was given)."""
    if rule and getattr(item, "seeds_max", None):
        full = table(item.with_seeds(item.ceiling()), root, chosen, rule=False)
        return full[full["seed"].isin(seeds_due(item, full))] if len(full) else full
    rows = []
    for label, seed, spec in item.runs(chosen):
        path = item.folder(root, spec) / "metrics.json" if spec is not None else None
        if path is not None and path.exists():
            metrics = json.loads(path.read_text())
            if "s_per_edit" not in metrics and metrics.get("n_edits"):  # a sequence: its last stage's totals
                metrics["s_per_edit"] = metrics["edit_s"] / metrics["n_edits"]
            if "steps" in metrics and metrics.get("n_edits") and label != item.unedited:  # the unedited arm trains none
                metrics["steps_to_converge"] = metrics["steps"] / metrics["n_edits"]
            rows.append({"label": label, "seed": seed, **metrics, "folder": str(path.parent), "before": False})
            if item.shows_before:  # stage 0: the probes (capability) of the unedited model, before the first chunk
                first = json.loads((path.parent / "stages.jsonl").read_text().splitlines()[0])
                rows.append({"label": f"{label} before", "seed": seed, **first, "folder": str(path.parent),
                             "before": True})
    df = pd.DataFrame(rows, columns=["label", "seed", "before"] if not rows else None)
    return with_score(df, item) if len(df) else df


def with_score(df: pd.DataFrame, item: Runs) -> pd.DataFrame:
    """`df` with ``score``: the mean of the item's score metrics per row (NaN where one is missing)."""
    have = [m for m in item.score if m in df]
    return df.assign(score=df[have].mean(axis=1, skipna=False) if len(have) == len(item.score) else math.nan)


def stored_runs(df: pd.DataFrame) -> pd.DataFrame:
    """`table`'s rows of runs, without the stage-0 ("before") arms read from them."""
    return df[~df["before"].astype(bool)] if len(df) else df


def stages(df: pd.DataFrame) -> pd.DataFrame:
    """Every stage of `table`'s stored sequences: one row per run and number of edits so far (0: the
    unedited model), with the run's arm and seed."""
    df = stored_runs(df)
    return pd.concat([pd.read_json(Path(f) / "stages.jsonl", lines=True).assign(label=label, seed=seed)
                      for label, seed, f in zip(df["label"], df["seed"], df["folder"])], ignore_index=True)


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
