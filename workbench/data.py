"""Edit requests: one schema for every benchmark, the registry of benchmark files, and the loaders.

Every benchmark becomes a list of `Request`s: a question (``prompt``), the new answer (``target``),
paraphrases, locality items (prompts whose answers must not change), sub-questions, the subject and
the source record. A loader is a field mapping from a record onto that schema, so UnKEBench, AKEW
MQuAKE-CF, the LocFT-BF ZsRE / CounterFact / WikiBigEdit sets, KnowEdit ZsRE and the MMLU probe share
one code path, and so does a researcher's own JSON/JSONL file (`load_json(path, fields)`; EasyEdit's
``prompt / target_new / rephrase_prompt / locality_prompt / locality_ground_truth`` are the default
mapping).

Files are found on a search path (``$WORKBENCH_DATA``, the project's ``data/``, ``../shared/data``) and
checked against the sha256 in ``data/benchmarks.yaml``, which also names each file's public source;
nothing is downloaded unless `download()` is called.

Plain-text corpora (`corpus`: the MMLU questions, or a .txt / .jsonl of passages) are read here too, for
the locate-and-edit methods' second-moment statistics.

Turning a request into tokens is `prompts.py`'s job: nothing here touches a tokenizer.

About 480 lines, kept in one module: the schema, the registry, the loaders (field mappings onto the
schema) and the corpora are the one vocabulary of "what a file holds", and each part is short.
"""
from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import yaml

from . import files
from .errors import ConfigError, DataError, DataNotFound
from .files import PROJECT_ROOT  # the checkout; many modules import it from here
REGISTRY_FILE = PROJECT_ROOT / "data" / "benchmarks.yaml"


# --------------------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class QA:
    """A question and its expected answer (locality item or sub-question)."""

    question: str
    answer: str
    kind: str = ""  # locality items: where it came from (benchmark, RelDoc, RandDoc, StructTrip)


@dataclass(frozen=True)
class Request:
    """One edit: make the model answer `prompt` with `target`."""

    id: str
    prompt: str  # the edit question, plain text (templates are applied at encoding time)
    target: str  # the new answer: a short entity (ZsRE) or a ~90-word paragraph (UnKEBench)
    paraphrases: tuple[str, ...] = ()  # rephrasings of `prompt` (generalisation)
    locality: tuple[QA, ...] = ()  # unrelated questions whose answers must not change
    sub_questions: tuple[QA, ...] = ()  # finer questions the new knowledge answers (UnKEBench, portability)
    subject: str = ""  # the entity the edit is about, when the benchmark gives one
    target_true: str = ""  # the pre-edit answer, when the benchmark gives one
    choices: tuple[str, ...] = ()  # multiple-choice options (MMLU probe); `target` is the right one
    answer_index: int | None = None  # index of `target` in `choices`
    source: dict = field(default_factory=dict, compare=False, hash=False, repr=False)  # benchmark, index, record

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def meta(self) -> dict:
        """Keys of the source record that the field mapping did not read (a ``category``, a source...):
        what analyses group by (`EvalReport.by`)."""
        record, used = self.source.get("record"), self.source.get("used")
        if not isinstance(record, dict) or used is None:
            return {}
        return {k: v for k, v in record.items() if k not in used}


# ------------------------------------------------------------------------------------- registry
@lru_cache(maxsize=1)
def registry() -> dict:
    """The benchmark registry (``data/benchmarks.yaml``)."""
    with open(REGISTRY_FILE) as f:
        return yaml.safe_load(f)


def search_path() -> list[Path]:
    """Folders searched for benchmark files, in order."""
    paths = [Path(p) for p in os.environ.get("WORKBENCH_DATA", "").split(os.pathsep) if p]
    return paths + [PROJECT_ROOT / "data", PROJECT_ROOT.parent / "shared" / "data"]


def _entry(name: str) -> dict:
    reg = registry()
    if name not in reg:
        if Path(name).suffix in (".json", ".jsonl") or Path(name).is_file():
            raise DataNotFound(f"{name!r} is a file, not a benchmark name: load your own file with wb.data.load_json("
                               f"{name!r}, fields={{'prompt': ..., 'target': ...}}) (command line: workbench edit "
                               f"--data {name}); known benchmarks: {', '.join(reg)}")
        raise DataNotFound(f"unknown benchmark {name!r}; known benchmarks: {', '.join(reg)}")
    return reg[name]


