"""The teaching widgets driven headlessly: set their values, click, read their output widgets.
`Explorer` over a real stored sweep of the tiny model (it reads the store, nothing trains);
`TryIt` edits one request live with its axis control and reverts bitwise."""
import ipywidgets as W
import pytest

import workbench as wb
from workbench.widgets import explorer, marked, try_it


@pytest.fixture
def stored(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    spec = wb.runs.RunSpec(edit=wb.EditConfig(model_name="tiny-random-llama", layers=(2,), lr=1e-2, epochs=2),
                           benchmark="facts-fixture", n_edits=3, protocol="single", eval="locft", splits=("ori", "para"))
    runs = wb.runs.sweep(spec, {"loss_scope": ["target", "first_token"]}, "explore", progress=False)
    return runs


def test_explorer_pages_through_the_stored_requests_of_each_arm(stored):
    ex = explorer(stored, "explore", "loss_scope")
    assert ex.choice.options == ("target", "first_token") and ex.index.max == 2
    first = ex.view.value
    assert "request" in first and "<th>before the edit</th><th>after the edit</th>" in first
    assert "(not stored)" not in first  # the unedited answers are in the store
    facts = wb.data.load("facts-fixture", n=3)
    assert facts[0].prompt in first and "exact_match 0." in first
    ex.next.click()
    assert ex.index.value == 1 and facts[1].prompt in ex.view.value
    ex.next.click(), ex.next.click()
    assert ex.index.value == 2  # the last request: ▶ stops there
    ex.choice.value = "first_token"
    assert ex.view.value != first and facts[2].prompt in ex.view.value


def test_marked_highlights_shared_words_only():
    assert marked("Paris is big", "the capital is Paris.") == "<mark>Paris</mark> <mark>is</mark> big"
    assert marked("<b>", "b") == "&lt;<mark>b</mark>&gt;"


def test_try_it_edits_with_the_axis_value_and_reverts(tiny, tok):
    w = try_it(tiny, tok, "loss_scope", ["target", "first_token"], preset_name="ft-uke", max_new_tokens=4)
    assert isinstance(w.control, W.ToggleButtons) and w.preset.disabled
    w.layer.value = 2
    w.control.value = "first_token"
    cfg = w.config()
    assert cfg.loss_scope == "first_token" and cfg.method == "ft"
    original = wb.models.state_hash(tiny)
    w.edit_button.click()
    assert wb.models.state_hash(tiny) != original and w.result.cfg.loss_scope == "first_token"
    assert "edited" in w.weights.value
    w.revert_button.click()
    assert wb.models.state_hash(tiny) == original and "original" in w.weights.value


def test_try_it_on_layers_uses_the_slider(tiny, tok):
    w = try_it(tiny, tok, "layers", [[1], [3]], preset_name="locft-bf")
    assert w.control is w.layer and w.layer.value == 1
    w.layer.value = 3
    assert w.config().layers == (3,)


def test_findings_render_the_table_as_the_report_does():
    import pandas as pd

    table = pd.DataFrame({"layers": [[5], [20]], "ori.exact_match": [0.5, 1.0], "ori.exact_match.ci": [0.1, None]})
    md = wb.runs.findings(table, "layers", ["ori.exact_match"], "later layers generalise better", ["Try layer 25."]).data
    assert "**The paper.** later layers generalise better" in md and "1. Try layer 25." in md
    assert wb.runs.markdown_table({"5/ori.exact_match": 0.5, "5/ori.exact_match.ci": 0.1, "20/ori.exact_match": 1.0}) in md
    assert "| 5 | 0.500 ± 0.100 |" in md


def test_explorer_over_a_sequential_run_shows_the_probes_after_the_last_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    spec = wb.runs.RunSpec(edit=wb.EditConfig(model_name="tiny-random-llama", layers=(2,), lr=1e-2, epochs=2),
                           benchmark="facts-fixture", n_edits=4, eval="locft", splits=("ori",))
    stages = wb.runs.lifelong(spec, 2, "seq", progress=False)
    assert stages.hash.nunique() == 1
    ex = explorer(stages[stages.n_edits == stages.n_edits.max()], "seq", "n_edits")
    assert ex.index.max == 3 and wb.data.load("facts-fixture", n=1)[0].prompt in ex.view.value
    (tmp_path / "seq" / stages.hash.iloc[0] / "per_probe.jsonl").unlink()  # as runs stored before it existed
    assert "stored no per-probe file" in explorer(stages, "seq", "n_edits").view.value
