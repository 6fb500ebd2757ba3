"""The results store: cached, atomic runs and sweeps, on the tiny model and the fixture facts."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench import runs
from workbench.runs import RunSpec

TINY = wb.EditConfig(model_name="tiny-random-llama", device="cpu", components=("down",), layers=(1, 2), lr=1e-2,
                     epochs=30, batch_size=3)
SPEC = RunSpec(edit=TINY, benchmark="facts-fixture", n_edits=3, max_new_tokens=8, eval="locft")


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


def test_a_run_is_stored_once_and_reused(store):
    m = runs.execute(SPEC, "exp")
    folder = store / "exp" / SPEC.hash()
    assert sorted(p.name for p in folder.iterdir()) == ["env.json", "metrics.json", "per_probe.jsonl", "provenance.json",
                                                       "spec.json", "summary.csv"]
    assert m["ori.exact_match"] == 1.0 and m["n_edits"] == 3 and m["steps"] > 0
    env = json.loads((folder / "env.json").read_text())
    assert env["versions"]["torch"] and env["config_hash"] == TINY.hash()
    assert env["model_revision"].startswith("random-init:tiny-random-llama")  # provenance: weights, data, scorers
    assert env["data_sha256"] == {"facts-fixture": wb.data.sha256(wb.data.find("facts-fixture"))}
    assert env["scorers"]["minilm_wheel"] and len(env["scorers"]["minilm_weights_sha256"]) == 64
    assert RunSpec.from_dict(json.loads((folder / "spec.json").read_text())) == SPEC
    mtime = (folder / "metrics.json").stat().st_mtime
    assert runs.execute(SPEC, "exp") == m and (folder / "metrics.json").stat().st_mtime == mtime  # skipped
    lines = (folder / "per_probe.jsonl").read_text().splitlines()
    assert len(lines) == 9 and {json.loads(x)["split"] for x in lines} == {"ori", "para", "loc"}


def test_runs_leave_the_cached_model_unedited():
    model, _ = runs.model_for(TINY)
    h0 = wb.models.state_hash(model)
    runs.execute(SPEC.replace(n_edits=2), "exp")
    assert wb.models.state_hash(runs.model_for(TINY)[0]) == h0


def test_single_protocol_scores_each_edit_alone():
    m = runs.execute(SPEC.replace(protocol="single", epochs=60, batch_size=1), "single")
    assert m["ori.exact_match"] == 1.0 and m["n_edits"] == 3
    with pytest.raises(wb.ConfigError, match="capability is measured after the edits of a 'batch' run"):
        SPEC.replace(protocol="single", capability=("mmlu",))


def test_sweep_runs_the_grid_and_load_collects_it(store):
    df = runs.sweep(SPEC, {"layers": [[1], [3]], "n_edits": [2, 3]}, "grid", progress=False)
    assert len(df) == 4 and set(map(tuple, df["layers"])) == {(1,), (3,)}
    again = runs.load("grid")
    assert len(again) == 4 and {"lr", "layers", "benchmark", "ori.exact_match", "hash"} <= set(again.columns)
    assert sorted(runs.sweep(SPEC, {"layers": [[1], [3]], "n_edits": [2, 3]}, "grid", progress=False).hash) == \
        sorted(df.hash)  # all cached
    assert len([p for p in (store / "grid").iterdir() if p.is_dir()]) == 4
    assert len((store / "grid" / "runs.log").read_text().splitlines()) == 4  # executed once each


def test_unwritable_results_fail_up_front(store, monkeypatch):
    blocker = store.parent / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("WORKBENCH_RESULTS", str(blocker / "results"))
    with pytest.raises(wb.WorkbenchError, match="cannot write results to .*WORKBENCH_RESULTS"):
        runs.execute(SPEC, "exp")


def test_notebook_sweep_resumes_after_sigkill(store, tmp_path):
    """`workbench sweep` over 3 points of a one-cell notebook, killed after the first finished point, then
    rerun (the notebooks' own smoke runs are nbval's; this is the sweep's bookkeeping)."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("layers: [[10], [15], [20]]\nn_edits: [2]\n")
    env = {**os.environ, "WORKBENCH_SMOKE": "1", "WORKBENCH_RESULTS": str(store)}
    cmd = [sys.executable, "-m", "workbench.cli", "sweep", "tests/notebooks/sweep_point.ipynb", "--grid", str(grid)]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    exp = store / "sweeps" / "sweep_point"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(exp.glob("*/metrics.json"))) < 1:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: papermill's kernel too
    proc.wait()
    finished = len(list(exp.glob("*/metrics.json")))
    assert 1 <= finished < 3, "kill it half-way"
    subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True, timeout=600)
    done = sorted(exp.glob("*/metrics.json"))
    assert len(done) == 3  # no missing
    params = [json.loads((p.parent / "params.json").read_text())["layers"] for p in done]
    assert sorted(params) == [[10], [15], [20]]  # no duplicate
    assert all(json.loads(p.read_text()) for p in done)  # none corrupt
    assert not [p for p in exp.iterdir() if p.name.startswith(".")]  # no leftovers


