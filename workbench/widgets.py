"""ipywidgets for exploring edits by hand. Nothing trains on a slider or a text change: only the
Edit button trains, and Revert puts the weights back bitwise.

The playground judges answers at the answer level, not token by token: an edit is **learned** when
the answer after it holds the new answer's words in order (ROUGE-L recall >= `checks.LEARNT_RECALL`,
the rule `wb.edit(..., check=True)` uses), and an unrelated question's answer is **kept** when its
first sentence is unchanged (SQuAD-normalised: case, punctuation and articles aside), so a greedy
continuation that drifts after the answer ("Paris. I'm a French A..." against "Paris. I'm a French
B...") still counts as kept.

Every widget also displays a static copy of its first page as plain HTML (`static_html`), for
readers without a kernel (GitHub, `jupyter nbconvert --to html`); where the live widget renders,
a CSS rule hides the copy."""
from __future__ import annotations

import html as _html
import re
import time
from pathlib import Path

import ipywidgets as W
import pandas as pd
from IPython.display import HTML, display

from .checks import LEARNT_RECALL
from .components import num_layers
from .config import preset, presets
from .data import Request, load
from .editing import edit
from .errors import ConfigError
from .generation import generate
from .metrics import normalize_answer, rouge_l
from .models import state_hash

LOCALITY_PROMPTS = [q.question for r in load("facts-fixture")[:3] for q in r.locality]
SHORT = 60  # characters of an answer shown in the table unless "full answers" is ticked
# the static copy hides itself where the live widget rendered in the same output area (JupyterLab, Notebook 7)
_HIDE_STATIC = ("<style>.jp-OutputArea:has(.widget-vbox) .wb-static, .output_area:has(.widget-vbox) .wb-static,"
                " .output:has(.widget-vbox) .wb-static {display: none}</style>")


def static_html(body: str, what: str) -> str:
    """`body` wrapped as a widget's static copy: shown by GitHub and nbconvert, hidden beside a live widget."""
    return (f"<div class='wb-static'>{_HIDE_STATIC}<p style='font-size: 90%'><i>Static copy of the {what} "
            "(a live widget needs a running kernel: run the notebook to use it).</i></p>" + body + "</div>")


def first_sentence(text: str) -> str:
    """The first sentence (or line) of `text`: what an answer says before it drifts."""
    text = str(text).strip()
    return re.split(r"(?<=[.!?])\s|\n", text, maxsplit=1)[0].strip() if text else ""


def learned(answer: str, target: str) -> bool:
    """Does `answer` hold `target`'s words in order (ROUGE-L recall >= LEARNT_RECALL)?"""
    return rouge_l([answer], [target])[0]["recall"] >= LEARNT_RECALL


def kept(after: str, before: str) -> bool:
    """Does `after` say what `before` said in its first sentence (normalised)?"""
    return normalize_answer(first_sentence(after)) == normalize_answer(first_sentence(before))


def short(text: str, width: int = SHORT) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def is_random(model) -> bool:
    """A randomly initialised model (smoke runs): its answers are noise."""
    return str(getattr(model, "name_or_path", "")).startswith(("tiny-random", "random:"))


RANDOM_NOTE = ("<p class='wb-random' style='color: #a33'><b>Tiny random model</b> (a smoke run): these answers are "
               "noise and show only that the pipeline runs. Run the notebook without WORKBENCH_SMOKE for SmolLM2's "
               "answers.</p>")


