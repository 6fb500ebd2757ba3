"""The first edition of the reproduction report (``docs/REPRODUCTION-1.md``): one notebook run per claim.

``docs/reproduction.yaml`` names, per claim, a notebook and its parameters. `reproduce` executes each
with papermill (`notebooks.run_notebook`) into ``results/reproduction/<claim>/`` and copies what the
report cites into ``docs/reproduction/``: the executed notebook, its figure, its recorded metrics
and their Markdown table; `rewrite_tables` rewrites only the tables from the recorded metrics. A
claim whose model has random weights is refused: its numbers measure speed and memory, never
editing. (The second edition, rendered from the tracked store, is `report.py`.)
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..files import PROJECT_ROOT
from ..placement import is_random
from .notebooks import markdown_table, read, run_notebook
from .store import results_root

CONFIG = PROJECT_ROOT / "docs" / "reproduction.yaml"
DOCS = PROJECT_ROOT / "docs" / "reproduction"


def reproduce(config=CONFIG, claims: list[str] = (), docs: Path = DOCS, overrides: dict | None = None) -> None:
    """Execute each claim's notebook (default: all, in the file's order) with its parameters, and
    `overrides`, into ``results/reproduction/<claim>/`` and copy what the report cites into `docs`:
    ``<claim>.ipynb`` (executed, with its tables), ``<claim>.png`` (the figure), ``<claim>.json``
    (the recorded metrics) and ``<claim>.md`` (their table)."""
    import yaml

    docs = Path(docs)
    table = yaml.safe_load(Path(config).read_text())
    unknown = sorted(set(claims) - set(table))
    if unknown:
        raise SystemExit(f"{config}: no claim {unknown}; valid: {sorted(table)}")
    docs.mkdir(parents=True, exist_ok=True)
    for name in claims or list(table):
        entry = table[name]
        params = {**entry.get("params", {}), **(overrides or {})}
        if is_random(params.get("model_name", "")):
            raise SystemExit(f"{config}: claim {name!r} would run on {params.get('model_name', '')!r}, a shape with "
                             "random weights: its numbers measure speed and memory, never editing, and the report "
                             "refuses them")
        notebook = PROJECT_ROOT / entry["notebook"]
        out = results_root() / "reproduction" / name
        start = time.time()
        executed = run_notebook(notebook, params, out)
        shutil.copy(executed, docs / f"{name}.ipynb")
        for png in out.glob("*.png"):
            shutil.copy(png, docs / f"{name}.png")
        recorded = read(executed)
        (docs / f"{name}.json").write_text(json.dumps(recorded, indent=1, sort_keys=True))
        (docs / f"{name}.md").write_text(markdown_table(recorded))
        print(f"{name}: {notebook.name} in {time.time() - start:.0f} s -> {docs}/{name}.*", flush=True)


def rewrite_tables(docs: Path = DOCS) -> None:
    """Rewrite each ``<claim>.md`` in `docs` from its recorded ``<claim>.json``."""
    for recorded in sorted(Path(docs).glob("*.json")):
        recorded.with_suffix(".md").write_text(markdown_table(json.loads(recorded.read_text())))
