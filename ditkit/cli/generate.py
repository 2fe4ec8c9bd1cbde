"""``ditkit generate``: samples written as a PNG grid (and optionally a .npz): class-conditional from a DiT
(``--class-labels``), or text-to-image (``--prompt`` / ``--prompts-file``, the grid captioned with its prompts)."""
from __future__ import annotations

import os
import time

import numpy as np

from ..acceleration.recipes import check_recipe
from ..core.outputs import atomic_write, check_output_path
from ..core.visual import save_grid
from ..models.interop.autoencoder import check_autoencoder_folder
from ..pipelines.base import is_video_model
from ..pipelines.text import is_text_model
from .flags import (add_parallel_args, add_sampling_args, add_text_args, check_text_flags, guidance_interval,
                    load_pipeline, nonnegative_int, parallel_config, parallel_note, positive_int, prompts_of,
                    sampling_kwargs)

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
    if args.class_labels and is_text_model(args.model):
        raise ValueError(f"{args.model} is a text-to-image model: give --prompt or --prompts-file, not --class-labels")
    check_text_flags(args)


def run(args):
    check_args(args)
    parallel = parallel_config(args)
    pipe = load_pipeline(args).set_parallel(parallel).set_recipe(args.recipe)
    progress = not args.no_progress and os.isatty(2)
    t0 = time.time()
    if is_text_model(args.model):
        base = prompts_of(args)
        n = args.num_samples or len(base)
        conditions = [base[i % len(base)] for i in range(n)]
        images = pipe(prompt=conditions, negative_prompt=args.negative_prompt, progress=progress,
                      **sampling_kwargs(args))
        nrow, captions = args.nrow or min(n, 8), conditions
    else:
        base = args.class_labels or list(range(pipe.num_classes))
        n = args.num_samples or (len(args.class_labels) if args.class_labels else 40)
        conditions = [base[i % len(base)] for i in range(n)]
        images = pipe(conditions, progress=progress, **sampling_kwargs(args))
        nrow, captions = args.nrow or min(n, pipe.num_classes), None
    seconds = time.time() - t0
    if not pipe.is_main:                        # every process holds the samples; the first one writes them
        return
    upscale = args.upscale or (4 if captions else 2)
    path = save_grid(images, args.out, nrow=nrow, upscale=upscale, captions=captions)
    msg = (f"wrote {path} ({n} samples, {args.sampler} {args.num_sampling_steps} steps, cfg "
           f"{args.cfg_scale:g}{parallel_note(pipe)}) in {seconds:.1f} s")
    if args.npz:
        key = "prompts" if captions else "labels"
        arrays = dict(images=images.cpu().numpy(), **{key: np.array(conditions)}, seeds=np.arange(n) + args.seed)
        msg += f"; arrays in {atomic_write(args.npz, lambda tmp: np.savez(tmp, **arrays))}"
    print(msg)


def register(sub):
    g = sub.add_parser("generate", help="sample class-conditional or text-to-image images into a PNG grid")
    add_sampling_args(g)
    g.add_argument("--class-labels", type=nonnegative_int, nargs="+",
                   help="labels to generate (default: 0, 1, 2, ... cycling)")
    add_text_args(g)
    g.add_argument("--num-samples", type=positive_int, default=None,
                   help="number of samples (default: one per --class-labels entry or prompt, or 40 classes)")
    g.add_argument("--out", default="out/grid.png", help="the PNG grid (.png, .jpg or .webp)")
    g.add_argument("--nrow", type=positive_int, default=None,
                   help="images per grid row (default: number of classes, or 8 prompts)")
    g.add_argument("--upscale", type=positive_int, default=None,
                   help="nearest-neighbour upscaling of the PNG grid (default 2, or 4 with prompt captions)")
    g.add_argument("--npz", help="also save the raw samples, labels and seeds to this .npz")
    g.add_argument("--recipe", help="acceleration recipe, e.g. teacache:threshold=0.1 or fora:interval=3+w8a8")
    add_parallel_args(g)
    g.set_defaults(fn=run)
