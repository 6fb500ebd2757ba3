"""Run locks: many workers, one store, each run executed once.

Before a worker starts a run it locks it: it creates ``.<hash>.claim`` beside the run folder with an
exclusive create (``O_CREAT | O_EXCL``: on one machine and on NFS v3+ / Lustre / GPFS only one creator
wins). The file names the holder (host, pid, start time) and its mtime is the holder's heartbeat: a
thread touches it every `HEARTBEAT_S` while the run lasts. Another worker may take a lock over when

* its holder is on the same host and that pid is gone (a killed worker, found at once), or
* its heartbeat is older than ``stale_s`` (a worker on another host that died, or hung).

Taking over renames the stale file to a unique name first (``os.rename`` of one source succeeds
once), so two workers that both see a stale lock cannot both win. Finished runs are never locked:
``metrics.json`` is checked first, and again after the lock is won (the previous holder may have
finished in between). A run that raised leaves ``.<hash>.failed.json`` (the traceback) and its lock
is released; the sweep reports it and the next sweep retries it.

(A lock file keeps the name ``.claim`` on disk, which stores written before the rename hold; the
reproduction report's `Claim` is another thing: a paper's claim, `claimsfile.py`.)
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
import uuid
from pathlib import Path

from .. import files
from ..threads import alive

HEARTBEAT_S = 30.0
STALE_S = 600.0  # a lock whose heartbeat is older than this is free (HEARTBEAT_S x 20)


def lock_path(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.claim")


def failure_path(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.failed.json")


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": time.time()}


def read_lock(folder: Path) -> dict | None:
    """The holder of `folder`'s lock, with ``age_s`` (since its last heartbeat), or None."""
    path = lock_path(folder)
    try:
        info = json.loads(path.read_text() or "{}")
        info["age_s"] = time.time() - path.stat().st_mtime
    except (FileNotFoundError, json.JSONDecodeError):  # released, or being written this instant
        return None if not path.exists() else {"age_s": 0.0}
    return info


def is_stale(info: dict, stale_s: float) -> bool:
    if info.get("host") == socket.gethostname() and "pid" in info and not alive(info["pid"]):
        return True
    return info["age_s"] > stale_s


class RunLock:
    """A held lock: `release()` (or the context manager) ends it; a heartbeat thread keeps it fresh."""

    def __init__(self, path: Path, heartbeat_s: float):
        self.path, self._stop = path, threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # taken over after all (we were presumed dead): stop beating
                return

    def release(self) -> None:
        self._stop.set()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def try_lock(folder: Path, stale_s: float = STALE_S, heartbeat_s: float = HEARTBEAT_S) -> RunLock | None:
    """Lock `folder`'s run, or return None when a live worker holds it."""
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):  # a second try after taking a stale lock over
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = read_lock(folder)
            if info is None:
                continue  # released meanwhile: try again
            if not is_stale(info, stale_s):
                return None
            grave = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(path, grave)  # only one taker succeeds
            except FileNotFoundError:
                return None  # another worker took it over first
            grave.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_holder(), f)
        return RunLock(path, heartbeat_s)
    return None


def record_failure(folder: Path, spec: dict, error: BaseException) -> Path:
    """Write `error`'s traceback beside `folder` (atomically) and return the file."""
    return files.write_text(failure_path(folder), json.dumps(
        {**_holder(), "spec": spec, "error": f"{type(error).__name__}: {error}",
         "traceback": "".join(traceback.format_exception(error))}, indent=1, default=str))


def failed_since(folder: Path, since: float) -> dict | None:
    """The failure recorded for `folder` at or after time `since`, or None."""
    path = failure_path(folder)
    try:
        if path.stat().st_mtime >= since:
            return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    return None