def find(name: str) -> Path:
    """The path of benchmark `name`'s file on the search path."""
    rel = _entry(name)["file"]
    for folder in search_path():
        if (folder / rel).is_file():
            return folder / rel
    looked = "\n  ".join(str(p / rel) for p in search_path())
    url = _entry(name).get("url")
    how = f"wb.data.download({name!r}) fetches it from {url}" if url else "this file is derived; see data/benchmarks.yaml"
    raise DataNotFound(f"benchmark {name!r} not found. Looked in:\n  {looked}\nSet $WORKBENCH_DATA, or: {how}")


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime: float) -> str:  # keyed on size+mtime so edits re-hash
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256(path: Path) -> str:
    st = Path(path).stat()
    return _sha256(str(path), st.st_size, st.st_mtime)


def verify(name: str, path: Path) -> None:
    expected = _entry(name).get("sha256")
    if expected and sha256(path) != expected:
        raise DataError(f"sha256 {sha256(path)} differs from the registry's {expected} for {name!r}; "
                        "the file was changed or is another version (pass verify=False to load it anyway)", file=path)


def download(name: str, dest: str | os.PathLike | None = None) -> Path:
    """Fetch benchmark `name` from its public source into `dest` (default: the project's data/)."""
    entry = _entry(name)
    if not entry.get("url"):
        raise DataNotFound(f"benchmark {name!r} has no public download; see data/benchmarks.yaml")
    target = Path(dest or PROJECT_ROOT / "data") / entry["file"]
    with files.atomic(target) as tmp:  # never a half-written benchmark on the search path
        urllib.request.urlretrieve(entry["url"], tmp)
        if entry.get("sha256") and sha256(tmp) != entry["sha256"]:
            raise DataError(f"downloaded file does not match the registry's sha256 {entry['sha256']}", file=entry["url"])
    return target


# -------------------------------------------------------------------------------------- loaders
def read_records(path: str | os.PathLike) -> list:
    """Records of a .json (a list at the top) or .jsonl file, with errors that name the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file" if not path.exists() else "is not a file", file=path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=path) from None
    if not text.strip():
        raise DataError("the file is empty", file=path)
    if path.suffix == ".jsonl":
        records = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"malformed JSON on line {i + 1}: {e.msg} (column {e.colno})",
                                    file=path, record=len(records)) from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})", file=path) from None
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of records at the top level, got {type(data).__name__}", file=path)
    return data


# -------------------------------------------------------------------------------------- corpora
def mmlu_passages() -> list[str]:
    """Every MMLU test and dev question with its four choices, one passage each (question and choices
    joined by spaces), from the CSVs (``test/*.csv``, ``dev/*.csv``) beside the MMLU probe file, in the
    order of their sorted paths."""
    import csv

    folder = find("mmlu-probe").parent
    texts = []
    for path in sorted(folder.glob("*/*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                texts.append(" ".join([row["question"]] + [row[f"choice{i}"] for i in range(4)]))
    if not texts:
        raise DataError("no MMLU CSVs (test/*.csv, dev/*.csv) beside the probe file", file=folder)
    return texts


def corpus(source: str) -> tuple[list[str], str]:
    """Passages of a text corpus and a name that identifies their content: ``"mmlu"`` (`mmlu_passages`,
    named ``mmlu-<hash of the text>``) or a .txt (one passage per line) / .jsonl ("text" field) file (named
    ``<stem>-<hash of the file>``); blank passages are dropped. Read once per process and file version."""
    path = Path(source)
    stamp = path.stat().st_mtime if source != "mmlu" and path.is_file() else None
    texts, name = _corpus(source, stamp)
    return list(texts), name


@lru_cache(maxsize=4)
def _corpus(source: str, stamp) -> tuple[tuple[str, ...], str]:
    if source == "mmlu":
        texts = mmlu_passages()
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
        return tuple(texts), f"mmlu-{digest}"
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"mom2_corpus={source!r}: give 'mmlu' or a .txt / .jsonl file")
    if path.suffix == ".jsonl":
        texts = [r.get("text", "") if isinstance(r, dict) else "" for r in read_records(path)]
    else:
        texts = path.read_text(encoding="utf-8").splitlines()
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError("no text in the corpus", file=path)
    return tuple(texts), f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


