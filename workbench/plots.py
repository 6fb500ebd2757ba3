"""Plotly figures for notebooks. Each takes results (an `EditResult` or a DataFrame), never trains."""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go


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
    """Write `fig` as a self-contained HTML file (viewable offline) and return its path."""
    path = Path(out_dir) / f"{name}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