class Playground:
    """Type a question and a new answer, pick a preset (the layer slider follows its layer), press
    Edit; see the answers before and after, whether the edit was learned and whether three unrelated
    questions kept their answers, and Revert. A line under the buttons says what is running and the
    weights' state hash, marked original or edited."""

    def __init__(self, model, tok, question: str = "Who is the CEO of Lumenforge Industries?",
                 answer: str = "Priya Okonkwo", max_new_tokens: int = 24):
        self.model, self.tok, self.max_new_tokens = model, tok, max_new_tokens
        self.result, self.table = None, None
        self.question = W.Text(value=question, description="question", layout=W.Layout(width="70%"))
        self.answer = W.Text(value=answer, description="new answer", layout=W.Layout(width="70%"))
        self.preset = W.Dropdown(options=presets(), value="ft-uke", description="preset")
        self.layer = W.IntSlider(value=0, min=0, max=num_layers(model) - 1, description="layer")
        self.layer_note = W.HTML()  # which layer(s) the preset edits, and whether the slider is used
        self.edit_button = W.Button(description="Edit", button_style="primary")
        self.revert_button = W.Button(description="Revert", disabled=True)
        self.full = W.Checkbox(value=False, description="full answers", indent=False)
        self.status = W.HTML()  # busy while an edit runs
        self.out = W.Output()
        self.original_hash = state_hash(model)
        self.weights = W.HTML()  # the weights' state hash: a Revert is seen to be exact
        self._show_state()
        self.preset.observe(lambda _: self._follow_preset(), names="value")
        self._follow_preset()
        self.edit_button.on_click(lambda _: self.press_edit())
        self.revert_button.on_click(lambda _: self._show(self.run_revert))
        self.full.observe(lambda _: self._redraw(), names="value")
        self.box = W.VBox([self.question, self.answer, W.HBox([self.preset, self.layer]), self.layer_note,
                           W.HBox([self.edit_button, self.revert_button, self.full]), self.status, self.weights,
                           self.out])

    def _follow_preset(self) -> None:
        """Put the slider at the chosen preset's layer; a preset of several layers (MEMIT) or of all
        layers keeps its own, and the slider is switched off (one slider cannot say "layers 3-7")."""
        name, layers = self.preset.value, preset(self.preset.value).layers
        if layers == "all" or len(layers) != 1:
            self.layer.disabled = True
            which = "every layer" if layers == "all" else "layers " + ", ".join(map(str, layers))
            self.layer_note.value = (f"<small class='wb-layer'>{name} edits {which} together: the slider is off and "
                                     "the preset's layers are used.</small>")
            return
        self.layer.disabled = False
        self.layer.value = min(layers[0], self.layer.max)
        clamp = f" (this model has {self.layer.max + 1} layers: {self.layer.value})" if layers[0] > self.layer.max else ""
        self.layer_note.value = (f"<small class='wb-layer'>{name} edits layer {layers[0]}{clamp}; move the slider to "
                                 "edit another.</small>")

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

    def press_edit(self) -> None:
        """What clicking Edit does: Edit is disabled and a busy line shows until the edit is done
        (or has failed: the line then says why), then the table is shown."""
        self.edit_button.disabled = self.revert_button.disabled = True
        layers = "the preset's layers" if self.layer.disabled else f"layer {self.layer.value}"
        self.status.value = (f"<span class='wb-busy'>⏳ editing with {self.preset.value} at {layers}… "
                             "(the model trains; Edit is off until it is done)</span>")
        t0 = time.perf_counter()
        try:
            self.out.clear_output()  # no stale table beside the busy line
            self.run_edit_only()
            self._show(lambda: self.view())
            self.status.value = f"<span class='wb-done'>edited in {time.perf_counter() - t0:.1f} s</span>"
        except Exception as e:  # shown, not raised: a callback's exception would vanish into the log
            self.status.value = f"<span class='wb-error'>edit failed: {_html.escape(type(e).__name__ + ': ' + str(e))}</span>"
        finally:
            self.edit_button.disabled = False
            self.revert_button.disabled = self.result is None

    def _answers(self, prompts, template):
        # no stop string: without a template a model often starts with a newline, which a "\n" stop
        # would turn into an empty answer; the table shows the first line, "full answers" the rest
        return [a.strip() for a in generate(self.model, self.tok, prompts, template, self.max_new_tokens)]

    def run_edit_only(self) -> pd.DataFrame:
        """Revert any earlier edit, edit, and keep the before/after table in `self.table` (full texts)."""
        if self.result is not None:
            self.run_revert()
        cfg = self.config()
        prompts = [self.question.value, *LOCALITY_PROMPTS]
        before = self._answers(prompts, cfg.chat_template)
        self.result = edit(self.model, self.tok, [Request("playground", self.question.value, self.answer.value)], cfg,
                           progress=False)
        after = self._answers(prompts, cfg.chat_template)
        n = len(LOCALITY_PROMPTS)
        self.table = pd.DataFrame({
            "probe": ["edit"] + ["locality"] * n, "prompt": prompts, "before": before, "after": after,
            "learned?": ["yes" if learned(after[0], self.answer.value) else "no"] + [""] * n,
            "kept?": [""] + ["yes" if kept(a, b) else "no" for a, b in zip(after[1:], before[1:])]})
        self.revert_button.disabled = False
        self._show_state()
        return self.table

    def run_edit(self) -> pd.DataFrame:
        """Edit as the Edit button does (without its busy line); returns the table as shown (answers
        cut to their first line unless "full answers" is ticked). Calling it from code, as the
        notebook's last cells do, never touches the output widget."""
        self.run_edit_only()
        return self.shown()

    def shown(self) -> pd.DataFrame:
        """The last table as displayed: full texts, or each answer's first line cut to `SHORT` characters."""
        if self.table is None or self.full.value:
            return self.table
        t = self.table.copy()
        for col in ("before", "after"):
            t[col] = [short(a.split("\n")[0]) for a in t[col]]
        return t

    def summary(self) -> str:
        """One sentence on the last edit: learned or not, and how many unrelated answers were kept."""
        t = self.table
        if t is None:
            return "No edit yet."
        loc = t[t.probe == "locality"]
        return (f"Edit {'learned' if t['learned?'].iloc[0] == 'yes' else 'not learned'} (the answer holds "
                f"{'' if t['learned?'].iloc[0] == 'yes' else 'less than '}{LEARNT_RECALL:.0%} of the new answer's words, in "
                f"order); {(loc['kept?'] == 'yes').sum()} of {len(loc)} unrelated answers kept (same first sentence).")

    def view(self):
        """What the output area shows: the table (HTML, full texts on demand), its one-line summary,
        and a warning where the model is random."""
        if self.table is None:
            return HTML("")
        table = self.shown().to_html(index=False, escape=True, classes="wb-playground")
        if self.full.value:  # keep newlines of the full answers visible
            table = table.replace("<td>", "<td style='white-space: pre-wrap; text-align: left'>")
        note = RANDOM_NOTE if is_random(self.model) else ""
        return HTML(note + table + f"<p class='wb-summary'>{_html.escape(self.summary())}</p>")

    def _redraw(self) -> None:
        if self.table is not None:
            self._show(lambda: self.view())

    def config(self):
        """The edit the controls describe."""
        # the playground's fact has no subject: locate-and-edit methods read their key at the last prompt token
        cfg = preset(self.preset.value)
        try:
            cfg = cfg.replace(key_position="prompt_last")
        except ConfigError:  # a method without a key position (fine-tuning)
            pass
        if self.layer.disabled or cfg.layers == "all":
            return cfg
        return cfg.replace(layers=(self.layer.value,))

    def run_revert(self) -> None:
        """What the Revert button does."""
        if self.result is not None:
            self.result.revert()
            self.result = None
        self.revert_button.disabled = True
        self._show_state()

    def _controls(self) -> list[tuple[str, object]]:
        return [("question", self.question.value), ("new answer", self.answer.value), ("preset", self.preset.value),
                ("layer", "the preset's" if self.layer.disabled else self.layer.value)]

    def static_html(self) -> str:
        """The controls as they stand, and the last table if any, as plain HTML."""
        rows = "".join(f"<tr><th style='text-align: left'>{k}</th><td style='text-align: left'>{_html.escape(str(v))}</td></tr>"
                       for k, v in self._controls())
        body = f"<table>{rows}</table><p><button disabled>Edit</button> <button disabled>Revert</button></p>"
        if self.table is not None:
            body += self.view().data
        return static_html(body, "playground")

    def _ipython_display_(self):
        display(self.box)
        display({"text/html": self.static_html()}, raw=True)


