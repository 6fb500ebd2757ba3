"""Notebooks as runs: record a notebook's metrics, read them back, execute it headless, sweep it.

`record(metrics)` / `read(notebook)` carry a notebook's final metrics through papermill
(recommenders' idea in a few lines; scrapbook broke with pandas 2). `run_notebook` executes one
with papermill; `sweep_notebook` executes it once per grid point into the store.
"""
from __future__ import annotations

import hashlib
import re
import json
import os
import shutil
from functools import partial
from pathlib import Path

import pandas as pd
from ..data import PROJECT_ROOT
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
    points = [(params, root / hashlib.sha256(json.dumps(plain(params), sort_keys=True).encode()).hexdigest()[:12])
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
