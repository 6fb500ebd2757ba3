"""What each notebook's smoke run must record (its `wb.runs.record` outputs): the expected keys and
plausible ranges. Checked twice from one definition: by `notebooks/conftest.py` on the records of the
run nbval executes in the default `make test` (so each notebook runs once there), and by the slow
papermill tests in tests/test_notebooks.py (`make test-slow`), which also pass other parameters."""
from __future__ import annotations

SCORES = ("exact_match", "rougeL_f1", "bertscore_f1", "rougeL_recall", "token_acc", "mmlu_acc")

ARMS = {  # ablation notebook -> (a metric every arm records, the arms)
    "01_loss_scope": ("ori.rougeL_recall", ["prompt_last", "first_token", "target"]),
    "02_chat_template": ("loc.bertscore_f1", ["True", "False"]),
    "03_component": ("para.rougeL_f1", ["q", "k", "v", "o", "gate", "up", "down"]),
    "04_layer": ("capability.mmlu_acc", ["5", "10", "15", "20", "25"]),
    "05_df_vs_bf": ("ori.exact_match", ["depth_first", "breadth_first"]),
    "07_method_comparison": ("ori.sentence_cosine", [f"{m} / {p}" for m in ("ft-uke", "locft-bf", "ft-m", "ft-l", "lora",
                                                                            "adalora-uke") for p in ("single", "batch")]),
    "10_batch_editing": ("ori.bertscore_f1", ["ft-uke@1", "ft-uke@2", "adalora-uke@1", "adalora-uke@2"]),
}


def axis_values(got: dict, metric: str) -> set[str]:
    """The arms that recorded `metric` (nbformat stores the keys sorted, so order is not kept)."""
    return {k.rsplit("/", 1)[0] for k in got if k.endswith("/" + metric)}


def scores_in_range(got: dict) -> None:
    for key, value in got.items():
        if key.endswith(SCORES) and value is not None:
            assert -1e-6 <= value <= 1.0 + 1e-6, (key, value)  # scorers return 1.00000008 for identical texts


def check(name: str, got: dict) -> None:
    """Assert what notebook `name`'s smoke run recorded (`got`: its records, later overriding earlier)."""
    assert got, f"{name}: nothing recorded"
    scores_in_range(got)
    if name in ARMS:
        metric, values = ARMS[name]
        assert axis_values(got, metric) == set(values), (name, metric)
    elif name == "00_quickstart":
        assert got["reverted_exactly"] is True
        assert 1 <= got["steps"] <= 8 and 1 <= got["batch.steps"] <= 4  # smoke caps steps and epochs
        assert 0.0 <= got["token_accuracy_paraphrase"] <= 1.0 and 0.0 <= got["token_accuracy_question"] <= 1.0
        assert {"batch.reliability", "batch.generalisation", "batch.locality_ours"} <= set(got)
        # your own facts: from a JSON file with a field mapping, checked, saved and reloaded by transformers
        assert got["own.facts"] == 3 and 0 <= got["own.learnt"] <= 3 and got["own.reloaded_same"] is True
    elif name == "06_batch_size":
        assert axis_values(got, "steps") == {"1", "5", "10", "25", "50"}
        steps = [got[f"{b}/steps"] for b in (1, 5, 10, 25, 50)]
        assert steps[0] > steps[1] and steps[1:] == sorted(steps[1:], reverse=True)  # fewer, larger steps
    elif name == "08_lifelong":
        assert axis_values(got, "capability.mmlu_acc") == {"0", "1", "2", "3"}
        assert "3/ori.exact_match" in got
    elif name == "00b_from_scratch":
        # the plain-PyTorch loop and wb.edit trained the same weights, in the same number of steps
        assert got["same_weights"] is True and got["max_abs_diff"] < 1e-5 and got["steps"] >= 1
        assert got["n_labelled"] >= 2  # the answer's tokens and its end-of-turn
    elif name == "09_playground":
        assert got["reverted_exactly"] is True and got["edit_steps"] >= 1 and got["n_locality_probes"] == 3
        assert isinstance(got["learned"], bool) and 0 <= got["n_kept"] <= 3  # answer-level judgements
    elif name == "11_baselines":
        assert axis_values(got, "ori.sentence_cosine") == {"ft-uke", "adalora-uke", "rome", "memit", "unke", "anyedit"}
        assert axis_values(got, "ori.exact_match") == {f"zsre:{m}" for m in ("locft-bf", "ft-m", "memit", "alphaedit")}
    else:
        raise AssertionError(f"{name}: no record check written for this notebook (tests/notebook_records.py)")
