"""Metrics on known strings, and the evaluation of an edit end to end on the tiny model."""
import warnings

import pytest

import workbench as wb
from workbench import metrics, scoring
from workbench.evaluation import LOCFT, UKE, EvalConfig


def test_rouge_l_identical_and_disjoint():
    same, disjoint = metrics.rouge_l(["the cat sat on the mat", "blue sky"], ["the cat sat on the mat", "red sea"])
    assert same == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert disjoint["f1"] == 0.0
    half = metrics.rouge_l(["the cat"], ["the cat sat down"])[0]
    assert half["recall"] == 0.5 and half["precision"] == 1.0


def test_bertscore_orders_identical_paraphrase_unrelated():
    ref = "George Rankin has served two terms on the city council and was recently elected state representative."
    preds = [ref, "For two terms George Rankin was on the city council, and he was just elected a state representative.",
             "The mitochondria is the powerhouse of the cell and makes ATP.", ""]
    same, para, unrelated, empty = metrics.bertscore(preds, [ref] * 4)
    assert same == pytest.approx(1.0, abs=1e-4)
    assert same > para > 0.7 > 0.3 > unrelated
    assert empty == 0.0
    assert metrics.bert_scorer() is metrics.bert_scorer()  # loaded once


@pytest.mark.parametrize("pred,ref,hit", [
    ("The Chichester River", "Chichester River", 1.0),
    ("  chichester   river. ", "Chichester River", 1.0),
    ("An apple!", "apple", 1.0),
    ("Chichester", "Chichester River", 0.0),
    ("Parramatta River", "Chichester River", 0.0),
    ("theatre", "atre", 0.0),  # articles are dropped as words only
])
def test_exact_match_normalisation(pred, ref, hit):
    assert metrics.exact_match(pred, ref) == hit


def test_protocol_mixing_warns():
    protos = {"a": "generation", "b": "generation", "c": "teacher-forced"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.average({"a": 1.0, "b": 0.0}, protos) == 0.5
    with pytest.warns(metrics.ProtocolWarning, match="2 different protocols"):
        metrics.average({"a": 1.0, "c": 0.0}, protos)


def test_eval_config_validates():
    with pytest.raises(wb.ConfigError, match="metrics='bleu' is not valid"):
        EvalConfig(metrics=("bleu",))
    assert EvalConfig.preset("locft").stop == (".", "\n")


def test_unedited_model_has_perfect_locality(tiny, tok, facts):
    cfg = UKE.replace(max_new_tokens=8, metrics=("rougeL", "exact_match", "token_acc"))
    pre = wb.pre_edit(tiny, tok, facts[:4], cfg, cache=False)
    report = wb.evaluate(tiny, tok, facts[:4], cfg, pre=pre)
    loc = report.summary[report.summary.split == "loc"].set_index("metric")["value"]
    assert loc["exact_match"] == 1.0 and loc["token_acc"] == 1.0
    assert "unedited model" in report.summary[report.summary.split == "loc"].protocol.iloc[0]
    assert report.provenance["versions"]["torch"] and report.provenance["decoding"]["max_new_tokens"] == 8


def test_edit_raises_reliability_and_lowers_nothing_it_should_not(tiny, tok, facts):
    three = facts[:3]
    cfg = LOCFT.replace(max_new_tokens=12)
    pre = wb.pre_edit(tiny, tok, three, cfg, cache=False)
    before = wb.evaluate(tiny, tok, three, cfg, pre=pre).scores()
    edit = wb.EditConfig(components=("down",), layers=(1, 2), lr=1e-2, batch_size=3, epochs=100, chat_template=False)
    result = wb.edit(tiny, tok, three, edit, progress=False)
    after = wb.evaluate(tiny, tok, three, cfg, pre=pre)
    s = after.scores()
    assert before["ori.token_acc"] < 0.5 < 0.9 < s["ori.token_acc"]
    assert s["ori.exact_match"] == 1.0 and before["ori.exact_match"] == 0.0
    assert after.locft_table()["reliability"] == 1.0
    result.revert()
    assert wb.evaluate(tiny, tok, three, cfg, pre=pre).scores()["loc.exact_match"] == 1.0


def test_locality_needs_pre(tiny, tok, facts):
    with pytest.raises(wb.WorkbenchError, match="pre = wb.pre_edit"):
        wb.evaluate(tiny, tok, facts[:1], UKE)


def test_pre_edit_cache_is_keyed_by_the_weights(tiny, tok, facts, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    cfg = UKE.replace(max_new_tokens=4, metrics=("exact_match",))
    a = wb.pre_edit(tiny, tok, facts[:2], cfg)
    assert wb.pre_edit(tiny, tok, facts[:2], cfg) is a  # memory cache
    assert len(list((tmp_path / "pre_edit").glob("*.json"))) == 1  # and on disk
    r = wb.edit(tiny, tok, facts[:1], wb.EditConfig(layers=(1,), lr=1e-2, epochs=2), progress=False)
    assert wb.pre_edit(tiny, tok, facts[:2], cfg).fingerprint != a.fingerprint  # edited weights: new entry
    r.revert()
    assert wb.pre_edit(tiny, tok, facts[:2], cfg) is a


def test_mmlu_and_perplexity_on_tiny(tiny, tok):
    reqs = wb.data.load("mmlu-probe", n=8)
    acc = scoring.mmlu_accuracy(tiny, tok, reqs)
    assert 0.0 <= acc <= 1.0
    ppl = scoring.perplexity(tiny, tok, ["The capital of France is Paris.", "Water boils at 100 degrees."])
    assert ppl > 1.0
