# One-command set-up: `make demo` runs the default pretraining recipe, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: without it pip resolves a multi-GB CUDA build on CPU-only machines.
TORCH ?= torch==2.13.0
LAUNCH := $(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no

.PHONY: install test demo plan bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(LAUNCH) recipes/pretrain.py

plan: install
	$(BIN)/hf-wsd plan 1000 2000 4000 8000 --warmup-steps 100 --plot lr_schedule.png

bench: install
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
