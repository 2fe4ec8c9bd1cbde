"""``ditkit bench-kernels``: how close ditkit runs to this machine's limit, measured in one run.

- ``gemm``: the peak of a large square matmul per dtype (float32, bfloat16, int8 via ``torch._int_mm``) and thread
  count, GFLOP/s (2 n^3 operations per n x n product), the best of the rounds;
- ``forward``: the bundled image DiT's forward (rebuilt for 256 / 1,024 / 4,096 tokens as ``model_on_canvas`` does,
  and at its own 64) on a batch: FLOPs counted by ``torch.utils.flop_counter``, median time, achieved GFLOP/s and
  ``fraction_of_peak`` of the float32 GEMM peak at the same thread count, and where the time goes (the profiler's
  top operators by self CPU time);
- ``w8a8``: the W8A8 recipe against float32, end to end (``samples`` per generation, doubled by CFG), speed-up and
  PSNR, interleaved rounds;
- ``attention``: every sparse attention backend at its defaults against dense SDPA (``bench-attention``'s
  kernels), ``efficiency`` = speed-up x density.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..core.metrics import PSNR_CAP, psnr
from ..models.attention import TokenLayout
from ..pipelines.base import model_on_canvas
from .attention import attention_backends, bench_tokens
from .harness import ditkit_entry, round_order

GEMM_DTYPES = ("float32", "bfloat16", "int8")


def gemm_gflops(dtype: str, size: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n by n x n product of ``dtype`` at the current thread count."""
    g = torch.Generator().manual_seed(0)
    if dtype == "int8":
        a, b = (torch.randint(-127, 128, (size, size), dtype=torch.int8, generator=g) for _ in range(2))
        fn = lambda: torch._int_mm(a, b)
    else:
        a, b = (torch.randn(size, size, generator=g).to(getattr(torch, dtype)) for _ in range(2))
        fn = lambda: torch.mm(a, b)
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best / 1e9