def test_from_params_and_preset_axis():
    ns = {"preset": "locft-bf", "layers": [3], "n_edits": 5, "benchmark": "zsre", "plot_height": 300}
    spec = RunSpec.from_params(ns, names=["preset", "layers", "n_edits", "benchmark"])
    assert spec.edit.schedule == "breadth_first" and spec.edit.layers == (3,) and spec.n_edits == 5
    with pytest.raises(wb.ConfigError, match=r"\['n_fact'\] are neither"):
        RunSpec.from_params({"n_fact": 3}, names=["n_fact"])
    lora = SPEC.replace(preset="lora")
    assert lora.edit.method == "lora" and lora.edit.model_name == "tiny-random-llama"
    s = SPEC.replace(n_edits=10, epochs=25).smoke()
    assert s.n_edits == 3 and s.run_config().epochs <= 4 and s.max_new_tokens <= 16
    swapped = s.replace(preset="lora")  # a preset swapped in by a sweep is smoked too
    assert swapped.run_config().steps_per_edit <= 8 and swapped.run_config().model_name == "tiny-random-smollm2"


def test_seeds_replicate_each_point_on_its_own_requests():
    df = runs.sweep(SPEC.replace(n_edits=2), {"layers": [[1], [2]]}, "seeds", progress=False, seeds=[0, 1, 2])
    assert len(df) == 6 and df["hash"].nunique() == 6
    assert sorted(df[df.layers.map(tuple) == (1,)]["offset"]) == [0, 2, 4]  # disjoint blocks of 2 requests
    assert list(df["seed"][:3]) == [0, 1, 2]
    table = runs.over_seeds(df, "layers", ["ori.token_acc", "absent"])
    assert len(table) == 2 and list(table["n_seeds"]) == [3, 3] and "absent" not in table
    values = df[df.layers.map(tuple) == (2,)]["ori.token_acc"].astype(float)
    row = table[table.layers.map(tuple) == (2,)].iloc[0]
    assert row["ori.token_acc"] == pytest.approx(values.mean())
    t_975_2df = 4.302652729911275  # Student-t 97.5 % quantile, 2 degrees of freedom
    assert row["ori.token_acc.ci"] == pytest.approx(t_975_2df * values.std(ddof=1) / 3 ** 0.5)
    assert runs.over_seeds(df[df.seed == 0], "layers", ["ori.token_acc"])["ori.token_acc.ci"].isna().all()


def test_an_identical_run_finished_elsewhere_is_copied_not_rerun(store, monkeypatch):
    first = runs.execute(SPEC, "one")

    def no_training(*args, **kwargs):
        raise AssertionError("the identical run should have been reused")

    monkeypatch.setattr(wb.editing, "edit", no_training)
    assert runs.execute(SPEC, "two") == first
    assert (store / "two" / SPEC.hash() / "per_probe.jsonl").read_text() == \
        (store / "one" / SPEC.hash() / "per_probe.jsonl").read_text()
    with pytest.raises(AssertionError, match="should have been reused"):
        runs.execute(SPEC.replace(lr=2e-2), "two")


def test_reproduction_tables_are_written_from_recorded_metrics(tmp_path):
    from workbench.cli import main
    from workbench.runs import markdown_table

    recorded = {"10/ori.exact_match": 0.5, "10/ori.exact_match.ci": 0.25, "5/ori.exact_match": 1.0,
                "5/ori.exact_match.ci": None, "5/steps": 40}
    assert markdown_table(recorded).splitlines() == [
        "| arm | ori.exact_match | steps |", "|---|---|---|",
        "| 5 | 1.000 | 40.000 |",  # a metric without .ci is printed alone (one seed: no interval)
        "| 10 | 0.500 ± 0.250 |  |"]  # natural order: 5 before 10
    (tmp_path / "layer.json").write_text(json.dumps(recorded))
    assert main(["reproduce", "--tables", "--docs", str(tmp_path)]) == 0
    assert (tmp_path / "layer.md").read_text() == markdown_table(recorded)
    with pytest.raises(SystemExit, match="no claim"):
        main(["reproduce", "not-a-claim"])


