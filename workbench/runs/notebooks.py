"""Notebooks as runs: record a notebook's metrics, read them back, execute it headless, sweep it.

`record(metrics)` / `read(notebook)` carry a notebook's final metrics through papermill
(recommenders' idea in a few lines; scrapbook broke with pandas 2). `run_notebook` executes one
with papermill; `sweep_notebook` executes it once per grid point into the store.
"""
from __future__ import annotations

import re
import json
import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from ..files import PROJECT_ROOT, short_hash
from .store import check_writable, clear_leftovers, plain, results_root, to_json, write_atomically
from . import executors
from .executors import Task
from .sweep import grid_points

MIME = "application/x.workbench.record+json"


def run_notebook(notebook, params: dict | None = None, out_dir=None, kernel: str | None = None) -> Path:
    """Execute `notebook` with papermill into `out_dir` (default ``results/<name>/``) and return the
    executed copy. The notebook receives ``out_dir`` as a parameter for its figures."""
    import papermill as pm

    notebook = Path(notebook)
    out_dir = Path(out_dir or PROJECT_ROOT / "results" / notebook.stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / notebook.name
    pm.execute_notebook(str(notebook), str(executed), parameters={**(params or {}), "out_dir": str(out_dir)},
                        kernel_name=kernel or "python3", cwd=str(notebook.parent), progress_bar=False)
    return executed


def record(metrics: dict) -> None:
    """Display `metrics` (a dict of JSON-able values) so that `read()` finds them in the notebook."""
    from IPython.display import display

    metrics = plain(metrics)
    json.dumps(metrics)  # fail here, in the notebook, on values that cannot be stored
    display({MIME: metrics, "text/plain": json.dumps(metrics, indent=1, sort_keys=True)}, raw=True)


def read(notebook) -> dict:
    """Every recorded metric of an executed notebook, later records overriding earlier ones."""
    import nbformat

    nb = nbformat.read(str(Path(notebook)), as_version=4)
    out: dict = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if MIME in data:
                out.update(data[MIME])
    return out


def sweep_notebook(notebook, grid: dict[str, list], experiment: str | None = None, progress: bool = True,
                   executor: str | None = None, executor_options: dict | None = None) -> pd.DataFrame:
    """Execute `notebook` with papermill once per grid point into ``results/sweeps/<experiment>/<hash>/``
    (the executed notebook, its figures, ``params.json`` and the recorded ``metrics.json``).

    A point whose folder has ``metrics.json`` is skipped, so rerunning after an interruption
    completes the grid with no duplicate and no missing result. (The runs the notebook itself makes
    are cached as usual in ``results/<its experiment>/``, shared between grid points.) `executor`
    as in `sweep`: points are claimed, so several workers or sweeps share one grid.
    """
    notebook = Path(notebook)
    experiment = experiment or notebook.stem
    root = results_root() / "sweeps" / experiment
    check_writable(root)
    points = [(params, root / short_hash(plain(params)))
              for params in grid_points(grid)]
    tasks = [Task(folder, partial(_notebook_point, notebook, params, folder), label=f"{notebook.name} {params}")
             for params, folder in points]
    executors.run(tasks, executor, executor_options, progress, desc=notebook.name)
    return pd.DataFrame([{**plain(params), **json.loads((folder / "metrics.json").read_text()), "hash": folder.name}
                         for params, folder in points])


def _notebook_point(notebook: Path, params: dict, folder: Path) -> None:
    """One grid point: execute into a work folder, then move the results into `folder` at once."""
    clear_leftovers(folder)
    work = folder.with_name(f".{folder.name}.work{os.getpid()}")
    executed = run_notebook(notebook, params, work)
    files = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}  # figures include PNGs
    files.update({"params.json": to_json(params), "metrics.json": to_json(read(executed))})
    write_atomically(folder, files)
    shutil.rmtree(work, ignore_errors=True)


def flatten(df: pd.DataFrame, axis: str, metrics: list[str]) -> dict:
    """``{"<axis value>/<metric>": value}`` for `record()` (list values joined by "+")."""
    out = {}
    for row in df.to_dict("records"):  # keeps each column's dtype (iterrows would make ints floats)
        key = row[axis]
        key = "+".join(map(str, key)) if isinstance(key, (list, tuple)) else str(key)
        out.update({f"{key}/{m}": row[m] for m in metrics if m in row and row[m] is not None})
    return plain(out)


