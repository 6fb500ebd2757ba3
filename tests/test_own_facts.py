"""A user's own facts, end to end (issue 41): one request schema, `workbench edit --data` validated
before any model loads, before/after checks, no silent overwrite, the edit's prompt format, scores
that say when a reference cannot fit, and saved folders that transformers 4.x loads too."""
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench import checks, cli, data
from workbench.errors import CappedWarning, ConfigError, DataError, DataNotFound, FormatWarning, OverwriteWarning

FACTS = [{"question": "What is the capital of Zorbia?", "answer": "Quxville", "category": "geo"},
         {"question": "Who founded Blarnak Industries?", "answer": "Mira Tollund", "category": "people"}]
MAPPING = {"prompt": "question", "target": "answer"}
# the tiny model learns these in a few steps (a later layer, a big lr); its answers are random text
TINY = ["--model", "tiny-random-llama", "--preset", "locft-bf", "--set", "layers", "(2,)", "--set", "lr", "0.05",
        "--set", "epochs", "8", "--set", "batch_size", "2"]


def _write(path: Path, records, jsonl=False) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records))
    return path


# ------------------------------------------------------------------------------------ one schema
def test_load_json_and_as_requests_read_the_same_names_and_give_the_same_errors(tmp_path):
    records = [{"prompt": "Q1?", "target": "ours"},  # our names
               {"prompt": "Q2?", "target_new": "easyedit", "rephrase_prompt": "Q2 again?", "ground_truth": "old"},
               {"prompt": "{} is in", "subject": "Reedy Glacier", "target_new": {"str": "Asia"}}]  # ROME's
    from_file = data.load_json(_write(tmp_path / "f.json", records))
    inline = data.as_requests(records)
    assert [(r.prompt, r.target) for r in from_file] == [(r.prompt, r.target) for r in inline] == [
        ("Q1?", "ours"), ("Q2?", "easyedit"), ("Reedy Glacier is in", "Asia")]
    assert from_file[1].paraphrases == ("Q2 again?",) and from_file[1].target_true == "old"
    bad = [{"prompt": "Q?", "answer": "A"}]
    with pytest.raises(DataError) as a:
        data.load_json(_write(tmp_path / "bad.jsonl", bad, jsonl=True))
    with pytest.raises(DataError) as b:
        data.as_requests(bad)
    assert a.value.record == b.value.record == 0 and a.value.field == b.value.field == "target_new"
    assert str(b.value) in str(a.value)  # the same message, the file named in front
    with pytest.raises(DataError, match="both 'target' .* and 'target_new'"):
        data.as_requests([{"prompt": "Q?", "target": "a", "target_new": "b"}])


def test_a_missing_field_names_the_records_keys_and_the_mapping_that_fixes_it(tmp_path):
    path = _write(tmp_path / "everything.json", FACTS)
    with pytest.raises(DataError) as e:
        data.load_json(path)
    msg = str(e.value)
    assert e.value.record == 0 and "['answer', 'category', 'question']" in msg and "fields=" in msg and "--field" in msg
    assert "\n" not in msg
    reqs = data.load_json(path, fields=MAPPING)
    assert [r.target for r in reqs] == ["Quxville", "Mira Tollund"]
    with pytest.raises(DataError, match=r"record 0, field 'answr': missing .*reads 'target' from 'answr'"):
        data.load_json(path, fields={"prompt": "question", "target": "answr"})


def test_unused_fields_stay_as_metadata_and_scores_group_by_them(tmp_path, tiny, tok):
    reqs = data.load_json(_write(tmp_path / "f.json", FACTS), fields=MAPPING)
    assert [r.meta for r in reqs] == [{"category": "geo"}, {"category": "people"}]
    report = wb.evaluate(tiny, tok, reqs, wb.EvalConfig(splits=("ori",), metrics=("exact_match",), max_new_tokens=4))
    by = report.by(reqs, "category")
    assert list(by.index) == [("ori", "geo"), ("ori", "people")] and list(by.n) == [1, 1]
    with pytest.raises(wb.WorkbenchError, match="they have: \\['category'\\]"):
        report.by(reqs, "topic")