# One request schema. A record's keys are read by a mapping: request field -> record key (dotted for
# nested values). Without one, both naming schemes are understood, record by record: ours (the
# `Request` field names) and EasyEdit's (with ROME's ``target_new: {str: ...}`` and ``"{}"`` prompts).
EASYEDIT_FIELDS = {"prompt": "prompt", "target": "target_new", "subject": "subject", "target_true": "ground_truth",
                   "paraphrases": "rephrase_prompt", "locality_prompts": "locality_prompt",
                   "locality_answers": "locality_ground_truth"}
_SCALARS = ("id", "prompt", "target", "subject", "target_true")
_LISTS = ("paraphrases", "locality_prompts", "locality_answers", "sub_questions", "sub_answers", "choices")
_MAPPABLE = set(_SCALARS) | set(_LISTS) | {"answer_index", "sub_triplets"}
OUR_FIELDS = {k: k for k in sorted(_MAPPABLE - {"sub_triplets"})}
FIELDS = tuple(sorted(_MAPPABLE))  # what a mapping may name (`check_fields`)
_MISSING = object()


def check_fields(fields: dict, file=None) -> dict:
    """`fields` (request field -> record key) checked: known request fields, non-empty string keys."""
    if not isinstance(fields, dict):
        raise DataError(f"fields= must be a dict of request field -> record key, got {type(fields).__name__}", file=file)
    unknown = sorted(set(fields) - _MAPPABLE)
    if unknown:
        raise DataError(f"unknown request fields {unknown} in the mapping; valid: {sorted(_MAPPABLE)}", file=file)
    bad = sorted(k for k, v in fields.items() if not isinstance(v, str) or not v.strip())
    if bad:
        raise DataError(f"the mapping gives no record key for {bad}: map each to a key of your records", file=file)
    return dict(fields)


def default_fields(record, where: dict) -> dict:
    """The mapping of a record without one: our field names and EasyEdit's, whichever the record uses
    (both for one field is ambiguous and refused)."""
    if not isinstance(record, dict):
        return dict(EASYEDIT_FIELDS)
    fields = {}
    for key in sorted(_MAPPABLE - {"sub_triplets"}):
        theirs = EASYEDIT_FIELDS.get(key)
        if key in record and theirs and theirs != key and theirs in record:
            raise DataError(f"both {key!r} (ours) and {theirs!r} (EasyEdit's) are given: keep one, or choose with "
                            f"fields={{{key!r}: ...}}", field=theirs, **where)
        if key in record:
            fields[key] = key
        elif theirs and theirs in record:
            fields[key] = theirs
    for key in ("prompt", "target"):  # required: unmapped, an error names EasyEdit's key (and ours)
        fields.setdefault(key, EASYEDIT_FIELDS[key])
    return fields


def _rome(record: dict) -> dict:
    """ROME's record shape in our terms: ``target_new: {"str": ...}`` and a ``"{}"`` prompt + subject."""
    record = dict(record)
    for key in ("target_new", "target", "ground_truth", "target_true"):
        if isinstance(record.get(key), dict) and "str" in record[key]:
            record[key] = record[key]["str"]
    if isinstance(record.get("prompt"), str) and "{}" in record["prompt"] and isinstance(record.get("subject"), str):
        record["prompt"] = record["prompt"].replace("{}", record["subject"])
    return record


def _lookup(record: dict, parent: dict | None, dotted: str):
    if dotted.startswith("^"):
        record, dotted = parent or {}, dotted[1:]
    value = record
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _as_text(value, where: dict, fieldname: str, required: bool) -> str:
    if value is None or value is _MISSING:
        if required:
            raise DataError("missing (required)", field=fieldname, **where)
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"expected a string, got {type(value).__name__}", field=fieldname, **where)
    text = str(value)
    if required and not text.strip():
        raise DataError("is empty", field=fieldname, **where)
    return text


