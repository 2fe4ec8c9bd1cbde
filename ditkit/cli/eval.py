"""``ditkit eval``: sample a model and score it: class-conditional MNIST image models with ditkit's classifier
(accuracy and Fréchet distance on its features, :mod:`ditkit.evaluation.evaluate`; ``--cfg-sweep`` over guidance
scales), video models on a masked task of held-out Moving MNIST (``--task``, :mod:`ditkit.evaluation.video`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..evaluation.evaluate import (EVAL_CFG_SCALE, EVAL_GUIDANCE_INTERVAL, cfg_sweep, evaluate_pipeline, format_table,
                                   plot_cfg_sweep)
from ..evaluation.video import evaluate_video, metric_keys, plot_per_frame, save_examples
from ..pipelines.image import load
from ..pipelines.video import VideoPipeline
from .flags import add_context_scale_arg, add_sampling_args, sampling_kwargs


def run_image_eval(args) -> dict:
    """``ditkit eval`` for class-conditional MNIST image models."""
    pipe = load(args.model, args.device)
    result = evaluate_pipeline(pipe, args.num_samples, progress=not args.no_progress and os.isatty(2),
                               **sampling_kwargs(args))
    result = {"model": str(args.model), **result}
    s = result["sampling"]
    interval = f" at noise levels {list(s['guidance_interval'])}" if s["guidance_interval"] else ""
    print(f"ditkit eval: {args.model}, {s['sampler']} {s['num_sampling_steps']} steps, cfg {s['cfg_scale']}{interval}, "
          f"{result['num_samples']} samples in {result['seconds']:.1f} s")
    print(format_table(result))
    return result


def run_cfg_sweep(args) -> dict:
    """``ditkit eval --cfg-sweep``: the image evaluation at each guidance scale, a table and an optional plot."""
    try:
        scales = [float(s) for s in args.cfg_sweep.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--cfg-sweep takes comma-separated guidance scales like 1.0,1.25,1.5, got {args.cfg_sweep!r}")
    pipe = load(args.model, args.device)
    result = {"model": str(args.model), **cfg_sweep(pipe, scales, args.num_samples, **sampling_kwargs(args))}
    print(f"ditkit eval --cfg-sweep: {args.model}, {args.num_samples} samples per scale "
          f"(baseline {result['sweep'][0]['frechet_distance_real_baseline']:.2f})")
    print(f"{'cfg':>6}  {'accuracy':>8}  {'Fréchet':>8}")
    for r in result["sweep"]:
        print(f"{r['sampling']['cfg_scale']:>6g}  {r['class_accuracy']:>8.4f}  {r['frechet_distance']:>8.2f}")
    print(f"lowest Fréchet distance at cfg {result['best_cfg_scale']:g}")
    if args.plot:
        result["plot"] = str(plot_cfg_sweep(result, args.plot) or "skipped (matplotlib missing)")
        print(f"plot: {result['plot']}")
    return result


def run_video_eval(args) -> dict:
    """``ditkit eval --task ...`` for VideoDiT models: prints the table, writes the plot and example PNGs."""
    pipe = VideoPipeline.from_pretrained(args.model, args.device)
    result, tensors = evaluate_video(pipe, args.task, args.num_videos, args.num_sampling_steps, args.sampler,
                                     args.seed, args.batch_size, not args.no_progress and os.isatty(2), args.cfg_scale,
                                     tuple(args.guidance_interval) if args.guidance_interval else None,
                                     args.context_scale)
    stem = Path(args.json).with_suffix("") if args.json else Path("out") / f"eval-video-{args.task}"
    plot = plot_per_frame(result, f"{stem}-per-frame.png")
    result = {"model": str(args.model), **result, "plot": str(plot) if plot else None,
              "examples": str(save_examples(tensors, f"{stem}-examples.png"))}
    print(f"ditkit eval: {args.model}, {args.task} on {result['num_videos']} held-out clips, "
          f"{result['sampling']['sampler']} {args.num_sampling_steps} steps, {result['sampling_seconds']:.1f} s")
    keys = metric_keys(result)
    print(f"{'':10}" + "".join(f"{k:>16}" for k in keys))
    for name, prefix in (("model", ""), ("baseline", "baseline_"), ("real", "real_")):
        if prefix + keys[0] in result:
            print(f"{name:10}" + "".join(f"{result[prefix + k]:>16.4f}" for k in keys))
    print(f"baseline: {result['baseline']}")
    print(f"plot: {result['plot'] or 'skipped (matplotlib missing)'}; examples: {result['examples']}")
    return result


def run(args):
    if args.cfg_sweep and args.task:
        raise ValueError("--cfg-sweep evaluates image models; drop --task (or --cfg-sweep)")
    if args.plot and not args.cfg_sweep:
        raise ValueError(f"--plot {args.plot} draws a --cfg-sweep; add --cfg-sweep 1.0,1.25,1.5 (video --task "
                         f"evaluations write their plots next to --json)")
    if args.cfg_sweep:
        result = run_cfg_sweep(args)
    elif args.task:
        result = run_video_eval(args)
    else:
        result = run_image_eval(args)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {path}")


def register(sub):
    p = sub.add_parser("eval", help="sample a model and score it (MNIST: classifier accuracy and Fréchet distance on "
                                    "ditkit's MNIST-classifier features)")
    add_sampling_args(p, default_cfg=EVAL_CFG_SCALE, default_interval=EVAL_GUIDANCE_INTERVAL)
    p.add_argument("--num-samples", type=int, default=1000, help="class-balanced samples to generate (label i %% 10)")
    p.add_argument("--json", help="also write all results to this JSON file")
    p.add_argument("--task", choices=("predict", "interpolate", "complete", "story"),
                   help="video models: score this masked task on held-out Moving MNIST against a baseline (PSNR/SSIM; "
                        "story: label accuracy, guided by --cfg-scale)")
    p.add_argument("--num-videos", type=int, default=200, help="--task: held-out clips to evaluate")
    add_context_scale_arg(p)
    p.add_argument("--cfg-sweep", help="image models: evaluate at each of these comma-separated guidance scales "
                                       "(same seeds) and report the one with the lowest Fréchet distance")
    p.add_argument("--plot", help="--cfg-sweep: write Fréchet distance and accuracy against the scale to this PNG")
    p.set_defaults(fn=run)