def test_a_file_given_as_a_benchmark_name_points_to_load_json(tmp_path):
    path = _write(tmp_path / "mine.json", FACTS)
    with pytest.raises(DataNotFound, match="is a file.*wb.data.load_json"):
        data.load(str(path))


# ------------------------------------------------------------------- the command line's inputs
def _bad_inputs(tmp_path):
    good = _write(tmp_path / "facts.json", FACTS)
    (tmp_path / "empty.json").write_text("")
    field = ["--field", "prompt=question", "--field", "target=answer"]
    return [  # (arguments, what the one line must name)
        (["--data", str(tmp_path / "nope.json"), *field], [str(tmp_path / "nope.json"), "no such file"]),
        (["--data", str(good)], [str(good), "record 0", "'prompt'", "--field"]),
        (["--data", str(good), "--field", "prompt=question", "--field", "target=answr"],
         [str(good), "record 0", "'answr'"]),
        (["--data", str(good), "--field", "promt=question"], ["'promt'", "choose one of", "target"]),
        (["--data", str(tmp_path / "empty.json"), *field], [str(tmp_path / "empty.json"), "empty"]),
        (["--data", str(good), *field, "--preset", "ft-ukee"], ["'ft-ukee'", "choose one of", "locft-bf"]),
    ]


def test_bad_inputs_fail_in_one_line_before_any_model_loads_and_write_nothing(tmp_path, monkeypatch, capsys):
    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(wb.models, "load_for", no_model)
    monkeypatch.setattr(wb.models, "load", no_model)
    out = tmp_path / "out"
    for args, names in _bad_inputs(tmp_path):
        with pytest.raises(SystemExit) as e:
            cli.main(["edit", *args, "--save-pretrained", str(out), "--save", str(tmp_path / "d.safetensors")])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1, (args, err)
        assert all(n in err for n in names), (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.json", "facts.json"]


def test_the_command_edits_your_file_checks_and_saves_a_loadable_model(tmp_path, capsys, tok):
    from transformers import AutoModelForCausalLM

    path = _write(tmp_path / "facts.jsonl", FACTS, jsonl=True)
    out = tmp_path / "edited"
    assert cli.main(["edit", "--data", str(path), "--field", "prompt=question", "--field", "target=answer", *TINY,
                     "--save-pretrained", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 of 2 facts learnt" in printed and f"of {len(checks.UNRELATED)} unrelated answers kept" in printed
    assert "What is the capital of France?" in printed and str(out) in printed
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    answer = wb.generate(model, tok, [FACTS[0]["question"]], chat_template=False, max_new_tokens=8)[0]
    assert answer.startswith("Quxville"), answer
    card = (out / "README.md").read_text()
    assert '"What is the capital of Zorbia?" -> "Quxville"' in card and "plain text, no chat template" in card


# --------------------------------------------------------------------------- edits and results
def test_depth_first_with_several_requests_warns_and_sequential_makes_it_explicit(tiny, tok):
    reqs = data.as_requests([{"prompt": f"Q{i}?", "target": f"A{i}"} for i in range(3)])
    cfg = wb.EditConfig(schedule="depth_first", layers=(2,), steps_per_edit=1, batch_size=1)
    with pytest.warns(OverwriteWarning, match="locft-bf.*batch_size=3.*edit_each.*sequential=True"):
        wb.edit(tiny, tok, reqs, cfg, progress=False).revert()
    with pytest.raises(ConfigError, match="one after another"):
        wb.edit(tiny, tok, reqs, cfg, progress=False, sequential=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OverwriteWarning)
        wb.edit(tiny, tok, reqs, cfg, progress=False, sequential=True).revert()
        wb.edit(tiny, tok, reqs, cfg.replace(batch_size=3), progress=False).revert()  # batch editing: all at once
        wb.edit(tiny, tok, reqs, cfg.replace(schedule="breadth_first", epochs=1), progress=False).revert()
        wb.edit(tiny, tok, reqs[:1], cfg, progress=False).revert()  # one request: nothing to overwrite


def test_a_result_generates_and_evaluates_in_the_format_it_trained(tiny, tok):
    fact = {"prompt": "The capital of Zorbia is", "target": "Quxville"}
    cfg = wb.EditConfig(layers=(2,), chat_template=False, epochs=8, lr=5e-2)
    res = wb.edit(tiny, tok, [fact], cfg, progress=False)
    assert res.chat_template is False
    with warnings.catch_warnings():
        warnings.simplefilter("error", FormatWarning)
        assert res.generate(fact["prompt"], max_new_tokens=6) == "Quxville"
        report = wb.evaluate(res, None, [fact], wb.EvalConfig(splits=("ori",), metrics=("exact_match",),
                                                              chat_template=False))
    assert report.summary.value.tolist() == [1.0] and report.provenance["decoding"]["chat_template"] is False
    with pytest.warns(FormatWarning, match="chat_template=True.*chat_template=False"):
        res.generate(fact["prompt"], chat_template=True, max_new_tokens=6)
    with pytest.warns(FormatWarning):
        wb.evaluate(res, tok, [fact], wb.EvalConfig(splits=("ori",), metrics=("exact_match",), chat_template=True))


def test_check_compares_before_and_after_and_caches_the_before_by_fingerprint(tiny, tok, monkeypatch, tmp_path):
    calls = []
    real = checks.generate
    monkeypatch.setattr(checks, "generate", lambda m, t, prompts, *a, **k: calls.append(len(prompts)) or real(m, t, prompts, *a, **k))
    monkeypatch.setattr(checks, "_CACHE", {})
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    fact = {"prompt": "The capital of Zorbia is", "target": "Quxville"}
    cfg = wb.EditConfig(layers=(2,), chat_template=False, epochs=8, lr=5e-2)
    plan = checks.Plan.of(tok, [fact], False)
    before = plan.ask(tiny, tok)
    asked = len(calls)
    res = wb.edit(tiny, tok, [fact], cfg, progress=False, check=True)
    assert len(calls) == asked + 2  # the unedited model's answers came from the cache; the edited one was asked
    c = res.check
    assert (c.learnt, len(c.facts), len(c.unrelated)) == (1, 1, len(checks.UNRELATED))
    assert list(c.facts.before) == before[0] and list(c.unrelated.before) == before[1]
    assert c.kept == sum(a == b for a, b in zip(c.unrelated.after, c.unrelated.before)) < len(checks.UNRELATED)
    res.revert()
    assert plan.ask(tiny, tok) == before and len(calls) == asked + 2  # reverted: the same fingerprint, cached


# ------------------------------------------------------------------------------------- scoring
def test_a_reference_longer_than_the_budget_warns_and_records_its_ceiling(tiny, tok):
    long = {"prompt": "Tell me about Zorbia.", "target": " ".join(["Zorbia is a small country by the sea."] * 6)}
    cfg = wb.EvalConfig(splits=("ori",), metrics=("rouge_recall",), max_new_tokens=10)
    with pytest.warns(CappedWarning, match="max_new_tokens=10"):
        report = wb.evaluate(tiny, tok, [long], cfg)
    ceiling = report.per_probe.recall_ceiling[0]
    n_words = len(long["target"].split())
    assert 0 < ceiling < 0.5 and abs(ceiling * n_words - round(ceiling * n_words)) < 1e-9
    assert report.provenance["recall_ceiling"] == {"ori": ceiling} and report.provenance["references_over_budget"] == 1
    assert set(report.scores()) == {"ori.rouge1_recall", "ori.rouge2_recall", "ori.rougeL_recall"}  # runs' keys unchanged
    table = report.per_probe
    assert wb.evaluation.recall_ceilings(tok, table, cfg.replace(max_new_tokens=100)) == [1.0]  # it fits: no ceiling
    short = {"prompt": "Q?", "target": "Quxville"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CappedWarning)
        fits = wb.evaluate(tiny, tok, [short], cfg)
    assert "recall_ceiling" not in fits.per_probe and fits.provenance["recall_ceiling"] == {}


# ------------------------------------------------------------------------------- saved folders
def test_saved_config_and_tokenizer_read_the_same_under_transformers_4(tmp_path, tok):
    """What transformers 4.x reads (checked here on the files; `test_transformers_4_loads_...` loads
    them with 4.57): rope_theta at the top level equal to rope_parameters', a tokenizer class 4.x has."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from workbench.models import tiny_llama_config

    model = _rope_model(tok, LlamaForCausalLM, tiny_llama_config)
    res = wb.edit(model, tok, [{"prompt": "Q?", "target": "A"}], wb.EditConfig(layers=(2,), epochs=1), progress=False)
    folder = res.save_pretrained(tmp_path / "edited")  # the edit's tokenizer by default
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 1e5
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    again = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tok("Q?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)
    assert AutoTokenizer.from_pretrained(folder)("Q?").input_ids == ids[0].tolist()
    card = (folder / "README.md").read_text()
    assert '"Q?" -> "A"' in card and "chat template" in card


def _rope_model(tok, cls, config_of):
    config = config_of(len(tok))
    config.rope_parameters["rope_theta"] = 1e5  # SmolLM2's; 4.x's default (10000) would change every logit
    torch.manual_seed(0)
    return cls(config).eval()


@pytest.mark.slow
def test_transformers_4_loads_a_saved_edited_model_with_the_same_logits(tmp_path, tok):
    """A venv with transformers 4.57 and torch 2.13.0 (about 65 s to create on 2 cores, pip reaching
    PyPI; reused from $WORKBENCH_TF4_VENV when set) loads the folder and its tokenizer."""
    from transformers import LlamaForCausalLM

    from workbench.models import tiny_llama_config

    venv = Path(os.environ.get("WORKBENCH_TF4_VENV", tmp_path / "tf4"))
    python = venv / "bin" / "python"
    if not python.exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0", "transformers==4.57.*"],
                             capture_output=True, text=True) if made.returncode == 0 else made
        if pip.returncode != 0:
            pytest.skip(f"cannot create a transformers 4.57 venv here: {(pip.stderr or pip.stdout)[-300:]}")
    model = _rope_model(tok, LlamaForCausalLM, tiny_llama_config)
    fact = {"prompt": "The capital of Zorbia is", "target": "Quxville"}
    res = wb.edit(model, tok, [fact], wb.EditConfig(layers=(2,), epochs=8, lr=5e-2), progress=False)
    folder = res.save_pretrained(tmp_path / "edited", tok)
    ids = tok.apply_chat_template([{"role": "user", "content": fact["prompt"]}], add_generation_prompt=True,
                                  tokenize=False)
    with torch.no_grad():
        want = model(input_ids=tok(ids, add_special_tokens=False, return_tensors="pt").input_ids).logits[0]
    torch.save(want, tmp_path / "want.pt")
    script = f"""
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
assert transformers.__version__.startswith("4."), transformers.__version__
m = AutoModelForCausalLM.from_pretrained({str(folder)!r}).eval()
t = AutoTokenizer.from_pretrained({str(folder)!r})
text = t.apply_chat_template([{{"role": "user", "content": {fact["prompt"]!r}}}], add_generation_prompt=True, tokenize=False)
ids = t(text, add_special_tokens=False, return_tensors="pt").input_ids
with torch.no_grad():
    got = m(input_ids=ids).logits[0]
want = torch.load({str(tmp_path / "want.pt")!r})
print(m.config.rope_theta, type(t).__name__, (got - want).abs().max().item())
"""
    t = time.perf_counter()
    run = subprocess.run([str(python), "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    theta, cls, diff = run.stdout.split()
    assert float(theta) == 1e5 and cls == "PreTrainedTokenizerFast" and float(diff) < 1e-4, run.stdout
    print(f"transformers 4.57 load + forward: {time.perf_counter() - t:.1f} s")


def test_eval_compares_an_edited_model_with_its_base(tmp_path, capsys, tok):
    model = wb.load("tiny-random-llama", device="cpu")[0]
    fact = {"prompt": "The capital of Zorbia is", "target": "Quxville"}
    res = wb.edit(model, tok, [fact], wb.EditConfig(layers=(2,), epochs=8, lr=5e-2), progress=False)
    folder = res.save_pretrained(tmp_path / "edited", tok)
    assert cli.main(["eval", "--benchmark", "zsre", "-n", "1", "--model", str(folder), "--base", "tiny-random-llama"]) == 0
    out = capsys.readouterr().out
    loc = [line.split() for line in out.splitlines() if line.split()[:2] == ["loc", "exact_match"]]
    assert loc and float(loc[0][2]) < 1  # against the base: the edit changed answers (itself: 1 by construction)
    assert "--base tiny-random-llama (before) against --model" in out and "unrelated answers kept" in out
