"""The results store: one folder per run, written atomically, read back by spec hash.

Each run is stored in ``results/<experiment>/<spec hash>/`` with ``spec.json`` (the resolved config),
``env.json`` (package versions, git sha), ``per_probe.jsonl``, ``summary.csv`` and ``metrics.json``.
The folder is written under a temporary name and renamed when complete, so a killed run leaves
nothing that looks finished; a folder with ``metrics.json`` is a finished run and is skipped, and an
identical spec (same hash) finished under another experiment is copied instead of re-run.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pandas as pd

from ..files import PROJECT_ROOT, atomic
from ..errors import WorkbenchError
from .spec import RunSpec


def results_root() -> Path:
    """``$WORKBENCH_RESULTS`` or the project's ``results/``."""
    return Path(os.environ.get("WORKBENCH_RESULTS", PROJECT_ROOT / "results"))


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The commit of the code this process runs, read once, the first time a run asks (``runs``
    asks at import): HEAD moving later, while a long worker goes on with the code it loaded, does
    not change it. ``+dirty`` when the package or the presets differ from that commit."""
    sha = _git("rev-parse", "HEAD") or None
    if sha and _git("status", "--porcelain", "--untracked-files=no", "--", "workbench", "configs"):
        sha += "+dirty"
    return sha


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


def edit_checkpoint(folder: Path) -> Path:
    """Where a run's long edit keeps its epoch checkpoint (`methods.ft.EpochCheckpoint`) while it runs."""
    return folder.with_name(f".{folder.name}.edit.pt")


def clear_leftovers(folder: Path) -> None:
    """Remove what a killed earlier attempt at `folder` left beside it (``.<name>.*`` work folders;
    not the lock the caller holds, nor the failure record, which `runs.locks` manages, nor the
    epoch checkpoint the run resumes from)."""
    for stale in folder.parent.glob(f".{folder.name}.*"):
        if not stale.name.endswith((".claim", ".failed.json", ".edit.pt")):
            shutil.rmtree(stale, ignore_errors=True)


def write_atomically(folder: Path, files: dict[str, str | bytes]) -> None:
    """Write `files` (text or bytes) into a temporary sibling of `folder`, then rename it into place (an
    unfinished earlier attempt there, without metrics.json, is replaced)."""
    with atomic(folder) as tmp:
        tmp.mkdir(parents=True)
        for name, text in files.items():
            (tmp / name).write_bytes(text if isinstance(text, bytes) else text.encode())


def to_json(obj) -> str:
    return json.dumps(plain(obj), indent=1, sort_keys=True, default=str)


def run_folder(spec: RunSpec, experiment: str) -> Path:
    """Where `spec`'s run lives in the store (finished when it holds ``metrics.json``)."""
    return results_root() / experiment / spec.hash()


def load(experiment: str) -> pd.DataFrame:
    """Every finished run of `experiment` as one DataFrame: spec fields, EditConfig fields, metrics."""
    rows = []
    for folder in sorted((results_root() / experiment).glob("*/metrics.json")):
        spec = json.loads((folder.parent / "spec.json").read_text())
        rows.append({**flat_edit(spec.pop("edit")), **spec, **json.loads(folder.read_text()), "hash": folder.parent.name})
    return pd.DataFrame(rows)


def flat_edit(edit: dict) -> dict:
    """A stored config (`EditConfig.to_dict()`) with its method's parameters and speed settings as columns."""
    return {**{k: v for k, v in edit.items() if k not in ("params", "speed")}, **edit.get("params", {}),
            **edit.get("speed", {})}


def plain(value):
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
