# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[data]'
	touch $(STAMP)

$(DEVSTAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[data,dev]'
	touch $(DEVSTAMP)

demo: $(STAMP)
	$(BIN)/ditkit generate --model mnist-dit --out out/demo.png --no-progress

test: $(DEVSTAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf out runs
