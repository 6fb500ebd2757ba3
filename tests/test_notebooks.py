"""Every notebook runs headless through papermill with smoke parameters; its recorded metrics are
checked for the expected keys and plausible ranges (nbval separately checks committed outputs)."""
from pathlib import Path

import pytest

from workbench import runs
from workbench.cli import run_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SCORES = ("exact_match", "rougeL_f1", "bertscore_f1", "rougeL_recall", "token_acc", "mmlu_acc")


@pytest.fixture(autouse=True)
def smoke(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_SMOKE", "1")  # read by the kernel papermill starts
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "results"))


def execute(name, tmp_path, **params) -> dict:
    got = runs.read(run_notebook(NOTEBOOKS / f"{name}.ipynb", params, tmp_path / "out"))
    for key, value in got.items():
        if key.endswith(SCORES) and value is not None:
            assert -1e-6 <= value <= 1.0 + 1e-6, (key, value)  # scorers return 1.00000008 for identical texts
    return got


def axis_values(got: dict, metric: str) -> set[str]:
    """The arms that recorded `metric` (nbformat stores the keys sorted, so order is not kept)."""
    return {k.rsplit("/", 1)[0] for k in got if k.endswith("/" + metric)}


def test_00_quickstart(tmp_path):
    got = execute("00_quickstart", tmp_path, n_questions=2, max_new_tokens=24, n_batch=4)
    assert got["reverted_exactly"] is True
    assert 1 <= got["steps"] <= 8 and 1 <= got["batch.steps"] <= 4  # smoke caps steps and epochs
    assert 0.0 <= got["token_accuracy_paraphrase"] <= 1.0 and 0.0 <= got["token_accuracy_question"] <= 1.0
    assert {"batch.reliability", "batch.generalisation", "batch.locality_ours"} <= set(got)
    assert (tmp_path / "out" / "loss_curve.html").stat().st_size > 10_000


@pytest.mark.parametrize("name,metric,values", [
    ("01_loss_scope", "ori.rougeL_recall", ["prompt_last", "first_token", "target"]),
    ("02_chat_template", "loc.bertscore_f1", ["True", "False"]),
    ("03_component", "para.rougeL_f1", ["q", "k", "v", "o", "gate", "up", "down"]),
    ("04_layer", "capability.mmlu_acc", ["5", "10", "15", "20", "25"]),
    ("05_df_vs_bf", "ori.exact_match", ["depth_first", "breadth_first"]),
    ("07_method_comparison", "ori.sentence_cosine", [f"{m} / {p}" for m in ("ft-uke", "locft-bf", "ft-m", "ft-l", "lora",
                                                                        "adalora-uke") for p in ("single", "batch")]),
    ("10_batch_editing", "ori.bertscore_f1", ["ft-uke@1", "ft-uke@2", "adalora-uke@1", "adalora-uke@2"]),
])
def test_ablation_notebooks_record_every_arm(tmp_path, name, metric, values):
    got = execute(name, tmp_path)
    assert axis_values(got, metric) == set(values)


def test_06_batch_size_changes_the_number_of_steps(tmp_path):
    got = execute("06_batch_size", tmp_path)
    assert axis_values(got, "steps") == {"1", "5", "10", "25", "50"}
    steps = [got[f"{b}/steps"] for b in (1, 5, 10, 25, 50)]
    assert steps[0] > steps[1] and steps[1:] == sorted(steps[1:], reverse=True)  # fewer, larger steps


def test_08_lifelong_tracks_capability_from_the_start(tmp_path):
    got = execute("08_lifelong", tmp_path)
    assert axis_values(got, "capability.mmlu_acc") == {"0", "1", "2", "3"}
    assert "3/ori.exact_match" in got


def test_09_playground_edits_and_reverts(tmp_path):
    got = execute("09_playground", tmp_path)
    assert got["reverted_exactly"] is True and got["edit_steps"] >= 1 and got["n_locality_probes"] == 3


def test_11_baselines_runs_every_method_in_both_settings(tmp_path):
    got = execute("11_baselines", tmp_path)
    assert axis_values(got, "ori.sentence_cosine") == {"ft-uke", "adalora-uke", "rome", "memit", "unke", "anyedit"}
    assert axis_values(got, "ori.exact_match") == {f"zsre:{m}" for m in ("locft-bf", "ft-m", "memit", "alphaedit")}
