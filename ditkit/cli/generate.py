"""``ditkit generate``: class-conditional samples from a DiT written as a PNG grid (and optionally a .npz)."""
from __future__ import annotations

import os
import time

import numpy as np

from ..acceleration.recipes import check_recipe
from ..core.outputs import atomic_write, check_output_path
from ..core.visual import save_grid
from ..models.interop.autoencoder import check_autoencoder_folder
from ..pipelines.base import is_video_model
from .flags import (add_parallel_args, add_sampling_args, guidance_interval, load_pipeline, nonnegative_int,
                    parallel_config, parallel_note, positive_int, sampling_kwargs)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def check_args(args) -> None:
    """Everything checked before the model is loaded."""
    check_output_path(args.out, "--out", IMAGE_SUFFIXES)
    check_output_path(args.npz, "--npz", (".npz",))
    guidance_interval(args.guidance_interval)
    check_recipe(args.recipe)
    if args.vae:
        check_autoencoder_folder(args.vae)
    if is_video_model(args.model):
        raise ValueError(f"{args.model} is a video DiT: generate videos with `ditkit generate-video --model "
                         f"{args.model} --task predict` (or another --task)")


def run(args):
    check_args(args)
    parallel = parallel_config(args)
    pipe = load_pipeline(args).set_parallel(parallel).set_recipe(args.recipe)
    base = args.class_labels or list(range(pipe.num_classes))
    n = args.num_samples or (len(args.class_labels) if args.class_labels else 40)
    labels = [base[i % len(base)] for i in range(n)]
    t0 = time.time()
    images = pipe(labels, progress=not args.no_progress and os.isatty(2), **sampling_kwargs(args))
    seconds = time.time() - t0
    if not pipe.is_main:                        # every process holds the samples; the first one writes them
        return
    nrow = args.nrow or min(len(labels), pipe.num_classes)
    path = save_grid(images, args.out, nrow=nrow, upscale=args.upscale)
    msg = (f"wrote {path} ({len(labels)} samples, {args.sampler} {args.num_sampling_steps} steps, cfg "
           f"{args.cfg_scale:g}{parallel_note(pipe)}) in {seconds:.1f} s")
    if args.npz:
        arrays = dict(images=images.cpu().numpy(), labels=np.array(labels), seeds=np.arange(len(labels)) + args.seed)
        msg += f"; arrays in {atomic_write(args.npz, lambda tmp: np.savez(tmp, **arrays))}"
    print(msg)


def register(sub):
    g = sub.add_parser("generate", help="sample class-conditional images into a PNG grid")
    add_sampling_args(g)
    g.add_argument("--class-labels", type=nonnegative_int, nargs="+",
                   help="labels to generate (default: 0, 1, 2, ... cycling)")
    g.add_argument("--num-samples", type=positive_int, default=None,
                   help="number of samples (default: one per --class-labels entry, or 40)")
    g.add_argument("--out", default="out/grid.png", help="the PNG grid (.png, .jpg or .webp)")
    g.add_argument("--nrow", type=positive_int, default=None, help="images per grid row (default: number of classes)")
    g.add_argument("--upscale", type=positive_int, default=2, help="nearest-neighbour upscaling of the PNG grid")
    g.add_argument("--npz", help="also save the raw samples, labels and seeds to this .npz")
    g.add_argument("--recipe", help="acceleration recipe, e.g. teacache:threshold=0.1 or fora:interval=3+w8a8")
    add_parallel_args(g)
    g.set_defaults(fn=run)
