"""``ditkit bench-parallel``: one process vs sequence parallelism (Ulysses, ring, USP) on several local processes,
interleaved (the benchmark: :mod:`ditkit.bench.parallel`), as a table, JSON and a BENCHMARKS.md section."""
from __future__ import annotations

import datetime
import os
import shlex
import sys

from ..bench.harness import machine
from ..bench.parallel import MODES, PARALLEL_MARKERS, bars, bench_parallel, markdown, usp_fits
from ..bench.report import replace_generated_section
from ..core.outputs import check_output_path, write_json
from ..parallel.mesh import distributed_env
from ..pipelines.base import is_video_model
from .flags import nonnegative_int, positive_int


def names(text: str, valid, flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    bad = [t for t in items if t not in valid]
    if bad:
        raise ValueError(f"{flag} {','.join(bad)}: not valid; valid: {', '.join(map(str, valid))}")
    return items


def world_sizes(text: str) -> list[int]:
    parts = [t.strip() for t in text.split(",")]
    if not all(t.isdigit() and int(t) >= 2 for t in parts):
        raise ValueError(f"--world-sizes {text!r}: give comma-separated process counts >= 2, e.g. --world-sizes 2,4")
    return [int(t) for t in parts]


def run(args):
    if distributed_env() is not None:
        raise ValueError("bench-parallel starts its own processes: run it as a plain command, not under torchrun")
    modes = names(args.modes, MODES, "--modes")
    worlds = world_sizes(args.world_sizes)
    if "usp" in modes and not any(usp_fits(w) for w in worlds):
        raise ValueError("--modes usp needs an even world size >= 4 (Ulysses 2 x ring world/2), e.g. --world-sizes 4")
    check_output_path(args.json, "--json", (".json",))
    if not is_video_model(args.model):
        raise ValueError(f"{args.model} is not a video DiT: bench-parallel measures the long-sequence setting of a "
                         f"video model (bundled: moving-mnist-vdt)")
    spec = {"model": args.model, "canvas": args.canvas, "num_frames": args.num_frames, "steps": args.num_sampling_steps,
            "seed": args.seed, "threads": args.threads, "repeats": args.repeats}
    print(f"bench-parallel: {args.model} on {args.num_frames} frames of {args.canvas}^2, {args.num_sampling_steps} "
          f"steps, modes {', '.join(modes)} on {', '.join(map(str, worlds))} processes, {args.repeats} rounds",
          file=sys.stderr)
    rows = bench_parallel(spec, modes, worlds, args.repeats, log=lambda m: print(m, file=sys.stderr))
    data = {"command": "ditkit " + shlex.join(sys.argv[1:]), "settings": spec, "rows": rows,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} CPU cores", "load": args.load, "machine_details": machine()}
    for r in rows:
        print(f"{r['mode']:>12} x {r['world_size']}: {r['seconds']:.2f} s, {r['speedup']:.2f}x, max |diff| "
              f"{r['max_abs_diff']:.1e}, {r['bytes_per_step'] / 1e6:.1f} MB/step (theory "
              f"{r['bytes_per_step_theory'] / 1e6:.1f})")
    print("\n".join(bars(rows)))
    if args.json:
        print(f"wrote {write_json(args.json, data)}")
    if args.markdown:
        print(f"wrote {replace_generated_section(args.markdown, markdown(data), markers=PARALLEL_MARKERS)}")


def register(sub):
    g = sub.add_parser("bench-parallel", help="one process vs Ulysses / ring / USP sequence parallelism on local "
                                              "processes, interleaved")
    g.add_argument("--model", default="moving-mnist-vdt", help="a video DiT (bundled name or file)")
    g.add_argument("--canvas", type=positive_int, default=128, help="frame side in pixels (the model rebuilt for it)")
    g.add_argument("--num-frames", type=positive_int, default=8, help="frames (8 x 128^2 = 8,192 tokens for the "
                                                                       "bundled model)")
    g.add_argument("--num-sampling-steps", type=positive_int, default=4, help="Euler steps per timed generation")
    g.add_argument("--modes", default="ulysses,ring", help="comma-separated: ulysses, ring, usp")
    g.add_argument("--world-sizes", default="2", help="comma-separated process counts, e.g. 2,4")
    g.add_argument("--threads", type=positive_int, default=1, help="torch threads per process (and for the "
                                                                    "one-process reference)")
    g.add_argument("--repeats", type=positive_int, default=3, help="interleaved timing rounds")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="held-out clip and noise seed")
    g.add_argument("--load", default="not stated", help="how loaded the machine was, for the report")
    g.add_argument("--json", help="write the rows to this JSON file (e.g. out/bench-parallel.json)")
    g.add_argument("--markdown", help="write the generated section of this BENCHMARKS.md")
    g.set_defaults(fn=run)
