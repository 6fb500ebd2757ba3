"""Sweeps on one machine: local workers, and the thread policy for processes side by side.

    python benchmarks/sweep_speed.py workers     # 8 tiny-model runs, 1 worker vs local:2
    python benchmarks/sweep_speed.py threads     # two SmolLM2 edits side by side, policy off vs on
    python benchmarks/sweep_speed.py             # both

``workers``: the same 8-point grid of tiny-random-llama runs (10 fixture facts, 150 epochs of batch 1,
locft scoring) into a fresh store, once with the serial executor and once with ``local:2`` (2 spawned workers, the cores
split between them); wall time of each sweep, worker start-up included, and the ratio.

``threads``: two processes start together, each loads SmolLM2-135M-Instruct and runs the same edit
(``locft-bf``, 50 ZsRE edits, 3 epochs, early stop off); the wall time of each edit, first with
``WORKBENCH_THREADS=off`` (each process takes every core, torch's default) and then with the
default policy (`workbench.threads`: each takes its share), and one edit alone for reference.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

EDIT = """
import json, sys, time
import workbench as wb
model, tok = wb.load(device="cpu")
reqs = wb.data.load("zsre", n=50)
cfg = wb.preset("locft-bf", epochs=3, early_stop_loss=0.0, device="cpu")
print("ready", flush=True)
sys.stdin.readline()  # start together
t = time.perf_counter()
wb.edit(model, tok, reqs, cfg, progress=False).revert()
import torch
print(json.dumps({"edit_s": time.perf_counter() - t, "threads_at_end": torch.get_num_threads()}), flush=True)
"""


def side_by_side(n: int, policy: bool) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    if policy:
        env.pop("WORKBENCH_THREADS", None)
    else:
        env["WORKBENCH_THREADS"] = "off"
    procs = [subprocess.Popen([sys.executable, "-c", EDIT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(n)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    out = [json.loads(p.stdout.readline()) for p in procs]
    for p in procs:
        p.wait()
    return out


def threads_part() -> None:
    alone = side_by_side(1, policy=True)[0]["edit_s"]
    off = side_by_side(2, policy=False)
    on = side_by_side(2, policy=True)
    worst_off, worst_on = max(r["edit_s"] for r in off), max(r["edit_s"] for r in on)
    def times(rs):
        return ", ".join(f"{r['edit_s']:.1f}" for r in rs)

    print(f"locft-bf, 50 ZsRE edits, 3 epochs, SmolLM2-135M fp32, {os.cpu_count()} cores:")
    print(f"  one edit alone                          {alone:7.1f} s")
    print(f"  two side by side, WORKBENCH_THREADS=off {times(off)} s "
          f"(threads {[r['threads_at_end'] for r in off]})")
    print(f"  two side by side, thread policy         {times(on)} s "
          f"(threads {[r['threads_at_end'] for r in on]})")
    print(f"  both done: {worst_off:.1f} s without the policy, {worst_on:.1f} s with it: {worst_off / worst_on:.2f}x; "
          f"vs two edits one after the other ({2 * alone:.1f} s): off {2 * alone / worst_off:.2f}x, "
          f"on {2 * alone / worst_on:.2f}x")


def workers_part() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import workbench as wb

    cfg = wb.EditConfig(model_name="tiny-random-llama", device="cpu", layers=(2,), lr=1e-2, epochs=150, batch_size=1,
                        early_stop_loss=0.0)
    spec = wb.runs.RunSpec(edit=cfg, benchmark="facts-fixture", n_edits=10, max_new_tokens=8, eval="locft",
                           splits=("ori", "para"))
    grid = {"lr": [5e-3, 1e-2, 2e-2, 4e-2], "layers": [[1], [2]]}
    times = {}
    for executor in ("serial", "local:2"):
        os.environ["WORKBENCH_RESULTS"] = tempfile.mkdtemp(prefix="sweep-speed-")
        t = time.perf_counter()
        df = wb.runs.sweep(spec, grid, "speed", progress=False, executor=executor)
        times[executor] = time.perf_counter() - t
        assert len(df) == 8
    t = time.perf_counter()  # the same grid again, all finished: what starting 2 workers costs
    wb.runs.sweep(spec, grid, "speed", progress=False, executor="local:2")
    startup = time.perf_counter() - t
    print(f"8 tiny-model runs (10 facts, 150 epochs of batch 1 each), {os.cpu_count()} cores: serial "
          f"{times['serial']:.1f} s, local:2 {times['local:2']:.1f} s: {times['serial'] / times['local:2']:.2f}x "
          f"(starting the 2 workers alone, on a finished grid: {startup:.1f} s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", help="workers, threads (default: both)")
    args = ap.parse_args()
    parts = {"workers": workers_part, "threads": threads_part}
    for name in args.parts or list(parts):
        if name not in parts:
            ap.error(f"unknown part {name!r}; valid: {', '.join(parts)}")
        parts[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
