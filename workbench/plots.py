"""Plotly figures for the notebooks. Each reads results (a DataFrame from `wb.runs`, or an
`EditResult`) and never trains. A ``<metric>.ci`` column (from `wb.runs.over_seeds`) becomes error
bars. `save()` writes a self-contained HTML file beside the results and, where kaleido and a
Chrome/Chromium are installed (``pip install -e .[report]``), a static PNG for documents.

`show(fig)` is how notebooks display a figure: one output carrying the interactive plotly figure
(JupyterLab, VS Code) *and* a static PNG of it as an ``<img>`` in its ``text/html`` (nbconvert, GitHub,
any viewer without plotly's JavaScript), with a one-line text note. The PNG goes in the HTML, not in
an ``image/png`` entry: JupyterLab's plotly renderer shows a bundle's ``image/png`` *instead of* the
interactive figure, while it takes precedence over ``text/html`` (tests/test_lab.py). Where kaleido
or a browser is missing the PNG is left out and the note says why; nothing raises, so a notebook
re-executed on a bare machine still runs. ``WORKBENCH_STATIC_FIGURES=0`` leaves the PNG out on purpose
(`make test` sets it for nbval, which compares no figure: starting a browser per notebook cost ~5 s)."""
from __future__ import annotations

import base64
import html
import logging
import warnings
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from .files import flag

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


def y_title(metrics: list[str]) -> str:
    """The value axis of a chart of `metrics`: the scorer's name when they share one, else what the
    numbers are (the legend names each metric)."""
    scorers = {m.rsplit(".", 1)[-1] for m in metrics}
    if len(scorers) == 1:
        return f"{label(scorers.pop())} (1 = the reference)" if not metrics[0].startswith("capability") else label(metrics[0])
    return "score against the reference (metric in the legend; 1 = identical)"


def bars(df: pd.DataFrame, x: str, metrics: list[str], title: str = "", baseline: dict | None = None,
         chance: float | None = None) -> go.Figure:
    """Grouped bars: one group per value of `x`, one bar per metric (missing metrics are skipped).
    Negative values (a cosine can be) are drawn below zero, never clipped. `baseline`: the unedited
    model's value per metric, drawn as its own group first; `chance`: a dashed line at that value."""
    fig = go.Figure()
    groups = _axis(df[x])
    for m in metrics:
        if m in df:
            ys = df[m].tolist()
            xs = groups
            if baseline and m in baseline:
                xs, ys = ["unedited model", *groups], [baseline[m], *ys]
            fig.add_bar(x=xs, y=ys, name=label(m), text=[None if v is None else round(v, 2) for v in ys],
                        textposition="inside", insidetextanchor="start", textangle=0,
                        error_y=_error(df, m) if not (baseline and m in baseline) else None)
    values = [v for t in fig.data for v in t.y if v is not None and v == v]
    low = min([0.0, *values])
    fig.update_layout(barmode="group", title=title, xaxis_title=x.replace("_", " "), yaxis_title=y_title(metrics),
                      yaxis_range=[low - 0.05 if low < 0 else 0, 1.1], template="plotly_white", height=420)
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dash", line_color="#777777", annotation_text=f"chance ({chance:g})")
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
    fig.update_layout(title=title, xaxis_title=x.replace("_", " "), yaxis_title=y_title(metrics), template="plotly_white", height=400,
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


_STATIC: dict = {"error": None, "server": False}  # why PNGs cannot be made here (found once), and kaleido's server


def png(fig: go.Figure, width: int | None = None, height: int | None = None, scale: float = 1.0) -> bytes | None:
    """`fig` as PNG bytes, or None (the reason in ``static_error()``) where kaleido or a Chrome/Chromium
    is missing. The first call starts kaleido's browser once per process (about 4 s); later figures
    take a fraction of a second. A failure is remembered, so a bare machine pays for it once."""
    if not flag("WORKBENCH_STATIC_FIGURES", True) or _STATIC["error"] is not None:
        return None
    try:
        import kaleido  # optional: the `test` and `report` extras
    except ImportError:
        _STATIC["error"] = "kaleido is not installed (pip install -e .[report])"
        return None
    width = width or fig.layout.width or 900
    height = height or fig.layout.height or 400
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plotly warns that the server ignores per-call browser options
            if not _STATIC["server"]:  # the first figure without the server: a missing browser raises here
                image = fig.to_image(format="png", width=width, height=height, scale=scale)
                kaleido.start_sync_server(silence_warnings=True)  # later figures reuse one browser
                _STATIC["server"] = True
                return image
            if not _server_alive():  # its thread died (the browser crashed): a call would wait forever
                kaleido.stop_sync_server(silence_warnings=True)
                _STATIC["server"] = False
                return png(fig, width, height, scale)
            return fig.to_image(format="png", width=width, height=height, scale=scale)
    except Exception as e:  # no browser, or it failed: say so once, keep the interactive figure
        _STATIC["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        logging.getLogger("workbench").warning("no static images: %s", _STATIC["error"])
        return None


def _server_alive() -> bool:
    from kaleido._sync_server import GlobalKaleidoServer  # kaleido 1.x's singleton

    server = GlobalKaleidoServer()
    return server.is_running() and server._thread.is_alive()


def static_error() -> str | None:
    """Why `png` returns None on this machine (None while it works or has not been tried)."""
    if not flag("WORKBENCH_STATIC_FIGURES", True):  # `make test`'s nbval: it compares no figure output
        return "static figures are turned off here (WORKBENCH_STATIC_FIGURES=0)"
    return _STATIC["error"]


def _title(fig: go.Figure) -> str:
    return fig.layout.title.text or "figure"


SMOKE_NOTE = "smoke run: a pipeline check on the tiny random model, not a measurement"


def show(fig: go.Figure, out_dir=None, name: str | None = None, smoke: bool = False) -> None:
    """Display `fig` as one output with the interactive figure and its static PNG (see the module
    docstring); with `out_dir` and `name`, also `save` it there. `smoke`: the figure shows a smoke
    run's numbers, and its title says so. The text note names the figure and says whether the PNG
    is there, so a reader of the raw notebook knows what each output is."""
    from IPython.display import display

    if smoke:
        fig = go.Figure(fig).update_layout(title_text=f"{_title(fig)}<br><sup>{SMOKE_NOTE}</sup>")
    if out_dir is not None and name is not None:
        save(fig, out_dir, name)
    bundle = dict(pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict()))
    image = png(fig)
    if image is not None:
        data = base64.b64encode(image).decode()
        bundle["text/html"] = f'<img src="data:image/png;base64,{data}" alt="{html.escape(_title(fig))}"/>'
        bundle["text/plain"] = f"[figure: {_title(fig)}] (interactive in Jupyter; static PNG beside it)"
    else:
        bundle["text/plain"] = (f"[figure: {_title(fig)}] (interactive in Jupyter only: no static PNG on this machine, "
                                f"{static_error()}; kaleido needs Chrome or Chromium, e.g. apt install chromium)")
    display(bundle, raw=True)


def save(fig: go.Figure, out_dir, name: str) -> Path:
    """Write `fig` as a self-contained HTML file (viewable offline) and, when kaleido can render
    (it needs a Chrome or Chromium), as ``<name>.png``. Returns the HTML path."""
    path = Path(out_dir) / f"{name}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    image = png(fig, width=900, scale=2)
    if image is not None:
        path.with_suffix(".png").write_bytes(image)
    return path
