"""Multi-process speed of sequence parallelism on this machine: one process vs Ulysses / ring / USP on several, in
interleaved rounds, with outputs compared and the bytes sent per sampler step against the theoretical volume.

Each timed generation of a parallel mode runs in freshly spawned gloo processes (``torch.multiprocessing``, a
loopback port, ``threads`` torch threads each); the one-process reference runs in this process with the same thread
count. Every generation is preceded by a one-step warm-up (rotary tables, allocator), and only the generation
itself is timed, between barriers. Theoretical bytes a process sends per network call, fp32 (n tokens, P
processes, D hidden width, L attention layers; xDiT's communication table): Ulysses 4 (n/P) D L (U-1)/U (queries,
keys, values in, output back), ring 2 (n/P) D L (R-1) (keys and values of every other part), plus (n/P) D (P-1)
for gathering the sequence before the head.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist

from ..acceleration.attention.base import softmax_attention_layers
from ..parallel.launch import spawn
from ..parallel.mesh import ParallelConfig, traffic
from .harness import round_order
from .tasks import video_pipeline_on_canvas, video_task

MODES = {"ulysses": lambda world: ParallelConfig(ulysses_degree=world),
         "ring": lambda world: ParallelConfig(ring_degree=world),
         "usp": lambda world: ParallelConfig(ulysses_degree=2, ring_degree=world // 2)}


def usp_fits(world_size: int) -> bool:
    """USP here is Ulysses 2 x ring world/2: it needs an even world size >= 4."""
    return world_size >= 4 and world_size % 2 == 0


def setup(spec: dict):
    """(pipeline, timed task, warm-up task) for ``spec``: model, canvas, num_frames, steps, seed."""
    pipe, native = video_pipeline_on_canvas(spec["model"], "cpu", spec["canvas"], spec["num_frames"])
    sampling = {"num_sampling_steps": spec["steps"], "sampler": "euler"}
    task = video_task(pipe, 1, spec["seed"], sampling, native=native)
    warm = video_task(pipe, 1, spec["seed"], {**sampling, "num_sampling_steps": 1}, native=native)
    return pipe, task, warm


def timed(pipe, task, warm, parallel: bool) -> tuple[torch.Tensor, float, int]:
    """(video, seconds, bytes this process sent) of one generation after a warm-up."""
    warm(pipe)
    if parallel:
        dist.barrier()
    traffic.reset()
    t0 = time.perf_counter()
    video = task(pipe)
    if parallel:
        dist.barrier()
    return video, time.perf_counter() - t0, traffic.sent


def _timed_process(rank: int, world_size: int, spec: dict, mode: str) -> dict:
    pipe, task, warm = setup(spec)
    pipe.set_parallel(MODES[mode](world_size))
    video, seconds, sent = timed(pipe, task, warm, True)
    return {"video": video, "seconds": seconds, "bytes": sent}


def theory_bytes(model, tokens: int, world_size: int, config: ParallelConfig) -> float:
    """Bytes one process sends per network call by xDiT's communication table (module docstring)."""
    layers = softmax_attention_layers(model)
    width = layers[0].num_heads * layers[0].head_dim
    part = tokens / world_size
    U, R = config.ulysses_degree, config.ring_degree
    per_layer = 4 * part * width * (U - 1) / U + 2 * part * width * (R - 1)
    return 4.0 * (len(layers) * per_layer + part * width * (world_size - 1))


