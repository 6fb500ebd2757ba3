"""Runs, the results store, and sweeps (in Python and over notebooks with papermill).

A run is one `RunSpec`: an `EditConfig`, the data (benchmark, how many edits, from where), the
editing protocol, and the evaluation. Protocols are explicit, because "sequential" means different
things in different papers:

* ``batch``: all edits go to one `wb.edit` call (the config's schedule and batch size decide how
  they are visited: LocFT-BF's breadth-first, or depth-first sequential editing), and everything is
  scored **after the last edit**;
* ``single``: each edit alone on the unedited model, scored, then reverted (FT-UKE's single editing).

Each run is stored in ``results/<experiment>/<spec hash>/`` with ``spec.json`` (the resolved config),
``env.json`` (package versions, git sha), ``per_probe.jsonl``, ``summary.csv`` and ``metrics.json``.
The folder is written under a temporary name and renamed when complete, so a killed run leaves
nothing that looks finished; a folder with ``metrics.json`` is a finished run and is skipped, and an
identical spec (same hash) finished under another experiment is copied instead of re-run.

`record(metrics)` / `read(notebook)` carry a notebook's final metrics through papermill
(recommenders' idea in a few lines; scrapbook broke with pandas 2).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
from tqdm.auto import tqdm

from .config import EditConfig
from .data import PROJECT_ROOT
from .errors import ConfigError, WorkbenchError

MIME = "application/x.workbench.record+json"
LONG_FORM = ("unkebench", "mquake-cf", "unkebench-loc", "akew-loc")  # scored the FT-UKE way


def results_root() -> Path:
    """``$WORKBENCH_RESULTS`` or the project's ``results/``."""
    return Path(os.environ.get("WORKBENCH_RESULTS", PROJECT_ROOT / "results"))


# Spec fields added after results were stored, with their defaults (see `RunSpec.to_dict`).
ADDED_LATER = {"eval_chat_template": None}


