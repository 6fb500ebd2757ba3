"""`make bench`: every benchmark script, one after the other, each printing its own ratios.

Benchmarks are not tests: the machines are shared and noisy, so each script measures a ratio
(ours vs a baseline written in the script) inside one process rather than asserting a time.
"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    ["edit_speed.py", "throughput", "--n", "100", "--epochs", "3"],
    ["edit_speed.py", "scaling", "--sizes", "100", "1000"],  # add 10000 for issue 6 c (hours on 2 cores)
    ["eval_speed.py", "--n", "100", "--n-baseline", "10"],
    ["calibrate.py", "locft-bf", "--benchmark", "zsre", "--n", "100"],
    ["calibrate.py", "ft-uke", "--benchmark", "unkebench", "--n", "10", "--protocol", "single"],
    ["parallel_speed.py", "--k", "8"],
    ["parallel_speed.py", "--k", "8", "--preset", "ft-m", "--benchmark", "zsre"],
    ["speedups.py", "--n", "100"],
    ["value_speed.py", "--n", "8", "--batches", "8"],
    ["stats_speed.py", "--tokens", "20000"],
    ["stop_speed.py", "--n", "128"],
    ["mmlu_speed.py", "--n", "57"],
    ["compile_speed.py", "--n", "100", "--epochs", "3"],
    ["sweep_speed.py"],
    ["capability.py", "--n-edits", "100"],
    ["gpu_check.py"],  # measures only where CUDA is present (says so and exits otherwise)
]

if __name__ == "__main__":
    for script, *args in SCRIPTS:
        print(f"\n=== {script} {' '.join(args)}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *args], check=True)
