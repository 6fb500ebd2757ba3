"""The presets on the embedded SmolLM2 (minutes on 2 CPU cores): `make test-slow`."""
import pytest

import workbench as wb
from workbench.runs import RunSpec, execute

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))


def test_ft_uke_single_edits_of_unkebench():
    m = execute(RunSpec(edit=wb.preset("ft-uke"), benchmark="unkebench", n_edits=3, protocol="single",
                        splits=("ori", "para")), "slow")
    assert m["ori.rougeL_f1"] > 0.6 and m["ori.token_acc"] > 0.9


def test_locft_bf_batch_of_zsre():
    m = execute(RunSpec(edit=wb.preset("locft-bf"), benchmark="zsre", n_edits=20, splits=("ori", "para", "loc")),
                "slow")
    assert m["ori.exact_match"] >= 0.8 and m["loc.exact_match"] >= 0.5
