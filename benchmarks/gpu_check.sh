#!/usr/bin/env bash
# The one script to run first on a GPU machine, in at most 8 minutes, installing nothing.
#
#   bash benchmarks/gpu_check.sh --prepare     # here, on the CPU machine: fill .gpu_check/ (git-ignored, ~15 MiB)
#   bash benchmarks/gpu_check.sh               # there, with .gpu_check carried: the gpu tests, then the timed sections
#   bash benchmarks/gpu_check.sh --dry-run     # anywhere: prepare, then everything at toy sizes on this device
#
# Options: --carry DIR (default .gpu_check), --out DIR (default $OUT or gpu_check_out), --budget S (the
# timed sections' seconds, default 330), --tests-cap S (the gpu tests' seconds, default 120).
# What travels in DIR: SmolLM2's config and tokenizer (no weights: 514 MB cannot travel, so the check
# runs SmolLM2's shape with random weights and says so), and the benchmark files the sections read.
# The python is $PYTHON, else python3 (the device image's, which holds torch, transformers, accelerate).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CARRY=.gpu_check OUT_DIR=${OUT:-gpu_check_out} BUDGET=330 TESTS_CAP=120 DRY=0 PREPARE_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --prepare) PREPARE_ONLY=1 ;;
    --carry) CARRY=$2; shift ;;
    --out) OUT_DIR=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --tests-cap) TESTS_CAP=$2; shift ;;
    *) echo "gpu_check.sh: unknown option $1 (valid: --dry-run --prepare --carry --out --budget --tests-cap)" >&2; exit 2 ;;
  esac
  shift
done
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && [ "$DRY$PREPARE_ONLY" != "00" ]; then
  PYTHON=$ROOT/.venv/bin/python  # here: the project's environment
fi
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

prepare() {  # needs the embedded model converted here (python -m workbench.cli prepare) and ../shared/data
  "$PY" - "$CARRY" <<'EOF' || exit 1
import shutil, sys
from pathlib import Path
from workbench import data, models
carry = Path(sys.argv[1])
model = carry / "cache" / "models" / models.DEFAULT_MODEL
model.mkdir(parents=True, exist_ok=True)
for f in models.prepare_default().iterdir():
    if f.is_file() and f.suffix != ".safetensors":  # config, tokenizer, chat template: not the weights
        shutil.copy2(f, model / f.name)
for name in ("zsre", "unkebench", "mmlu-probe"):
    src = data.find(name)
    rel = data.registry()[name]["file"]
    (carry / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, carry / "data" / rel)
mmlu = data.find("mmlu-probe").parent  # the statistics corpus: every MMLU test and dev CSV
for csv in mmlu.glob("*/*.csv"):
    (carry / "data" / "mmlu" / csv.parent.name).mkdir(parents=True, exist_ok=True)
    shutil.copy2(csv, carry / "data" / "mmlu" / csv.parent.name / csv.name)
size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file())
print(f"gpu_check: {carry} prepared ({size / 2**20:.1f} MiB; SmolLM2 config and tokenizer, no weights)")
EOF
}

if [ "$PREPARE_ONLY" = 1 ] || [ "$DRY" = 1 ] || [ ! -d "$CARRY/data" ]; then
  prepare
fi
[ "$PREPARE_ONLY" = 1 ] && exit 0
export WORKBENCH_CACHE="$ROOT/$CARRY/cache" WORKBENCH_DATA="$ROOT/$CARRY/data"
case "$CARRY" in /*) export WORKBENCH_CACHE="$CARRY/cache" WORKBENCH_DATA="$CARRY/data" ;; esac
mkdir -p "$OUT_DIR"
status=0

# 1. the gpu tests, capped (they skip without CUDA: the dry run checks that they are collected)
echo "gpu_check: tests (cap ${TESTS_CAP} s)"
timeout "$TESTS_CAP" "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -rs -o addopts="" \
  --junitxml="$OUT_DIR/gpu_tests.xml" 2>&1 | tail -25
rc=${PIPESTATUS[0]}
echo "{\"section\": \"tests\", \"status\": \"$([ "$rc" = 0 ] && echo ok || echo "exit $rc")\"}" >>"$OUT_DIR/gpu_check.jsonl"
[ "$rc" = 0 ] || status=1

# 2. the timed sections, one JSON line each
ARGS=(--out "$OUT_DIR" --budget "$BUDGET")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)
"$PY" benchmarks/gpu_check.py "${ARGS[@]}" || status=1
echo "gpu_check: results in $OUT_DIR/gpu_check.jsonl"
exit $status
