# a3c: `make train`, `make eval`, `make test`. Each sets up .venv by itself on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where there is no NVIDIA GPU, pin the CPU build this workplace serves; otherwise let pip pick
# a CUDA build within the package's range.
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch>=2.1,torch==2.13.0)
EXTRAS ?= yaml,progress,tensorboard,plot,video

# Training settings (empty means the default of `a3c train --help`).
WORKERS ?=
ENV ?=
FRAMES ?=
TIME_LIMIT ?=
ENVS_PER_WORKER ?=
SCREEN ?=
BODY ?=
LSTM ?=
PRECISION ?=
LR ?=
SEED ?=
RUNS_DIR ?= runs
RUN_NAME ?=
RESUME ?=
CONFIG ?=
PRESET ?=
EVAL_DEVICE ?=
ARGS ?=
# Ray settings (make train-ray): the cluster's HOST:PORT (empty: a Ray instance on this machine),
# the nodes to spread the workers over (empty: all of the cluster's; one for a local instance).
RAY_ADDRESS ?=
NODES ?=
# Evaluation settings.
RUN ?=
CHECKPOINT ?=
EPISODES ?= 10
DEVICE ?= auto
VIDEO ?=
GREEDY ?=
OUTPUT ?=
# Benchmark settings.
BENCH_WORKERS ?= 1 2
BENCH_ENVS ?= 1 4 16
BENCH_SECONDS ?= 60
BENCH_PRECISION ?= auto
# The game suite (make benchmark): atari5, a comma-separated list of games, or a file of them; its
# directory (empty: benchmarks/SUITE). FRAMES is per game (empty: 10 M).
SUITE ?= atari5
SUITE_DIR ?=

opt = $(if $(2),$(1) $(2))
TRAIN_FLAGS = $(call opt,--workers,$(WORKERS)) $(call opt,--env-id,$(ENV)) \
	$(call opt,--total-frames,$(FRAMES)) $(call opt,--time-limit,$(TIME_LIMIT)) \
	$(call opt,--envs-per-worker,$(ENVS_PER_WORKER)) $(call opt,--screen-size,$(SCREEN)) \
	$(call opt,--body,$(BODY)) $(if $(filter 1 yes true,$(LSTM)),--lstm) $(call opt,--precision,$(PRECISION)) \
	$(call opt,--lr,$(LR)) $(call opt,--seed,$(SEED)) --runs-dir $(RUNS_DIR) \
	$(call opt,--run-name,$(RUN_NAME)) $(call opt,--resume,$(RESUME)) \
	$(call opt,--config,$(CONFIG)) $(call opt,--preset,$(PRESET)) $(call opt,--eval-device,$(EVAL_DEVICE)) $(ARGS)
EVAL_FLAGS = --runs-dir $(RUNS_DIR) $(call opt,--run,$(RUN)) $(call opt,--checkpoint,$(CHECKPOINT)) \
	--episodes $(EPISODES) --device $(DEVICE) $(if $(filter 1 yes true,$(VIDEO)),--video) \
	$(if $(filter 1 yes true,$(GREEDY)),--greedy) $(ARGS)

.PHONY: install train train-ray eval plot test test-fast lint bench benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[$(EXTRAS),test]"
	touch $@

$(VENV)/.ray-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[$(EXTRAS),ray]"
	touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(BIN)/a3c train $(TRAIN_FLAGS)

train-ray: $(VENV)/.ray-installed
	$(BIN)/a3c train --ray $(RAY_ADDRESS) $(call opt,--nodes,$(NODES)) $(TRAIN_FLAGS)

eval: $(VENV)/.installed
	$(BIN)/a3c eval $(EVAL_FLAGS)

plot: $(VENV)/.installed
	$(BIN)/a3c plot --runs-dir $(RUNS_DIR) $(RUN) $(call opt,--output,$(OUTPUT))

# Ruff's defaults, with bugbear, pyupgrade and ruff's own rules made explicit, zip(strict=) included.
RUFF_RULES = --extend-select B,UP,RUF,B905

# Each game of SUITE trained with the defaults, one after another, then scored (scripts/benchmark.py).
benchmark: $(VENV)/.installed
	$(BIN)/python scripts/benchmark.py --suite $(SUITE) --frames $(or $(FRAMES),10000000) \
		$(call opt,--dir,$(SUITE_DIR)) -- $(call opt,--workers,$(WORKERS)) $(ARGS)

# The tests run in TEST_PROCESSES processes, a test file to each at a time (a file's tests share
# what they set up, as test_ray.py's cluster): most of their time is spent waiting on the
# processes they start.
TEST_PROCESSES ?= 2
test: lint
	$(BIN)/python -m pytest -q -n $(TEST_PROCESSES) --dist loadfile

# The unit tests alone (gradients, optimizers, returns, settings, environments, messages): the edit loop.
test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.test-installed
	$(BIN)/ruff check $(RUFF_RULES) a3c tests scripts
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/python scripts/bench.py --workers $(BENCH_WORKERS) --envs-per-worker $(BENCH_ENVS) \
		--seconds $(BENCH_SECONDS) --precision $(BENCH_PRECISION) $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
