"""``ditkit bench-attention``: the attention backends against dense SDPA, per call and end to end (the benchmark:
:mod:`ditkit.bench.attention`), as a table and JSON."""
from __future__ import annotations

import platform
import sys

import torch

from ..acceleration.recipes import REGISTRY
from ..bench.attention import (IMAGE_MODEL, VIDEO_MODEL, attention_backends, bench_tokens, capture_activations,
                               check_end_to_end, end_to_end, linear_crossover, markdown, parse_layout)
from ..bench.harness import method_kind, split_recipes
from ..core.outputs import check_output_path, write_json
from ..hooks.method import parse_recipe
from ..pipelines.base import resolve_model_path
from .bench import recipe_list
from .flags import add_threads_arg, nonnegative_float, nonnegative_int, positive_int


def token_counts(text: str) -> list[int]:
    """--tokens '1024,4096' -> [1024, 4096], each an integer >= 1."""
    parts = [t.strip() for t in text.split(",")]
    if not all(t.isdigit() and int(t) > 0 for t in parts):
        raise ValueError(f"--tokens {text!r}: give comma-separated sequence lengths >= 1, e.g. --tokens 1024,4096")
    return [int(t) for t in parts]


def backend_list(text: str | None) -> list[str]:
    """The --backends recipes (default: every registered attention backend), each checked and an attention backend;
    a cache or quantizer is named as such."""
    valid = attention_backends()
    if not text:
        return valid
    for spec in split_recipes(text):
        names = [name for name, _ in parse_recipe(spec)]
        for name in names:
            if name in REGISTRY and name not in valid:
                raise ValueError(f"--backends {name}: {name} is not an attention backend (it is a "
                                 f"{method_kind(name)} method: measure it end to end with `ditkit bench --recipes "
                                 f"{name}`); attention backends: {', '.join(valid)}")
            if name not in valid and name != "sdpa":
                raise ValueError(f"--backends: unknown attention backend {name!r}; valid: {', '.join(valid)}")
        if len(names) > 1:
            raise ValueError(f"--backends {spec}: one attention backend per comma-separated entry; a combined recipe "
                             f"is measured end to end with --e2e --e2e-recipes '{spec}' or `ditkit bench --recipes`")
    return [b for b in recipe_list(text, "--backends") if b != "sdpa"]


def run(args):
    tokens = token_counts(args.tokens)
    backends = backend_list(args.backends)
    layouts = [parse_layout(args.layout, n) for n in tokens]
    check_output_path(args.json, "--json", (".json",))
    if args.activations != "auto" and not args.random:
        resolve_model_path(args.activations)                      # a missing model is named, not replaced by noise
    recipes = recipe_list(args.e2e_recipes, "--e2e-recipes") if args.e2e_recipes else \
        [b for b in backends if b != "linear"]
    if args.e2e:
        check_end_to_end(recipes, args.e2e_canvas, args.e2e_model)
    log = lambda m: print(m, file=sys.stderr)
    rows = []
    for n, layout in zip(tokens, layouts):
        models = (VIDEO_MODEL, IMAGE_MODEL) if args.activations == "auto" else (args.activations,)
        real = None if args.random else capture_activations(layout, models)
        log(f"{n} tokens, layout {layout.shape}, {args.heads} heads x {args.head_dim}; errors on "
            f"{real[1] if real else 'random tensors'}")
        rows += bench_tokens(n, layout, args.heads, args.head_dim, backends, args.repeats, real, log=log,
                             text=args.text_tokens)
    print(markdown(rows))
    result = {"command": "ditkit " + " ".join(sys.argv[1:]), "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "rows": rows}
    if any(b.split(":")[0] == "linear" for b in backends):
        result["linear_crossover"] = linear_crossover(args.heads, args.head_dim, args.repeats)
        print(f"linear attention crossover: {result['linear_crossover']['crossover_tokens']} tokens")
    if args.e2e:
        result["end_to_end"] = end_to_end(recipes, args.e2e_canvas, args.e2e_frames, args.e2e_steps, args.seed,
                                          args.e2e_cfg, args.e2e_model, args.e2e_repeats, log)
    if args.json:
        print(f"wrote {write_json(args.json, result)}")


def register(sub):
    p = sub.add_parser("bench-attention", help="attention backends vs dense SDPA: ms, speed-up, density, error, memory")
    p.add_argument("--tokens", default="1024,4096,16384", help="comma-separated sequence lengths")
    p.add_argument("--heads", type=positive_int, default=6, help="attention heads")
    p.add_argument("--head-dim", type=positive_int, default=64, help="channels per head")
    p.add_argument("--layout", default="16", help="FxHxW, or F (square frames of tokens/F) [default: 16 frames]")
    p.add_argument("--backends", help="comma-separated attention backends with parameters, e.g. "
                                      "'svg,sta:window=2x2x2' (default: every registered attention backend at its "
                                      "defaults: " + ", ".join(attention_backends()) + ")")
    p.add_argument("--text-tokens", type=nonnegative_int, default=0,
                   help="joint text-image calls (SD3, FLUX, CogVideoX, HunyuanVideo): this many text tokens before "
                        "the image tokens, kept dense by every backend (default 0: image tokens only)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed rounds per backend (median)")
    add_threads_arg(p)
    p.add_argument("--activations", default="auto", help="model whose q, k, v measure the errors: bundled name or "
                                                          "file (default: the bundled video DiT, else the image DiT)")
    p.add_argument("--random", action="store_true", help="measure errors on random tensors, not real activations")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the inputs")
    p.add_argument("--e2e", action="store_true", help="also sample the bundled video DiT dense vs each recipe")
    p.add_argument("--e2e-model", default=VIDEO_MODEL, help="trained video (or image) DiT: bundled name or file")
    p.add_argument("--e2e-repeats", type=positive_int, default=1, help="interleaved timed runs per recipe (median)")
    p.add_argument("--e2e-recipes", help="recipes for --e2e (default: the sparse backends)")
    p.add_argument("--e2e-canvas", type=positive_int, default=256, help="video side in pixels (the model trained on 32)")
    p.add_argument("--e2e-frames", type=positive_int, default=8, help="video frames (image DiT: images)")
    p.add_argument("--e2e-steps", type=positive_int, default=20, help="--e2e sampling steps")
    p.add_argument("--e2e-cfg", type=nonnegative_float, default=1.0, help="--e2e guidance scale")
    p.add_argument("--json", help="write rows (+ crossover, end to end) to this JSON file")
    p.set_defaults(fn=run)
