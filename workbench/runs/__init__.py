"""Runs, the results store, and sweeps (in Python and over notebooks with papermill).

* `spec.py`: `RunSpec`, one run: config, data, protocol (``batch`` or ``single``), evaluation;
* `store.py`: the results store, ``results/<experiment>/<spec hash>/``, written atomically;
* `sweep.py`: `execute` one run, `sweep` a grid (with seeds), `lifelong` chunked sequential editing;
* `claims.py`: a worker claims a run before it starts it, so many workers share one store;
* `export.py`: a stored run in EasyEdit's per-request result layout;
* `executors.py`: serial, ``local:N`` worker processes, or a SLURM job array through submitit;
* `stats.py`: `over_seeds`, means and Student-t intervals;
* `notebooks.py`: `record` / `read` a notebook's metrics, `run_notebook`, `sweep_notebook`;
* `report.py`: the reproduction report from ``docs/claims.yaml`` and the store; `calibrated` gives a
  calibration's chosen values;
* `verdicts.py`: the verdict rules.

Everything is re-exported here: ``wb.runs.sweep(...)``, ``wb.runs.RunSpec``, ...
"""
from .executors import SweepError
from .export import export_easyedit
from .notebooks import (MIME, ClaimVerdict, claim_figure, claim_verdict, findings, flatten, markdown_table, read, record,
                        report_findings, run_notebook, sweep_notebook)
from .report import calibrated
from .spec import ADDED_LATER, LONG_FORM, RunSpec
from .stats import over_seeds
from .store import check_writable, git_sha, load, plain, results_root, run_folder
from .sweep import by_chunk, execute, grid_points, lifelong, model_for, requests_for, seeded, sweep

__all__ = ["calibrated", "ClaimVerdict", "claim_figure", "claim_verdict", "report_findings", "SweepError", "export_easyedit", "MIME", "findings", "flatten", "markdown_table", "read", "record", "run_notebook", "sweep_notebook", "ADDED_LATER", "LONG_FORM",
           "RunSpec", "over_seeds", "check_writable", "git_sha", "load", "plain", "results_root", "run_folder",
           "by_chunk", "execute", "grid_points", "lifelong", "model_for", "requests_for", "seeded", "sweep"]
