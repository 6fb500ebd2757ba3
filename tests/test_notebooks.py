"""The notebooks: their recorded metrics (tests/notebook_records.py: checked in the default run on
nbval's execution by notebooks/conftest.py, and here through papermill in `make test-slow`), and the
committed notebooks as a reader sees them (figures a static reader can see, findings that state the
report's verdicts)."""
from pathlib import Path

import pytest

from notebook_records import check
from workbench import runs
from workbench.cli import run_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(autouse=True)
def smoke(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_SMOKE", "1")  # read by the kernel papermill starts
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "results"))


def execute(name, tmp_path, **params) -> dict:
    got = runs.read(run_notebook(NOTEBOOKS / f"{name}.ipynb", params, tmp_path / "out"))
    check(name, got)
    return got


# Each notebook's records are checked in the default run by notebooks/conftest.py, on the execution
# nbval makes anyway (one run per notebook instead of two). These papermill runs (make test-slow)
# check the same records through run_notebook, with other parameters where a notebook takes them.
@pytest.mark.slow
def test_00_quickstart_with_other_parameters(tmp_path, smoke):
    got = execute("00_quickstart", tmp_path, n_questions=2, max_new_tokens=24, n_batch=4)
    assert (tmp_path / "out" / "loss_curve.html").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in NOTEBOOKS.glob("[0-9]*.ipynb") if p.stem != "00_quickstart"))
def test_every_notebook_runs_through_papermill_and_records_what_it_should(tmp_path, smoke, name):
    execute(name, tmp_path)


def test_every_numbered_notebook_has_a_record_check():
    for path in NOTEBOOKS.glob("[0-9]*.ipynb"):
        with pytest.raises(AssertionError, match="nothing recorded"):
            check(path.stem, {})  # a check exists (an unknown notebook would fail otherwise: below)
    with pytest.raises(AssertionError, match="no record check"):
        check("99_new", {"x": 1.0})


# --- the committed notebooks as a reader sees them (no execution: these read notebooks/*.ipynb) -------------------

import json
import os
import re
import subprocess
import sys

import nbformat

COMMITTED = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
# Notebooks whose committed outputs predate plots.show and report_findings (issue 45): each still needs
# the conversion 01 and 05 had and a papermill re-execution (`make smoke-notebooks`). Remove a name here
# once its outputs are regenerated; these two tests then hold it.
PENDING: set[str] = set()


def _pending(path):
    if path.stem in PENDING:
        pytest.skip(f"{path.name}: outputs not regenerated with plots.show / report_findings yet (issue 45)")
ABLATIONS = ("01", "02", "03", "04", "05", "06", "07", "08", "10", "11")  # each answers claims of the report
PLOTLY = "application/vnd.plotly.v1+json"


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_every_figure_shows_in_nbconvert_html(path):
    """GitHub and nbconvert drop plotly's JSON: each figure must carry a PNG beside it (plots.show),
    and the HTML that `jupyter nbconvert --to html` writes must show one image per figure."""
    from nbconvert import HTMLExporter

    _pending(path)
    nb = nbformat.read(str(path), as_version=4)
    figures = [o for o in _outputs(nb) if PLOTLY in o.get("data", {})]
    static = '<img src="data:image/png;base64,'
    assert all(static in "".join(o["data"].get("text/html", "")) for o in figures), \
        f"{path.name}: a plotly figure without its static PNG"
    assert not any("image/png" in o["data"] for o in figures)  # JupyterLab's plotly renderer would show only it
    html, _ = HTMLExporter().from_notebook_node(nb)
    images = len(re.findall(r'<img[^>]+src="data:image/png;base64,', html))
    assert images >= len(figures), (path.name, images, len(figures))
    if path.stem not in ("09_playground", "00b_from_scratch"):  # these print tables and tokens; the others draw
        assert images >= 1, f"{path.name}: no figure a static reader can see"