def playground(model, tok, **kw) -> Playground:
    return Playground(model, tok, **kw)


class TryIt(Playground):
    """A notebook's axis, live: the playground with one control for `axis` (a layer slider, or a
    toggle between `values`) over the notebook's preset. Only the Edit button trains."""

    def __init__(self, model, tok, axis: str, values: list, preset_name: str = "ft-uke", **kw):
        super().__init__(model, tok, **kw)
        self.axis, self.base = axis, preset_name
        self.preset.value, self.preset.disabled = preset_name, True
        if axis == "layers":  # the notebook's axis: the slider is used whatever the preset's layers
            self.control, self.layer.disabled = self.layer, False
            self.control.value = values[0][0] if isinstance(values[0], (list, tuple)) else values[0]
        else:
            options = [(", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v), v) for v in values]
            self.control = W.ToggleButtons(options=options, value=values[0], description=axis)
        self.box.children = (self.question, self.answer, W.HBox([self.preset, self.control]),
                             *self.box.children[3:])

    def _controls(self) -> list[tuple[str, object]]:
        shown = super()._controls()
        return shown if self.axis == "layers" else shown + [(self.axis, self.control.value)]

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

    def __init__(self, runs: pd.DataFrame, experiment: str, arm: str, metrics: list[str] | None = None,
                 request: str | None = None):
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
        if request is not None and str(request) in self.requests:  # open on a request chosen to show something
            self.index.value = self.requests.index(str(request))

    def static_html(self) -> str:
        """The page now shown (the first arm's first request, when just built) as plain HTML."""
        first = f"{self.arm} = {self.choice.value}" + (f", seed {self.seed.value}" if self.seed.value is not None else "")
        return static_html(f"<p>{_html.escape(first)}</p>" + self.view.value.replace("wb-explorer", "wb-explorer-static"),
                           "explorer's first page")

    def _load(self) -> None:
        rows = self.runs[[str(v) == self.choice.value for v in self.runs[self.arm]]]
        if self.seed.value is not None and "seed" in rows:
            rows = rows[rows["seed"] == self.seed.value] if (rows["seed"] == self.seed.value).any() else rows
        # a report's table names each run's folder (store/...); a sweep's gives its hash under results/
        run = Path(rows.iloc[0]["folder"]) if "folder" in rows else self.folder / rows.iloc[0]["hash"]
        path = run / "per_probe.jsonl"
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
        display({"text/html": self.static_html()}, raw=True)


def marked(text: str, reference: str) -> str:
    """`text` as HTML, its words that also occur in `reference` (case and punctuation aside) in <mark>."""
    import html
    import re

    ref = {w.lower() for w in re.findall(r"\w+", reference)}
    return "".join(f"<mark>{html.escape(piece)}</mark>" if piece.lower() in ref else html.escape(piece)
                   for piece in re.split(r"(\w+)", text))


def explorer(runs: pd.DataFrame, experiment: str, arm: str, metrics: list[str] | None = None,
             request: str | None = None) -> Explorer:
    """`Explorer` over `runs` (what `wb.runs.sweep` returned) of `experiment`, one arm per value of `arm`;
    or over a claim's stored runs (`wb.runs.claim_verdict(name).table`, arm ``"label"``: each row names its
    folder). `request` (an id) is the request it opens on."""
    return Explorer(runs, experiment, arm, metrics, request)
