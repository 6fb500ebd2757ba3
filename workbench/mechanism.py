"""Pictures of what each ablation axis changes inside the model, drawn from the real tokenizer and
model (plotly). The notebooks show one per axis before their sweep, so a student sees the mechanism
and not only the scores:

* `loss_tokens`: one request's tokens, coloured by whether they carry loss, for each loss scope
  (the scopes are label masks over the same tokens, `prompts.encode`);
* `template_tokens`: the same request rendered with and without the chat template, token by token,
  the end-of-turn token that closes the target marked;
* `decoder_stack`: every decoder layer x component, the selected matrices highlighted with their
  parameter counts (what `components` and `layers` choose);
* `layer_effect`: after one edit, per layer, the norm of the weight update and how far the edited
  request's hidden state (at its last prompt token) moved: where an edit acts and how it spreads;
* `schedule`: from `EditResult.log`, which request was trained at which step (depth-first trains
  one to convergence, then the next; breadth-first visits all every epoch), and the loss over steps;
* `chunks`: sequential editing's per-chunk scores after every stage (`runs.lifelong`'s
  ``chunk{k}.<metric>`` columns): whether early edits survive later ones.

Each function only reads (a forward pass without gradients at most); none trains.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from . import prompts
from .components import COMPONENTS, family_table, num_layers, resolve
from .config import LOSS_SCOPES
from .errors import ConfigError
from .models import input_device, spec
from .plots import label

_OFF, _ON, _EOT = "#e8e8e8", "#2a7ab9", "#d6604d"
_BAG, _SRC = "#f4a261", "#b35806"  # prompt_last: tokens scored from the last prompt position, and that position


def _pieces(tok, ids: list[int]) -> list[str]:
    """Readable token strings: the tokenizer's own pieces with its space and newline marks shown."""
    return [tok.convert_ids_to_tokens(i).replace("Ġ", "·").replace("Ċ", "\\n").replace("▁", "·") for i in ids]


def _window(pieces: list[str], colours: list[str], n_prompt: int, before: int = 10, head: int = 24, tail: int = 3,
            hover: list[str] | None = None):
    """The part of a long request worth looking at: the last `before` prompt tokens, the first
    `head` target tokens and the last `tail` (the closing token); cut spans shown as one "…" box.
    Returns (pieces, colours, hover texts) of the kept boxes."""
    hover = hover or [f"{i}: {p}" for i, p in enumerate(pieces)]
    keep = sorted({*range(max(0, n_prompt - before), n_prompt), *range(n_prompt, min(len(pieces), n_prompt + head)),
                   *range(max(n_prompt, len(pieces) - tail), len(pieces))})
    out_p, out_c, out_h, last = [], [], [], -1
    for i in keep:
        if i != last + 1:
            out_p.append("…")
            out_c.append("white")
            out_h.append("tokens left out")
        out_p.append(pieces[i])
        out_c.append(colours[i])
        out_h.append(hover[i])
        last = i
    return out_p, out_c, out_h


def _token_rows(rows: list[tuple[str, list[str], list[str], list[str]]], title: str) -> go.Figure:
    """One row of boxes per (name, tokens, colours, hover texts), a token's text in its box."""
    fig = go.Figure()
    for y, (name, pieces, colours, hover) in enumerate(rows):
        fig.add_trace(go.Bar(x=[1] * len(pieces), y=[name] * len(pieces), base=list(range(len(pieces))),
                             orientation="h", marker={"color": colours, "line": {"color": "white", "width": 1}},
                             text=pieces, textposition="inside", insidetextanchor="middle", name=name,
                             hovertext=hover, hoverinfo="text", showlegend=False))
    width = max(len(r[1]) for r in rows)
    fig.update_layout(title=title, barmode="overlay", height=110 + 60 * len(rows), width=min(1250, max(700, 30 * width)),
                      xaxis={"title": "token (the end of the prompt, the answer; … marks tokens left out)", "range": [0, width],
                             "showticklabels": False}, yaxis={"autorange": "reversed"},
                      uniformtext={"minsize": 8, "mode": "show"}, margin={"l": 110, "r": 20, "t": 50, "b": 40})
    return fig


