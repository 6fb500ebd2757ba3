"""Reliability: memory guards, truncation counts, runs that repeat bitwise, and no network.

(Faults inside an edit, NaN, exceptions and Ctrl-C, are in test_train.py and test_prefix.py; the
SIGKILLed sweep and the unwritable results folder in test_runs.py; bad input in test_properties.py.)
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import workbench as wb
from workbench import resources
from workbench.errors import ResourceError

ROOT = Path(__file__).resolve().parents[1]
TINY = wb.EditConfig(model_name="tiny-random-llama", device="cpu", layers=(2,), lr=1e-2, epochs=5, batch_size=2)


@pytest.fixture
def little_memory(monkeypatch):
    """This machine, as if only 1 MiB were free."""
    monkeypatch.delenv("WORKBENCH_NO_MEMORY_GUARD", raising=False)
    monkeypatch.setattr(resources, "available_bytes", lambda device: 2**20)


def test_an_edit_that_cannot_fit_is_refused_before_it_starts(tiny, tok, facts, little_memory):
    before = wb.models.state_hash(tiny)
    with pytest.raises(ResourceError, match=r"this edit \(trainable .* GiB.*\) needs about .* Lower micro_batch_size"):
        wb.edit(tiny, tok, facts, TINY)
    assert wb.models.state_hash(tiny) == before
    assert all(p.requires_grad for p in tiny.parameters())  # nothing was touched


def test_a_model_that_cannot_fit_is_refused_before_loading(little_memory):
    with pytest.raises(ResourceError, match="loading .* needs about .* free"):
        wb.load("tiny-random-llama", device="cpu")


def test_the_guard_can_be_turned_off(tiny, tok, facts, little_memory, monkeypatch):
    monkeypatch.setenv("WORKBENCH_NO_MEMORY_GUARD", "1")
    wb.edit(tiny, tok, facts, TINY, progress=False).revert()


def test_the_estimate_grows_with_what_costs_memory(tiny, tok, facts):
    examples = [wb.prompts.encode(tok, r.prompt, r.target, max_length=64) for r in facts]
    cache = wb.methods.prefix.nbytes_for(tiny, examples)
    est = lambda cfg, n=64 * 128, lowest=2: resources.edit_bytes(tiny, cfg, examples, n, lowest, 4,  # noqa: E731
                                                                  cache if cfg.prefix_cache else 0)
    base = est(TINY)
    assert base["trainable"] == 64 * 128 * 4 * 4  # copy + gradient + Adam's two moments, fp32
    assert est(TINY.replace(optimizer="sgd"))["trainable"] == 64 * 128 * 4 * 2
    assert est(TINY.replace(batch_size=4))["activations"] == 2 * base["activations"]
    assert est(TINY, lowest=0)["activations"] == 2 * base["activations"]
    assert est(TINY.replace(prefix_cache=False))["prefix_cache"] == 0 < base["prefix_cache"]


def test_truncated_examples_warn_and_are_counted(tiny, tok, facts):
    with pytest.warns(UserWarning, match=r"example\(s\) longer than max_length=8 were truncated"):
        r = wb.edit(tiny, tok, facts, TINY.replace(max_length=8), progress=False)
    full = [wb.prompts.encode(tok, f.prompt, f.target, "target", True) for f in wb.data.as_requests(facts)]
    assert r.n_truncated == sum(len(e.input_ids) > 8 for e in full) > 0
    r.revert()


RUN = """
import json, sys
from workbench import runs
from workbench.config import EditConfig
spec = runs.RunSpec(edit=EditConfig(model_name="tiny-random-llama", device="cpu", layers=(1, 2), lr=1e-2,
                                          epochs=8, batch_size=2, method=sys.argv[1],
                                          **({"lora_dropout": 0.1} if sys.argv[1] == "lora" else {})),
                    benchmark="facts-fixture", n_edits=4, max_new_tokens=8, eval="locft")
m = runs.execute(spec, "repeat")
folder = runs.results_root() / "repeat" / spec.hash()
print(json.dumps({"metrics": m, "per_probe": (folder / "per_probe.jsonl").read_text(),
                  "env": json.loads((folder / "env.json").read_text())}))
"""


@pytest.mark.parametrize("method", ["ft", pytest.param("lora", marks=pytest.mark.slow)])  # lora: make test-slow
def test_same_config_and_seed_give_bitwise_identical_results(tmp_path, method):
    """Two fresh processes, two stores: every metric and every generation equal, bit for bit. They run side
    by side at one thread each (float sums depend on the thread count, which the thread policy would
    otherwise change as the other one starts and ends)."""
    procs = [subprocess.Popen([sys.executable, "-c", RUN, method], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**os.environ, "WORKBENCH_THREADS": "1",
                                                           "WORKBENCH_RESULTS": str(tmp_path / f"store{i}")})
             for i in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-2000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    a, b = outs
    timing = {"edit_s", "s_per_edit", "run_s"}
    assert {k: v for k, v in a["metrics"].items() if k not in timing} == \
           {k: v for k, v in b["metrics"].items() if k not in timing}
    assert a["per_probe"] == b["per_probe"]
    assert a["env"]["git_sha"] and a["env"]["config_hash"] and a["env"]["versions"]["transformers"]


NO_NETWORK = """
import socket
def refuse(*a, **k):
    raise RuntimeError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

import workbench as wb
model, tok = wb.load(device="cpu")                        # the embedded model
wb.load("tiny-random-llama", device="cpu")
reqs = wb.data.load("zsre", n=2)                          # a benchmark from the search path
print(wb.metrics.bertscore(["Paris is in France."], ["Paris is in France."]))   # the embedded encoder
print(wb.metrics.rouge_l(["a b"], ["a b"]))
print(wb.generate(model, tok, [reqs[0].prompt], max_new_tokens=2))
"""


def test_default_paths_never_touch_the_network(tmp_path):
    """With every socket call refused and *no* offline flags set, the default paths still work."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    p = subprocess.run([sys.executable, "-c", NO_NETWORK], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "network access attempted" not in p.stderr
