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
        # the playground's fact has no subject: locate-and-edit methods read their key at the last prompt token
        cfg = preset(self.preset.value).replace(key_position="prompt_last")
        if cfg.layers != "all":
            cfg = cfg.replace(layers=(self.layer.value,))
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