def markdown_table(recorded: dict) -> str:
    """A notebook's recorded ``"<arm>/<metric>"`` and ``"<arm>/<metric>.ci"`` values as a Markdown
    table, one row per arm, "mean ± half-width" (the 95 % interval over seeds)."""
    arms = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in recorded if "/" in k))
    metrics = list(dict.fromkeys(k.rsplit("/", 1)[1] for k in recorded if "/" in k and not k.endswith(".ci")))

    def cell(arm, m):
        mean, ci = recorded.get(f"{arm}/{m}"), recorded.get(f"{arm}/{m}.ci")
        if mean is None:
            return ""
        return f"{mean:.3f}" if ci is None else f"{mean:.3f} ± {ci:.3f}"

    def order(arm):  # natural order: layer 5 before 10, adalora-uke@5 before adalora-uke@10
        return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", arm) if p]

    rows = ["| arm | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    rows += [f"| {arm} | " + " | ".join(cell(arm, m) for m in metrics) + " |" for arm in sorted(arms, key=order)]
    return "\n".join(rows) + "\n"


def findings(table: pd.DataFrame, axis: str, metrics: list[str], paper: str, questions: list[str]):
    """A notebook's "What we found": the paper's claim, then this run's table rendered as the
    reproduction report renders a claim (`markdown_table` of what `record` stores, from the same
    store), then questions a student can answer by changing a parameter."""
    from IPython.display import Markdown

    recorded = flatten(table, axis, [*metrics, *(f"{m}.ci" for m in metrics)])
    steps = "\n".join(f"{i}. {q}" for i, q in enumerate(questions, 1))
    return Markdown(f"**The paper.** {paper}\n\n**This run** (from the results store; mean ± 95 % half-width "
                    f"over seeds where there are several):\n\n{markdown_table(recorded)}\n**Questions to try.**\n\n{steps}\n")


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim of the reproduction report as the report states it, computed by the report's own
    functions (`report.table`, `comparisons`, `summary_cells`) from the claims file and the store."""

    number: int  # the claim's row in docs/REPRODUCTION.md's summary
    name: str
    title: str
    says: str  # the paper's words and number
    ours: str  # the summary's "ours" cell: arm - strongest other, score (95 % interval)
    verdict: str  # the summary's verdict cell, e.g. "**reproduced**"
    diffs: str  # Markdown: one row per comparison, its difference and verdict
    arms: str  # Markdown: each arm's metrics, mean ± 95 % half-width over seeds
    table: pd.DataFrame  # the claim's stored runs (`report.table`)

    @property
    def word(self) -> str:
        """The verdict alone: ``reproduced``, ``not reproduced`` or ``inconclusive``."""
        return self.verdict.split("**")[1]


def claim_verdict(name: str, claims_path=None, root=None) -> ClaimVerdict:
    """The report's verdict for claim `name` of ``docs/claims.yaml``, from the tracked store (``store/``)."""
    from . import report

    claims_path, root = claims_path or report.CLAIMS, Path(root) if root else report.STORE
    plan = report.read(claims_path)
    numbers = {c.name: i for i, c in enumerate(plan.claims, 1)}
    if name not in numbers:
        from ..errors import ConfigError
        raise ConfigError.bad_choice("claim", name, list(numbers))
    claim, chosen = plan.claims[numbers[name] - 1], plan.chosen(root)
    df = report.table(claim, root, chosen)
    comps = report.comparisons(claim, df)
    ours, judged = report.summary_cells(claim, comps, len(report.stored_runs(df)))
    diffs = "| comparison | difference of the score | verdict |\n|---|---|---|\n" + "\n".join(
        f"| {claim.arm} − {o} | {report._diff(p)} | {v} |" for o, p, v in comps)
    return ClaimVerdict(numbers[name], name, claim.title, claim.says, ours, judged, diffs,
                        report.arms_table(claim, df, claim.metrics, chosen), df)


def claim_figure(v: ClaimVerdict):
    """The report's figure of a claim's stored arms (bars, or lines over a sequence), as in docs/."""
    from . import report

    return report.figure(report.read().claims[v.number - 1], v.table)


def stored_answers(v: ClaimVerdict, arm: str, split: str = "ori") -> pd.DataFrame:
    """The per-probe rows (prompt, reference, before, generation, scores) of `arm`'s first stored seed."""
    rows = v.table[(v.table["label"] == arm) & ~v.table["before"].astype(bool)].sort_values("seed")
    if not len(rows):
        return pd.DataFrame()
    probes = pd.read_json(Path(rows.iloc[0]["folder"]) / "per_probe.jsonl", lines=True, dtype={"request": str})
    return probes[probes["split"] == split].reset_index(drop=True)


def _widest(v: ClaimVerdict, arm: str, other: str, metric: str, split: str = "ori"):
    """The stored probe (first seed) where `arm`'s and `other`'s answers differ most on `metric`, both
    arms' columns suffixed ``_a`` and ``_b``; None when either arm or the metric is missing."""
    a, b = stored_answers(v, arm, split), stored_answers(v, other, split)
    if not len(a) or not len(b) or metric not in a:
        return None
    both = a.merge(b, on=["request", "prompt"], suffixes=("_a", "_b"))
    both = both.assign(gap=(both[f"{metric}_a"] - both[f"{metric}_b"]).abs())
    return both.loc[both["gap"].idxmax()] if len(both) else None


def most_different(v: ClaimVerdict, arm: str, other: str) -> str | None:
    """The request (id) on which `arm` and `other` answer most differently in the stored runs (on the claim's
    first per-probe scorer they recorded): where an explorer over the claim's runs opens."""
    row = next((r for r in (_widest(v, arm, other, m) for m in report_score_metrics(v)) if r is not None), None)
    return None if row is None else str(row["request"])


def contrast(v: ClaimVerdict, arm: str, other: str, metric: str, split: str = "ori", chars: int = 160) -> str:
    """Two or three sentences on the stored request where `arm` and `other` differ most on `metric`
    (first seed): both answers and the reference, quoted from store/."""
    r = _widest(v, arm, other, metric, split)
    if r is None:
        return ""

    def q(text):
        text = " ".join(str(text).split())
        return f"“{text[:chars]}{'…' if len(text) > chars else ''}”"

    return (f"Asked {q(r['prompt'])} (request {r['request']}, seed {int(v.table['seed'].min())}), the `{arm}` edit answers "
            f"{q(r['generation_a'])} ({metric} {r[f'{metric}_a']:.2f}) and the `{other}` edit answers "
            f"{q(r['generation_b'])} ({metric} {r[f'{metric}_b']:.2f}); the reference starts {q(r['reference_a'])}, "
            f"and the unedited model said {q(r['before_a'])}.")


def report_findings(names: list[str], notice: str = "", questions: list[str] = (),
                    compare: tuple[str, str] | None = None) -> list[ClaimVerdict]:
    """Display a notebook's "What we found": for each claim, the report's verdict (docs/REPRODUCTION.md,
    claim n) as the report computes it, its differences, its arms and its figure, all from the
    tracked store; then `notice` (what to look at) and `questions`. Returns the verdicts shown."""
    from IPython.display import Markdown, display

    from .. import plots

    shown = []
    for name in names:
        v = claim_verdict(name)
        shown.append(v)
        display(Markdown(f"**Claim {v.number} of the report: {v.title}.** The paper: {v.says}\n\n"
                         f"**The report's verdict:** {v.verdict} (ours: {v.ours}; real runs of SmolLM2-135M in "
                         f"`store/`, as docs/REPRODUCTION.md states them).\n\n{v.diffs}\n\n{v.arms}"))
        if len(v.table):
            plots.show(claim_figure(v))
    tail = []
    if compare and shown:  # the first claim's stored answers where two arms differ most on its first score metric
        v = shown[0]
        found = next(filter(None, (contrast(v, *compare, m) for m in report_score_metrics(v))), "")
        notice = " ".join(filter(None, [found, notice]))
    if notice:
        tail.append(f"**What to notice.** {notice}")
    if questions:
        tail.append("**Questions to try.**\n\n" + "\n".join(f"{i}. {q}" for i, q in enumerate(questions, 1)))
    if tail:
        display(Markdown("\n\n".join(tail) + "\n"))
    return shown


def report_score_metrics(v: ClaimVerdict) -> list[str]:
    """The per-probe scorers a claim's stored answers can be contrasted on: those of its score metrics
    (``ori.sentence_cosine`` -> ``sentence_cosine``), then, for a claim scored per run (steps to converge,
    perplexity), the papers' scorers in turn (the first its runs recorded is used)."""
    from . import report

    score = report.read().claims[v.number - 1].score
    own = [m.split(".", 1)[1] for m in score if m.split(".", 1)[0] in ("ori", "para", "loc")]
    return list(dict.fromkeys([*own, "sentence_cosine", "rougeL_recall", "exact_match"]))
