"""``ditkit generate``: class-conditional samples from a DiT written as a PNG grid (and optionally a .npz)."""
from __future__ import annotations

import os
import time

import numpy as np

from ..core.visual import save_grid
from .flags import add_sampling_args, load_pipeline, sampling_kwargs


def run(args):
    pipe = load_pipeline(args).set_recipe(args.recipe)
    base = args.class_labels or list(range(pipe.num_classes))
    n = args.num_samples or (len(args.class_labels) if args.class_labels else 40)
    labels = [base[i % len(base)] for i in range(n)]
    t0 = time.time()
    images = pipe(labels, progress=not args.no_progress and os.isatty(2), **sampling_kwargs(args))
    seconds = time.time() - t0
    nrow = args.nrow or min(len(labels), pipe.num_classes)
    path = save_grid(images, args.out, nrow=nrow, upscale=args.upscale)
    msg = f"wrote {path} ({len(labels)} samples, {args.sampler} {args.num_sampling_steps} steps, cfg {args.cfg_scale}) in {seconds:.1f} s"
    if args.npz:
        np.savez(args.npz, images=images.cpu().numpy(), labels=np.array(labels), seeds=np.arange(len(labels)) + args.seed)
        msg += f"; arrays in {args.npz}"
    print(msg)


def register(sub):
    g = sub.add_parser("generate", help="sample class-conditional images into a PNG grid")
    add_sampling_args(g)
    g.add_argument("--class-labels", type=int, nargs="+", help="labels to generate (default: 0, 1, 2, ... cycling)")
    g.add_argument("--num-samples", type=int, default=None,
                   help="number of samples (default: one per --class-labels entry, or 40)")
    g.add_argument("--out", default="out/grid.png")
    g.add_argument("--nrow", type=int, default=None, help="images per grid row (default: number of classes)")
    g.add_argument("--upscale", type=int, default=2, help="nearest-neighbour upscaling of the PNG grid")
    g.add_argument("--npz", help="also save the raw samples, labels and seeds to this .npz")
    g.add_argument("--recipe", help="acceleration recipe, e.g. teacache:threshold=0.1 or fora:interval=3+w8a8")
    g.set_defaults(fn=run)
