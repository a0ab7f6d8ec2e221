# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so that nothing can resolve a multi-GB CUDA build; TORCH_INDEX (e.g.
	# https://download.pytorch.org/whl/cpu) for a machine whose package index serves CUDA builds
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[media,serve,dev]'
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bgmrec demo --scale small --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check src tests examples
	$(BIN)/python -m pytest -q -n 2 --durations=15

lint: $(STAMP)
	$(BIN)/ruff check src tests examples

bench: $(STAMP)
	$(BIN)/bgmrec bench quality --out docs/benchmarks.md

clean:
	rm -rf $(VENV) runs .pytest_cache
