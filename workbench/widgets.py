"""ipywidgets for exploring edits by hand. Nothing trains on a slider or a text change: only the
Edit button trains, and Revert puts the weights back bitwise."""
from __future__ import annotations

import ipywidgets as W
import pandas as pd
from IPython.display import display

from .config import preset, presets
from .components import num_layers
from .data import Request, load
from .generation import generate
from .metrics import exact_match
from .models import state_hash
from .train import edit

LOCALITY_PROMPTS = [q.question for r in load("facts-fixture")[:3] for q in r.locality]


class Playground:
    """Type a question and a new answer, pick a preset and a layer, press Edit; see the answers
    before and after, a locality check on unrelated questions, and Revert. A line under the buttons
    shows the weights' state hash, marked original or edited."""

    def __init__(self, model, tok, question: str = "Who is the CEO of Lumenforge Industries?",
                 answer: str = "Priya Okonkwo", max_new_tokens: int = 24):
        self.model, self.tok, self.max_new_tokens = model, tok, max_new_tokens
        self.result = None
        self.question = W.Text(value=question, description="question", layout=W.Layout(width="70%"))
        self.answer = W.Text(value=answer, description="new answer", layout=W.Layout(width="70%"))
        self.preset = W.Dropdown(options=presets(), value="ft-uke", description="preset")
        self.layer = W.IntSlider(value=preset("ft-uke").layers[0] if preset("ft-uke").layers != "all" else 0, min=0,
                                 max=num_layers(model) - 1, description="layer")
        self.edit_button = W.Button(description="Edit", button_style="primary")
        self.revert_button = W.Button(description="Revert", disabled=True)
        self.out = W.Output()
        self.original_hash = state_hash(model)
        self.weights = W.HTML()  # the weights' state hash: a Revert is seen to be exact
        self._show_state()
        self.edit_button.on_click(lambda _: self._show(self.run_edit))
        self.revert_button.on_click(lambda _: self._show(self.run_revert))
        self.box = W.VBox([self.question, self.answer, W.HBox([self.preset, self.layer]),
                           W.HBox([self.edit_button, self.revert_button]), self.weights, self.out])

    def _show_state(self) -> None:
        h = state_hash(self.model)
        state = "original" if h == self.original_hash else "edited"
        self.weights.value = f"<code class='wb-state' data-state='{state}'>weights {h[:16]} ({state})</code>"

    def _show(self, action) -> None:
        """Run a button's action and show what it returns in the output area."""
        with self.out:
            self.out.clear_output()
            shown = action()
            display(shown if shown is not None else "reverted: weights restored bitwise")

    def _answers(self, prompts, template):
        return generate(self.model, self.tok, prompts, template, self.max_new_tokens, stop=("\n",))

    def run_edit(self) -> pd.DataFrame:
        """What the Edit button does (the button also shows the table); returns the before/after table.
        Calling it from code, as the notebook's last cells do, never touches the output widget."""
        if self.result is not None:
            self.run_revert()
        cfg = self.config()
        prompts = [self.question.value, *LOCALITY_PROMPTS]
        before = self._answers(prompts, cfg.chat_template)
        self.result = edit(self.model, self.tok, [Request("playground", self.question.value, self.answer.value)], cfg,
                           progress=False)
        after = self._answers(prompts, cfg.chat_template)
        table = pd.DataFrame({"probe": ["edit"] + ["locality"] * len(LOCALITY_PROMPTS), "prompt": prompts,
                              "before": before, "after": after,
                              "unchanged": [exact_match(a, b) == 1.0 for a, b in zip(after, before)]})
        self.revert_button.disabled = False
        self._show_state()
        return table

    def config(self):
        """The edit the controls describe."""
        # the playground's fact has no subject: locate-and-edit methods read their key at the last prompt token
        cfg = preset(self.preset.value).replace(key_position="prompt_last")
        return cfg.replace(layers=(self.layer.value,)) if cfg.layers != "all" else cfg

    def run_revert(self) -> None:
        """What the Revert button does."""
        if self.result is not None:
            self.result.revert()
            self.result = None
        self.revert_button.disabled = True
        self._show_state()

    def _ipython_display_(self):
        display(self.box)


def playground(model, tok, **kw) -> Playground:
    return Playground(model, tok, **kw)


