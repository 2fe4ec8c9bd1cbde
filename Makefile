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

# The acceleration benchmark on the bundled model: the standard suite, diffusers' caches and a stacked cache + W8A8
# recipe (rewrites the generated section of BENCHMARKS.md; about 30 minutes on one CPU thread).
bench: $(DEVSTAMP)
	$(BIN)/ditkit bench --model mnist-dit --sampler ddim --cfg-scale 4 --peers diffusers --num-samples 64 \
	    --time-samples 16 --repeats 3 --threads 1 --add-recipes "taylorseer:interval=6,order=1+w8a8" \
	    --json out/bench.json --plot docs/bench-mnist-dit.png --markdown BENCHMARKS.md

clean:
	rm -rf out runs
