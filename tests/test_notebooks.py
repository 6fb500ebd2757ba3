"""Each notebook runs headless through papermill with smoke parameters; its recorded metrics are checked."""
import os
from pathlib import Path

import pytest

from workbench import runs
from workbench.cli import run_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(autouse=True)
def smoke(monkeypatch):
    monkeypatch.setenv("WORKBENCH_SMOKE", "1")  # read by the kernel papermill starts


def test_quickstart(tmp_path):
    executed = run_notebook(NOTEBOOKS / "00_quickstart.ipynb", {"n_questions": 2, "max_new_tokens": 24}, tmp_path)
    got = runs.read(executed)
    assert set(got) == {"token_accuracy_question", "token_accuracy_paraphrase", "steps", "reverted_exactly"}
    assert got["reverted_exactly"] is True
    assert 1 <= got["steps"] <= 8  # the smoke config caps steps_per_edit at 8
    assert 0.0 <= got["token_accuracy_paraphrase"] <= got["token_accuracy_question"] + 0.2 <= 1.2
    assert (tmp_path / "loss_curve.html").stat().st_size > 10_000