class TryIt(Playground):
    """A notebook's axis, live: the playground with one control for `axis` (a layer slider, or a
    toggle between `values`) over the notebook's preset. Only the Edit button trains."""

    def __init__(self, model, tok, axis: str, values: list, preset_name: str = "ft-uke", **kw):
        super().__init__(model, tok, **kw)
        self.axis, self.base = axis, preset_name
        self.preset.value, self.preset.disabled = preset_name, True
        if axis == "layers":
            self.control = self.layer
            self.control.value = values[0][0] if isinstance(values[0], (list, tuple)) else values[0]
        else:
            options = [(", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v), v) for v in values]
            self.control = W.ToggleButtons(options=options, value=values[0], description=axis)
        self.box.children = (self.question, self.answer, W.HBox([self.preset, self.control]),
                             *self.box.children[3:])

    def config(self):
        cfg = super().config()  # the preset at the layer slider's layer
        if self.axis == "layers":
            return cfg
        value = self.control.value
        return cfg.replace(**{self.axis: tuple(value) if isinstance(value, list) else value})


def try_it(model, tok, axis: str, values: list, preset_name: str = "ft-uke", **kw) -> TryIt:
    """`TryIt`: edit one request live with the notebook's axis set by a control."""
    return TryIt(model, tok, axis, values, preset_name, **kw)


class Explorer:
    """The stored runs of a sweep, request by request; it reads the store and never trains.

    Choose an arm (a value of `arm`, the sweep's axis) and a seed, page through the requests, and see
    for each probe the prompt, the reference (the target; for locality probes, the unedited model's
    answer), the answers before and after the edit with the words they share with the reference
    marked (before: runs stored since the unedited answers are kept), and every metric of that probe."""

    def __init__(self, runs: pd.DataFrame, experiment: str, arm: str, metrics: list[str] | None = None):
        from .runs.store import results_root

        if not len(runs):
            raise ValueError(f"no finished runs in {experiment!r} to explore")
        self.runs, self.arm, self.folder = runs.reset_index(drop=True), arm, results_root() / experiment
        self.metrics = metrics
        labels = [str(v) for v in self.runs[arm]]
        self.choice = W.Dropdown(options=list(dict.fromkeys(labels)), description=arm)
        seeds = sorted(self.runs["seed"].dropna().unique().tolist()) if "seed" in self.runs else []
        self.seed = W.Dropdown(options=seeds or [None], description="seed", disabled=not seeds)
        self.index = W.IntSlider(value=0, min=0, max=0, description="request")
        self.prev, self.next = W.Button(description="◀"), W.Button(description="▶")
        self.view = W.HTML()
        self.prev.on_click(lambda _: self._step(-1))
        self.next.on_click(lambda _: self._step(1))
        for w in (self.choice, self.seed):
            w.observe(lambda _: self._load(), names="value")
        self.index.observe(lambda _: self._show(), names="value")
        self.box = W.VBox([W.HBox([self.choice, self.seed]), W.HBox([self.prev, self.index, self.next]), self.view])
        self._load()

    def _load(self) -> None:
        rows = self.runs[[str(v) == self.choice.value for v in self.runs[self.arm]]]
        if self.seed.value is not None and "seed" in rows:
            rows = rows[rows["seed"] == self.seed.value] if (rows["seed"] == self.seed.value).any() else rows
        path = self.folder / rows.iloc[0]["hash"] / "per_probe.jsonl"
        if not path.exists():  # a sequential run stored before runs kept their probes
            self.probes = pd.DataFrame(columns=["request", "split", "kind", "prompt", "reference", "generation"])
            self.requests, self.index.max = [], 0
            self.view.value = f"<p class='wb-explorer'>{path.parent.name} stored no per-probe file (run it again to explore it)</p>"
            return
        self.probes = pd.read_json(path, lines=True, dtype=False)
        self.requests = list(dict.fromkeys(self.probes.request.astype(str)))
        self.index.max = len(self.requests) - 1
        self.index.value = min(self.index.value, self.index.max)
        self._show()

    def _step(self, by: int) -> None:
        self.index.value = max(0, min(self.index.max, self.index.value + by))

    def _show(self) -> None:
        import html

        req = self.requests[self.index.value]
        probes = self.probes[self.probes.request.astype(str) == req]
        skip = {"request", "split", "kind", "prompt", "reference", "generation", "before"}
        metrics = self.metrics or [c for c in probes.columns if c not in skip]
        rows = []
        for _, p in probes.iterrows():
            scores = "<br>".join(f"{html.escape(m)} {p[m]:.2f}" for m in metrics if m in p and pd.notna(p[m]))
            split = p["split"] + (f" ({p['kind']})" if p.get("kind") else "")
            before = p.get("before")
            before = marked(str(before), str(p["reference"])) if isinstance(before, str) else "(not stored)"
            rows.append(f"<tr><td>{html.escape(split)}</td><td>{html.escape(str(p['prompt']))}</td>"
                        f"<td>{html.escape(str(p['reference']))}</td><td>{before}</td>"
                        f"<td>{marked(str(p['generation']), str(p['reference']))}</td><td>{scores}</td></tr>")
        self.view.value = (f"<p class='wb-explorer'>request {html.escape(req)} ({self.index.value + 1} of {len(self.requests)})"
                           "</p><table style='font-size: 90%; line-height: 1.25'><tr><th>probe</th><th>prompt</th>"
                           "<th>reference</th><th>before the edit</th><th>after the edit</th><th>scores</th></tr>"
                           + "".join(rows) + "</table>")

    def _ipython_display_(self):
        display(self.box)


def marked(text: str, reference: str) -> str:
    """`text` as HTML, its words that also occur in `reference` (case and punctuation aside) in <mark>."""
    import html
    import re

    ref = {w.lower() for w in re.findall(r"\w+", reference)}
    return "".join(f"<mark>{html.escape(piece)}</mark>" if piece.lower() in ref else html.escape(piece)
                   for piece in re.split(r"(\w+)", text))


def explorer(runs: pd.DataFrame, experiment: str, arm: str, metrics: list[str] | None = None) -> Explorer:
    """`Explorer` over `runs` (what `wb.runs.sweep` returned) of `experiment`, one arm per value of `arm`."""
    return Explorer(runs, experiment, arm, metrics)
