"""Runs, the results store, and sweeps (in Python and over notebooks with papermill).

* `spec.py`: `RunSpec`, one run: config, data, protocol (``batch`` or ``single``), evaluation;
* `store.py`: the results store, ``results/<experiment>/<spec hash>/``, written atomically;
* `migrate.py`: moves runs stored under an earlier identity scheme to their names under this one;
* `expect.py`: `expect`, the minutes a grid will take, priced from the store's measured runs;
* `protocols.py`: how a run edits and scores its requests (``batch``, ``single``; `score_each`);
* `sweep.py`: `execute` one run, `sweep` a grid (with seeds), `lifelong` chunked sequential editing;
* `locks.py`: a worker locks a run before it starts it, so many workers share one store;
* `executors.py`: serial, ``local:N`` worker processes, or a SLURM job array through submitit;
* `export.py`: a stored run in EasyEdit's per-request result layout;
* `stats.py`: `over_seeds`, means and Student-t intervals;
* `notebooks.py`: `record` / `read` a notebook's metrics, `run_notebook`, `sweep_notebook`;
* the reproduction report, second edition: `claimsfile.py` (``docs/claims.yaml`` and the stored runs
  its claims name; `calibrated` gives a calibration's chosen values), `campaign.py` (execute what the
  claims still lack), `cost.py` (what the runs cost and what is still to run), `verdicts.py` (the
  verdict rules) and `report.py` (the Markdown and figures);
* `first_edition.py`: the first edition's notebook runs (``workbench reproduce``).

The names used most are re-exported here: ``wb.runs.sweep(...)``, ``wb.runs.RunSpec``, ...; the
others are reached through their module (``wb.runs.report.render``).
"""
from .executors import SweepError
from .expect import Expected, expect
from .export import export_easyedit
from .notebooks import (MIME, ClaimVerdict, claim_figure, claim_verdict, findings, flatten, markdown_table, most_different, read, record,
                        report_findings, run_notebook, sweep_notebook)
from .claimsfile import calibrated
from .protocols import score_each
from .spec import LONG_FORM, RunSpec
from .stats import over_seeds
from .store import check_writable, git_sha, load, plain, results_root, run_folder
from .sweep import by_chunk, execute, grid_points, lifelong, model_for, requests_for, seeded, sweep

__all__ = ["expect", "Expected", "calibrated", "score_each", "ClaimVerdict", "claim_figure", "claim_verdict", "report_findings", "SweepError", "export_easyedit", "MIME", "findings", "flatten", "markdown_table", "most_different", "read", "record", "run_notebook", "sweep_notebook", "LONG_FORM",
           "RunSpec", "over_seeds", "check_writable", "git_sha", "load", "plain", "results_root", "run_folder",
           "by_chunk", "execute", "grid_points", "lifelong", "model_for", "requests_for", "seeded", "sweep"]