def test_show_without_a_browser_leaves_a_note_and_raises_nothing(tmp_path):
    """nbval re-executes the notebooks: where kaleido finds no Chrome, show() keeps the interactive
    figure and says in its text why the PNG is missing."""
    script = ("import plotly.graph_objects as go, workbench as wb\n"
              "wb.plots.show(go.Figure(go.Bar(x=[1], y=[-0.2])).update_layout(title='t'))\n"
              "wb.plots.show(go.Figure().update_layout(title='u'))\n")
    env = {**os.environ, "BROWSER_PATH": str(tmp_path / "no-chromium")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("no static PNG on this machine") == 2 and "'image/png'" not in out.stdout


def test_static_figures_can_be_turned_off_for_a_run_that_compares_none(monkeypatch):
    import plotly.graph_objects as go
    from workbench import plots

    monkeypatch.setenv("WORKBENCH_STATIC_FIGURES", "0")  # what `make test` sets for nbval
    assert plots.png(go.Figure()) is None and "WORKBENCH_STATIC_FIGURES=0" in plots.static_error()
    monkeypatch.delenv("WORKBENCH_STATIC_FIGURES")
    assert "WORKBENCH_STATIC_FIGURES" not in (plots.static_error() or "")  # nothing remembered


def test_show_attaches_a_png_where_a_browser_is_installed():
    import shutil

    if not (shutil.which("chromium") or shutil.which("google-chrome")):
        pytest.skip("no Chrome or Chromium here (apt install chromium)")
    import plotly.graph_objects as go
    from workbench import plots

    image = plots.png(go.Figure(go.Bar(x=["a"], y=[-0.3])))
    assert image is not None and image[:8] == b"\x89PNG\r\n\x1a\n", plots.static_error()


def _claimed(nb) -> list[str]:
    names = []
    for c in nb.cells:
        m = re.search(r"report_findings\((\[[^\]]*\])", c.source) if c.cell_type == "code" else None
        if m:
            names += json.loads(m.group(1))
    return names


def _stated(nb) -> dict[int, str]:
    """Claim number -> the verdict cell the notebook's committed "What we found" output states."""
    out = {}
    for o in _outputs(nb):
        text = "".join(o.get("data", {}).get("text/markdown", ""))
        for m in re.finditer(r"\*\*Claim (\d+) of the report: .*?\*\*The report's verdict:\*\* (\*\*[^*]+\*\*.*?)"
                             r" \(ours: (.*?); real runs", text, flags=re.S):
            out[int(m.group(1))] = (m.group(2).strip(), m.group(3))
    return out


def _summary_rows() -> dict[int, tuple[str, str]]:
    """docs/REPRODUCTION.md's summary: claim number -> (verdict cell, ours cell)."""
    text = (NOTEBOOKS.parent / "docs" / "REPRODUCTION.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].isdigit():
            rows[int(cells[0])] = (cells[4], cells[3])
    return rows


@pytest.mark.parametrize("path", [p for p in COMMITTED if p.stem[:2] in ABLATIONS], ids=lambda p: p.stem)
def test_findings_state_the_reports_verdict(path):
    """Each ablation notebook's "What we found" states, for each of its claims, the verdict the report
    computes from store/ (recomputed here by the report's own functions) and the one
    docs/REPRODUCTION.md prints: a notebook whose outputs drift from either fails."""
    _pending(path)
    nb = nbformat.read(str(path), as_version=4)
    names = _claimed(nb)
    assert names, f"{path.name}: no wb.runs.report_findings([...]) in What we found"
    stated, summary = _stated(nb), _summary_rows()
    for name in names:
        v = runs.claim_verdict(name)
        assert v.number in stated, f"{path.name}: claim {v.number} ({name}) not in the committed findings output"
        said, ours = stated[v.number]
        assert (said, ours) == (v.verdict, v.ours), (path.name, name, said, v.verdict)
        assert summary[v.number] == (v.verdict, v.ours), f"docs/REPRODUCTION.md's row {v.number} differs from the store"


def test_claim_verdict_is_the_reports_and_can_disagree(tmp_path):
    """The verdict comes from the store it is given: an empty store gives the report's "not run yet"."""
    v = runs.claim_verdict("loss_scope", root=tmp_path)
    assert v.verdict == "**inconclusive** (not run yet)" and not len(v.table)
    real = runs.claim_verdict("loss_scope")
    assert real.number == v.number and len(real.table) > 0


# --- widgets a static reader can see, exercises, parameters, the path (issue 45) ---------------------------------------

WIDGET_CALL = re.compile(r"wb\.widgets\.(explorer|try_it|playground)\(")


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_every_widget_carries_a_static_copy_that_nbconvert_shows(path):
    """A teaching widget needs a kernel; its cell also stores the first page as HTML (`wb-static`),
    which `jupyter nbconvert --to html` keeps (it drops the widget itself without saved state)."""
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and WIDGET_CALL.search(c.source)]
    for c in cells:
        assert any("wb-static" in "".join(o.get("data", {}).get("text/html", "")) for o in c.get("outputs", [])), \
            f"{path.name}: a widget cell without its static copy:\n{c.source[:200]}"
    html, _ = HTMLExporter().from_notebook_node(nb)
    assert len(re.findall(r"class=[\"']wb-static[\"']", html)) >= len(cells), path.name


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_every_notebook_has_an_exercise_with_a_hint_a_hidden_solution_and_a_check(path):
    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])]
    text = [c for c in cells if c.cell_type == "markdown"]
    solution = [c for c in cells if "solution" in c.metadata.get("tags", [])]
    check = [c for c in cells if "check" in c.metadata.get("tags", [])]
    assert text and "## Exercise" in text[0].source and "Hint" in text[0].source, path.name
    assert solution and all(c.metadata.get("jupyter", {}).get("source_hidden") for c in solution), path.name
    assert check and all("assert " in c.source for c in check), path.name
    # the check ran in the committed (smoke) execution and failed nowhere
    assert all(c.get("execution_count") and not any(o.output_type == "error" for o in c.outputs) for c in solution + check)