@dataclass(frozen=True)
class RunSpec:
    edit: EditConfig = field(default_factory=EditConfig)
    benchmark: str = "zsre"  # a registry name, or "unkebench-loc" / "akew-loc" (with our locality sets)
    n_edits: int = 10  # requests edited (and scored)
    offset: int = 0  # skip this many requests first
    protocol: Literal["batch", "single"] = "batch"  # see the module docstring
    eval: str = "auto"  # "uke", "locft", or "auto" (uke for long-form benchmarks, locft otherwise)
    splits: tuple[str, ...] = ("ori", "para", "loc")
    max_new_tokens: int = 0  # 0 = the eval preset's
    capability: tuple[str, ...] = ()  # "mmlu", "perplexity" (after the edit)
    n_mmlu: int = 570
    smoke_run: bool = False  # CI-sized: tiny 30-layer random model, the config's smoke() steps (see `smoke()`)
    eval_chat_template: bool | None = None  # probe through the chat template (True) or not (False); None: as edited
    # version of the scorers and locality sets: 2 = the UnKE lineage's scorers, FT-L's prompt_last, locality sets
    # that exclude the edit set. In the hash, so runs scored the old way are never read back as new ones.
    scoring: int = 2

    def __post_init__(self):
        if self.protocol not in ("batch", "single"):
            raise ConfigError.bad_choice("protocol", self.protocol, ("batch", "single"))
        if self.eval not in ("auto", "uke", "locft"):
            raise ConfigError.bad_choice("eval", self.eval, ("auto", "uke", "locft"))
        object.__setattr__(self, "splits", tuple(self.splits))
        object.__setattr__(self, "capability", tuple(self.capability))
        if self.protocol == "single" and self.capability:
            raise ConfigError("capability is measured after the edits of a 'batch' run; with protocol='single' "
                              "each edit is reverted before the next, so there is no edited model to measure")

    def run_config(self) -> EditConfig:
        """The EditConfig this run trains with: `edit`, or for a smoke run its smoke() on the tiny
        30-layer model (applied here, so that a preset swapped in by a sweep is smoked too)."""
        if not self.smoke_run:
            return self.edit
        return self.edit.smoke().replace(model_name="tiny-random-smollm2", device="cpu", dtype="float32")

    def eval_config(self):
        from .evaluate import EvalConfig

        name = self.eval if self.eval != "auto" else "uke" if self.benchmark in LONG_FORM else "locft"
        template = self.edit.chat_template if self.eval_chat_template is None else self.eval_chat_template
        cfg = EvalConfig.preset(name).replace(splits=self.splits, capability=self.capability, n_mmlu=self.n_mmlu,
                                              chat_template=template)  # by default, probe as it was edited
        return cfg.replace(max_new_tokens=self.max_new_tokens) if self.max_new_tokens else cfg

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, default in ADDED_LATER.items():  # left out at their default: stored runs keep their hash
            if d[name] == default:
                del d[name]
        d["edit"] = self.edit.to_dict()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def replace(self, **changes) -> "RunSpec":
        """Change spec fields or, by name, EditConfig fields (``spec.replace(lr=1e-3, n_edits=50)``).

        ``preset="lora"`` swaps in that preset's config, keeping this spec's model, device and dtype.
        """
        own = {f.name for f in dataclasses.fields(self)}
        edit = self.edit
        if "preset" in changes:
            from .config import preset

            name = changes.pop("preset")
            edit = preset(name, model_name=edit.model_name, device=edit.device, dtype=edit.dtype)
        edit_changes = {k: v for k, v in changes.items() if k not in own}
        spec_changes = {k: v for k, v in changes.items() if k in own}
        edit = edit.replace(**edit_changes) if edit_changes else edit
        return dataclasses.replace(self, edit=edit, **spec_changes)

    def smoke(self) -> "RunSpec":
        """Seconds-long version for CI and nbval: a tiny random model with SmolLM2's 30 layers, 3
        edits, 16 new tokens, the config's smoke(). A smoke run checks that a notebook runs, not what
        it finds."""
        return dataclasses.replace(self, smoke_run=True, n_edits=min(self.n_edits, 3),
                                   max_new_tokens=min(self.max_new_tokens or 16, 16), n_mmlu=min(self.n_mmlu, 20))

    @classmethod
    def from_params(cls, namespace: dict, names: list[str] | None = None) -> "RunSpec":
        """Build a spec from a notebook's parameters.

        `names` are the parameter names (default: every name in `namespace` that is a spec or config
        field, plus ``preset``). ``preset`` picks the base config; every other name must be a spec or
        EditConfig field, so a typo in a parameters cell fails here instead of being ignored.
        """
        spec_fields = {f.name for f in dataclasses.fields(cls)} - {"edit"}
        edit_fields = {f.name for f in dataclasses.fields(EditConfig)}
        if names is None:
            names = [k for k in namespace if k in spec_fields | edit_fields | {"preset"}]
        unknown = sorted(set(names) - spec_fields - edit_fields - {"preset"})
        if unknown:
            raise ConfigError(f"parameters {unknown} are neither run-spec nor EditConfig fields")
        from .config import preset

        base = preset(namespace["preset"]) if "preset" in names else EditConfig()
        edit = base.replace(**{k: namespace[k] for k in names if k in edit_fields})
        return cls(edit=edit, **{k: namespace[k] for k in names if k in spec_fields})

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        d = dict(d)
        d["edit"] = EditConfig.from_dict(d.get("edit", {}))
        return cls(**d)


# ----------------------------------------------------------------------------------- models
_MODELS: dict = {}


def model_for(cfg: EditConfig):
    """The model of `cfg`, loaded once per process and checked to be unedited before every run."""
    from .models import fingerprint, load

    key = (cfg.model_name, cfg.device, cfg.dtype)
    if key in _MODELS:
        model, tok, fp = _MODELS[key]
        if fingerprint(model) == fp:
            return model, tok
        # An edit was left in the model (a notebook cell that did not revert): never reuse it.
    model, tok = load(cfg.model_name, None if cfg.device == "auto" else cfg.device, cfg.dtype)
    _MODELS[key] = (model, tok, fingerprint(model))
    return model, tok


def requests_for(spec: RunSpec):
    from . import data, locality

    n = spec.offset + spec.n_edits
    reqs = locality.load(spec.benchmark, n=n) if spec.benchmark in locality.SETS else data.load(spec.benchmark, n=n)
    reqs = reqs[spec.offset:]
    if len(reqs) < spec.n_edits:
        raise ConfigError(f"n_edits={spec.n_edits} but {spec.benchmark} has only {len(reqs)} requests after offset {spec.offset}")
    return reqs


