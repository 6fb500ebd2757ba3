"""Loaders: real benchmark counts, the schema mapping, the search path, and bad input."""
import json

import pytest

import workbench as wb
from workbench import data
from workbench.errors import DataError, DataNotFound

COUNTS = {"unkebench": 1000, "zsre": 3000, "counterfact": 3000, "wikibigedit": 3000, "mquake-cf": 436,
          "knowedit-zsre": 1037, "mmlu-probe": 570, "facts-fixture": 10}


@pytest.mark.parametrize("name,count", COUNTS.items())
def test_benchmark_counts(name, count):
    reqs = data.load(name)
    assert len(reqs) == count == data.registry()[name]["records"]
    assert all(r.prompt.strip() and r.target.strip() for r in reqs)
    assert len({r.id for r in reqs}) == count  # ids are unique


def test_field_mapping_of_each_benchmark():
    u = data.load("unkebench", n=1)[0]
    assert u.prompt == "What is George Rankin's occupation?" and len(u.target.split()) > 40
    assert u.paraphrases == ("What does George Rankin do for a living?",)
    assert u.sub_questions[0].question == "How long has George Rankin been involved in politics?"
    z = data.load("zsre", n=1)[0]
    assert (z.prompt, z.target, z.subject, z.target_true) == (
        "Which river system contains Charity Creek?", "Chichester River", "Charity Creek", "Parramatta River")
    assert z.locality[0].answer == "12"
    m = data.load("mquake-cf", n=2)
    assert m[0].id == "1-0" and m[0].subject == "Ellie Kemper" and m[0].target.startswith("Croatia,")
    assert m[0].sub_questions[0] == data.QA("Croatia is located in", "Southeast Europe")  # "{}" filled
    k = data.load("knowedit-zsre", n=1)[0]
    assert k.sub_questions[0].answer == "Athletics"  # portability
    q = data.load("mmlu-probe", n=1)[0]
    assert len(q.choices) == 4 and q.target == q.choices[q.answer_index]
    assert q.source["record"]["row"] == 11


def test_to_dataset_round_trips_the_schema():
    ds = data.to_dataset(data.load("zsre", n=4))
    assert ds.num_rows == 4 and ds[0]["target"] == "Chichester River"
    assert ds[0]["locality"][0]["answer"] == "12"


def test_search_path_prefers_env_var(tmp_path, monkeypatch):
    (tmp_path / "fixtures").mkdir()
    (tmp_path / "fixtures" / "facts.jsonl").write_text(json.dumps(
        {"prompt": "Q?", "target_new": "A", "subject": "s", "rephrase_prompt": "Q2?",
         "locality_prompt": "L?", "locality_ground_truth": "B"}) + "\n")
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    assert data.find("facts-fixture") == tmp_path / "fixtures" / "facts.jsonl"
    assert [r.target for r in data.load("facts-fixture")] == ["A"]


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(DataNotFound, match="known benchmarks: unkebench, mquake-cf, zsre"):
        data.load("zsre-typo")


def test_missing_file_says_where_it_looked_and_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "search_path", lambda: [tmp_path])
    with pytest.raises(DataNotFound) as e:
        data.find("zsre")
    assert str(tmp_path / "locft" / "zsre_3k.json") in str(e.value)
    assert "wb.data.download('zsre')" in str(e.value) and "github" in str(e.value)


def test_checksum_mismatch_names_the_file(monkeypatch, tmp_path):
    (tmp_path / "locft").mkdir()
    bad = tmp_path / "locft" / "zsre_3k.json"
    bad.write_text("[]")
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    with pytest.raises(DataError, match="zsre_3k.json.*differs from the registry"):
        data.load("zsre")
    assert data.load("zsre", verify_checksum=False) == []


def _write(tmp_path, content, name="edits.json"):
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


GOOD = {"prompt": "Q?", "target_new": "A", "subject": "s"}
BAD_INPUTS = [
    # (file content, expected record index, expected field, message fragment)
    ('[{"prompt": "Q?", "target_new": ', None, None, "malformed JSON"),
    ({"prompt": "Q?"}, None, None, "expected a JSON list"),
    ([GOOD, "just a string"], 1, None, "expected a JSON object"),
    ([GOOD, {"target_new": "A"}], 1, "prompt", "missing"),
    ([GOOD, GOOD, {"prompt": "Q?"}], 2, "target_new", "missing"),
    ([{"prompt": 3.5, "target_new": "A"}], 0, "prompt", "expected a string, got float"),
    ([{"prompt": "  ", "target_new": "A"}], 0, "prompt", "is empty"),
    ([{"prompt": "Q?", "target_new": ""}], 0, "target_new", "is empty"),
    ([{"prompt": "Q?", "target_new": "A", "rephrase_prompt": {"x": 1}}], 0, "rephrase_prompt", "expected a string or a list"),
    ([{"prompt": "Q?", "target_new": "A", "rephrase_prompt": ["ok", 7.0]}], 0, "rephrase_prompt[1]", "expected a string"),
    ([{"prompt": "Q?", "target_new": "A", "locality_prompt": ["a", "b"], "locality_ground_truth": ["x"]}], 0,
     "locality_prompt", "has 2 items but 'locality_ground_truth' has 1"),
]


@pytest.mark.parametrize("content,record,field,fragment", BAD_INPUTS)
def test_malformed_input_names_file_record_and_field(tmp_path, content, record, field, fragment):
    path = _write(tmp_path, content)
    with pytest.raises(DataError) as e:
        data.load_json(path)
    err = e.value
    assert err.file == path and err.record == record and err.field == field
    assert str(path) in str(err) and fragment in str(err)
    if record is not None:
        assert f"record {record}" in str(err)
    if field is not None:
        assert repr(field) in str(err)


def test_malformed_jsonl_line_names_the_line(tmp_path):
    path = _write(tmp_path, json.dumps(GOOD) + "\n{oops\n", name="edits.jsonl")
    with pytest.raises(DataError, match=r"record 1.*line 2"):
        data.load_json(path)


def test_bad_multiple_choice_answer_and_bad_mapping(tmp_path):
    path = _write(tmp_path, [{"question": "Q?", "choices": ["a", "b"], "answer": 5}])
    with pytest.raises(DataError, match=r"record 0, field 'answer': expected an integer in 0..1, got 5"):
        data.load_json(path, {"prompt": "question", "choices": "choices", "answer_index": "answer"})
    with pytest.raises(DataError, match="unknown request fields \\['answr'\\]"):
        data.load_json(path, {"prompt": "question", "answr": "answer"})


def test_explode_needs_a_list(tmp_path):
    path = _write(tmp_path, [{"requested_rewrite": {"question": "Q"}}])
    with pytest.raises(DataError, match="record 0, field 'requested_rewrite': expected a list"):
        data.load_json(path, {"prompt": "question", "target": "answer"}, explode="requested_rewrite")


def test_as_requests_accepts_rome_and_easyedit_dicts():
    rome = {"prompt": "{} is located in", "subject": "Reedy Glacier", "target_new": {"str": "Asia"}}
    ours = {"prompt": "Q?", "target": "A", "id": "x1"}
    a, b = wb.data.as_requests([rome, ours])
    assert (a.prompt, a.target, a.subject) == ("Reedy Glacier is located in", "Asia", "Reedy Glacier")
    assert (b.id, b.target) == ("x1", "A")
    with pytest.raises(DataError, match="record 0, field 'target'"):
        wb.data.as_requests([{"prompt": "Q?", "target": 3.0}])
