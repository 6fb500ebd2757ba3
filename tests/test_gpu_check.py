"""`benchmarks/gpu_check.sh --dry-run`: the script a GPU session runs first, checked here at toy sizes on
the CPU (every section writes its JSON line, what would travel fits the device tool's 64 MiB and holds
no weights), so that a lent GPU's minutes are not spent on a broken script."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # every section of the GPU benchmark at toy sizes (~25 s): make test-slow, and before a GPU session
def test_the_gpu_check_runs_dry_on_the_cpu(tmp_path):
    carry, out = tmp_path / "carry", tmp_path / "out"
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--carry", str(carry), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHON": sys.executable})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    lines = [json.loads(x) for x in (out / "gpu_check.jsonl").read_text().splitlines()]
    by = {x["section"]: x for x in lines}
    assert list(by) == ["tests", "env", "probes", "loop", "single", "edit_each", "scale", "stats", "repeat"]
    assert all(x["status"] == "ok" for x in lines), [x for x in lines if x["status"] != "ok"]
    assert all(x["dry_run"] for x in lines if x["section"] != "tests")
    assert by["probes"]["all_ok"] and set(by["probes"]["methods"]) == {"ft", "lora", "adalora", "rome", "memit",
                                                                       "alphaedit", "unke", "anyedit"}
    files = [f for f in carry.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 64 * 2**20 and not any(f.suffix == ".safetensors" for f in files)