def loss_tokens(tok, prompt: str, target: str, scopes=LOSS_SCOPES, chat_template: bool = True) -> go.Figure:
    """The tokens of one request, one row per loss scope, coloured by the position whose next-token
    distribution scores each labelled token: blue where a token is scored from the position just
    before it (teacher forcing: `target`, `first_token`, `prompt_target`), orange where it is scored
    from the last prompt position (`prompt_last`, FT-L's bag of tokens; that one position dark
    orange), grey for context. Hover a box for the position that scores it."""
    rows = []
    for scope in scopes:
        e = prompts.encode(tok, prompt, target, scope, chat_template)
        pieces = _pieces(tok, e.input_ids)
        src = [None if lab == prompts.IGNORE else (e.n_prompt - 1 if e.bag else i - 1) for i, lab in enumerate(e.labels)]
        sources = {j for j in src if j is not None}
        colours = [(_BAG if e.bag else _ON) if j is not None else (_SRC if e.bag and i in sources else _OFF)
                   for i, j in enumerate(src)]
        hover = [f"{i}: {p}, scored from position {j} ({pieces[j]})" if j is not None else
                 (f"{i}: {p}, the position that scores every labelled token" if e.bag and i in sources else f"{i}: {p}, context")
                 for i, (p, j) in enumerate(zip(pieces, src))]
        rows.append((scope, *_window(pieces, colours, e.n_prompt, hover=hover)))
    return _token_rows(rows, "Which tokens carry loss, and from which position each is scored<br><sup>blue: from the "
                             "position just before it; orange: all from the last prompt token (dark orange); grey: context</sup>")


def template_tokens(tok, prompt: str, target: str) -> go.Figure:
    """The request with and without the chat template: the prompt grey, the target blue, the
    end-of-turn token that closes the target red."""
    eot = spec(tok).eot_id
    rows = []
    for on in (True, False):
        e = prompts.encode(tok, prompt, target, "target", on)
        colours = [_EOT if i >= e.n_prompt and t == eot else (_ON if i >= e.n_prompt else _OFF)
                   for i, t in enumerate(e.input_ids)]
        rows.append(("chat template" if on else "plain text", *_window(_pieces(tok, e.input_ids), colours, e.n_prompt)))
    return _token_rows(rows, "The same request rendered two ways (grey: prompt, blue: target, red: end of turn)")


def decoder_stack(model, components, layers) -> go.Figure:
    """Layers x components: the selected matrices coloured, each cell's parameter count on hover."""
    table = family_table(model)
    names = [c for c in COMPONENTS if c in table and c not in ("mlp", "attn", "block")]
    n = num_layers(model)
    selected = {(t.layer, t.component) for t in resolve(model, components, layers)}
    expand = {"mlp": [c for c in ("gate", "up", "down") if c in names], "attn": [c for c in ("q", "k", "v", "o") if c in names],
              "block": names}
    for layer, comp in list(selected):
        for c in expand.get(comp, []):
            selected.add((layer, c))
    counts = [[_count(model, c, layer) for c in names] for layer in range(n)]
    z = [[1 if (layer, c) in selected else 0 for c in names] for layer in range(n)]
    chosen = sum(counts[layer][names.index(c)] for layer, c in selected if c in names)
    fig = go.Figure(go.Heatmap(z=z, x=names, y=list(range(n)), colorscale=[[0, _OFF], [1, _ON]], showscale=False,
                               xgap=2, ygap=2, customdata=counts,
                               hovertemplate="layer %{y} %{x}: %{customdata:,} parameters<extra></extra>"))
    total = sum(p.numel() for p in model.parameters())
    fig.update_layout(title=f"Trained: {chosen:,} of {total:,} parameters ({100 * chosen / total:.2f} %)",
                      xaxis_title="component", yaxis_title="decoder layer", height=max(300, 18 * n + 120), width=520)
    return fig


def _count(model, component: str, layer: int) -> int:
    (t,) = resolve(model, (component,), (layer,))
    module = model.get_submodule(t.name)
    n = sum(p.numel() for p in module.parameters())
    return n // 3 if t.fused_slice is not None else n  # GPT-2's fused c_attn: one third each


@torch.no_grad()
def _states(model, tok, prompt: str, chat_template: bool) -> torch.Tensor:
    """Hidden states after every decoder layer at the prompt's last token, [layers, d]."""
    ids = torch.tensor([prompts.prompt_ids(tok, prompt, chat_template)], device=input_device(model))
    out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    return torch.stack([h[0, -1].float().cpu() for h in out.hidden_states[1:]])


