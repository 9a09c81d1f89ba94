# One-command set-up: `make demo` runs the default pretraining recipe, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: without it pip resolves a multi-GB CUDA build on CPU-only machines. DS_BUILD_OPS=0: deepspeed
# (the test extra) installs without CUDA; its CPU accelerator runs the ZeRO tests over gloo.
TORCH ?= torch==2.13.0
LAUNCH := $(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no

# The lowest releases pyproject.toml declares; `make test-min` runs the trainer tests on them in a venv of its own.
MIN_VENV ?= .venv-min
MIN_PINS := "transformers==5.17.0" "accelerate==1.10.1"
TRAINER_TESTS := tests/test_trainer.py tests/test_chaos.py tests/test_errors.py tests/test_peft_bnb.py \
	tests/test_trl.py tests/test_registry.py tests/test_live.py

.PHONY: install test test-min lint demo plan bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -e ".[test]"
	touch $@

$(MIN_VENV)/bin/.installed: pyproject.toml
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(MIN_VENV)/bin/python -m pip install -q "$(TORCH)"
	DS_BUILD_OPS=0 $(MIN_VENV)/bin/python -m pip install -q -e ".[test]" $(MIN_PINS)
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

test-min: $(MIN_VENV)/bin/.installed
	$(MIN_VENV)/bin/python -c "import transformers, accelerate; print('transformers', transformers.__version__, \
		'accelerate', accelerate.__version__)"
	$(MIN_VENV)/bin/python -m pytest -q $(TRAINER_TESTS)

# `make demo ARGS="--budgets 100 200"`: any recipe field (`--field value`) shrinks or changes the run.
demo: install
	$(LAUNCH) recipes/pretrain.py $(ARGS)

plan: install
	$(BIN)/hf-wsd plan 1000 2000 4000 8000 --warmup-steps 100 --plot lr_schedule.png

bench: install
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(MIN_VENV) build *.egg-info .pytest_cache
