"""Sweeps beyond one process: run locks, local workers, submitit's local executor, failures, threads."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench import runs, threads
from workbench.runs import RunSpec, executors, locks

TINY = wb.EditConfig(model_name="tiny-random-llama", device="cpu", layers=(2,), lr=1e-2, epochs=10, batch_size=2)
SPEC = RunSpec(edit=TINY, benchmark="facts-fixture", n_edits=2, max_new_tokens=4, eval="locft", splits=("ori",))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


def executed(store, experiment) -> list[str]:
    """Run hashes in the order the workers finished them (one line per execution)."""
    log = store / experiment / "runs.log"
    return [line.split()[-1] for line in log.read_text().splitlines()] if log.exists() else []


def test_two_local_workers_run_each_point_once(store):
    grid = {"lr": [1e-2, 2e-2, 3e-2], "n_edits": [1, 2]}
    df = runs.sweep(SPEC, grid, "race", progress=False, executor="local:2")
    assert len(df) == 6 and df["ori.exact_match"].notna().all()
    done = executed(store, "race")
    assert sorted(done) == sorted(df.hash) and len(set(done)) == 6  # each run once, none missing
    pids = {line.split()[2] for line in (store / "race" / "runs.log").read_text().splitlines()}
    assert str(os.getpid()) not in pids  # the workers did the work
    # read back, not rerun
    again = runs.sweep(SPEC, grid, "race", progress=False, executor="local:2")
    assert executed(store, "race") == done and sorted(again.hash) == sorted(df.hash)
    assert not list((store / "race").glob(".*"))  # no locks or work folders left


def test_a_killed_worker_is_taken_over(store, tmp_path):
    """A worker is killed with SIGKILL mid-run; a second sweep takes its lock and completes the grid."""
    slow = SPEC.replace(epochs=400)  # long enough to be killed while running
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import json
        import workbench as wb
        from workbench.runs import RunSpec
        spec = RunSpec.from_dict(json.loads({json.dumps(json.dumps(slow.to_dict()))}))
        wb.runs.sweep(spec, {{"lr": [1e-2, 2e-2]}}, "killed", progress=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], env=os.environ.copy(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = runs.run_folder(slow.replace(lr=1e-2), "killed")
    deadline = time.time() + 120
    while time.time() < deadline and not locks.lock_path(first).exists():
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    held = locks.read_lock(first)
    assert held and held["pid"] == proc.pid and not (first / "metrics.json").exists()  # killed mid-run
    df = runs.sweep(slow, {"lr": [1e-2, 2e-2]}, "killed", progress=False)  # the dead pid's lock is free at once
    assert len(df) == 2 and sorted(executed(store, "killed")) == sorted(df.hash)


def test_a_claim_from_another_host_waits_for_the_stale_timeout(store):
    folder = runs.run_folder(SPEC, "foreign")
    folder.parent.mkdir(parents=True)
    locks.lock_path(folder).write_text(json.dumps({"host": "elsewhere", "pid": 1, "start": time.time()}))
    assert locks.try_lock(folder, stale_s=60) is None  # fresh: a live worker elsewhere holds it
    t0 = time.time()
    executors.run([executors.Task(folder, lambda: runs.execute(SPEC, "foreign"))], stale_s=3, progress=False)
    assert time.time() - t0 >= 3 and (folder / "metrics.json").exists()  # taken over after the timeout
    assert executed(store, "foreign") == [folder.name] and not locks.lock_path(folder).exists()


def test_only_one_of_two_takers_wins_a_stale_lock(tmp_path):
    folder = tmp_path / "run"
    locks.lock_path(folder).write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 12345}))
    first = locks.try_lock(folder)  # the pid does not exist: stale
    assert first is not None and locks.try_lock(folder) is None  # the second sees a live lock
    first.release()
    assert not locks.lock_path(folder).exists()


def test_a_failed_run_is_recorded_and_does_not_block_the_others(store):
    with pytest.raises(runs.SweepError, match=r"1 of 2 runs failed") as err:
        runs.sweep(SPEC, [{"layers": [2]}, {"layers": [99]}], "failing", progress=False)
    bad = runs.run_folder(SPEC.replace(layers=[99]), "failing")
    assert str(locks.failure_path(bad)) in str(err.value)
    record = json.loads(locks.failure_path(bad).read_text())
    assert "out of range" in record["error"] and "Traceback" in record["traceback"]
    assert (runs.run_folder(SPEC.replace(layers=[2]), "failing") / "metrics.json").exists()
    assert not locks.lock_path(bad).exists()


@pytest.mark.slow  # submitit's local executor (SLURM's path) starts a process per job: make test-slow
def test_submitit_local_executor_runs_a_grid(store, tmp_path):
    df = runs.sweep(SPEC, {"lr": [1e-2, 2e-2]}, "slurm", progress=False, executor="submitit",
                    executor_options={"cluster": "local", "jobs": 2, "folder": str(tmp_path / "submitit")})
    assert len(df) == 2 and sorted(executed(store, "slurm")) == sorted(df.hash)
    assert list((tmp_path / "submitit").glob("*_log.out"))  # submitit really ran the jobs
    with pytest.raises(wb.ConfigError, match="partition"):
        runs.sweep(SPEC, {"lr": [5e-2]}, "slurm", progress=False, executor="submitit", executor_options={"queue": "x"})


def test_bad_executor_names_the_valid_ones():
    with pytest.raises(wb.ConfigError, match="local:N"):
        runs.sweep(SPEC, {"lr": [1e-2]}, "x", progress=False, executor="local:zero")


def test_thread_policy_shares_the_cores(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv("WORKBENCH_THREADS", raising=False)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        entry = tmp_path / "active" / f"{socket.gethostname()}-{other.pid}"
        entry.parent.mkdir(parents=True)
        entry.touch()  # another workbench process computing on this host
        before = torch.get_num_threads()
        with threads.active():
            assert torch.get_num_threads() == threads.share(2)
            assert threads.active_processes() == 2
        assert not (tmp_path / "active" / f"{socket.gethostname()}-{os.getpid()}").exists()
        other.kill()
        other.wait()
        with threads.active():
            assert torch.get_num_threads() == threads.cores()  # alone again: every core
        monkeypatch.setenv("WORKBENCH_THREADS", "off")
        torch.set_num_threads(1)
        with threads.active():
            assert torch.get_num_threads() == 1  # left alone
    finally:
        other.kill()
        torch.set_num_threads(before)


def test_generation_and_scoring_take_their_share_too(tmp_path, monkeypatch, tiny, tok):
    """A notebook's direct `wb.generate` / `wb.evaluate` beside another computing process: each call
    registers as computing and runs at the fixed or shared thread count, not torch's default."""
    from workbench import generation

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    seen = []
    real = generation.prompt_ids
    monkeypatch.setattr(generation, "prompt_ids", lambda *a: seen.append((torch.get_num_threads(),
                                                                          threads.active_processes())) or real(*a))
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("WORKBENCH_THREADS", "1")
        torch.set_num_threads(2)
        wb.generate(tiny, tok, ["a"], max_new_tokens=2)
        monkeypatch.delenv("WORKBENCH_THREADS")
        wb.scoring.token_accuracy(tiny, tok, ["a"], ["b"])  # scoring registers too (nothing to read here)
        wb.generate(tiny, tok, ["a"], max_new_tokens=2)
    finally:
        torch.set_num_threads(before)
    assert seen == [(1, 1), (threads.cores(), 1)]  # registered while computing; alone: every core
    assert not list((tmp_path / "active").iterdir())  # and unregistered after


def test_a_serial_sweep_skips_ahead_of_a_run_another_worker_holds(store):
    """Two notebooks on one grid: the second runs what is free first and waits only at the end."""
    held = runs.run_folder(SPEC.replace(lr=1e-2), "shared")
    free = runs.run_folder(SPEC.replace(lr=2e-2), "shared")
    held.parent.mkdir(parents=True)
    locks.lock_path(held).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    tasks = [executors.Task(held, lambda: runs.execute(SPEC.replace(lr=1e-2), "shared")),
             executors.Task(free, lambda: runs.execute(SPEC.replace(lr=2e-2), "shared"))]
    executors.run(tasks, stale_s=5, progress=False)
    assert executed(store, "shared") == [free.name, held.name]  # the free one first, the held one after its timeout
