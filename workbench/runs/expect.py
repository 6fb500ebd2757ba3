"""How long a sweep will take before it starts: expected minutes of a grid, priced from the store.

Each run of the grid (the same points and seeds `sweep` would run) is priced, best first, by:

1. nothing, when ``results/<experiment>/<hash>/metrics.json`` exists (`sweep` reads it back);
2. the wall time (``run_s``) of the identical run in the tracked ``store/`` (same spec hash);
3. its number of edits × the median wall seconds per edit (``run_s / n_edits``: editing, scoring and
   probes) of the stored runs of the same model, method, protocol and kind of text (long-form
   UnKEBench/AKEW paragraphs or short answers), the grouping the report prices its owed runs by;
   where no stored run shares the protocol, the other protocol's (the basis line names it);
4. unpriced, when no stored run shares its model and setting (the tiny random model of smoke runs
   is never stored: its runs take seconds).

The stored runs were measured on the machines their ``env.json`` names (mostly a 2-core CPU, fp32):
on another machine the minutes scale, but their ratios between grids hold.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..files import PROJECT_ROOT
from .spec import LONG_FORM, RunSpec
from .store import run_folder
from .sweep import grid_points, seeded

STORE = PROJECT_ROOT / "store"


def _kind(spec: RunSpec) -> tuple:
    cfg = spec.run_config()
    return cfg.model_name, cfg.method, spec.protocol, spec.benchmark in LONG_FORM


def _stored_kind(spec: dict) -> tuple:
    """`_kind` of a stored spec.json, read as plain JSON (a spec stored before a config change still prices)."""
    edit = spec.get("edit", {})
    return (edit.get("model_name", "smollm2-135m-instruct"), edit.get("method", "ft"), spec.get("protocol"),
            spec.get("benchmark") in LONG_FORM)


def _stored(root: Path) -> tuple[dict[str, float], dict[tuple, list[float]], dict[tuple, str]]:
    """(spec hash -> run seconds, kind -> [seconds per edit], kind -> where one was computed) of the store."""
    by_hash, per_edit, where = {}, {}, {}
    for m in sorted(Path(root).glob("*/*/metrics.json")):
        try:
            metrics = json.loads(m.read_text())
            spec = json.loads((m.parent / "spec.json").read_text())
        except (OSError, ValueError):  # a partial or foreign folder: it prices nothing
            continue
        run_s, n = metrics.get("run_s"), metrics.get("n_edits") or spec.get("n_edits")
        if not run_s or not n:
            continue
        kind = _stored_kind(spec)
        by_hash[m.parent.name] = float(run_s)
        per_edit.setdefault(kind, []).append(float(run_s) / n)
        env = m.parent / "env.json"
        if env.exists() and kind not in where:
            e = json.loads(env.read_text())
            where[kind] = e.get("device") or ("cpu" if e.get("versions", {}).get("torch", "").endswith("+cpu") else "?")
    return by_hash, per_edit, where


def _other_protocol(kind: tuple, per_edit: dict) -> tuple | None:
    """The stored kind of the same model, method and text under the other protocol (single edits cost
    more per edit than a batch: an upper bound for a batch run, a floor the other way), if any."""
    model, method, protocol, long_form = kind
    other = next((k for k in per_edit if k[:2] == (model, method) and k[3] == long_form and k[2] != protocol), None)
    return other


@dataclass
class Expected:
    """Expected cost of a grid: `minutes` over the runs that could be priced, and how each was priced."""

    minutes: float
    runs: int
    cached: int = 0  # already in results/: read back, free
    exact: int = 0  # priced by the identical stored run
    by_kind: int = 0  # priced by stored runs of the same model, method, protocol and text
    unpriced: int = 0
    basis: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{n} {what}" for n, what in ((self.cached, "already in results/ (free)"),
                                              (self.exact, "timed by the identical stored run"),
                                              (self.by_kind, "at the stored runs' median s/edit"),
                                              (self.unpriced, "unpriced (no stored run of that model and setting)"))
                 if n]
        head = f"Expected: ~{self.minutes:.1f} min for {self.runs} run(s)"
        if self.unpriced == self.runs:
            head = f"Expected: {self.runs} run(s), none priced by the store"
        return head + (f" ({'; '.join(parts)})" if parts else "") + "".join(f"\n  {b}" for b in self.basis)


def expect(base: RunSpec, grid: dict | list | None = None, seeds=None, experiment: str | None = None,
           root: Path = STORE) -> Expected:
    """Expected minutes of ``sweep(base, grid, experiment, seeds=seeds)`` (see the module docstring)."""
    points = grid if isinstance(grid, list) else grid_points(grid)
    if seeds is not None:
        points = seeded(points, seeds, base)
    specs = [base.replace(**p) for p in points]
    by_hash, per_edit, where = _stored(root)
    out, seconds, used = Expected(0.0, len(specs)), 0.0, {}
    for spec in specs:
        if experiment and (run_folder(spec, experiment) / "metrics.json").exists():
            out.cached += 1
        elif spec.hash() in by_hash:
            out.exact += 1
            seconds += by_hash[spec.hash()]
        elif (kind := _kind(spec)) in per_edit or (kind := _other_protocol(kind, per_edit)) is not None:
            out.by_kind += 1
            rate = statistics.median(per_edit[kind])
            seconds += rate * spec.n_edits
            used[kind] = rate
        else:
            out.unpriced += 1
    out.minutes = seconds / 60
    for (model, method, protocol, long_form), rate in used.items():
        out.basis.append(f"{model} {method} {protocol} on {'long-form' if long_form else 'short'} answers: "
                         f"{rate:.1f} s per edit, scoring included (median of {len(per_edit[(model, method, protocol, long_form)])}"
                         f" stored runs, computed on {where.get((model, method, protocol, long_form), '?')})")
    if out.unpriced and base.run_config().model_name.startswith("tiny-random"):
        out.basis.append("the tiny random model (smoke): seconds per run, never stored")
    return out

