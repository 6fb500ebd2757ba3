"""nbval settings for the notebooks: compare text only, and check what each notebook records.

Plotly figures, widgets and HTML renderings change with library versions and carry random ids, so
their outputs are not compared. The workbench's record outputs (`wb.runs.record`) are not compared
either: their numbers are a smoke run's. Instead, after a notebook's last cell, one more test item
("recorded metrics") checks the records of the run nbval just executed against
tests/notebook_records.py (the expected keys and ranges): each notebook runs once in `make test`.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from notebook_records import check  # noqa: E402

RECORD = "application/x.workbench.record+json"
_RECORDS: dict[str, dict] = {}  # notebook -> what its cells recorded in this run, later overriding earlier
SKIP_MIMETYPES = (
    "text/html",
    "application/javascript",
    "application/vnd.plotly.v1+json",
    "application/vnd.jupyter.widget-view+json",
    RECORD,
)


def pytest_collectstart(collector):
    if getattr(collector, "fspath", None) is not None and collector.fspath.ext == ".ipynb":
        collector.skip_compare += SKIP_MIMETYPES


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    yield
    if call.when == "call" and getattr(item, "test_outputs", None):  # an nbval cell that ran
        for output in item.test_outputs:
            if RECORD in output.get("data", {}):
                _RECORDS.setdefault(Path(str(item.fspath)).stem, {}).update(output["data"][RECORD])


class RecordedMetrics(pytest.Item):
    """The records of the notebook nbval has just executed, checked against tests/notebook_records.py."""

    def runtest(self):
        check(Path(str(self.fspath)).stem, _RECORDS.get(Path(str(self.fspath)).stem, {}))

    def reportinfo(self):
        return self.fspath, 0, f"{Path(str(self.fspath)).name}: recorded metrics"


def pytest_collection_modifyitems(session, config, items):
    out = []
    for i, item in enumerate(items):
        out.append(item)
        last = i + 1 == len(items) or items[i + 1].parent is not item.parent
        if last and str(item.fspath).endswith(".ipynb") and Path(str(item.fspath)).stem[:2].isdigit():
            out.append(RecordedMetrics.from_parent(item.parent, name="recorded metrics"))
    items[:] = out
