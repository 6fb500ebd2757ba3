"""nbval settings for the notebooks: compare text only.

Plotly figures, widgets and HTML renderings change with library versions and carry random ids;
the workbench's record outputs are checked by tests/test_notebooks.py instead.
"""
SKIP_MIMETYPES = (
    "text/html",
    "application/javascript",
    "application/vnd.plotly.v1+json",
    "application/vnd.jupyter.widget-view+json",
    "application/x.workbench.record+json",
)


def pytest_collectstart(collector):
    if getattr(collector, "fspath", None) is not None and collector.fspath.ext == ".ipynb":
        collector.skip_compare += SKIP_MIMETYPES