def bench_parallel(spec: dict, modes: list[str], world_sizes: list[int], repeats: int, log=print) -> list[dict]:
    """Rows (mode, world_size, tokens, seconds, speedup, max_abs_diff, bytes_per_step, bytes_per_step_theory) of
    the modes at each world size against one process, over ``repeats`` interleaved rounds."""
    torch.set_num_threads(spec["threads"])
    pipe, task, warm = setup(spec)
    cfg = pipe.model.config
    tokens = (spec["num_frames"] // cfg.tubelet) * (spec["canvas"] // cfg.patch_size) ** 2
    heads = min(a.num_heads for a in softmax_attention_layers(pipe.model))
    fits = lambda m, w: (m != "usp" or usp_fits(w)) and MODES[m](w).ulysses_degree <= heads
    for m, w in [(m, w) for w in world_sizes for m in modes if not fits(m, w)]:
        log(f"  skipped {m} x {w}: {'Ulysses degree above the ' + str(heads) + ' heads' if usp_fits(w) or m != 'usp' else 'USP needs an even world size >= 4'}")
    items = [("one process", 1)] + [(m, w) for w in world_sizes for m in modes if fits(m, w)]
    times = {item: [] for item in items}
    results = {}
    for r in range(repeats):
        for item in round_order(items, r):
            mode, world = item
            if world == 1:
                video, seconds, sent = timed(pipe, task, warm, False)
                result = {"video": video, "seconds": seconds, "bytes": sent}
            else:
                result = spawn(_timed_process, world, spec, mode, threads=spec["threads"])
            times[item].append(result["seconds"])
            results[item] = result
            log(f"  round {r + 1}/{repeats}: {mode} x {world}: {result['seconds']:.2f} s")
    reference = results[items[0]]["video"]
    base = statistics.median(times[items[0]])
    rows = []
    for item in items:
        mode, world = item
        median = statistics.median(times[item])
        rows.append({"mode": mode, "world_size": world, "tokens": tokens, "threads_per_process": spec["threads"],
                     "seconds": round(median, 3), "seconds_all": [round(t, 3) for t in times[item]],
                     "speedup": round(base / median, 3),
                     "max_abs_diff": float((results[item]["video"] - reference).abs().max()),
                     "bytes_per_step": results[item]["bytes"] / spec["steps"],
                     "bytes_per_step_theory": 0.0 if world == 1 else
                     theory_bytes(pipe.model, tokens, world, MODES[mode](world))})
    return rows


PARALLEL_MARKERS = ("<!-- ditkit bench-parallel: generated section begins (make bench-parallel rewrites it) -->",
                    "<!-- ditkit bench-parallel: generated section ends -->")
ULYSSES_BAR = 1.6                       # speed-up of Ulysses on 2 processes over one, outputs equal
EQUAL_ATOL = 1e-4                       # outputs in [-1, 1] after the whole sampling loop


def bars(rows: list[dict]) -> list[str]:
    """The multi-process bar, met or not, with its figures."""
    out = []
    for row in rows:
        if row["mode"] == "ulysses" and row["world_size"] == 2:
            met = row["speedup"] >= ULYSSES_BAR and row["max_abs_diff"] <= EQUAL_ATOL
            out.append(f"- **{'met' if met else 'NOT met'}** — Ulysses on 2 processes >= {ULYSSES_BAR}x one process "
                       f"with equal outputs: {row['speedup']:.2f}x, max |difference| {row['max_abs_diff']:.1e}")
    return out


def markdown(data: dict) -> str:
    """The BENCHMARKS.md section of a bench-parallel run (``data``: command, settings, machine, date, rows)."""
    s = data["settings"]
    lines = ["## Multi-process inference: sequence parallelism on this CPU", "",
             f"Command: `{data['command']}`  ", f"Date: {data['date']}; machine: {data['machine']}; load: {data['load']}",
             "", f"Model `{s['model']}` rebuilt for {s['num_frames']} frames of {s['canvas']}x{s['canvas']} "
             f"(**{data['rows'][0]['tokens']:,} tokens** per attention call), predict task (4 frames given), "
             f"{s['steps']} Euler steps, one video, {s['threads']} torch thread(s) per process; "
             f"{s['repeats']} interleaved rounds, medians; each parallel generation in freshly spawned gloo processes "
             f"(loopback), after a one-step warm-up. Bytes: sent by one process per sampler step (one network call), "
             f"measured in ditkit's collectives, against xDiT's communication table (see `ditkit/bench/parallel.py`).",
             "", "| mode | processes | seconds (median) | rounds (s) | speed-up | max abs diff vs one process | "
             "MB sent / step | theory MB |", "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        rounds = ", ".join(f"{t:.1f}" for t in r["seconds_all"])
        lines.append(f"| {r['mode']} | {r['world_size']} | {r['seconds']:.2f} | {rounds} | {r['speedup']:.2f}x | "
                     f"{r['max_abs_diff']:.1e} | {r['bytes_per_step'] / 1e6:.1f} | "
                     f"{r['bytes_per_step_theory'] / 1e6:.1f} |")
    return "\n".join(lines + ["", "Bars:", *bars(data["rows"])])
