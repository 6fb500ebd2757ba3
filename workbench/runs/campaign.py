"""The campaign: execute, into the tracked store, every run the claims file's entries still lack.

`run` turns each claim and calibration (`claimsfile.py`) into executor tasks (`tasks`: single runs
through `sweep.execute`, sequences through `sweep.lifelong`) and hands them to an executor
(`executors.py`); the calibrations a claim names run first, and an arm that waits for a calibration
gets its spec once the calibration's grid is finished. Any number of campaigns can run at once, on
any machines sharing the store: runs are locked (`locks.py`), finished ones are read back.
`same_computation` refuses to add runs that would compute in another dtype than an entry's stored
ones.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from ..errors import ConfigError
from . import cost, executors
from .claimsfile import CLAIMS, STORE, Calibration, Runs, computed, read, table
from .executors import Task
from .locks import STALE_S


def tasks(item: Runs, root: Path = STORE, chosen: dict | None = None, arms: list[str] | None = None) -> list[Task]:
    """A claim's or calibration's runs as executor tasks (`executors.Task`), seed-major, so that a
    campaign cut short leaves every arm with the same seeds; sequences resume from their
    checkpoints. Runs waiting for a calibration are left out; `arms` (labels): only those arms' runs."""
    from .sweep import execute, lifelong

    out = []
    runs = sorted(item.runs(chosen), key=lambda r: item.seeds.index(r[1]))  # stable: arms in order within a seed
    for label, seed, spec in runs:
        if spec is None or (arms is not None and label not in arms):
            continue
        chunk = item.sequence(spec)
        fn = partial(execute, spec, item.experiment) if not chunk else \
            partial(lifelong, spec, chunk, item.experiment, False, score_every=item.score_every if item.chunk_size
                    else spec.score_every)
        out.append(Task(item.folder(root, spec), fn, spec.run_config().model_name, f"{item.name} {label} seed {seed}"))
    return out


def run(names: list[str] | None = None, executor: str | None = None, claims_path=CLAIMS, progress: bool = True,
        root: Path = STORE, stale_s: float = STALE_S, arms: list[str] | None = None) -> None:
    """Execute every run the named claims and calibrations (default: all) still lack, into the
    tracked store, with `executor` (``serial``, ``local:N``, ``submitit``: see `executors`); the
    calibrations a claim names run first. Any number of these can run at once, on any machines
    sharing the store: runs are locked, finished ones are read back.

    Two passes: the first runs, entry by entry, what no other campaign holds; the second waits for
    (or takes over, once stale: `stale_s`) the runs others held, and then runs the arms that waited
    for a calibration another campaign was finishing. So a campaign never idles on one entry's run
    that another campaign holds while a later entry has free runs. `arms` (labels): run only those
    arms of the named claims (``report --run loss_scope --arms unedited``), with the seeds the seed rule
    adds for them; calibrations run whole. Each run's price (`cost.plan`, from the store as the campaign
    starts) is written to its experiment's ``prices.log`` before it runs (`cost.record`)."""
    claims_file = read(claims_path)
    items = {c.name: c for c in [*claims_file.calibrations, *claims_file.claims]}
    unknown = sorted(set(names or []) - set(items))
    if unknown:
        raise ConfigError.bad_choice("claim", unknown[0], list(items))
    wanted = [items[n] for n in names] if names else list(items.values())
    if arms:  # a label no named claim has would run nothing, silently
        labels = {lab for c in wanted if not isinstance(c, Calibration) for lab in c.labels(claims_file.chosen(root))}
        if set(arms) - labels:
            raise ConfigError.bad_choice("arm", sorted(set(arms) - labels)[0], sorted(labels))
    needed = {p["calibrated"] for c in wanted for p in c.points if "calibrated" in p}
    wanted = [c for c in claims_file.calibrations if c.name in needed and c not in wanted] + wanted
    os.environ["WORKBENCH_RESULTS"] = str(root)  # the report reads store/; spawned workers inherit it
    for item in wanted:
        same_computation(item, root, claims_file.chosen(root), claims_path)
    wanted.sort(key=lambda c: not isinstance(c, Calibration))  # stable: calibrations first, else as named
    prices = cost.plan(claims_file, root, [c.name for c in wanted])  # every owed run priced before any runs

    def execute(todo: list[Task], desc: str, wait: bool) -> None:
        cost.record(prices[prices["folder"].isin({str(t.folder) for t in todo if not t.done})], root)
        executors.run(todo, executor, progress=progress, desc=desc, wait=wait, stale_s=stale_s)

    for wait in (False, True):
        for item in wanted:
            only = arms if arms and not isinstance(item, Calibration) else None
            execute(tasks(item, root, claims_file.chosen(root), only), item.name, wait)
            while getattr(item, "seeds_max", None):  # the seed rule: then the seeds it asks for (its judged arms)
                due = seeds_due(item, root, claims_file.chosen(root))
                if due == item.seeds:
                    break
                item = item.with_seeds(due)
                execute(tasks(item, root, claims_file.chosen(root), only), item.name, wait)


def seeds_due(claim, root: Path, chosen: dict) -> list[int]:
    """The seeds the sequential seed rule asks of `claim` now (`claimsfile.seeds_due`)."""
    from .claimsfile import seeds_due as due

    return due(claim, table(claim.with_seeds(claim.ceiling()), root, chosen, rule=False))


def same_computation(item: Runs, root: Path, chosen: dict, claims_path) -> None:
    """Refuse to add runs to a claim whose stored runs computed in another dtype than this machine
    would: a spec with ``dtype="auto"`` is fp32 on the CPU and bf16 on a GPU, the same folder for
    another computation, and a verdict pairs seeds as if they were alike."""
    from ..models import resolved_dtype

    cfg = item.base.run_config()
    here = str(resolved_dtype(cfg)).removeprefix("torch.")
    df = table(item, root, chosen)
    stored = sorted({computed(f)["dtype"] for f in df["folder"]} - {None}) if len(df) else []
    if stored and stored != [here]:
        raise ConfigError(f"{claims_path}: {item.name}: its stored runs computed in {', '.join(stored)}, and on "
                          f"this machine dtype={cfg.dtype!r} is {here}: the same runs would compute another way. "
                          f"Run it where that dtype is {stored[0]}, or pin `dtype` in the entry's base (the stored "
                          f"runs keep theirs: a pinned dtype is another spec, in new folders)")
