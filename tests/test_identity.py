"""Run identity (schema 3): methods own their parameters, the store's runs hash to their folders, an old
store migrates, and a method written outside the package edits, stores and reverts like a built-in one."""
import dataclasses
import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench import config, runs
from workbench.runs import RunSpec, migrate

STORE = Path(__file__).resolve().parents[1] / "store"


def stored_specs():
    return [(p.parent, json.loads(p.read_text())) for p in sorted(STORE.glob("*/*/spec.json"))]


def test_every_stored_run_hashes_to_its_folder_and_reads_back():
    specs = stored_specs()
    assert len(specs) >= 100
    for folder, stored in specs:
        spec = RunSpec.from_dict(stored)
        assert spec.hash() == folder.name, folder
        assert spec.to_dict() == stored, f"{folder}: spec.json is not self-describing"


def test_a_new_parameter_of_one_method_moves_no_other_methods_runs(monkeypatch):
    old = config.method("rome")
    knob = dataclasses.make_dataclass("RomeWithKnob", [("new_knob", float, 0.0)], bases=(old.params,), frozen=True)
    before = {folder: RunSpec.from_dict(stored).hash() for folder, stored in stored_specs()}
    monkeypatch.setitem(config._METHODS, "rome", dataclasses.replace(old, params=knob))
    after = {folder: RunSpec.from_dict(stored).hash() for folder, stored in stored_specs()}
    methods = {folder: stored["edit"]["method"] for folder, stored in stored_specs()}
    assert all(after[f] == before[f] for f in before if methods[f] != "rome")
    assert any(methods[f] != "rome" for f in before)
    # a shared default or a speed setting: neither is any single method's, and speed names nothing
    spec = RunSpec.from_dict(stored_specs()[0][1])
    assert spec.replace(value_batch=3, parallel_edits=2, prefix_cache=False).hash() == spec.hash()
    assert spec.replace(lr=spec.edit.lr * 2).hash() != spec.hash()


def test_parameters_belong_to_their_method():
    rome = wb.preset("rome", v_lr=0.3)
    assert rome.v_lr == 0.3 and type(rome.params).__name__ == "RomeParams" and "lora_rank" not in rome.to_dict()["params"]
    with pytest.raises(wb.ConfigError, match="lora_rank is a parameter of lora, adalora, not of 'rome'"):
        wb.preset("rome", lora_rank=4)
    with pytest.raises(AttributeError, match="a parameter of rome"):
        wb.preset("ft-uke").kl_factor
    memit = rome.replace(method="memit")  # what both have is kept
    assert memit.v_lr == 0.3 and memit.mom2_weight == 15000.0
    assert wb.EditConfig.from_dict(memit.to_dict()) == memit
    flat = {**{k: v for k, v in memit.to_dict().items() if k not in ("params", "speed")}, **memit.to_dict()["params"]}
    assert wb.EditConfig.from_dict(flat) == memit  # the presets' flat form reads the same


def test_an_old_store_migrates_once_and_every_run_keeps_its_results(tmp_path):
    # an old-format run: every field of every method, ADDED_LATER fields omitted at their defaults
    spec = RunSpec.from_dict(stored_specs()[0][1])
    old = {**{k: v for k, v in spec.to_dict().items() if k not in ("eval_chat_template", "exclude", "chunk_size",
                                                                       "score_every")}}
    edit = {k: v for k, v in spec.edit.to_dict().items() if k not in ("params", "speed")}
    edit.update(spec.edit.params.to_dict())
    edit.update(spec.edit.speed.to_dict())
    edit.pop("prefix_cache_dtype")
    edit.update({"lora_rank": 8, "kl_factor": 0.0625, "v_lr": 0.5})  # other methods' fields, never read by ft
    old["edit"] = {k: v for k, v in edit.items() if not (k in migrate.LEGACY_EDIT and v == migrate.LEGACY_EDIT[k])}
    folder = tmp_path / "exp" / migrate.legacy_hash(old)
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(old))
    (folder / "metrics.json").write_text('{"ori.rouge_l": 0.5}')
    stray = tmp_path / "exp" / "0123456789ab"  # a folder whose spec does not hash to its name: refused
    shutil.copytree(folder, stray)
    with pytest.raises(wb.WorkbenchError, match="0123456789ab: its spec.json hashes to"):
        migrate.migrate(tmp_path, apply=True)
    assert folder.exists() and (folder / "spec.json").read_text() == json.dumps(old)  # nothing written
    shutil.rmtree(stray)
    moves = migrate.migrate(tmp_path, apply=True)
    assert [(o.name, n.name) for o, n, _ in moves] == [(folder.name, spec.hash())]
    new = tmp_path / "exp" / spec.hash()
    assert RunSpec.from_dict(json.loads((new / "spec.json").read_text())) == spec
    assert json.loads((new / "metrics.json").read_text()) == {"ori.rouge_l": 0.5}
    assert migrate.migrate(tmp_path, apply=True) == []  # a second run moves nothing