def layer_effect(model, tok, result, prompt: str) -> go.Figure:
    """Per layer, after the edit `result` (in the model): the norm of its weight update, and how far
    the hidden state of `prompt` at its last token moved, relative to the state's norm. The unedited
    states come from swapping the original tensors in for one forward pass and the edited ones back
    (the model ends exactly as it was)."""
    if result.reverted:
        raise ConfigError("layer_effect needs the edit in the model (apply() it first)")
    if result.adapter is not None:
        raise ConfigError("layer_effect reads weight updates; merge the adapter first (merge_adapter=True)")
    chat = result.cfg.chat_template
    after = _states(model, tok, prompt, chat)
    params = dict(model.named_parameters())
    edited = {n: params[n].data for n in result.originals}
    try:
        for n, o in result.originals.items():  # an upcast weight keeps its dtype: the original's values, exactly
            params[n].data = o.to(edited[n].dtype)
        before = _states(model, tok, prompt, chat)
    finally:
        for n, t in edited.items():
            params[n].data = t
    prefix = family_table(model)["layers"] + "."
    n = num_layers(model)
    update = [0.0] * n
    for name, o in result.originals.items():
        if name.startswith(prefix):
            update[int(name[len(prefix):].split(".")[0])] += float((edited[name].float() - o.float()).norm() ** 2)
    update = [u ** 0.5 for u in update]
    rel = (after - before).norm(dim=1) / before.norm(dim=1).clamp(min=1e-12)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("norm of the weight update", "hidden-state shift of the edited prompt"))
    fig.add_trace(go.Bar(x=list(range(n)), y=update, name="||ΔW||", marker_color=_ON), 1, 1)
    fig.add_trace(go.Scatter(x=list(range(n)), y=rel.tolist(), mode="lines+markers", name="||Δh|| / ||h||",
                             marker_color=_EOT), 1, 2)
    fig.update_xaxes(title_text="decoder layer")
    fig.update_layout(title="Where one edit acts, and how its effect spreads upwards", height=380, width=900)
    return fig


def schedule(result, title: str | None = None) -> go.Figure:
    """From `EditResult.log`: a grid of steps x requests (which request was in which step's batch,
    a skipped step lighter) over the loss of every step and the first three requests' own losses
    wherever a step measured them (depth-first never measures an edit again once it is done;
    breadth-first measures every edit every epoch)."""
    log = result.log
    if not len(log) or "requests" not in log:
        raise ConfigError("this result has no per-step log (locate-and-edit methods log per layer)")
    ids = list(dict.fromkeys(r for batch in log.requests for r in batch))
    z = [[0.0] * len(log) for _ in ids]
    for step, (batch, skipped) in enumerate(zip(log.requests, log.skipped)):
        for r in batch:
            z[ids.index(r)][step] = 0.4 if skipped else 1.0
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.06)
    fig.add_trace(go.Heatmap(z=z, y=ids, x=list(range(len(log))), colorscale=[[0, "white"], [0.4, "#9ecae1"], [1, _ON]],
                             showscale=False, hovertemplate="step %{x}: %{y}<extra></extra>"), 1, 1)
    fig.add_trace(go.Scatter(x=list(range(len(log))), y=log.loss.tolist(), mode="lines", name="batch loss",
                             line={"color": "#999999"}), 2, 1)
    if "losses" in log:  # the earliest edits' own losses, at the steps that measured them
        for r in ids[:3]:
            points = [(step, l) for step, (batch, ls) in enumerate(zip(log.requests, log.losses)) for q, l in zip(batch, ls) if q == r]
            fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                                     name=f"request {r}"), 2, 1)
    fig.update_yaxes(title_text="request", row=1, col=1)
    fig.update_yaxes(title_text="loss", type="log", row=2, col=1)
    fig.update_xaxes(title_text="optimiser step", row=2, col=1)
    cfg = result.cfg
    fig.update_layout(title=title or f"{cfg.schedule.replace('_', '-')}, batch {cfg.batch_size}: which request trained when",
                      height=260 + 14 * len(ids), width=900, showlegend=True)
    return fig


def chunks(stages: pd.DataFrame, metric: str = "ori.exact_match", title: str | None = None) -> go.Figure:
    """Sequential editing: each chunk's `metric` after every stage (one line per chunk)."""
    cols = sorted((c for c in stages if c.startswith("chunk") and c.endswith("." + metric)),
                  key=lambda c: int(c.split(".")[0][5:]))
    if not cols:
        raise ConfigError(f"no chunk{{k}}.{metric} columns: pass runs.lifelong's stages")
    fig = go.Figure()
    for c in cols:
        fig.add_trace(go.Scatter(x=stages.n_edits, y=stages[c], mode="lines+markers", name=c.split(".")[0]))
    fig.update_layout(title=title or f"Each chunk's {label(metric)} as later chunks arrive", xaxis_title="edits so far",
                      yaxis_title=label(metric), height=380, width=720)
    return fig
