# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: demo test bench clean
LOAD    ?= not stated (pass LOAD="..." to say how loaded the machine was)

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

# The acceleration benchmark on the bundled video model, two runs into one JSON and BENCHMARKS.md's video section:
# (1) its native size, 8 frames of 32x32 = 512-token attention, predict task, 50 steps, the caching suite;
# (2) rebuilt for a 128x128 canvas, 8 frames = 8,192-token attention, predict task, 20 steps (as the attention
# backends' end-to-end run), dense vs sparse attention vs caching + sparse stacks. About an hour on one CPU thread.
.PHONY: bench-video
bench-video: $(DEVSTAMP)
	$(BIN)/ditkit bench --model moving-mnist-vdt --task predict --suite caching --num-sampling-steps 50 \
	    --num-samples 16 --time-samples 4 --repeats 3 --threads 1 --add-recipes "fora:interval=4,taylorseer:interval=5,order=2" \
	    --json out/bench-video.json --plot docs/bench-moving-mnist-vdt.png
	$(BIN)/ditkit bench --model moving-mnist-vdt --task predict --canvas 128 --num-frames 8 --num-sampling-steps 20 \
	    --num-samples 2 --time-samples 1 --repeats 3 --threads 1 \
	    --recipes "topk,svg:sparsity=0.15,sta:density=0.125,full_steps=0.1,fora:interval=3+topk,taylorseer:interval=3,order=1+topk,taylorseer:interval=4,order=1+topk,taylorseer:interval=5,order=2+topk,fora:interval=3+sta:density=0.125,full_steps=0.1" \
	    --append --json out/bench-video.json --plot docs/bench-moving-mnist-vdt-8192.png --markdown BENCHMARKS.md

# ditkit recipes on mnist-dit converted to diffusers' DiTTransformer2DModel: natively, through ditkit's adapter, and
# beside cache-dit's DBCache and diffusers' hooks on the same weights, seeds and CFG (interleaved rounds); then every
# recipe on every adapted diffusers class (tiny random configurations). About 30 minutes on one CPU thread.
.PHONY: bench-diffusers
bench-diffusers: $(DEVSTAMP)
	$(BIN)/ditkit bench --model mnist-dit --sampler ddim --cfg-scale 4 --through-diffusers --peers diffusers,cache-dit \
	    --num-samples 32 --time-samples 16 --repeats 3 --threads 1 \
	    --recipes "fora,fora:interval=4,fora:interval=6,firstblockcache,firstblockcache:threshold=0.2,teacache,teacache:threshold=0.06,magcache,taylorseer,taylorseer:interval=6,order=1,delta_dit,w8a8,bf16,taylorseer:interval=6,order=1+w8a8,fora:interval=4+w8a8" \
	    --json out/bench-diffusers.json --plot docs/bench-diffusers.png --markdown BENCHMARKS.md
	$(BIN)/ditkit support-matrix --json out/support-matrix.json --markdown BENCHMARKS.md

# One process vs Ulysses and ring sequence parallelism on 2 local processes x 1 thread, the bundled video model at
# 8,192 tokens (8 frames of 128x128), interleaved rounds (rewrites its section of BENCHMARKS.md; about 5 minutes).
.PHONY: bench-parallel
bench-parallel: $(DEVSTAMP)
	$(BIN)/ditkit bench-parallel --model moving-mnist-vdt --canvas 128 --num-frames 8 --num-sampling-steps 4 \
	    --modes ulysses,ring --world-sizes 2 --threads 1 --repeats 3 --load "$(LOAD)" \
	    --json out/bench-parallel.json --markdown BENCHMARKS.md

# `ditkit tune` on the bundled image model (budget 32 dB, the bench settings) and video model (30 dB, predict task),
# each winner benched beside the best hand-picked recipe of BENCHMARKS.md in its validation run (rewrites its section
# of BENCHMARKS.md; LOAD="..." says how loaded the machine was). About 15 + 30 minutes on one CPU thread.
.PHONY: bench-tune
bench-tune: $(DEVSTAMP)
	$(BIN)/ditkit tune --model mnist-dit --sampler ddim --cfg-scale 4 --num-sampling-steps 50 --min-psnr 32 \
	    --validation-samples 64 --time-samples 16 --threads 1 --compare "taylorseer:interval=6,order=1+w8a8" \
	    --load "$(LOAD)" --out out/tune/mnist-dit.yaml --json out/tune/mnist-dit.json --plot docs/tune-mnist-dit.png \
	    --markdown BENCHMARKS.md
	$(BIN)/ditkit tune --model moving-mnist-vdt --task predict --num-sampling-steps 50 --min-psnr 30 \
	    --probe-samples 4 --calibration-samples 8 --validation-samples 16 --time-samples 4 --threads 1 \
	    --compare "teacache,fora:interval=6" --load "$(LOAD)" --out out/tune/moving-mnist-vdt.yaml \
	    --json out/tune/moving-mnist-vdt.json --plot docs/tune-moving-mnist-vdt.png --markdown BENCHMARKS.md

# How close ditkit runs to this CPU's limit: GEMM peaks per dtype, the image DiT's forward at 64-4,096 tokens against
# the float32 peak (with the profiler's top operators), W8A8 end to end over batch sizes and the sparse attention
# backends' efficiency at 4,096 tokens, at 1 and 2 threads (about 10 minutes).
.PHONY: bench-kernels
bench-kernels: $(DEVSTAMP)
	$(BIN)/ditkit bench-kernels --threads-list 1,2 --json out/bench-kernels.json

clean:
	rm -rf out runs

# Multi-process checks on nccl: fused attention's log-sum-exp, ring merging, FSDP on one GPU, and with 2+ GPUs
# Ulysses / ring / CFG parallelism against one process (`--device cpu` runs them on gloo).
.PHONY: gpu-parallel-check
gpu-parallel-check: $(DEVSTAMP)
	$(BIN)/python scripts/parallel_gpu_check.py --device cuda --json out/parallel-gpu-check.json

# Every recipe on the bundled image and video models, CUDA vs CPU, 4 steps (needs a GPU; `--device cpu` runs the same
# script CPU vs CPU as a smoke test).
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py --device cuda --json out/gpu-check.json