def test_probes_can_use_another_template_than_the_edit():
    spec = SPEC.replace(chat_template=False)
    assert spec.eval_config().chat_template is False  # by default, probed as edited
    assert spec.replace(eval_chat_template=True).eval_config().chat_template is True
    assert spec.to_dict()["eval_chat_template"] is None  # spec.json is self-describing: every field written
    assert spec.replace(eval_chat_template=True).hash() != spec.hash()


def test_only_finished_reports_what_is_stored_and_runs_nothing():
    runs.execute(SPEC.replace(n_edits=1), "partial")
    df = runs.sweep(SPEC.replace(n_edits=1), {"lr": [1e-2, 2e-2]}, "partial", progress=False, only_finished=True)
    assert list(df["lr"]) == [1e-2] and len(runs.load("partial")) == 1


def test_lifelong_scores_each_chunk_so_the_old_edits_can_be_told_from_the_new():
    import pandas as pd

    from workbench.data import Request
    from workbench.evaluation import EvalReport, protocols_for, summarize

    seen = [Request(id=str(i), prompt=f"q{i}", target="a") for i in range(4)]
    per_probe = pd.DataFrame({"request": ["0", "1", "2", "3", "3", "0"], "split": ["ori"] * 4 + ["para", "loc"],
                              "kind": [""] * 6, "exact_match": [0.0, 0.0, 1.0, 1.0, 1.0, 0.0]})
    protocols = protocols_for(wb.EvalConfig())
    got = runs.by_chunk(EvalReport(per_probe, summarize(per_probe, protocols)), seen, 2, protocols)
    # the overall 0.5 hides that the first chunk was lost and the second kept
    assert got == {"chunk1.ori.exact_match": 0.0, "chunk2.ori.exact_match": 1.0, "chunk2.para.exact_match": 1.0}


@pytest.mark.parametrize("preset", ["alphaedit", "locft-bf"])
def test_a_sequence_killed_between_stages_resumes_and_ends_as_an_unbroken_one(store, monkeypatch, preset):
    """The weights after a stage, AlphaEdit's preserved keys and the context prefixes (state carried on
    the model) come back from the checkpoint: the resumed sequence stores the unbroken one's stages."""
    from workbench import editing as train
    from workbench.models import state_hash

    quick = dict(v_steps=5, n_prefixes=2, prefix_tokens=3, mom2_tokens=2000, layers=(1, 2)) if preset == "alphaedit" \
        else dict(layers=(2,), lr=1e-2, epochs=3, batch_size=2)
    spec = RunSpec(edit=wb.preset(preset, model_name="tiny-random-llama", device="cpu", **quick),
                   benchmark="facts-fixture", n_edits=6, max_new_tokens=6, eval="locft", splits=("ori", "para"))
    unbroken = runs.lifelong(spec, 2, "unbroken", progress=False)
    model = runs.model_for(spec.run_config())[0]
    h0 = state_hash(model)

    real, calls = train.edit, []

    def dies_on_the_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the session ends mid-sequence
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "edit", dies_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        runs.lifelong(spec, 2, "resumed", progress=False)
    folder = store / "resumed" / spec.replace(chunk_size=2).hash()
    assert not folder.exists() and (folder.parent / (folder.name + ".partial") / "snapshot.pt").exists()
    assert state_hash(model) == h0  # the interrupted run reverted its edits
    monkeypatch.setattr(train, "edit", real)
    # a fresh process would hold no context prefixes: the checkpoint must bring them back
    for k in list(wb.methods.result.carried(model)):
        delattr(model, k)
    resumed = runs.lifelong(spec, 2, "resumed", progress=False)
    import pandas as pd

    def stored(exp):  # every score and step count of every stage; only the seconds may differ
        return pd.read_json(store / exp / spec.replace(chunk_size=2).hash() / "stages.jsonl", lines=True).drop(columns=["edit_s", "run_s"])

    pd.testing.assert_frame_equal(stored("resumed"), stored("unbroken"))
    assert len(resumed) == len(unbroken) == 4 and not (folder.parent / (folder.name + ".partial")).exists()
    assert state_hash(model) == h0


