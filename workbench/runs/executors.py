"""Executors: who runs the tasks of a grid, one process, N local workers, or a SLURM job array.

A *task* is one run of a grid: the store folder it finishes into (finished = ``metrics.json``) and a
picklable callable that produces it (`execute` of a `RunSpec`, or one notebook execution). Every
executor hands the same task list to workers that `walk` it: each task is locked before it runs
(`locks`), so any number of workers, started by any executor, in any number of processes or
machines sharing the store, execute each task once. Finished tasks are read back, never rerun.

* ``"serial"`` (the default): this process walks the grid.
* ``"local:N"``: N worker processes (spawn, so each starts a clean interpreter; no more than the runs
  left, none for a finished grid). On a GPU machine
  worker i sees only GPU ``i mod n_gpus`` (``CUDA_VISIBLE_DEVICES``, set before the worker's
  interpreter starts, hence before torch touches CUDA); on CPU the cores are split between the
  workers (`threads.share`). Tasks are ordered by model, so each worker loads a model once.
* ``"submitit"``: one SLURM job array through submitit's ``AutoExecutor``; each array job is a worker
  walking one chunk of the grid (tasks grouped by model), then the whole grid again, to pick up what
  failed or stalled elsewhere. Options: ``partition``, ``gpus`` (per job), ``cpus``, ``time_min``,
  ``parallelism`` (array tasks at once), ``jobs`` (array size), ``mem_gb``, ``cluster`` (``"local"``
  runs the jobs as local processes without SLURM, ``"debug"`` in this process: submitit's own
  executors, used by the tests), ``folder`` (submitit's logs; default ``<experiment>/.submitit``).

Each executed run adds a line to ``<experiment>/runs.log`` (time, host, pid, run). One progress bar covers the grid (finished / running / failed), read from the store. A task that
raises records its traceback beside its folder (`locks.record_failure`) and the walk goes on;
`run` raises `SweepError` at the end, naming every failed folder.
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from ..errors import ConfigError, WorkbenchError
from .. import threads
from . import locks


@dataclass(frozen=True)
class Task:
    folder: Path  # finished when it holds metrics.json
    fn: Callable[[], object]  # picklable (a module-level function or a functools.partial of one)
    group: str = ""  # tasks of one group (one model) go to one worker where possible
    label: str = ""  # for messages

    @property
    def done(self) -> bool:
        return (self.folder / "metrics.json").exists()


class SweepError(WorkbenchError):
    """Some runs of a sweep failed; their tracebacks are in the store beside their folders."""


def walk(tasks: list[Task], since: float, stale_s: float = locks.STALE_S, poll_s: float = 2.0,
         wait: bool = True) -> None:
    """Run every unfinished task this worker can lock; wait for those other workers hold; return
    when each task is finished or has failed since `since` (``wait=False``: after one pass, leaving
    the tasks others hold to them)."""
    pending = list(tasks)
    while pending:
        waiting = []
        for task in pending:
            if task.done or locks.failed_since(task.folder, since):
                continue
            lock = locks.try_lock(task.folder, stale_s)
            if lock is None:
                waiting.append(task)
                continue
            with lock:
                if task.done:  # the previous holder finished just before we locked it
                    continue
                try:
                    task.fn()
                except Exception as e:  # recorded, reported at the end; Ctrl-C still stops the worker
                    locks.record_failure(task.folder, {"task": task.label}, e)
                else:
                    locks.failure_path(task.folder).unlink(missing_ok=True)
                    _log(task.folder)
        pending = waiting if wait else []
        if pending:
            time.sleep(poll_s)


def _log(folder: Path) -> None:
    """One line per executed run in ``<experiment>/runs.log`` (which worker, when): the audit that
    each run executed once. Appends of one short line are atomic on POSIX."""
    with open(folder.parent / "runs.log", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {socket.gethostname()} {os.getpid()} {folder.name}\n")


def status(tasks: list[Task], since: float) -> dict:
    """Counts of finished / running (locked) / failed tasks, read from the store."""
    out = {"finished": 0, "running": 0, "failed": 0}
    for t in tasks:
        if t.done:
            out["finished"] += 1
        elif locks.failed_since(t.folder, since):
            out["failed"] += 1
        elif locks.lock_path(t.folder).exists():
            out["running"] += 1
    return out


def parse(executor: str | None) -> tuple[str, int]:
    """``"serial"``, ``"local:4"``, ``"submitit"`` -> (kind, workers)."""
    executor = executor or "serial"
    kind, _, n = executor.partition(":")
    if kind == "serial" and not n:
        return kind, 1
    if kind == "local" and n.isdigit() and int(n) >= 1:
        return kind, int(n)
    if kind == "submitit" and not n:
        return kind, 0
    raise ConfigError.bad_choice("executor", executor, ["serial", "local:N (N >= 1)", "submitit"])


def run(tasks: list[Task], executor: str | None = None, options: dict | None = None, progress: bool = True,
        desc: str = "sweep", stale_s: float = locks.STALE_S, wait: bool = True) -> None:
    """Finish every task with `executor` (see the module docstring); raise `SweepError` if any failed.
    ``wait=False`` (serial and local workers; submitit's jobs always help with the whole grid): run
    what no other worker holds and return, leaving the held tasks to their holders (a campaign of
    several grids passes over them all before it waits on any: `campaign.run`)."""
    kind, workers = parse(executor)
    tasks = sorted(tasks, key=lambda t: t.group)  # stable: the grid's order within a model
    since = time.time()
    for t in tasks:
        t.folder.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(tasks), desc=desc, disable=not progress) as bar:
        def show():
            s = status(tasks, since)
            bar.n = s["finished"]
            bar.set_postfix(running=s["running"], failed=s["failed"], refresh=True)

        if kind == "serial":
            for t in tasks:  # one pass, a task at a time so the bar moves; skip what others hold
                walk([t], since, stale_s, wait=False)
                show()
            if wait:
                walk(tasks, since, stale_s)  # then wait for (or take over) what other workers held
        else:
            if kind == "local":
                # spawned interpreters take seconds each to start: none for a finished grid, no more than runs left
                todo = [t for t in tasks if not t.done]
                handles = _start_local(todo, min(workers, len(todo)), since, stale_s, wait) if todo else []
            else:
                handles = _start_submitit(tasks, since, stale_s, dict(options or {}), desc)
            while not all(h.done() for h in handles):
                show()
                time.sleep(1.0)
            for h in handles:
                h.check()
        show()
    failed = [(t, locks.failed_since(t.folder, since)) for t in tasks if not t.done]
    if not wait:  # the tasks other workers still hold are theirs, not failures
        failed = [(t, f) for t, f in failed if f]
    if failed:
        lines = [f"  {locks.failure_path(t.folder)}: {(f or {}).get('error', 'not finished')}" for t, f in failed]
        raise SweepError(f"{len(failed)} of {len(tasks)} runs failed (tracebacks in the files):\n" + "\n".join(lines))


# ------------------------------------------------------------------------------- local workers
class _Process:
    def __init__(self, proc):
        self.proc = proc

    def done(self) -> bool:
        return not self.proc.is_alive()

    def check(self) -> None:
        self.proc.join()  # a worker that died (killed, OOM) leaves its lock to be taken over: not fatal


def _worker(tasks: list[Task], since: float, stale_s: float, n_threads: int | None, wait: bool = True) -> None:
    if n_threads:
        import torch

        torch.set_num_threads(n_threads)
    walk(tasks, since, stale_s, wait=wait)


def _gpus() -> list[str]:
    """GPU ids this process may hand out (its CUDA_VISIBLE_DEVICES, or every device torch sees)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _start_local(tasks: list[Task], n: int, since: float, stale_s: float, wait: bool = True) -> list[_Process]:
    ctx = multiprocessing.get_context("spawn")
    gpus = _gpus()
    n_threads = None if gpus else threads.share(n)
    handles = []
    for i in range(n):
        env = {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else {"OMP_NUM_THREADS": str(n_threads)}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # a spawned interpreter copies the environment as it starts
        try:
            proc = ctx.Process(target=_worker, args=(tasks, since, stale_s, n_threads, wait), daemon=False)
            proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        handles.append(_Process(proc))
    return handles


# ------------------------------------------------------------------------------------ submitit
class _Job:
    def __init__(self, job):
        self.job = job

    def done(self) -> bool:
        return self.job.done()

    def check(self) -> None:
        try:
            self.job.result()
        except Exception as e:  # the job itself died (not a run: runs record their own failures)
            print(f"submitit job {self.job.job_id} ended with {type(e).__name__}: {str(e)[:300]}")


def _job(chunk: list[Task], everything: list[Task], since: float, stale_s: float) -> None:
    walk(chunk, since, stale_s)
    walk(everything, since, stale_s)  # then help with (or wait for) the rest of the grid


def _start_submitit(tasks: list[Task], since: float, stale_s: float, opts: dict, desc: str) -> list[_Job]:
    import submitit

    valid = {"partition", "gpus", "cpus", "time_min", "parallelism", "jobs", "mem_gb", "cluster", "folder"}
    unknown = sorted(set(opts) - valid)
    if unknown:
        raise ConfigError(f"unknown submitit option(s) {unknown}; valid: {', '.join(sorted(valid))}")
    folder = opts.get("folder") or (tasks[0].folder.parent / ".submitit" if tasks else Path(".submitit"))
    ex = submitit.AutoExecutor(folder=str(folder), cluster=opts.get("cluster"))
    params = {"timeout_min": opts.get("time_min", 240), "name": desc}
    if opts.get("cluster") not in ("local", "debug"):
        params.update(slurm_partition=opts.get("partition"), gpus_per_node=opts.get("gpus", 1),
                      cpus_per_task=opts.get("cpus", 8), slurm_array_parallelism=opts.get("parallelism", 8),
                      mem_gb=opts.get("mem_gb", 64))
        params = {k: v for k, v in params.items() if v is not None}
    ex.update_parameters(**params)
    n_jobs = max(1, min(opts.get("jobs", opts.get("parallelism", 8)), len(tasks)))
    # contiguous chunks keep a model's tasks together
    size = -(-len(tasks) // n_jobs)
    chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)] or [[]]
    jobs = ex.map_array(_job, chunks, [tasks] * len(chunks), [since] * len(chunks), [stale_s] * len(chunks))
    return [_Job(j) for j in jobs]
