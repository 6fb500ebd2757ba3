"""JupyterLab, driven in headless Chromium: open 00_quickstart, Run All Cells, save, check it ran.

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


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server over a copy of the quickstart with its outputs cleared."""
    nb = json.loads((ROOT / "notebooks" / "00_quickstart.ipynb").read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    (tmp_path / "00_quickstart.ipynb").write_text(json.dumps(nb, indent=1))
    port, token = _free_port(), "workbench-test"
    log = open(tmp_path / "server.log", "w")
    env = {**os.environ, "WORKBENCH_SMOKE": "1", "WORKBENCH_RESULTS": str(tmp_path / "results"),
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


def test_quickstart_runs_in_jupyterlab(lab):
    url, token, path = lab
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{url}/lab/tree/{path.name}?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=120_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
        # what Run > Run All Cells does, through JupyterLab's own command registry, once the
        # notebook is the current widget (the command is disabled until then)
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.wait_for_function("() => window.jupyterapp && "
                               "window.jupyterapp.commands.isEnabled('notebook:run-all-cells')", timeout=60_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        # Poll the notebook's model (the DOM renders only the cells in view) until every code cell
        # has an execution count and the kernel is idle again.
        counts_js = """() => {
            const w = window.jupyterapp.shell.currentWidget, cells = w.content.model.cells, out = [];
            let errored = false;
            for (let i = 0; i < cells.length; i++) {
                const cell = cells.get(i);
                if (cell.type !== 'code') continue;
                out.push(cell.executionCount);
                for (let j = 0; j < cell.outputs.length; j++) errored = errored || cell.outputs.get(j).type === 'error';
            }
            return {counts: out, errored, idle: w.sessionContext.session.kernel.status === 'idle'}; }"""
        # (an error stops Run All, so stop waiting as soon as one shows)
        page.wait_for_function(f"() => {{ const s = ({counts_js})(); return s.errored || (s.idle && s.counts.every(c => c)); }}",
                               timeout=480_000, polling=1000)
        counts = page.evaluate(counts_js)["counts"]
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