THROWAWAY = '''
"""A method written outside the package: scale one layer's selected weights by (1 + gain)."""
from dataclasses import dataclass

import pandas as pd
import torch

from workbench.components import resolve
from workbench.config import MethodParams, register_method
from workbench.methods.result import EditResult


@dataclass(frozen=True)
class ScaleParams(MethodParams):
    gain: float = 0.5

    NON_NEGATIVE = ("gain",)


def edit(model, tok, requests, cfg, progress=True):
    params = dict(model.named_parameters())
    names = [f"{t.name}.weight" for t in resolve(model, cfg.components, cfg.layers)]
    originals = {n: params[n].detach().clone() for n in names}
    with torch.no_grad():
        for n in names:
            params[n].mul_(1 + cfg.gain)
    log = pd.DataFrame({"step": [0], "epoch": [0], "edit": [0], "loss": [0.0], "skipped": [False],
                        "requests": [[r.id for r in requests]]})
    return EditResult(model, cfg, [r.id for r in requests], originals, log, {"total_s": 0.0, "train_s": 0.0},
                      sum(params[n].numel() for n in names))


register_method("scale", ScaleParams, edit)
'''


def test_a_method_from_a_new_module_edits_stores_and_reverts(tmp_path, monkeypatch, tiny, tok, facts):
    (tmp_path / "scale_method.py").write_text(textwrap.dedent(THROWAWAY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(config, "_METHODS", dict(config._METHODS))  # the registration ends with the test
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "results"))
    import scale_method  # noqa: F401  (its import registers "scale")

    try:
        cfg = wb.EditConfig(model_name="tiny-random-llama", device="cpu", method="scale", layers=(2,), gain=1.0)
        assert "scale" in config.methods() and cfg.gain == 1.0
        with pytest.raises(wb.ConfigError, match="gain=-1.0 must be >= 0"):
            cfg.replace(gain=-1)
        w = tiny.model.layers[2].mlp.down_proj.weight
        before = w.detach().clone()
        result = wb.edit(tiny, tok, facts[:2], cfg, progress=False)
        assert torch.equal(w, 2 * before)
        result.revert()
        assert torch.equal(w, before)

        spec = RunSpec(edit=cfg, benchmark="facts-fixture", n_edits=2, max_new_tokens=4, eval="locft", splits=("ori",))
        metrics = runs.execute(spec, "throwaway")
        folder = tmp_path / "results" / "throwaway" / spec.hash()
        stored = json.loads((folder / "spec.json").read_text())
        assert stored["edit"]["params"] == {"gain": 1.0} and RunSpec.from_dict(stored) == spec
        assert metrics["n_edits"] == 2
        assert spec.replace(gain=0.5).hash() != spec.hash()
    finally:
        sys.modules.pop("scale_method", None)


def test_a_sequence_is_named_by_its_spec_and_is_not_a_single_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    spec = RunSpec(benchmark="facts-fixture", n_edits=4)
    sequence = spec.replace(chunk_size=2)
    assert sequence.hash() != spec.hash() and RunSpec.from_dict(sequence.to_dict()) == sequence
    with pytest.raises(wb.ConfigError, match=r"a sequence \(chunk_size=2\): run it with runs.lifelong"):
        runs.execute(sequence, "exp")
    with pytest.raises(wb.ConfigError, match="protocol='batch'"):
        sequence.replace(protocol="single")
