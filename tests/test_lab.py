"""JupyterLab, driven in headless Chromium: open 00_quickstart, Run All Cells, save, check it ran;
open 09_playground, type a fact into its widgets, click Edit, check the before/after table and the
locality check, click Revert, check the weights' hash is back (a screenshot of the edit is saved
under results/screenshots/).

Needs JupyterLab and Playwright (``pip install -e .[lab]``) and Debian's ``chromium`` (Playwright
drives it through ``executable_path``; no browser is downloaded). Skipped when any is missing;
`make test-lab` runs it. The notebook runs with its smoke parameters (WORKBENCH_SMOKE=1).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench import runs

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e .[lab]")
pytest.importorskip("jupyterlab", reason="pip install -e .[lab]")
pytestmark = [pytest.mark.lab, pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy(name: str, folder: Path, code_cells: int | None = None) -> Path:
    """`name` with its outputs cleared (and only its first `code_cells` code cells) into `folder`."""
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    kept, n = [], 0
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            n += 1
            if code_cells is not None and n > code_cells:
                break
            cell["outputs"], cell["execution_count"] = [], None
        kept.append(cell)
    nb["cells"] = kept
    (folder / name).write_text(json.dumps(nb, indent=1))
    return folder / name


def _code_cells_through(name: str, text: str) -> int:
    """How many code cells notebook `name` has up to and including the first whose source holds `text`."""
    code = [c for c in json.loads((ROOT / "notebooks" / name).read_text())["cells"] if c["cell_type"] == "code"]
    return next(i + 1 for i, c in enumerate(code) if text in "".join(c["source"]))


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server over a copy of the quickstart (and of the playground up to its widget, and
    of the loss-scope notebook up to its explorer), outputs cleared."""
    _copy("00_quickstart.ipynb", tmp_path)
    _copy("09_playground.ipynb", tmp_path, code_cells=4)  # imports, parameters, load, the widget
    # ... the mechanism figure, the sweep, the explorer, the findings and the explorer over the real runs
    _copy("01_loss_scope.ipynb", tmp_path, code_cells=_code_cells_through("01_loss_scope.ipynb", 'claim_verdict("loss_scope")'))
    port, token = _free_port(), "workbench-test"
    labconfig = tmp_path / ".jupyter" / "labconfig"  # no "notified about Jupyter news?" toast over the page
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    # every cell stays in the page (JupyterLab 4 otherwise renders only the cells near the view, and a
    # figure above a long output is then not in the DOM to find)
    tracker = tmp_path / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    log = open(tmp_path / "server.log", "w")
    # smoke parameters (the tiny model) unless WORKBENCH_LAB_SMOKE=0: how docs/playground.png was made
    env = {**os.environ, "WORKBENCH_SMOKE": os.environ.get("WORKBENCH_LAB_SMOKE", "1"), "WORKBENCH_RESULTS": str(tmp_path / "results"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(tmp_path / ".runtime")}
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
                               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
                               "--LabApp.news_url=", "--LabApp.expose_app_in_browser=True", "--ServerApp.ip=127.0.0.1", "--allow-root"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", token, tmp_path / "00_quickstart.ipynb"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


COUNTS_JS = """() => {
    const w = window.jupyterapp.shell.currentWidget, cells = w.content.model.cells, out = [];
    let errored = false;
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type !== 'code') continue;
        out.push(cell.executionCount);
        for (let j = 0; j < cell.outputs.length; j++) errored = errored || cell.outputs.get(j).type === 'error';
    }
    // the session and its kernel are null for a moment while JupyterLab attaches them
    const k = w.sessionContext.session && w.sessionContext.session.kernel;
    return {counts: out, errored, idle: !!k && k.connectionStatus === 'connected' && k.status === 'idle'}; }"""


def run_all(page, url: str, token: str, name: str) -> list:
    """Open notebook `name` in JupyterLab, Run All Cells, wait until every code cell ran (or one
    failed); returns the execution counts."""
    page.goto(f"{url}/lab/tree/{name}?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=120_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    # what Run > Run All Cells does, through JupyterLab's own command registry, once the
    # notebook is the current widget (the command is disabled until then)
    page.locator(".jp-Notebook .jp-Cell").first.click()
    page.wait_for_function("() => window.jupyterapp && "
                           "window.jupyterapp.commands.isEnabled('notebook:run-all-cells')", timeout=60_000)
    # the execution indicator reads 'idle' before the kernel's websocket is connected: wait for that too
    page.wait_for_function(f"() => ({COUNTS_JS})().idle", timeout=120_000, polling=500)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # Poll the notebook's model (the DOM renders only the cells in view) until every code cell
    # has an execution count and the kernel is idle again (an error stops Run All: stop waiting then).
    page.wait_for_function(f"() => {{ const s = ({COUNTS_JS})(); return s.errored || (s.idle && s.counts.every(c => c)); }}",
                           timeout=480_000, polling=1000)
    state = page.evaluate(COUNTS_JS)
    assert not state["errored"], page.locator(".jp-OutputArea-output[data-mime-type*='error']").first.inner_text()
    return state["counts"]


def test_quickstart_runs_in_jupyterlab(lab):
    url, token, path = lab
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        counts = run_all(page, url, token, path.name)
        page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=60_000)
        browser.close()
    assert counts == list(range(1, len(counts) + 1)), counts  # every code cell ran, in order
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == counts
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, errors[0]["ename"] + ": " + errors[0]["evalue"]
    # the last cell recorded the quickstart's metrics: the edits really happened in the browser's kernel
    recorded = runs.read(path)
    assert 0.0 <= recorded["token_accuracy_question"] <= 1.0 and recorded


# kept out of the tree (results/ is ignored); docs/playground.png is a copy of one
SCREENSHOT = ROOT / "results" / "screenshots" / "playground.png"


def test_playground_edits_and_reverts_by_clicking(lab):
    """Type a fact into the playground's widgets, click Edit, see the before/after table and the
    locality check, click Revert, and see the weights' hash back at its original value."""
    url, token, quickstart = lab
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        run_all(page, url, token, "09_playground.ipynb")
        state = page.locator("code.wb-state")
        state.wait_for(timeout=120_000)
        original = state.inner_text()
        assert "(original)" in original
        boxes = page.locator(".widget-text input")
        boxes.nth(0).fill("Who designed the Tarnwick Bridge?")
        boxes.nth(1).fill("Ilse Marchetti")
        page.get_by_role("button", name="Edit").click()
        table = page.locator(".widget-output table")
        table.wait_for(timeout=300_000)
        text = table.inner_text()
        assert "Who designed the Tarnwick Bridge?" in text and text.count("locality") == 3
        assert "learned?" in text and "kept?" in text  # answer-level judgements, not token-level equality
        page.locator(".wb-done").wait_for(timeout=60_000)  # the busy line ended ...
        assert page.get_by_role("button", name="Edit").is_enabled()  # ... and Edit is back on
        page.wait_for_selector("code.wb-state[data-state='edited']", timeout=60_000)
        edited = state.inner_text()
        assert edited != original
        page.locator(".widget-output").first.scroll_into_view_if_needed()
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=False)
        page.get_by_role("button", name="Revert").click()
        page.wait_for_selector("code.wb-state[data-state='original']", timeout=120_000)
        assert state.inner_text() == original  # the same hash: the weights are back bitwise
        # the message is displayed just after the state label changes: wait for it rather than read at once
        page.locator(".widget-output", has_text="reverted: weights restored bitwise").first.wait_for(timeout=60_000)
        browser.close()