def test_an_exercise_check_fails_on_a_wrong_answer():
    """The checks assert something: the from-scratch notebook's check, given a wrong mask, fails."""
    from workbench import load, prompts

    nb = nbformat.read(str(NOTEBOOKS / "00b_from_scratch.ipynb"), as_version=4)
    check_src = next(c.source for c in nb.cells if "check" in c.metadata.get("tags", []))
    tok = load("tiny-random-llama", device="cpu")[1]
    prompt, target = "Who is the CEO of Lumenforge Industries?", "Priya Okonkwo"
    good = prompts.encode(tok, prompt, target, "first_token").labels
    import workbench as wb

    exec(check_src, {"wb": wb, "tok": tok, "prompt": prompt, "target": target, "labels_first": good})
    with pytest.raises(AssertionError):
        exec(check_src, {"wb": wb, "tok": tok, "prompt": prompt, "target": target, "labels_first": good[:-1] + [1]})


def _parameters(nb) -> dict:
    """Name -> literal value of the parameters cell and papermill's injected-parameters cell."""
    import ast

    values = {}
    for c in nb.cells:
        tags = c.metadata.get("tags", [])
        if c.cell_type == "code" and ("parameters" in tags or "injected-parameters" in tags):
            for node in ast.parse(c.source).body:
                if isinstance(node, ast.Assign):
                    values.update({t.id: ast.literal_eval(node.value) for t in node.targets})
    return values


# parameters the notebooks pass to a call of their own, not to the spec: lifelong(spec, chunk_size, ...) (a
# RunSpec field too since the identity change; whether specs carry it is the spec owner's call)
OWN_CALL = {"chunk_size"}


@pytest.mark.parametrize("path", COMMITTED + sorted((NOTEBOOKS.parent / "docs" / "reproduction").glob("*.ipynb")),
                         ids=lambda p: p.stem)
def test_specs_are_built_from_the_parameters_cells_names(path):
    """`RunSpec.from_params(globals(), names=[...])` names exactly the parameters (and papermill's injected
    parameters) that are spec or config options: none left out, none picked up from elsewhere."""
    from workbench.errors import ConfigError

    nb = nbformat.read(str(path), as_version=4)
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "from_params(globals())" not in src, f"{path.name}: from_params without names="
    for m in re.finditer(r"from_params\(globals\(\), names=(\[[^\]]*\])\)", src):
        listed, params = json.loads(m.group(1)), _parameters(nb)
        assert set(listed) <= set(params), (path.name, set(listed) - set(params))
        for name in set(params) - set(listed) - OWN_CALL:  # what was left out is no spec or config option
            with pytest.raises(ConfigError):
                runs.RunSpec.from_params({"preset": "ft-uke", name: params[name]}, names=[name])