# ------------------------------------------------------------------------------------ store
def git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def check_writable(folder: Path) -> None:
    """Fail before any work when results cannot be written (and leave nothing behind)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise WorkbenchError(f"cannot write results to {folder}: {e.strerror}. Set $WORKBENCH_RESULTS to a "
                             "writable folder.") from None


def _clear_leftovers(folder: Path) -> None:
    """Remove what a killed earlier attempt at `folder` left beside it (``.<name>.*`` work folders)."""
    for stale in folder.parent.glob(f".{folder.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)


def _write_atomically(folder: Path, files: dict[str, str | bytes]) -> None:
    """Write `files` (text or bytes) into a temporary sibling of `folder`, then rename it into place."""
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, text in files.items():
        (tmp / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    if folder.exists():  # an unfinished earlier attempt (no metrics.json): replace it
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _json(obj) -> str:
    return json.dumps(_plain(obj), indent=1, sort_keys=True, default=str)


def run_folder(spec: RunSpec, experiment: str) -> Path:
    """Where `spec`'s run lives in the store (finished when it holds ``metrics.json``)."""
    return results_root() / experiment / spec.hash()


def _points(grid: dict[str, list] | None) -> list[dict]:
    """Every combination of a grid's values, one dict per point (``[{}]`` for no grid)."""
    grid = grid or {}
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]


def execute(spec: RunSpec, experiment: str, progress: bool = False) -> dict:
    """Run `spec` (or read it back if it already finished) and return its metrics."""
    from .evaluate import evaluate, pre_edit, protocols_for, save_report, summarize, versions
    from .train import edit

    folder = run_folder(spec, experiment)
    if (folder / "metrics.json").exists():
        return json.loads((folder / "metrics.json").read_text())
    check_writable(folder.parent)
    _clear_leftovers(folder)
    same = next(iter(sorted(results_root().glob(f"*/{spec.hash()}/metrics.json"))), None)
    if same is not None:  # the identical run finished under another experiment: share it, don't redo it
        _write_atomically(folder, {p.name: p.read_bytes() for p in same.parent.iterdir() if p.is_file()})
        return json.loads((folder / "metrics.json").read_text())
    cfg = spec.run_config()
    model, tok = model_for(cfg)
    reqs = requests_for(spec)
    ecfg = spec.eval_config()
    pre = pre_edit(model, tok, reqs, ecfg) if "loc" in ecfg.splits and any(r.locality for r in reqs) else None
    timings, steps, n_trainable, truncated = [], 0, 0, 0
    if spec.protocol == "batch":
        result = edit(model, tok, reqs, cfg, progress=progress)
        try:
            report = evaluate(model, tok, reqs, ecfg, pre=pre)
        finally:
            result.revert()
        results = [result]
    else:
        tables, results = [], []
        for r in tqdm(reqs, desc="single edits", disable=not progress, leave=False):
            res = edit(model, tok, [r], cfg, progress=False)
            try:
                tables.append(evaluate(model, tok, [r], ecfg.replace(capability=()), pre=pre).per_probe)
            finally:
                res.revert()
            results.append(res)
        report = evaluate(model, tok, reqs[:0], ecfg.replace(splits=()), pre=pre)  # provenance only
        report.per_probe = pd.concat(tables, ignore_index=True)
        report.summary = summarize(report.per_probe, protocols_for(ecfg))
    for res in results:
        timings.append(res.timings["total_s"])
        steps += res.steps
        truncated += res.n_truncated
        n_trainable = res.n_trainable
    metrics = {**report.scores(), "edit_s": sum(timings), "s_per_edit": sum(timings) / len(reqs), "steps": steps,
               "n_trainable": n_trainable, "n_truncated": truncated, "n_edits": len(reqs)}
    tmp_report = folder.with_name(f".{folder.name}.report{os.getpid()}")
    save_report(report, tmp_report)
    files = {p.name: p.read_text() for p in tmp_report.iterdir()}
    shutil.rmtree(tmp_report)
    files.update({"spec.json": _json(spec.to_dict()), "env.json": _json({"versions": versions(), "git_sha": git_sha(),
                                                                          "config_hash": spec.run_config().hash()}),
                  "metrics.json": _json(metrics)})
    _write_atomically(folder, files)
    return _plain(metrics)


def seeded(points: list[dict], seeds, base: RunSpec) -> list[dict]:
    """Every point once per seed. Seed s trains with ``seed=s`` (shuffle order, adapter init and
    dropout) on its own block of requests, ``offset = base.offset + s * base.n_edits``: a
    single-example edit is deterministic, so replicates must differ in their data to vary at all."""
    return [{**p, "seed": s, "offset": base.offset + s * base.n_edits} for p in points for s in seeds]


