"""``ditkit bench-kernels``: GEMM peaks, the image DiT's forward against them, W8A8 over batch sizes and sparse
attention efficiency, per thread count, in one run (:mod:`ditkit.bench.kernels`)."""
from __future__ import annotations

import torch

from ..bench.harness import machine
from ..bench.kernels import bench_kernels, check_square, kernels_markdown
from ..core.outputs import check_output_path, write_json
from ..pipelines.image import load
from .flags import nonnegative_int, positive_int


def int_list(text: str, flag: str, low: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < low for v in values):
        raise ValueError(f"{flag} {text!r}: give comma-separated integers >= {low}, e.g. {flag} 1,2")
    return values


def run(args):
    check_output_path(args.json, "--json", (".json",))
    threads = int_list(args.threads_list, "--threads-list")
    tokens = int_list(args.tokens, "--tokens")
    batches = int_list(args.batches, "--batches")
    for k in tokens:
        check_square(k)
    pipe = load(args.model)
    rows = bench_kernels(args.model, pipe, threads, tokens, args.forward_samples, batches, args.num_sampling_steps,
                         args.attention_tokens, args.gemm_size, args.repeats)
    print(kernels_markdown(rows))
    if args.json:
        data = {"settings": {k: v for k, v in vars(args).items() if k != "fn"}, "machine": machine(), "rows": rows}
        print(f"wrote {write_json(args.json, data)}")
    torch.set_num_threads(threads[0])


def register(sub):
    p = sub.add_parser("bench-kernels", help="GEMM peak vs forward FLOP/s, W8A8 over batch sizes, sparse attention "
                                             "efficiency, per thread count")
    p.add_argument("--model", default="mnist-dit", help="bundled image DiT or file")
    p.add_argument("--threads-list", default="1,2", help="comma-separated thread counts")
    p.add_argument("--tokens", default="64,256,1024,4096", help="forward token counts (square grids)")
    p.add_argument("--forward-samples", type=positive_int, default=8, help="batch of a timed forward")
    p.add_argument("--batches", default="1,4,16,64", help="W8A8 end-to-end batch sizes (samples; CFG doubles them)")
    p.add_argument("--num-sampling-steps", type=positive_int, default=10, help="W8A8 end-to-end steps")
    p.add_argument("--attention-tokens", type=nonnegative_int, default=4096, help="attention rows (0: none)")
    p.add_argument("--gemm-size", type=positive_int, default=2048, help="side of the square GEMMs")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed rounds (median; GEMM: best)")
    p.add_argument("--json", help="write every row to this JSON file")
    p.set_defaults(fn=run)
