"""Recording what a notebook measured, so papermill runs and tests can read it back.

`record(metrics)` displays the metrics under a workbench MIME type; the executed notebook then
carries them in its last cell's outputs, and `read(notebook)` collects them (recommenders'
``store_metadata`` / ``read_notebook`` idea in a few lines, since scrapbook broke with pandas 2).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

MIME = "application/x.workbench.record+json"


def _plain(value):
    if hasattr(value, "item"):  # numpy / torch scalars
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
