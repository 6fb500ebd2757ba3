"""A stored run in EasyEdit's result layout, for researchers whose tables and scripts read it.

EasyEdit's ``BaseEditor.edit`` returns one record per request: ``case_id``, ``requested_rewrite``
(``prompt``, ``target_new``, ``rephrase_prompt``...), ``time``, and ``pre`` / ``post`` dicts whose
``rewrite_acc`` and ``rephrase_acc`` are teacher-forced token accuracies of the target (a list, one
value per prompt). Our ``token_acc`` is that quantity (`scoring.token_accuracy`), so it fills those
two keys; nothing else is renamed into an EasyEdit key whose definition differs. Every metric we
stored goes under ``"workbench"`` with its split (``ori`` / ``para`` / ``loc`` / ``sub``), and the
record says which protocol produced it. ``pre`` holds the same keys from an unedited run of the same
requests when one is given, else it is empty.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .. import files
from ..errors import WorkbenchError
from .store import plain

_TEXT = {"request", "split", "kind", "prompt", "reference", "generation"}


def _per_probe(folder: Path) -> pd.DataFrame:
    path = Path(folder) / "per_probe.jsonl"
    if not path.exists():
        raise WorkbenchError(f"{folder}: no per_probe.jsonl; give a finished run folder (results/<experiment>/<hash>)")
    return pd.read_json(path, lines=True, dtype={"request": str})


def _scores(rows: pd.DataFrame) -> tuple[dict, dict]:
    """(EasyEdit's keys, ours) for one request's probes."""
    easy, ours = {}, {}
    for split, part in rows.groupby("split", sort=False):
        metrics = [c for c in part.columns if c not in _TEXT and part[c].notna().any()]
        ours[split] = {m: [plain(v) for v in part[m]] for m in metrics}
        if "token_acc" in part and split in ("ori", "para"):
            easy["rewrite_acc" if split == "ori" else "rephrase_acc"] = [plain(v) for v in part["token_acc"]]
    return easy, ours


def export_easyedit(folder, path, pre_folder=None) -> Path:
    """Write the run in `folder` as EasyEdit's per-request JSON list to `path` (see the module docstring);
    `pre_folder`: a run of the same requests on the unedited model, for ``pre``."""
    folder, path = Path(folder), Path(path)
    table = _per_probe(folder)
    spec = json.loads((folder / "spec.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    pre = _per_probe(pre_folder) if pre_folder is not None else None
    records = []
    for i, (request, rows) in enumerate(table.groupby("request", sort=False)):
        ori, para = rows[rows.split == "ori"], rows[rows.split == "para"]
        post_easy, post_ours = _scores(rows)
        pre_easy, pre_ours = _scores(pre[pre.request == request]) if pre is not None else ({}, {})
        records.append({
            "case_id": i,
            "requested_rewrite": {"case_id": request, "prompt": ori.prompt.iloc[0] if len(ori) else None,
                                  "target_new": ori.reference.iloc[0] if len(ori) else None,
                                  "rephrase_prompt": para.prompt.iloc[0] if len(para) else None},
            "time": metrics.get("s_per_edit"),
            "pre": {**pre_easy, "workbench": pre_ours} if pre is not None else {},
            "post": {**post_easy, "locality": {}, "portability": {}, "workbench": post_ours},
        })
    header = {"workbench_run": str(folder), "benchmark": spec.get("benchmark"), "protocol": spec.get("protocol"),
              "method": spec.get("edit", {}).get("method"),
              "note": "rewrite_acc / rephrase_acc: teacher-forced token accuracy (EasyEdit's definition); "
                      "everything else is ours, under 'workbench', scored as the run's provenance.json says"}
    return files.write_text(path, json.dumps([{**r, "workbench_meta": header} for r in records], indent=1))