def sweep(base: RunSpec, grid: dict[str, list] | list[dict] | None = None, experiment: str = "sweep",
          progress: bool = True, seeds=None, only_finished: bool = False) -> pd.DataFrame:
    """Run every combination of `grid` over `base`, cached in ``results/<experiment>/``.

    `grid` maps spec or EditConfig fields (or ``preset``) to values:
    ``sweep(spec, {"layers": [[10], [20]], "lr": [1e-3, 5e-3]}, "layer_lr")`` runs 4 specs; a list
    of dicts gives the points themselves (``[{"schedule": "depth_first", "batch_size": 1}, ...]``).
    ``seeds=[0, 1, 2]`` replicates every point (see `seeded`; `over_seeds` gives means and CIs).
    ``only_finished=True`` runs nothing and returns the points already in the store (to look at a
    grid that another process is still filling, or to report one that was cut short).
    Returns one row per run with its point's values and metrics (see `load`).
    """
    points = grid if isinstance(grid, list) else _points(grid)
    if seeds is not None:
        points = seeded(points, seeds, base)
    specs = [base.replace(**p) for p in points]
    rows = []
    for point, spec in tqdm(list(zip(points, specs)), desc=experiment, disable=not progress):
        folder = run_folder(spec, experiment)
        if only_finished and not (folder / "metrics.json").exists():
            continue
        metrics = execute(spec, experiment)
        rows.append({**{k: _plain(v) for k, v in point.items()}, **metrics, "hash": folder.name})
    return pd.DataFrame(rows)


def over_seeds(df: pd.DataFrame, by: str | list[str], metrics: list[str], level: float = 0.95) -> pd.DataFrame:
    """Mean of each metric over the seeds of every value of `by` (a column or a list of columns),
    with ``<metric>.ci``: the half-width of the two-sided Student-t interval at `level` (NaN with one
    seed). Rows keep the first-seen order of `by`'s values."""
    from scipy import stats

    by = [by] if isinstance(by, str) else list(by)
    keys = df[by].apply(lambda row: json.dumps(_plain(list(row))), axis=1)  # lists (layers) are not hashable
    rows = []
    for key in dict.fromkeys(keys):
        part = df[keys == key]
        row = {**{b: part[b].iloc[0] for b in by}, "n_seeds": len(part)}
        for m in metrics:
            if m not in part or part[m].isna().all():
                continue
            values = part[m].dropna().astype(float)
            row[m] = values.mean()
            n = len(values)
            row[f"{m}.ci"] = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def load(experiment: str) -> pd.DataFrame:
    """Every finished run of `experiment` as one DataFrame: spec fields, EditConfig fields, metrics."""
    rows = []
    for folder in sorted((results_root() / experiment).glob("*/metrics.json")):
        spec = json.loads((folder.parent / "spec.json").read_text())
        edit = spec.pop("edit")
        rows.append({**edit, **spec, **json.loads(folder.read_text()), "hash": folder.parent.name})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------ notebook records
def _plain(value):
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def record(metrics: dict) -> None:
    """Display `metrics` (a dict of JSON-able values) so that `read()` finds them in the notebook."""
    from IPython.display import display

    metrics = _plain(metrics)
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