def top_operators(fn, k: int = 6) -> list[dict]:
    """The ``k`` operators with the most self CPU time in one call of ``fn``, with their share of the total."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3)} for e in events[:k]]


def check_square(tokens: int) -> None:
    side = int(tokens ** 0.5)
    if side * side != tokens:
        raise ValueError(f"--tokens {tokens}: the image DiT's token grid is square; give a square number, e.g. "
                         f"{side * side} or {(side + 1) ** 2}")


@torch.no_grad()
def forward_row(model_name: str, tokens: int, samples: int, peak: float, repeats: int = 5) -> dict:
    """The forward of ``model_name`` rebuilt for a square grid of ``tokens`` on ``samples`` inputs."""
    check_square(tokens)
    side = round(tokens ** 0.5)
    model = model_on_canvas(model_name, TokenLayout(1, side, side))[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, model.in_channels, *model.config.image_hw, generator=g)
    t = torch.full((samples,), 500.0)
    y = torch.arange(samples) % model.config.num_classes
    fn = lambda: model(x, t, y)
    fn()
    flops = FlopCounterMode(display=False)
    with flops:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    achieved = flops.get_total_flops() / seconds / 1e9
    return {"kind": "forward", "tokens": tokens, "samples": samples, "threads": torch.get_num_threads(),
            "config": "float32 eager", "gflop": flops.get_total_flops() / 1e9, "ms": 1e3 * seconds,
            "gflops_per_s": achieved, "peak_gflops_per_s": peak, "fraction_of_peak": achieved / peak,
            "top_ops": top_operators(fn)}


def w8a8_rows(pipe, batches, steps: int, repeats: int, recipe: str = "w8a8") -> list[dict]:
    """W8A8 vs float32 end to end at each batch size (labels cycling, seeds 0..; CFG 4 doubles the rows)."""
    float_entry, quant_entry = ditkit_entry(pipe, "none", "none"), ditkit_entry(pipe, recipe, recipe)
    rows = []
    for n in batches:
        labels = [i % pipe.num_classes for i in range(n)]
        run = lambda p: p(labels, num_sampling_steps=steps, sampler="ddim", cfg_scale=4.0, seed=0)
        outputs, times = {}, {"none": [], recipe: []}
        entries = {"none": float_entry, recipe: quant_entry}
        for r in range(repeats + 1):                   # round 0 warms up (and calibrates W8A8) untimed
            for name in round_order(list(entries), r):
                with entries[name].active() as p:
                    t0 = time.perf_counter()
                    outputs[name] = run(p)
                    if r:
                        times[name].append(time.perf_counter() - t0)
        rows.append({"kind": "w8a8", "tokens": pipe.model.grid[0] * pipe.model.grid[1], "samples": n,
                     "threads": torch.get_num_threads(), "config": recipe, "steps": steps,
                     "speedup": statistics.median(times["none"]) / statistics.median(times[recipe]),
                     "psnr": psnr(outputs[recipe], outputs["none"], cap=PSNR_CAP).mean().item()})
    return rows


def attention_rows(tokens: int, repeats: int, log=print) -> list[dict]:
    """Every registered sparse backend at its defaults vs SDPA at ``tokens`` (16 frames, 6 heads of 64)."""
    layout = TokenLayout(16, *(2 * [round((tokens // 16) ** 0.5)]))
    rows = bench_tokens(tokens, layout, 6, 64, [b for b in attention_backends() if b != "linear"], repeats, log=log)
    return [{"kind": "attention", "tokens": tokens, "samples": 1, "threads": torch.get_num_threads(),
             "config": "defaults", **r} for r in rows if r["backend"] != "sdpa"]


def bench_kernels(model_name, pipe, threads, tokens, forward_samples: int, batches, steps: int, attention_tokens: int,
                  gemm_size: int, repeats: int, log=print) -> list[dict]:
    """Every row, for each thread count in ``threads``."""
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        peaks = {}
        for dtype in GEMM_DTYPES:
            peaks[dtype] = gemm_gflops(dtype, gemm_size, repeats)
            rows.append({"kind": "gemm", "tokens": None, "samples": None, "threads": n, "config": dtype,
                         "size": gemm_size, "gflops_per_s": peaks[dtype]})
            log(f"threads {n}: {dtype} GEMM {gemm_size}^3 {peaks[dtype]:.1f} GFLOP/s")
        for k in tokens:
            row = forward_row(model_name, k, forward_samples, peaks["float32"], repeats)
            rows.append(row)
            log(f"threads {n}: forward at {k} tokens x {forward_samples}: {row['gflops_per_s']:.1f} GFLOP/s = "
                f"{100 * row['fraction_of_peak']:.0f} % of the float32 peak; top: {row['top_ops'][0]['op']}")
        for row in w8a8_rows(pipe, batches, steps, repeats):
            rows.append(row)
            log(f"threads {n}: w8a8 at {row['samples']} samples: {row['speedup']:.2f}x, {row['psnr']:.1f} dB")
        if attention_tokens:
            rows += attention_rows(attention_tokens, repeats, log=lambda m: log(f"threads {n}: {m.strip()}"))
    return rows


def kernels_markdown(rows: list[dict]) -> str:
    """Tables of the rows: GEMM peaks, forwards, W8A8 curve, attention efficiency."""
    pick = lambda kind: [r for r in rows if r["kind"] == kind]
    out = ["| dtype | threads | GEMM GFLOP/s |", "|---|---|---|"]
    out += [f"| {r['config']} | {r['threads']} | {r['gflops_per_s']:.1f} |" for r in pick("gemm")]
    out += ["", "| tokens | samples | threads | GFLOP | ms | GFLOP/s | of fp32 peak | top operators (self CPU share) |",
            "|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['tokens']} | {r['samples']} | {r['threads']} | {r['gflop']:.1f} | {r['ms']:.1f} | "
            f"{r['gflops_per_s']:.1f} | {100 * r['fraction_of_peak']:.0f} % | "
            + ", ".join(f"{o['op']} {100 * o['share']:.0f} %" for o in r["top_ops"][:4]) + " |" for r in pick("forward")]
    out += ["", "| samples (x2 CFG) | threads | steps | W8A8 speed-up | PSNR dB |", "|---|---|---|---|---|"]
    out += [f"| {r['samples']} | {r['threads']} | {r['steps']} | {r['speedup']:.2f}x | {r['psnr']:.1f} |"
            for r in pick("w8a8")]
    out += ["", "| backend | tokens | threads | speed-up | density | efficiency |", "|---|---|---|---|---|---|"]
    out += [f"| `{r['backend']}` | {r['tokens']} | {r['threads']} | {r['speedup']:.2f}x | {r['density']:.3f} | "
            f"{r['efficiency']:.2f} |" for r in pick("attention")]
    return "\n".join(out)