def test_mechanism_figure_and_explorer_render(lab):
    """01's mechanism figure (plotly, in the browser) and its explorer over the stored smoke runs:
    page to the next request and see it; screenshots of both are saved under results/screenshots/
    (docs/mechanism.png is a copy); then the explorer over claim 9's real runs in store/, opened on
    request 101, whose screenshot docs/explorer.png is a copy of."""
    url, token, _ = lab
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        run_all(page, url, token, "01_loss_scope.ipynb")
        figure = page.locator(".js-plotly-plot").first
        figure.wait_for(timeout=60_000)
        assert "Which tokens carry loss" in figure.text_content()  # SVG text: not in innerText
        figure.scroll_into_view_if_needed()
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        figure.screenshot(path=str(SCREENSHOT.with_name("mechanism.png")))
        # the sweep's explorer (3 smoke requests; the real runs' explorer further down has more), innermost box
        explorer = page.locator(".widget-vbox", has=page.locator("p.wb-explorer", has_text=" of 3)")).last
        explorer.scroll_into_view_if_needed()
        explorer.wait_for(timeout=60_000)
        assert "(1 of 3)" in explorer.text_content()
        explorer.get_by_role("button", name="▶").click()
        page.wait_for_function("() => [...document.querySelectorAll('p.wb-explorer')].some(p => p.innerText.includes('(2 of 3)'))",
                               timeout=30_000)
        # the explorer over the real runs of claim 9 (store/), opened on the request that shows the mechanism
        real = page.locator(".widget-vbox", has=page.locator("p.wb-explorer", has_text="request 101")).last
        real.wait_for(timeout=60_000)
        real.scroll_into_view_if_needed()
        assert "FT-L" in real.text_content() or "all target tokens" in real.text_content()
        real.screenshot(path=str(SCREENSHOT.with_name("explorer.png")))
        browser.close()