# ------------------------------------------------------------------------ notebook sweeps
def sweep_notebook(notebook, grid: dict[str, list], experiment: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Execute `notebook` with papermill once per grid point into ``results/sweeps/<experiment>/<hash>/``
    (the executed notebook, its figures, ``params.json`` and the recorded ``metrics.json``).

    A point whose folder has ``metrics.json`` is skipped, so rerunning after an interruption
    completes the grid with no duplicate and no missing result. (The runs the notebook itself makes
    are cached as usual in ``results/<its experiment>/``, shared between grid points.)
    """
    from .cli import run_notebook

    notebook = Path(notebook)
    experiment = experiment or notebook.stem
    root = results_root() / "sweeps" / experiment
    check_writable(root)
    rows = []
    for params in tqdm(_points(grid), desc=notebook.name, disable=not progress):
        key = hashlib.sha256(json.dumps(_plain(params), sort_keys=True).encode()).hexdigest()[:12]
        folder = root / key
        if not (folder / "metrics.json").exists():
            _clear_leftovers(folder)
            work = root / f".{key}.work{os.getpid()}"
            executed = run_notebook(notebook, params, work)
            files = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}  # figures include PNGs
            files.update({"params.json": _json(params), "metrics.json": _json(read(executed))})
            _write_atomically(folder, files)
            shutil.rmtree(work, ignore_errors=True)
        rows.append({**_plain(params), **json.loads((folder / "metrics.json").read_text()), "hash": key})
    return pd.DataFrame(rows)


def flatten(df: pd.DataFrame, axis: str, metrics: list[str]) -> dict:
    """``{"<axis value>/<metric>": value}`` for `record()` (list values joined by "+")."""
    out = {}
    for row in df.to_dict("records"):  # keeps each column's dtype (iterrows would make ints floats)
        key = row[axis]
        key = "+".join(map(str, key)) if isinstance(key, (list, tuple)) else str(key)
        out.update({f"{key}/{m}": row[m] for m in metrics if m in row and row[m] is not None})
    return _plain(out)


# -------------------------------------------------------------------------------- lifelong
def by_chunk(report, seen: list, chunk_size: int, protocols: dict[str, str]) -> dict[str, float]:
    """Edit scores of each chunk so far (``chunk1.ori.exact_match``, ...): whether the old edits
    survive the new ones (LocFT-BF's Figure 3 view), which the overall mean over all edits hides.
    Each chunk's probes are summarised as a report of their own (`evaluate.summarize`); locality
    probes are left out, as they belong to no edit."""
    from .evaluate import EvalReport, summarize

    table = report.per_probe[report.per_probe.split != "loc"]
    out = {}
    for k, start in enumerate(range(0, len(seen), chunk_size), 1):
        rows = table[table.request.isin({r.id for r in seen[start:start + chunk_size]})]
        out.update({f"chunk{k}.{key}": v for key, v in EvalReport(rows, summarize(rows, protocols)).scores().items()})
    return out


def lifelong(spec: RunSpec, chunk_size: int, experiment: str, progress: bool = True, seeds=None) -> pd.DataFrame:
    """Sequential editing in chunks: edits arrive `chunk_size` at a time; each chunk is edited on top
    of the previous ones (with `spec.edit`'s schedule), then *every* edit so far is scored, and the
    capability probes run. One row per stage; stored (and skipped when finished) like any run.

    This is LocFT-BF's sequential setting ("edits buffered into small batches") and the only honest
    reading of "sequential": scores are taken after the last edit of each stage, never right after
    the edit they belong to. ``seeds=[0, 1, 2]`` runs one sequence per seed, each on its own block
    of requests (as `seeded`), and adds a ``seed`` column.
    """
    if seeds is not None:
        parts = [lifelong(spec.replace(**point), chunk_size, experiment, progress).assign(seed=point["seed"])
                 for point in seeded([{}], seeds, spec)]
        return pd.concat(parts, ignore_index=True)
    from .evaluate import evaluate, pre_edit, protocols_for, versions
    from .train import edit

    folder = results_root() / experiment / f"{spec.hash()}-chunk{chunk_size}"
    if (folder / "metrics.json").exists():
        return pd.read_json(folder / "stages.jsonl", lines=True)
    check_writable(folder.parent)
    cfg = spec.run_config()
    model, tok = model_for(cfg)
    reqs = requests_for(spec)
    ecfg = spec.eval_config()
    pre = pre_edit(model, tok, reqs, ecfg) if "loc" in ecfg.splits and any(r.locality for r in reqs) else None
    before = evaluate(model, tok, reqs[:0], ecfg.replace(splits=()), pre=pre).capability
    stages = [{"n_edits": 0, **{f"capability.{k}": v for k, v in before.items()}}]
    done = []
    try:
        for start in tqdm(range(0, len(reqs), chunk_size), desc=experiment, disable=not progress):
            chunk = reqs[start:start + chunk_size]
            done.append(edit(model, tok, chunk, cfg, progress=False))
            seen = reqs[:start + len(chunk)]
            report = evaluate(model, tok, seen, ecfg, pre=pre)
            stages.append({"n_edits": len(seen), **report.scores(),
                           **by_chunk(report, seen, chunk_size, protocols_for(ecfg)),
                           "edit_s": sum(r.timings["total_s"] for r in done), "steps": sum(r.steps for r in done)})
    finally:
        for r in reversed(done):  # undo in reverse order: each revert restores the state before its edit
            r.revert()
    df = pd.DataFrame(stages)
    _write_atomically(folder, {"stages.jsonl": df.to_json(orient="records", lines=True),
                               "spec.json": _json({**spec.to_dict(), "chunk_size": chunk_size}),
                               "env.json": _json({"versions": versions(), "git_sha": git_sha()}),
                               "metrics.json": _json(stages[-1])})
    return df
