"""Move runs stored under an earlier identity scheme to their names under this one.

Schema 3 (issue 43) names a run by the canonical JSON of its spec, the shared config fields and only its
method's parameters (`RunSpec.identity`). Runs stored before were named by a hash of *every* config field (all
51, another method's too) with hand-kept exceptions: fields added later were left out of ``spec.json`` at their
defaults (``ADDED_LATER``), speed-only fields left out of the hash (``NOT_HASHED``), and a sequence's chunk size
sat beside the spec, in its folder name. This module reads such a ``spec.json`` as it was meant (the omitted
fields at the values every run of that time computed with), checks that it hashes to its folder under the old
recipe, and writes it back self-describing under its new name:

    python -m workbench.runs.migrate store/            # what would move (nothing is written)
    python -m workbench.runs.migrate store/ --apply    # rename the folders, rewrite spec.json

It stops before writing anything if two runs would take one name or a folder does not match its old hash. A
run already in schema 3 is left alone, so running it twice moves nothing the second time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from ..config import SCHEMA, applicable
from ..errors import WorkbenchError
from ..files import write_text
from .spec import RunSpec
from .store import to_json

# What a config field left out of an old spec.json meant: the value every run stored before the field existed
# computed with (config.py's ADDED_LATER until schema 3).
LEGACY_EDIT = {"skip_converged": False, "length_buckets": False, "prefix_cache_dtype": "auto", "parallel_edits": 1,
               "value_batch": 16, "target_eot": True, "v_stop_loss": 5e-2, "key_mean": "flat",
               "preserve_set": "mmlu_fixed", "decay_norms": True}
LEGACY_SPEC = {"eval_chat_template": None, "exclude": None}  # runs/spec.py's ADDED_LATER until schema 3
LEGACY_NOT_HASHED = ("parallel_edits", "value_batch")


def legacy_hash(stored: dict) -> str:
    """The name an old ``spec.json`` gave its run (before its chunk-size suffix, for a sequence)."""
    d = {k: v for k, v in stored.items() if k not in ("chunk_size", "score_every")}
    d["edit"] = {k: v for k, v in stored["edit"].items() if k not in LEGACY_NOT_HASHED}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def legacy_name(stored: dict) -> str:
    every = stored.get("score_every", 1)
    return legacy_hash(stored) + (f"-chunk{stored['chunk_size']}" if "chunk_size" in stored else "") \
        + (f"-every{every}" if every > 1 else "")


def upgrade(stored: dict) -> RunSpec:
    """An old ``spec.json`` as the spec it meant: omitted fields at their legacy values, the config's fields
    routed to the shared part, the method's parameters and the speed settings, and every other method's
    parameters (never read by this run) dropped."""
    edit = {**LEGACY_EDIT, **stored["edit"]}
    spec = {**LEGACY_SPEC, **{k: v for k, v in stored.items() if k != "edit"}}
    return RunSpec.from_dict({**spec, "edit": applicable(edit["method"], edit)})


def is_current(stored: dict) -> bool:
    return "params" in stored.get("edit", {})


def plan(root: Path) -> list[tuple[Path, Path, RunSpec]]:
    """(old folder, new folder, spec) for every stored run under `root` not yet in this schema. Raises,
    naming the folders, when an old folder does not match its old hash or two runs would share a name."""
    moves, problems, taken = [], [], {}
    for spec_file in sorted(Path(root).glob("*/*/spec.json")):
        folder = spec_file.parent
        stored = json.loads(spec_file.read_text())
        if is_current(stored):
            spec = RunSpec.from_dict(stored)
            taken[folder.parent / spec.hash()] = folder
            continue
        if legacy_name(stored) != folder.name:
            problems.append(f"{folder}: its spec.json hashes to {legacy_name(stored)} under the old recipe")
            continue
        spec = upgrade(stored)
        new = folder.parent / spec.hash()
        if new in taken:
            problems.append(f"{folder} and {taken[new]} would both become {new.name}")
        taken[new] = folder
        moves.append((folder, new, spec))
    if problems:
        raise WorkbenchError("cannot migrate; nothing was written:\n  " + "\n  ".join(problems))
    return moves


def migrate(root: Path, apply: bool = False) -> list[tuple[Path, Path, RunSpec]]:
    """Rename every old run under `root` to its schema-3 name and rewrite its spec.json (with `apply`)."""
    moves = plan(root)
    if apply:
        for old, new, spec in moves:
            write_text(old / "spec.json", to_json(spec.to_dict()))
            old.rename(new)
    return moves


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.runs.migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a results store (store/, results/)")
    parser.add_argument("--apply", action="store_true", help="rename and rewrite (default: print the plan)")
    args = parser.parse_args(argv)
    moves = migrate(args.root, args.apply)
    for old, new, _ in moves:
        print(f"{old.relative_to(args.root)} -> {new.name}")
    print(f"{len(moves)} run(s) {'moved' if args.apply else 'to move'} to schema {SCHEMA}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
