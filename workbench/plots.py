"""Plotly figures for the notebooks. Each reads results (a DataFrame from `wb.runs`, or an
`EditResult`) and never trains. A ``<metric>.ci`` column (from `wb.runs.over_seeds`) becomes error
bars. `save()` writes a self-contained HTML file beside the results and, where kaleido and a
Chrome/Chromium are installed (``pip install -e .[report]``), a static PNG for documents."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

NAMES = {"ori": "Ori", "para": "Para", "loc": "Loc", "sub": "Sub", "rougeL_f1": "ROUGE-L F1 (ours)",
         "bertscore_f1": "BERTScore F1 (ours)", "sentence_cosine": "BERT Score (cosine)", "rougeL_recall": "ROUGE-L (recall)",
         "rouge1_recall": "ROUGE-1 (recall)", "rouge2_recall": "ROUGE-2 (recall)", "exact_match": "exact match",
         "token_acc": "token acc.", "capability": "capability:", "mmlu_acc": "MMLU acc."}


def label(metric: str) -> str:
    """``"para.rougeL_f1"`` -> ``"Para ROUGE-L F1"``."""
    return " ".join(NAMES.get(part, part) for part in metric.split("."))


def _error(df: pd.DataFrame, metric: str) -> dict | None:
    """Plotly error bars from ``<metric>.ci`` when there is one (none with a single seed)."""
    ci = df.get(f"{metric}.ci")
    if ci is None or ci.isna().all():
        return None
    return {"type": "data", "array": ci.fillna(0).tolist(), "visible": True}


def _axis(values) -> list[str]:
    return [", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) for v in values]


def bars(df: pd.DataFrame, x: str, metrics: list[str], title: str = "") -> go.Figure:
    """Grouped bars: one group per value of `x`, one bar per metric (missing metrics are skipped)."""
    fig = go.Figure()
    for m in metrics:
        if m in df:
            fig.add_bar(x=_axis(df[x]), y=df[m], name=label(m), text=df[m].round(2), textposition="inside",
                        insidetextanchor="start", textangle=0, error_y=_error(df, m))  # labels clear of the bars
    fig.update_layout(barmode="group", title=title, xaxis_title=x, yaxis_title="score", yaxis_range=[0, 1.1],
                      template="plotly_white", height=400)
    if len(fig.data) > 10:  # the template's 10 colours would repeat: two metrics of one group alike
        from plotly.colors import qualitative
        fig.update_layout(colorway=qualitative.Dark24)
    return fig


def lines(df: pd.DataFrame, x: str, metrics: list[str], title: str = "", log_x: bool = False,
          color: str | None = None) -> go.Figure:
    """One line per metric against a numeric `x` (layer, batch size, number of edits); with `color`,
    one line per metric and value of that column (e.g. one per method)."""
    df = df.assign(_x=[v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v for v in df[x]]).sort_values("_x")
    groups = [(None, df)] if color is None else list(df.groupby(color, sort=False))
    fig = go.Figure()
    for value, part in groups:
        for m in metrics:
            if m in part:
                name = label(m) if value is None else f"{value}: {label(m)}"
                fig.add_scatter(x=part["_x"], y=part[m], mode="lines+markers", name=name, error_y=_error(part, m))
    fig.update_layout(title=title, xaxis_title=x, yaxis_title="score", template="plotly_white", height=400,
                      xaxis_type="log" if log_x else None)
    return fig


def loss_curve(result, title: str | None = None) -> go.Figure:
    """Training loss per optimiser step of an `EditResult` (skipped batches marked)."""
    log = result.log
    fig = go.Figure()
    fig.add_scatter(x=log["step"], y=log["loss"], mode="lines+markers", name="batch loss")
    skipped = log[log["skipped"]]
    if len(skipped):
        fig.add_scatter(x=skipped["step"], y=skipped["loss"], mode="markers", name="skipped (below early_stop_loss)",
                        marker={"symbol": "x", "size": 9})
    cfg = result.cfg
    fig.update_layout(title=title or f"{cfg.schedule} edit of {len(result.request_ids)} request(s), "
                                     f"{cfg.components} @ layers {cfg.layers}",
                      xaxis_title="optimiser step", yaxis_title="loss (mean per example)", yaxis_type="log",
                      template="plotly_white", height=360)
    return fig


def save(fig: go.Figure, out_dir, name: str) -> Path:
    """Write `fig` as a self-contained HTML file (viewable offline) and, when kaleido can render
    (it needs a Chrome or Chromium), as ``<name>.png``. Returns the HTML path."""
    path = Path(out_dir) / f"{name}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    try:
        import kaleido  # noqa: F401  (optional: the `report` extra)
    except ImportError:
        return path
    try:
        fig.write_image(path.with_suffix(".png"), width=900, height=fig.layout.height or 400, scale=2)
    except Exception as e:  # no browser on this machine: the HTML is still there
        logging.getLogger("workbench").warning("no static image for %s: %s", name, e)
    return path
