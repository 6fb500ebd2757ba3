"""Executing runs and sweeps: one run, a grid of runs, seeds, and lifelong (chunked sequential) editing.

`execute(spec, experiment)` runs one `RunSpec` by its protocol (`protocols`) and stores it (or reads it
back from the store); `sweep` runs every point of a grid over a base spec, optionally once per seed,
with any executor (`executors`); `lifelong` edits in chunks on top of each other and scores
everything after each chunk. Models are loaded once per process (`model_for`) and checked to be
unedited before every run.
"""
from __future__ import annotations

import itertools
import io
import json
import platform
import shutil
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import data, editing, locality, threads
from ..config import EditConfig
from ..errors import ConfigError
from ..evaluation import EvalReport, evaluate, pre_edit, protocols_for, report_files, summarize, versions
from ..methods.result import resume, snapshot
from ..metrics import scorer_versions
from ..models import fingerprint, input_device, load_for, model_dtype, revision
from ..placement import clock, is_random
from . import executors, protocols
from .executors import Task
from .spec import RunSpec
from .store import (check_writable, clear_leftovers, edit_checkpoint, git_sha, plain, results_root, run_folder,
                    to_json, write_atomically)


_MODELS: dict = {}
git_sha()  # the code's commit as this process loads it (store.git_sha)


def model_for(cfg: EditConfig):
    """The model of `cfg`, loaded once per process and checked to be unedited before every run."""
    key = (cfg.model_name, cfg.device, cfg.dtype)
    if key in _MODELS:
        model, tok, fp = _MODELS[key]
        if fingerprint(model) == fp:
            return model, tok
        # An edit was left in the model (a notebook cell that did not revert): never reuse it.
    model, tok = load_for(cfg)
    _MODELS[key] = (model, tok, fingerprint(model))
    return model, tok


def provenance(model, spec: RunSpec) -> dict:
    """What a run's numbers depend on beyond the config: the weights' revision, the benchmark file's
    sha256 (or the locality set's sources), and the scorer models' versions."""
    if spec.benchmark in locality.SETS:
        source = {b: data.registry()[b]["sha256"] for b in ("unkebench", "mquake-cf")}
    else:
        path = data.find(spec.benchmark)
        source = {spec.benchmark: data.sha256(path)}
    return {"model_revision": revision(model), "data_sha256": source, "scorers": scorer_versions(), **hardware(model)}


def hardware(model) -> dict:
    """Where a run computed: the device and dtype its config's ``"auto"`` resolved to on this machine
    (bf16 on a GPU, fp32 on the CPU: the same spec, another computation), and the chip's name."""
    device = input_device(model)
    if device.type == "cuda":  # TF32 matmuls (`models.load(tf32=...)`) change the numbers: recorded
        chip = f"{torch.cuda.get_device_name(device)}, tf32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}"
    else:
        lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
        chip = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                    platform.processor() or platform.machine())
        chip = f"{chip}, {torch.get_num_threads()} threads"
    return {"device": str(device), "dtype": str(model_dtype(model)).removeprefix("torch."), "chip": chip}


def requests_for(spec: RunSpec):
    """The requests `spec` edits: ``n_edits`` of its benchmark from ``offset`` on, after dropping those
    whose prompt occurs in ``spec.exclude`` (held apart)."""
    def read(name, n=None):
        return locality.load(name, n=n) if name in locality.SETS else data.load(name, n=n)

    def key(r):  # a prompt, case and spacing aside
        return " ".join(r.prompt.lower().split())

    n = spec.offset + spec.n_edits
    if spec.exclude:
        held = {key(r) for r in read(spec.exclude)}
        reqs = [r for r in read(spec.benchmark) if key(r) not in held][:n]
    else:
        reqs = read(spec.benchmark, n=n)
    reqs = reqs[spec.offset:]
    if len(reqs) < spec.n_edits:
        after = f" without those in {spec.exclude}" if spec.exclude else ""
        raise ConfigError(f"n_edits={spec.n_edits} but {spec.benchmark} has only {len(reqs)} requests after offset "
                          f"{spec.offset}{after}")
    return reqs


def grid_points(grid: dict[str, list] | None) -> list[dict]:
    """Every combination of a grid's values, one dict per point (``[{}]`` for no grid)."""
    grid = grid or {}
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]