def test_a_sequence_scored_every_second_chunk_ends_as_one_scored_at_every_chunk(store):
    """Scoring reads the model and never changes it: skipping the scoring of chunks 1 and 3 of 5 leaves
    the scored stages' numbers (2, 4 and the last, 5) those of the sequence scored at every chunk."""
    import pandas as pd

    spec = RunSpec(edit=wb.preset("locft-bf", model_name="tiny-random-llama", device="cpu", layers=(2,), lr=1e-2,
                                  epochs=3, batch_size=2), benchmark="facts-fixture", n_edits=5, max_new_tokens=6,
                   eval="locft", splits=("ori", "para"))
    every = runs.lifelong(spec, 1, "every", progress=False).drop(columns=["edit_s", "run_s", "hash"])
    sparse = runs.lifelong(spec, 1, "sparse", progress=False, score_every=2).drop(columns=["edit_s", "run_s", "hash"])
    sequence = spec.replace(chunk_size=1, score_every=2)  # a sequence is named by its spec, chunking included
    assert (store / "sparse" / sequence.hash() / "metrics.json").exists()
    assert RunSpec.from_dict(json.loads((store / "sparse" / sequence.hash() / "spec.json").read_text())) == sequence
    assert list(sparse.n_edits) == [0, 1, 2, 3, 4, 5]
    assert list(sparse.steps[1:]) == list(every.steps[1:]) == [3, 6, 9, 12, 15]
    scored = sparse["ori.exact_match"].notna()
    assert list(sparse.n_edits[scored]) == [2, 4, 5]  # and stage 0, the unedited model, has no edit to score
    pd.testing.assert_frame_equal(sparse[scored].dropna(axis=1, how="all").reset_index(drop=True),
                                  every[every.n_edits.isin([2, 4, 5])].dropna(axis=1, how="all").reset_index(drop=True),
                                  check_like=True)  # the columns in another order: the first stage scored is later
    with pytest.raises(wb.ConfigError, match="score_every=0: give a number of chunks"):
        runs.lifelong(spec, 1, "bad", progress=False, score_every=0)


def test_a_resumed_sequence_edits_exactly_as_an_unbroken_one(tiny, tok):
    """snapshot/resume at the weight level: AlphaEdit's third chunk after a resume gives bitwise the
    weights and preserved keys of an unbroken sequence (it reads both, and the context prefixes)."""
    from workbench.methods.result import carried, resume, snapshot
    from workbench.models import state_hash

    cfg = wb.preset("alphaedit", v_steps=5, n_prefixes=2, prefix_tokens=3, mom2_tokens=2000, layers=(1, 2))
    reqs = wb.data.load("facts-fixture", n=6)
    chunks = [reqs[0:2], reqs[2:4], reqs[4:6]]
    h0 = state_hash(tiny)
    done = [wb.edit(tiny, tok, c, cfg, progress=False) for c in chunks]
    unbroken = snapshot(tiny, done)
    for r in reversed(done):
        r.revert()
    done = [wb.edit(tiny, tok, c, cfg, progress=False) for c in chunks[:2]]
    snap = snapshot(tiny, done)
    for r in reversed(done):
        r.revert()
    for k in list(carried(tiny)):  # as in a fresh process
        delattr(tiny, k)
    assert state_hash(tiny) == h0
    done = [resume(tiny, cfg, snap, [r.id for r in reqs[:4]]), wb.edit(tiny, tok, chunks[2], cfg, progress=False)]
    again = snapshot(tiny, done)
    assert unbroken["weights"].keys() == again["weights"].keys()
    assert all(torch.equal(unbroken["weights"][n], again["weights"][n]) for n in again["weights"])
    keys = "_workbench_alphaedit_keys"
    assert all(torch.equal(unbroken["carried"][keys][l], again["carried"][keys][l]) for l in (1, 2))
    for r in reversed(done):
        r.revert()
    assert state_hash(tiny) == h0 and not carried(tiny)


def test_exclude_holds_another_benchmarks_requests_apart():
    spec = RunSpec(benchmark="knowedit-zsre", n_edits=852, exclude="zsre")
    held = {" ".join(r.prompt.lower().split()) for r in wb.data.load("zsre")}
    reqs = runs.requests_for(spec)
    assert len(reqs) == 852 and not any(" ".join(r.prompt.lower().split()) in held for r in reqs)
    assert RunSpec(benchmark="knowedit-zsre", n_edits=5).hash() == spec.replace(exclude=None, n_edits=5).hash()
    with pytest.raises(wb.ConfigError, match="only 852 requests after offset 0 without those in zsre"):
        runs.requests_for(spec.replace(n_edits=853))
