"""Thread policy: a fair share of the cores for each workbench process that is computing.

torch's CPU kernels use one thread per core by default, and their OpenMP threads spin while they
wait. Two processes that each take every core (two notebooks, two sweeps) therefore fight for them:
measured on this project's 2-core machine, batch-1 edits took 377-543 s beside another job against
23 s alone. The policy: a process that starts an edit, a run, generation or scoring (each entry
point is decorated with ``@threads.active()``) registers itself as *active* in
``$WORKBENCH_CACHE/active/`` (one file per host and pid, removed when the work ends; entries of dead
pids are ignored) and sets ``torch.set_num_threads(cores // active processes)``, at least 1. Alone,
a process keeps every core, as before; with company, each takes its share, looked at again every
`RECHECK_S` seconds during a long edit (`rebalance`, called by the training loop), so a process
that started alone gives cores back when another one starts, and takes them back when it ends.

``WORKBENCH_THREADS=4`` fixes the count; ``WORKBENCH_THREADS=off`` leaves torch alone. Local sweep
workers (`runs.executors`) get their share from the start (``OMP_NUM_THREADS``).
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import torch

from . import files

_depth = 0  # nested active() blocks (a run that calls wb.edit) register once
_last_check = 0.0
RECHECK_S = 5.0  # how often a long edit looks again at who else is computing


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def share(n: int) -> int:
    """Threads for one of `n` processes computing side by side."""
    return max(1, cores() // max(1, n))


def _setting() -> str:
    return os.environ.get("WORKBENCH_THREADS", "").strip().lower()


def _policy_off(setting: str) -> bool:
    return setting in ("off", "none", "0", "false")


def _folder() -> Path:
    return files.cache_root() / "active"


def alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def active_processes() -> int:
    """Workbench processes of this host computing now (this one included if it is)."""
    host, n = socket.gethostname(), 0
    for entry in _folder().glob(f"{host}-*"):
        try:
            pid = int(entry.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if alive(pid):
            n += 1
        else:
            entry.unlink(missing_ok=True)  # a process that died without cleaning up
    return n


@contextlib.contextmanager
def active():
    """Register this process as computing for the block and take its share of the cores. Also a decorator
    (contextlib's): ``@threads.active()`` on generation, scoring and evaluation, so a notebook's direct
    `wb.generate` takes its share (or the fixed ``WORKBENCH_THREADS``) like an edit does. Without it such
    calls ran at torch's default of every core: beside a one-thread campaign, 2 greedy answers of 40
    tokens from SmolLM2 took 76 s against 1.9 s alone."""
    global _depth, _last_check
    setting = _setting()
    if _policy_off(setting):
        yield
        return
    entry = _folder() / f"{socket.gethostname()}-{os.getpid()}"
    _depth += 1
    try:
        if _depth == 1:
            try:
                entry.parent.mkdir(parents=True, exist_ok=True)
                entry.touch()
            except OSError:  # a read-only cache: no registry, no policy
                pass
            torch.set_num_threads(int(setting) if setting.isdigit() else share(max(1, active_processes())))
            _last_check = time.monotonic()
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            entry.unlink(missing_ok=True)


def rebalance() -> None:
    """Inside `active`: at most every `RECHECK_S`, take the share of the cores that is fair now."""
    global _last_check
    setting = _setting()
    if _depth == 0 or _policy_off(setting) or setting.isdigit() or time.monotonic() - _last_check < RECHECK_S:
        return
    _last_check = time.monotonic()
    n = share(max(1, active_processes()))
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