def execute(spec: RunSpec, experiment: str, progress: bool = False) -> dict:
    """Run `spec` (or read it back if it already finished) and return its metrics."""
    if spec.chunk_size:  # its folder holds stages, not one run's metrics
        raise ConfigError(f"this spec is a sequence (chunk_size={spec.chunk_size}): run it with "
                          f"runs.lifelong(spec, {spec.chunk_size}, experiment)")
    with threads.active():
        return _execute(spec, experiment, progress)


def _execute(spec: RunSpec, experiment: str, progress: bool) -> dict:
    folder = run_folder(spec, experiment)
    if (folder / "metrics.json").exists():
        return json.loads((folder / "metrics.json").read_text())
    check_writable(folder.parent)
    clear_leftovers(folder)
    same = next(iter(sorted(results_root().glob(f"*/{spec.hash()}/metrics.json"))), None)
    if same is not None:  # the identical run finished under another experiment: share it, don't redo it
        write_atomically(folder, {p.name: p.read_bytes() for p in same.parent.iterdir() if p.is_file()})
        return json.loads((folder / "metrics.json").read_text())
    t0 = time.perf_counter()
    cfg = spec.run_config()
    model, tok = model_for(cfg)
    reqs = requests_for(spec)
    ecfg = spec.eval_config()
    pre = pre_edit(model, tok, reqs, ecfg)  # locality's reference, and each probe's answer before the edit
    if spec.protocol == "batch":
        # a long breadth-first edit keeps an epoch checkpoint beside its folder: a run killed by a
        # time limit resumes its edit from the last epoch (its seconds count across the attempts)
        long = cfg.method == "ft" and cfg.schedule == "breadth_first" and cfg.epochs > 1
        report, results = protocols.batch(model, tok, reqs, cfg, ecfg, pre, progress,
                                          checkpoint=edit_checkpoint(folder) if long else None)
    else:
        report, results = protocols.single(model, tok, reqs, cfg, ecfg, pre, progress)
    edit_s = sum(res.timings["total_s"] for res in results)
    metrics = {**report.scores(), "edit_s": edit_s, "s_per_edit": edit_s / len(reqs),
               "steps": sum(res.steps for res in results), "n_trainable": results[-1].n_trainable if results else 0,
               "n_truncated": sum(res.n_truncated for res in results), "n_edits": len(reqs),
               "run_s": clock() - t0}  # the whole run: loading excepted, scoring included
    if is_random(cfg.model_name):  # speed and memory only: the report refuses these (first_edition.reproduce)
        metrics["random_weights"] = True
    write_atomically(folder, {**report_files(report), "spec.json": to_json(spec.to_dict()),
                              "env.json": to_json({"versions": versions(), "git_sha": git_sha(),
                                                   "config_hash": cfg.hash(), **provenance(model, spec)}),
                              "metrics.json": to_json(metrics)})
    return plain(metrics)


def seeded(points: list[dict], seeds, base: RunSpec) -> list[dict]:
    """Every point once per seed. Seed s trains with ``seed=s`` (shuffle order, adapter init and
    dropout) on its own block of requests, ``offset = base.offset + s * base.n_edits``: a
    single-example edit is deterministic, so replicates must differ in their data to vary at all."""
    return [{**p, "seed": s, "offset": base.offset + s * base.n_edits} for p in points for s in seeds]