def _as_texts(value, where: dict, fieldname: str) -> tuple[str, ...]:
    if value is None or value is _MISSING:
        return ()
    items = [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value
    if not isinstance(items, list):
        raise DataError(f"expected a string or a list of strings, got {type(value).__name__}", field=fieldname, **where)
    return tuple(_as_text(v, where, f"{fieldname}[{j}]", required=False) for j, v in enumerate(items))


def _pairs(questions, answers, where, qname, aname) -> tuple[QA, ...]:
    if len(questions) != len(answers):
        raise DataError(f"has {len(questions)} items but {aname!r} has {len(answers)}", field=qname, **where)
    return tuple(QA(q, a) for q, a in zip(questions, answers))


def _missing(record: dict, key: str, fields: dict, default: bool, where: dict) -> DataError:
    """The error of a required field the record lacks: its own keys, and the mapping that would fix it."""
    keys = sorted(record)[:12]
    if default:
        names = f"{key!r}" if fields[key] == key else f"{fields[key]!r} (EasyEdit's name) or {key!r} (ours)"
        how = (f"the record's keys are {keys}; give {names}, or map yours: fields={{'prompt': '<key>', "
               f"'target': '<key>'}} (command line: --field prompt=KEY --field target=KEY)")
    else:
        how = (f"the mapping reads {key!r} from {fields[key]!r}, but the record's keys are {keys}; fix it: "
               f"fields={{{key!r}: '<key>'}} (command line: --field {key}=KEY)")
    return DataError(f"missing (required); {how}", field=fields[key], **where)


def to_request(record, fields: dict | None, where: dict, parent: dict | None = None, benchmark: str = "") -> Request:
    """Map one raw record onto a `Request` (errors name `where` = file and record, and the field).
    `fields` None: the default mapping (ours or EasyEdit's names, `default_fields`)."""
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}", **where)
    default = fields is None
    if default:
        record = _rome(record)
        fields = default_fields(record, where)

    def value(key):  # the raw value behind request field `key`, or None where it is not mapped
        return _lookup(record, parent, fields[key]) if key in fields else None

    def name(key):  # what an error calls the field: the user's own field name
        return fields.get(key, key)

    for key in ("prompt", "choices" if "choices" in fields else "target"):
        if value(key) is _MISSING:
            raise _missing(record, key, fields, default, where)
    text = {k: _as_text(value(k), where, name(k), required=k == "prompt") for k in _SCALARS}
    lists = {k: _as_texts(value(k), where, name(k)) for k in _LISTS}
    answer_index = None
    if "choices" in fields:
        answer_index = value("answer_index")
        if isinstance(answer_index, bool) or not isinstance(answer_index, int) or not 0 <= answer_index < len(lists["choices"]):
            raise DataError(f"expected an integer in 0..{len(lists['choices']) - 1}, got {answer_index!r}",
                            field=name("answer_index"), **where)
        text["target"] = lists["choices"][answer_index]
    elif not text["target"].strip():
        raise DataError("is empty (required)", field=name("target"), **where)
    subs = _pairs(lists["sub_questions"], lists["sub_answers"], where, name("sub_questions"), name("sub_answers"))
    if "sub_triplets" in fields:
        triplets = value("sub_triplets")
        if not isinstance(triplets, list) or not all(isinstance(t, dict) for t in triplets):
            raise DataError("expected a list of {subject, prompt, target} objects", field=name("sub_triplets"), **where)
        for j, t in enumerate(triplets):
            subj, prompt, answer = (_as_text(t.get(k), where, f"{name('sub_triplets')}[{j}].{k}", required=True)
                                    for k in ("subject", "prompt", "target"))
            subs += (QA(prompt.replace("{}", subj), answer),)
    used = sorted({v.lstrip("^").split(".")[0] for v in fields.values() if not v.startswith("^")})
    return Request(
        id=text["id"] or str(where.get("record")),
        prompt=text["prompt"],
        target=text["target"],
        paraphrases=lists["paraphrases"],
        locality=_pairs(lists["locality_prompts"], lists["locality_answers"], where,
                        name("locality_prompts"), name("locality_answers")),
        sub_questions=subs,
        subject=text["subject"],
        target_true=text["target_true"],
        choices=lists["choices"],
        answer_index=answer_index,
        source={"benchmark": benchmark, "index": where.get("record"), "record": record, "used": used},
    )


