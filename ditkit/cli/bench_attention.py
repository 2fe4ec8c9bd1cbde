"""``ditkit bench-attention``: the attention backends against dense SDPA, per call and end to end (the benchmark:
:mod:`ditkit.bench.attention`), as a table and JSON."""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

from ..bench.attention import (IMAGE_MODEL, VIDEO_MODEL, attention_backends, bench_tokens, capture_activations,
                               end_to_end, linear_crossover, markdown, parse_layout)
from ..bench.harness import split_recipes


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = split_recipes(args.backends) if args.backends else attention_backends()
    backends = [b for b in backends if b != "sdpa"]
    log = lambda m: print(m, file=sys.stderr)
    rows = []
    for n in (int(t) for t in args.tokens.split(",")):
        layout = parse_layout(args.layout, n)
        models = (VIDEO_MODEL, IMAGE_MODEL) if args.activations == "auto" else (args.activations,)
        real = None if args.random else capture_activations(layout, models)
        log(f"{n} tokens, layout {layout.shape}, {args.heads} heads x {args.head_dim}; errors on "
            f"{real[1] if real else 'random tensors'}")
        rows += bench_tokens(n, layout, args.heads, args.head_dim, backends, args.repeats, real, log=log)
    print(markdown(rows))
    result = {"command": "ditkit " + " ".join(sys.argv[1:]), "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "rows": rows}
    if any(b.split(":")[0] == "linear" for b in backends):
        result["linear_crossover"] = linear_crossover(args.heads, args.head_dim, args.repeats)
        print(f"linear attention crossover: {result['linear_crossover']['crossover_tokens']} tokens")
    if args.e2e:
        recipes = split_recipes(args.e2e_recipes) if args.e2e_recipes else [b for b in backends if b != "linear"]
        result["end_to_end"] = end_to_end(recipes, args.e2e_canvas, args.e2e_frames, args.e2e_steps, args.seed,
                                          args.e2e_cfg, args.e2e_model, args.e2e_repeats, log)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


def register(sub):
    p = sub.add_parser("bench-attention", help="attention backends vs dense SDPA: ms, speed-up, density, error, memory")
    p.add_argument("--tokens", default="1024,4096,16384", help="comma-separated sequence lengths")
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--layout", default="16", help="FxHxW, or F (square frames of tokens/F) [default: 16 frames]")
    p.add_argument("--backends", help="comma-separated backends with parameters, e.g. 'svg,sta:window=2x2x2' "
                                      "(default: every registered backend at its defaults)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--activations", default="auto", help="model whose q, k, v measure the errors: bundled name or "
                                                          "file (default: the bundled video DiT, else the image DiT)")
    p.add_argument("--random", action="store_true", help="measure errors on random tensors, not real activations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--e2e", action="store_true", help="also sample the bundled video DiT dense vs each recipe")
    p.add_argument("--e2e-model", default=VIDEO_MODEL, help="trained video (or image) DiT: bundled name or file")
    p.add_argument("--e2e-repeats", type=int, default=1, help="interleaved timed runs per recipe (median)")
    p.add_argument("--e2e-recipes", help="recipes for --e2e (default: the sparse backends)")
    p.add_argument("--e2e-canvas", type=int, default=256, help="video side in pixels (the model trained on 32)")
    p.add_argument("--e2e-frames", type=int, default=8, help="video frames (image DiT: images)")
    p.add_argument("--e2e-steps", type=int, default=20)
    p.add_argument("--e2e-cfg", type=float, default=1.0)
    p.add_argument("--json", help="write rows (+ crossover, end to end) to this JSON file")
    p.set_defaults(fn=run)