def sweep(base: RunSpec, grid: dict[str, list] | list[dict] | None = None, experiment: str = "sweep",
          progress: bool = True, seeds=None, only_finished: bool = False, executor: str | None = None,
          executor_options: dict | None = None) -> pd.DataFrame:
    """Run every combination of `grid` over `base`, cached in ``results/<experiment>/``.

    `grid` maps spec or EditConfig fields (or ``preset``) to values:
    ``sweep(spec, {"layers": [[10], [20]], "lr": [1e-3, 5e-3]}, "layer_lr")`` runs 4 specs; a list
    of dicts gives the points themselves (``[{"schedule": "depth_first", "batch_size": 1}, ...]``).
    ``seeds=[0, 1, 2]`` replicates every point (see `seeded`; `over_seeds` gives means and CIs).
    ``only_finished=True`` runs nothing and returns the points already in the store (to look at a
    grid that another process is still filling, or to report one that was cut short).

    ``executor``: ``"serial"`` (default, this process), ``"local:N"`` (N worker processes, a GPU or a
    share of the cores each) or ``"submitit"`` (a SLURM job array; `executor_options` as in
    `executors`). Any number of sweeps over the same store cooperate: each run is locked before it
    starts and executes once. A run that fails records its traceback beside its folder and the others
    go on; `executors.SweepError` is raised at the end, naming the failed folders.
    Returns one row per run with its point's values and metrics (see `load`).
    """
    points = grid if isinstance(grid, list) else grid_points(grid)
    if seeds is not None:
        points = seeded(points, seeds, base)
    specs = [base.replace(**p) for p in points]
    if not only_finished:
        check_writable(results_root() / experiment)
        tasks = [Task(run_folder(spec, experiment), partial(execute, spec, experiment), spec.run_config().model_name,
                      f"{experiment} {point}") for point, spec in zip(points, specs)]
        executors.run(tasks, executor, executor_options, progress, desc=experiment)
    rows = []
    for point, spec in zip(points, specs):
        folder = run_folder(spec, experiment)
        if not (folder / "metrics.json").exists():  # only_finished: not run yet
            continue
        metrics = json.loads((folder / "metrics.json").read_text())
        rows.append({**{k: plain(v) for k, v in point.items()}, **metrics, "hash": folder.name})
    return pd.DataFrame(rows)


def by_chunk(report, seen: list, chunk_size: int, protocols: dict[str, str]) -> dict[str, float]:
    """Edit scores of each chunk so far (``chunk1.ori.exact_match``, ...): whether the old edits
    survive the new ones (LocFT-BF's Figure 3 view), which the overall mean over all edits hides.
    Each chunk's probes are summarised as a report of their own (`evaluate.summarize`); locality
    probes are left out, as they belong to no edit."""
    table = report.per_probe[report.per_probe.split != "loc"]
    out = {}
    for k, start in enumerate(range(0, len(seen), chunk_size), 1):
        rows = table[table.request.isin({r.id for r in seen[start:start + chunk_size]})]
        out.update({f"chunk{k}.{key}": v for key, v in EvalReport(rows, summarize(rows, protocols)).scores().items()})
    return out


def sequence_name(spec: RunSpec, chunk_size: int, score_every: int = 1) -> str:
    """A sequence's folder name in its experiment: the hash of the spec with its chunk size and how
    often a stage is scored (`RunSpec.chunk_size`, `score_every`)."""
    return spec.replace(chunk_size=chunk_size, score_every=score_every).hash()