def load_json(path: str | os.PathLike, fields: dict | None = None, explode: str | None = None, n: int | None = None,
              benchmark: str | None = None) -> list[Request]:
    """Load your own JSON / JSONL edit file.

    Args:
        path: a .json file holding a list of records, or a .jsonl file.
        fields: request field -> record field (dotted paths reach nested values, ``^`` the parent
            record when `explode` is used), e.g. ``{"prompt": "question", "target": "answer"}``.
            Keys: id, prompt, target, paraphrases, subject, target_true, locality_prompts,
            locality_answers, sub_questions, sub_answers, sub_triplets, choices, answer_index.
            Default (None): our own field names (the keys above) or EasyEdit's (``prompt,
            target_new, subject, ground_truth, rephrase_prompt, locality_prompt,
            locality_ground_truth``; ROME's ``target_new: {"str": ...}`` too), record by record.
            Keys of a record that the mapping does not read stay as ``request.meta`` (e.g. a
            ``category``: `EvalReport.by` groups scores by them).
        explode: a list field of each record that holds several edits (MQuAKE's requested_rewrite).
        n: keep the first `n` requests.
    Raises:
        DataError: naming the file, the record index and the field of the first bad value (a
            missing required field also names the record's own keys and the mapping that fixes it);
            a missing or empty file, or one without records.
    """
    if fields is not None:
        fields = check_fields(fields, file=path)
    records = read_records(path)
    if not records and benchmark is None:
        raise DataError("holds no records", file=path)
    requests: list[Request] = []
    for i, record in enumerate(records):
        where = {"file": path, "record": i}
        if explode:
            if not isinstance(record, dict) or not isinstance(record.get(explode), list):
                raise DataError("expected a list", field=explode, **where)
            for j, sub in enumerate(record[explode]):
                req = to_request(sub, fields, where, parent=record, benchmark=benchmark or str(path))
                requests.append(replace(req, id=f"{req.id}-{j}" if fields and "id" in fields else f"{i}-{j}"))
        else:
            requests.append(to_request(record, fields, where, benchmark=benchmark or str(path)))
        if n is not None and len(requests) >= n:
            return requests[:n]
    return requests


def load(name: str, n: int | None = None, verify_checksum: bool = True) -> list[Request]:
    """Load benchmark `name` from the registry (`registry()` lists them) as `Request`s. Your own file:
    `load_json`.

    Args:
        n: keep the first `n` requests (rewrites, for MQuAKE-CF).
        verify_checksum: compare the file's sha256 with the registry's.
    """
    entry = _entry(name)
    path = find(name)
    if verify_checksum:
        verify(name, path)
    return load_json(path, entry["fields"], explode=entry.get("explode"), n=n, benchmark=name)


def as_requests(items, fields: dict | None = None) -> list[Request]:
    """Accept `Request`s or dicts: the schema of `load_json` (ours or EasyEdit's field names, ROME's
    ``{prompt: "{} is in", subject, target_new: {str}}``, or your own keys through `fields`), with
    the same errors (naming the item's index as the record)."""
    if isinstance(items, (Request, dict)):
        items = [items]
    if fields is not None:
        fields = check_fields(fields)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Request):
            out.append(item)
            continue
        if not isinstance(item, dict):
            raise DataError(f"expected a Request or a dict, got {type(item).__name__}", record=i)
        out.append(to_request(item, fields, {"record": i}, benchmark="inline"))
    return out


def contaminated(requests: list[Request]) -> int:
    """Locality probes of `requests` that are the question of a request in `requests` itself: an edit
    scored as another edit's locality (0 for every set `locality.build` makes)."""
    prompts = {r.prompt for r in requests}
    return sum(q.question in prompts for r in requests for q in r.locality)


def to_dataset(requests):
    """The requests as a `datasets.Dataset` (one row per request; nested fields kept as lists)."""
    import datasets

    rows = []
    for r in requests:
        row = r.to_dict()
        row["source"] = json.dumps(row["source"], ensure_ascii=False, default=str)
        rows.append(row)
    return datasets.Dataset.from_list(rows)
