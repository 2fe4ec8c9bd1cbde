"""``ditkit generate``: class-conditional samples from a DiT written as a PNG grid (and optionally a .npz)."""
from __future__ import annotations

import time

import numpy as np


def add_sampling_args(p, default_steps: int = 50, default_cfg: float = 4.0, default_interval=None):
    """Flags shared by generate, eval and bench (DiT names; diffusers names as aliases)."""
    p.add_argument("--model", default="mnist-dit",
                   help="bundled model name, .safetensors file, results folder, or an official DiT .pt checkpoint")
    p.add_argument("--model-name", default="DiT-XL/2", help="architecture of an official .pt checkpoint")
    p.add_argument("--vae", help="local diffusers AutoencoderKL folder (latent models, e.g. sd-vae-ft-ema)")
    p.add_argument("--num-sampling-steps", "--num-inference-steps", dest="num_sampling_steps", type=int,
                   default=default_steps)
    p.add_argument("--sampler", default="ddim", help="ddpm | ddim | dpm++2m (DDPM models); euler | heun (flow models)")
    p.add_argument("--cfg-scale", "--guidance-scale", dest="cfg_scale", type=float, default=default_cfg)
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   default=list(default_interval) if default_interval else None,
                   help="apply guidance only at noise levels in [LOW, HIGH] (1 = pure noise; 0 1 = everywhere)"
                        + (f"; default {default_interval[0]:g} {default_interval[1]:g}" if default_interval else ""))
    p.add_argument("--dit-cfg", action="store_true", help="guide only the first 3 channels, as the original DiT")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i, whatever the batch size")
    p.add_argument("--batch-size", type=int, default=None, help="samples per forward batch (default: all at once)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def sampling_kwargs(args) -> dict:
    return dict(num_sampling_steps=args.num_sampling_steps, sampler=args.sampler, cfg_scale=args.cfg_scale,
                seed=args.seed, eta=args.eta, guidance_interval=tuple(args.guidance_interval) if args.guidance_interval else None,
                guide_channels=3 if args.dit_cfg else None, batch_size=args.batch_size)


def load_pipeline(args):
    from .pipeline import DiTPipeline
    return DiTPipeline.from_pretrained(args.model, args.device, autoencoder=args.vae, model_name=args.model_name)


def run(args):
    import os

    from .visual import save_grid
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