def lifelong(spec: RunSpec, chunk_size: int, experiment: str, progress: bool = True, seeds=None,
             score_every: int = 1) -> pd.DataFrame:
    """Sequential editing in chunks: edits arrive `chunk_size` at a time; each chunk is edited on top
    of the previous ones (with `spec.edit`'s schedule), then *every* edit so far is scored, and the
    capability probes run. One row per stage; stored (and skipped when finished) like any run.

    ``score_every=k`` scores (and probes capability) only after every k-th chunk and the last: the
    stages between record their edits, steps and seconds only. Scoring all edits so far after each
    chunk grows with the square of the sequence's length, and a 1,000-edit sequence spends most of
    its time there; scoring reads the model and never changes it, so the last stage's numbers are
    those of a sequence scored at every chunk (a test).

    This is LocFT-BF's sequential setting ("edits buffered into small batches") and the only honest
    reading of "sequential": scores are taken after the last edit of each stage, never right after
    the edit they belong to. ``seeds=[0, 1, 2]`` runs one sequence per seed, each on its own block
    of requests (as `seeded`), and adds a ``seed`` column.

    A sequence outlives its process: after every stage but the last, the touched weights, the state
    the method carries on the model (`methods.result.snapshot`) and the stages so far are written to
    ``<run folder>.partial/``; a later call with the same spec resumes after the last stored stage
    and gives the stages an unbroken run gives (a test). Sequences that hold an adapter are not
    checkpointed. ``env.json`` lists the git sha of every process that worked on the run.
    """
    if seeds is not None:
        parts = [lifelong(spec.replace(**point), chunk_size, experiment, progress, score_every=score_every)
                 .assign(seed=point["seed"]) for point in seeded([{}], seeds, spec)]
        return pd.concat(parts, ignore_index=True)
    if score_every < 1:
        raise ConfigError(f"score_every={score_every}: give a number of chunks, 1 or more (1: score after every chunk)")
    folder = results_root() / experiment / sequence_name(spec, chunk_size, score_every)
    if (folder / "metrics.json").exists():
        return pd.read_json(folder / "stages.jsonl", lines=True).assign(hash=folder.name)
    check_writable(folder.parent)
    cfg = spec.run_config()
    model, tok = model_for(cfg)
    reqs = requests_for(spec)
    ecfg = spec.eval_config()
    pre = pre_edit(model, tok, reqs, ecfg)  # locality's reference, and each probe's answer before the edit
    unfinished = folder.with_name(folder.name + ".partial")
    spec_json = to_json(spec.replace(chunk_size=chunk_size, score_every=score_every).to_dict())
    done, shas, t0 = [], [git_sha()], time.perf_counter()
    state = _read_partial(unfinished, spec_json)
    if state is None:
        before = evaluate(model, tok, reqs[:0], ecfg.replace(splits=()), pre=pre).capability
        stages = [{"n_edits": 0, **{f"capability.{k}": v for k, v in before.items()}}]
        edit_s, steps, spent = 0.0, 0, 0.0
    else:  # resume: the sequence's weights and carried state go into the unedited model
        stages, shas = state["stages"], state["git_shas"] + shas
        edit_s, steps, spent = (stages[-1][k] for k in ("edit_s", "steps", "run_s"))
        done.append(resume(model, cfg, state["snapshot"], [r.id for r in reqs[:stages[-1]["n_edits"]]]))
    first = stages[-1]["n_edits"]
    report = None
    try:
        for start in tqdm(range(first, len(reqs), chunk_size), desc=experiment, disable=not progress):
            chunk = reqs[start:start + chunk_size]
            done.append(editing.edit(model, tok, chunk, cfg, progress=False, sequential=True))  # lifelong: on purpose
            edit_s, steps = edit_s + done[-1].timings["total_s"], steps + done[-1].steps
            seen = reqs[:start + len(chunk)]
            scores = {}  # none for the stages a `score_every` sequence skips
            if len(seen) == len(reqs) or (start // chunk_size + 1) % score_every == 0:
                report = evaluate(model, tok, seen, ecfg, pre=pre)
                scores = {**report.scores(), **by_chunk(report, seen, chunk_size, protocols_for(ecfg))}
            stages.append({"n_edits": len(seen), **scores,
                           "edit_s": edit_s, "steps": steps, "run_s": spent + time.perf_counter() - t0})
            snap = snapshot(model, done) if len(seen) < len(reqs) else None
            if snap is not None:
                _write_partial(unfinished, spec_json, snap, stages, shas)
    finally:
        for r in reversed(done):  # undo in reverse order: each revert restores the state before its edit
            r.revert()
    df = pd.DataFrame(stages)
    last = report.per_probe if report is not None else pd.DataFrame()  # every probe after the last stage (the explorer's)
    write_atomically(folder, {"stages.jsonl": df.to_json(orient="records", lines=True),
                               "per_probe.jsonl": last.to_json(orient="records", lines=True, force_ascii=False),
                               "spec.json": spec_json,
                               "env.json": to_json({"versions": versions(), "git_sha": shas[-1],
                                                    **({"git_shas": shas} if len(set(shas)) > 1 else {}),
                                                    **hardware(model)}),  # the process that finished it
                               "metrics.json": to_json(stages[-1])})
    shutil.rmtree(unfinished, ignore_errors=True)
    return df.assign(hash=folder.name)


def _write_partial(unfinished, spec_json: str, snap: dict, stages: list, shas: list) -> None:
    """The checkpoint after a stage: the snapshot, the stages so far (the last one holds the running
    edit_s, steps and run_s) and the git sha of each process that worked on the sequence."""
    buf = io.BytesIO()
    torch.save(snap, buf)
    write_atomically(unfinished, {"spec.json": spec_json, "snapshot.pt": buf.getvalue(),
                               # not to_json: its sorted keys would reorder the stages' columns
                               "progress.json": json.dumps(plain({"stages": stages, "git_shas": shas}), indent=1)})


def _read_partial(unfinished, spec_json: str) -> dict | None:
    """The checkpoint of an unfinished sequence, or None (none, or one written for another spec)."""
    if not (unfinished / "progress.json").exists() or (unfinished / "spec.json").read_text() != spec_json:
        return None
    state = json.loads((unfinished / "progress.json").read_text())
    state["snapshot"] = torch.load(unfinished / "snapshot.pt", weights_only=True)
    return state
