"""Property-based tests: bad input of every shape ends in a workbench error that says where.

Every registry loader is a field mapping through `data.load_json`, so each mapping is fed records
built from its own field names with values of every JSON type (unicode, very long strings, nesting,
missing and empty fields), files that are not JSON at all, and the wrong top-level types. The
property: the load returns requests with a prompt and a target, or raises `DataError` naming the
file (and the record, and the field, when one is at fault). Never a bare KeyError / TypeError /
IndexError. `EditConfig` gets the same treatment from dicts and from YAML text.

Run with ``pytest tests/test_properties.py --hypothesis-show-statistics`` to see how many inputs
each property tried.
"""
import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workbench as wb
from workbench import config, data, prompts
from workbench.config import EditConfig
from workbench.errors import ConfigError, DataError

# WB_PROPERTY_EXAMPLES raises the count for a thorough run (the note quotes one of 1000 per property).
SETTINGS = settings(max_examples=int(os.environ.get("WB_PROPERTY_EXAMPLES", 150)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Text a researcher's file might hold: any unicode (control characters, RTL marks, surrogate-free
# astral planes), blank strings, and very long strings.
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "   ", "\u202e\u0000\ufeff", "名前は何ですか", "x" * 100_000, "é" * 20_000]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=6)
# A value that fits a field most of the time, so that loads also get past the first record.
plausible = st.one_of(texts, st.lists(texts, max_size=3), json_values)

MAPPINGS = {name: (entry["fields"], entry.get("explode")) for name, entry in data.registry().items()
            if "fields" in entry}


def _set(record: dict, dotted: str, value) -> None:
    keys = dotted.lstrip("^").split(".")
    for k in keys[:-1]:
        record = record.setdefault(k, {}) if isinstance(record.get(k, {}), dict) else {}
    record[keys[-1]] = value


@st.composite
def records_for(draw, name: str):
    """A record in benchmark `name`'s own field names, each field present or not, any value."""
    fields, explode = MAPPINGS[name]
    record = {}
    for path in fields.values():
        if draw(st.booleans()) or draw(st.booleans()):  # present 3/4 of the time
            _set(record, path, draw(plausible))
    if explode:
        inner = {k: v for k, v in record.items()}
        parent = {p.lstrip("^").split(".")[0]: record.get(p.lstrip("^").split(".")[0]) for p in fields.values()
                  if p.startswith("^")}
        shape = draw(st.sampled_from(["list", "missing", "other"]))
        parent[explode] = [inner] * draw(st.integers(0, 2)) if shape == "list" else draw(json_values)
        if shape == "missing":
            del parent[explode]
        return parent
    return record


def _write(content: str, suffix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="wb-prop-"))
    path = folder / f"records{suffix}"
    path.write_text(content, encoding="utf-8", errors="surrogatepass")
    return path


def _check_load(path: Path, fields, explode):
    try:
        requests = data.load_json(path, fields, explode=explode)
    except DataError as e:
        assert str(path) in str(e) and e.file == path
        return
    for r in requests:
        assert isinstance(r, data.Request) and r.prompt.strip() and r.target.strip()


@pytest.mark.parametrize("name", sorted(MAPPINGS))
@SETTINGS
@given(data=st.data())
def test_every_loader_reports_bad_records_with_file_record_field(name, data):
    fields, explode = MAPPINGS[name]
    records = data.draw(st.lists(records_for(name), max_size=4), label="records")
    suffix = data.draw(st.sampled_from([".json", ".jsonl"]))
    content = (json.dumps(records, ensure_ascii=False) if suffix == ".json"
               else "\n".join(json.dumps(r, ensure_ascii=False) for r in records))
    _check_load(_write(content, suffix), fields, explode)


@pytest.mark.parametrize("name", ["zsre", "unkebench", "mquake-cf"])
@SETTINGS
@given(content=st.one_of(st.text(max_size=200), json_values.map(json.dumps)), suffix=st.sampled_from([".json", ".jsonl"]))
def test_files_that_are_not_record_lists_fail_with_their_name(name, content, suffix):
    fields, explode = MAPPINGS[name]
    _check_load(_write(content, suffix), fields, explode)


@SETTINGS
@given(items=st.lists(st.one_of(json_values, st.dictionaries(
    st.sampled_from(["prompt", "target", "target_new", "subject", "rephrase_prompt", "locality_prompt",
                     "locality_ground_truth", "id"]), plausible)), max_size=3))
def test_inline_requests_fail_with_the_record(items):
    try:
        reqs = data.as_requests(items)
    except DataError as e:
        assert e.record is not None and "record" in str(e)
        return
    assert all(r.prompt.strip() and r.target.strip() for r in reqs)


# the shared fields, every method's own parameters and the speed settings (all are options by name)
FIELDS = [*EditConfig.names(), *sorted(config._all_params()), *config.Speed.names()]


# numbers at the edges, and the strings YAML and notebooks hand us for them
numbers = st.one_of(st.integers(), st.floats(), st.sampled_from(["inf", "-inf", "nan", "1e999", "1e-4", "3", "3.5", "-0",
                                                                 10**400, -(10**400)]))


@SETTINGS
@given(options=st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)),
                               st.one_of(json_values, numbers), max_size=4))
def test_edit_config_from_any_dict(options):
    try:
        cfg = EditConfig.from_dict(options)
    except ConfigError as e:
        named = [k for k in options if k in str(e) or repr(k) in str(e)]
        assert named or "components and layers" in str(e), f"the error names no option: {e}"
        return
    assert EditConfig.from_dict(cfg.to_dict()) == cfg  # what is saved loads back the same


@SETTINGS
@given(text=st.one_of(st.text(max_size=200), st.dictionaries(st.sampled_from(FIELDS), json_values,
                                                               max_size=3).map(yaml.safe_dump)))
def test_edit_config_from_any_yaml(text):
    path = _write(text, ".yaml")
    try:
        EditConfig.from_yaml(path)
    except ConfigError as e:
        assert str(path) in str(e) or any(f in str(e) for f in FIELDS)


@SETTINGS
@given(name=st.text(max_size=20))
def test_unknown_preset_lists_the_presets(name):
    if name in wb.config.presets():
        return
    with pytest.raises(ConfigError, match="ft-uke"):
        wb.preset(name)


@settings(max_examples=60, deadline=None)
@given(prompt=texts.filter(lambda s: len(s) < 30_000), target=texts.filter(lambda s: s.strip() and len(s) < 30_000),
       max_length=st.integers(2, 64), template=st.booleans(),
       scope=st.sampled_from(prompts.LOSS_SCOPES))
def test_encode_any_text_within_max_length(tok, prompt, target, max_length, template, scope):
    try:
        e = prompts.encode(tok, prompt, target, scope, template, max_length)
    except DataError as err:  # only a prompt that tokenises to nothing (no template, no BOS): "" or
        # characters the tokenizer drops, such as "\x06" (found by hypothesis)
        assert not template and not tok(prompt, add_special_tokens=False).input_ids and err.field == "prompt"
        return
    assert len(e.input_ids) == len(e.labels) <= max_length
    assert any(x != prompts.IGNORE for x in e.labels)  # there is always something to learn
    assert all(x in (prompts.IGNORE, i) for x, i in zip(e.labels, e.input_ids))