def test_the_readme_lists_every_notebook_with_its_minutes():
    readme = (NOTEBOOKS / "README.md").read_text()
    for path in COMMITTED:
        row = next((line for line in readme.splitlines() if f"`{path.stem}`" in line and line.startswith("|")), None)
        assert row is not None, f"notebooks/README.md: no row for {path.stem}"
        assert re.search(r"\| ~?[\d.]+ min", row), f"notebooks/README.md: no smoke minutes for {path.stem}"


# --- the playground (09) ---------------------------------------------------------------------------------------------

def test_the_playground_layer_follows_the_preset(tiny, tok):
    from workbench import config
    from workbench.widgets import playground

    ui = playground(tiny, tok)
    top = ui.layer.max
    ui.preset.value = "locft-bf"
    assert not ui.layer.disabled and ui.layer.value == min(config.preset("locft-bf").layers[0], top)
    assert ui.config().layers == (ui.layer.value,)
    multi = next(n for n in config.presets() if config.preset(n).layers == "all" or len(config.preset(n).layers) > 1)
    ui.preset.value = multi
    assert ui.layer.disabled and "slider is off" in ui.layer_note.value
    assert ui.config().layers == config.preset(multi).layers  # the preset's own layers, not one of them


def test_the_playground_edit_button_is_off_while_it_edits_and_back_on_after_a_failure(tiny, tok):
    from workbench.widgets import playground

    ui = playground(tiny, tok)
    seen = {}

    def failing():
        seen.update(disabled=ui.edit_button.disabled, status=ui.status.value)
        raise RuntimeError("out of memory")

    ui.run_edit_only = failing
    ui.edit_button.click()
    assert seen["disabled"] is True and "wb-busy" in seen["status"]
    assert ui.edit_button.disabled is False and "out of memory" in ui.status.value  # re-enabled in finally


def test_learned_and_kept_judge_answers_not_tokens():
    from workbench.widgets import first_sentence, kept, learned

    assert kept("Paris. I'm a French A", "Paris. I'm a French B")  # drifts only after its answer
    assert not kept("Lyon. I'm a French A", "Paris. I'm a French A")
    assert learned("The CEO is Priya Okonkwo, since 2021.", "Priya Okonkwo") and not learned("Priya", "Priya Okonkwo")
    assert first_sentence("\n Shakespeare wrote it.\nMore") == "Shakespeare wrote it."


def test_the_playground_table_has_learned_and_kept_and_full_answers_on_demand(tiny, tok, monkeypatch):
    import pandas as pd

    from workbench import widgets

    ui = widgets.playground(tiny, tok)
    answers = iter([["A long answer " * 10, "Paris. Then more", "x", "y"], ["Priya Okonkwo.", "Paris. Other", "x", "z"]])
    monkeypatch.setattr(ui, "_answers", lambda prompts, template: next(answers))
    monkeypatch.setattr(widgets, "edit", lambda *a, **k: type("R", (), {"revert": lambda self: None, "steps": 1})())
    table = ui.run_edit()
    assert list(table.columns) == ["probe", "prompt", "before", "after", "learned?", "kept?"]
    assert table["learned?"].tolist() == ["yes", "", "", ""] and table["kept?"].tolist() == ["", "yes", "yes", "no"]
    assert table["before"][0].endswith("…") and len(table["before"][0]) <= widgets.SHORT
    ui.full.value = True
    assert ui.shown()["before"][0] == ui.table["before"][0] and isinstance(ui.shown(), pd.DataFrame)
    assert "Tiny random model" not in ui.view().data  # a model built in the test has no random-model name
    assert "wb-static" in ui.static_html() and "Priya Okonkwo" in ui.static_html()
