"""``ditkit eval``: sample a model and score it: class-conditional MNIST image models with ditkit's classifier
(accuracy and Fréchet distance on its features, :mod:`ditkit.evaluation.evaluate`; ``--cfg-sweep`` over guidance
scales), video models on a masked task of held-out Moving MNIST (``--task``, :mod:`ditkit.evaluation.video`),
text-to-image models on captioned-scene prompts (``--prompts``, :mod:`ditkit.evaluation.text`)."""
from __future__ import annotations

import os
from pathlib import Path

from ..acceleration.recipes import check_recipe
from ..core.outputs import check_output_path, write_json
from ..evaluation.evaluate import (EVAL_CFG_SCALE, EVAL_GUIDANCE_INTERVAL, cfg_sweep, evaluate_pipeline, format_table,
                                   plot_cfg_sweep)
from ..evaluation.text import HELDOUT_PROMPTS, TEXT_EVAL_CFG_SCALE, evaluate_prompts, read_prompts
from ..evaluation.video import EVAL_TASKS, ROLLOUT_FRAMES, evaluate_video, metric_keys, plot_per_frame, save_examples
from ..pipelines.base import is_video_model, resolve_model_path
from ..pipelines.diffusers_dit import diffusers_folder_kind, is_diffusers_text_folder
from ..core.visual import save_grid
from ..pipelines.text import is_text_model
from ..pipelines.video import VideoPipeline
from .flags import (add_history_guidance_args, add_sampling_args, add_text_args, check_text_flags,
                    check_video_model_flags, guidance_interval, history_kwargs, load_pipeline, positive_int,
                    sampling_kwargs)

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def run_image_eval(args) -> dict:
    """``ditkit eval`` for class-conditional MNIST image models."""
    pipe = load_pipeline(args).set_recipe(args.recipe)
    result = evaluate_pipeline(pipe, args.num_samples, progress=not args.no_progress and os.isatty(2),
                               **sampling_kwargs(args))
    result = {"model": str(args.model), "recipe": str(pipe.recipe), **result}
    s = result["sampling"]
    interval = f" at noise levels {list(s['guidance_interval'])}" if s["guidance_interval"] else ""
    print(f"ditkit eval: {args.model}, {s['sampler']} {s['num_sampling_steps']} steps, cfg {s['cfg_scale']}{interval}, "
          f"{result['num_samples']} samples in {result['seconds']:.1f} s")
    print(format_table(result))
    return result


TEXT_KEYS = ("digit", "position", "order", "size", "thickness", "prompt")


def run_text_eval(args) -> dict:
    """``ditkit eval`` for text-to-image models: each prompt of ``--prompts`` (default: the held-out set) sampled once
    and scored against real renderings of the same prompts; examples grid next to --json (or ``--examples``)."""
    prompts = read_prompts(args.prompts or HELDOUT_PROMPTS)[:args.num_samples]
    pipe = load_pipeline(args).set_recipe(args.recipe)
    sampling = sampling_kwargs(args)
    seed = sampling.pop("seed")
    result, images, real = evaluate_prompts(pipe, prompts, seed, not args.no_progress and os.isatty(2),
                                            negative_prompt=args.negative_prompt, **sampling)
    result = {"model": str(args.model), "recipe": str(pipe.recipe),
              "prompts": str(args.prompts or HELDOUT_PROMPTS), **result}
    s = result["sampling"]
    print(f"ditkit eval: {args.model}, {len(prompts)} prompts, {s['sampler']} {s['num_sampling_steps']} steps, cfg "
          f"{s['cfg_scale']:g}, {result['sampling_seconds']:.1f} s")
    print(f"{'':10}" + "".join(f"{k:>11}" for k in TEXT_KEYS) + f"{'Fréchet':>11}")
    for name, prefix, fd in (("model", "", "frechet_distance"), ("real", "real_", "frechet_distance_real_baseline")):
        cells = [result[f"{prefix}{k}_accuracy"] for k in TEXT_KEYS] + [result[fd]]
        print(f"{name:10}" + "".join(f"{'-':>11}" if v is None else f"{v:>11.3f}" for v in cells))
    print(f"({result['metric']}, vs {result['reference']}; real: the same prompts drawn with held-out digits)")
    examples = args.examples or (f"{Path(args.json).with_suffix('')}-examples.png" if args.json else None)
    if examples:
        k = min(16, len(prompts))
        result["examples"] = str(save_grid(images[:k], examples, nrow=8, upscale=3, captions=prompts[:k]))
        print(f"examples: {result['examples']}")
    return result


def run_cfg_sweep(args) -> dict:
    """``ditkit eval --cfg-sweep``: the image evaluation at each guidance scale, a table and an optional plot."""
    try:
        scales = [float(s) for s in args.cfg_sweep.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--cfg-sweep takes comma-separated guidance scales like 1.0,1.25,1.5, got {args.cfg_sweep!r}")
    pipe = load_pipeline(args).set_recipe(args.recipe)
    result = {"model": str(args.model), "recipe": str(pipe.recipe), **cfg_sweep(pipe, scales, args.num_samples, **sampling_kwargs(args))}
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
    """``ditkit eval --task ...`` for VideoDiT models: prints the table, writes the per-frame plot and the example
    strips where asked (``--plot``, ``--examples``; with ``--json``, next to it by default)."""
    pipe = VideoPipeline.from_pretrained(args.model, args.device).set_recipe(args.recipe)
    result, tensors = evaluate_video(pipe, args.task, args.num_videos, args.num_sampling_steps, args.sampler,
                                     args.seed, args.batch_size, not args.no_progress and os.isatty(2), args.cfg_scale,
                                     guidance_interval(args.guidance_interval), history_kwargs(args), args.num_frames)
    plot_path, examples_path = video_outputs(args)
    plot = plot_per_frame(result, plot_path) if plot_path else None
    result = {"model": str(args.model), **result, "plot": str(plot) if plot else None,
              "examples": str(save_examples(tensors, examples_path)) if examples_path else None}
    print(f"ditkit eval: {args.model}, {args.task} on {result['num_videos']} held-out clips, "
          f"{result['sampling']['sampler']} {args.num_sampling_steps} steps, {result['sampling_seconds']:.1f} s")
    keys = metric_keys(result)
    width = max(16, *(len(k) + 2 for k in keys))
    print(f"{'':10}" + "".join(f"{k:>{width}}" for k in keys))
    for name, prefix in (("model", ""), ("baseline", "baseline_"), ("real", "real_")):
        if prefix + keys[0] in result:
            print(f"{name:10}" + "".join(f"{result[prefix + k]:>{width}.4f}" if prefix + k in result else
                                         f"{'-':>{width}}" for k in keys))
    print(f"baseline: {result['baseline']}")
    if plot_path:
        print(f"plot: {result['plot'] or 'skipped (matplotlib missing)'}")
    if examples_path:
        print(f"examples: {result['examples']}")
    return result


def video_outputs(args) -> tuple[str | None, str | None]:
    """(per-frame plot, example strips) paths of a video evaluation: --plot / --examples, else next to --json."""
    stem = str(Path(args.json).with_suffix("")) if args.json else None
    return (args.plot or (f"{stem}-per-frame.png" if stem else None),
            args.examples or (f"{stem}-examples.png" if stem else None))


def check_args(args) -> None:
    """Everything checked before the model is loaded."""
    check_output_path(args.json, "--json", (".json",))
    check_output_path(args.plot, "--plot", PLOT_SUFFIXES)
    check_output_path(args.examples, "--examples", (".png",))
    guidance_interval(args.guidance_interval)
    if args.cfg_sweep and args.task:
        raise ValueError("--cfg-sweep evaluates image models; drop --task (or --cfg-sweep)")
    check_recipe(args.recipe)
    if check_text_flags_for_eval(args):
        return
    video = not diffusers_folder_kind(args.model) and is_video_model(resolve_model_path(args.model))
    if video:
        check_video_model_flags(args)
        if not args.task:
            raise ValueError(f"{args.model} is a video DiT: choose what to score with --task (one of "
                             f"{', '.join(EVAL_TASKS)}), e.g. --task predict")
        if args.cfg_sweep:
            raise ValueError("--cfg-sweep evaluates image models; for a video model drop --cfg-sweep")
        return
    if args.task:
        raise ValueError(f"--task {args.task} scores video DiTs; {args.model} is an image DiT: drop --task")
    for flag, value, default in (("--history-scale", args.history_scale, 1.0), ("--num-frames", args.num_frames, None)):
        if value != default:
            raise ValueError(f"{flag} {value} applies to video models; {args.model} is an image DiT: drop {flag}")
    if args.examples:
        raise ValueError("--examples writes the example clips of a video --task evaluation; drop it for image models")
    if args.prompts:
        raise ValueError(f"--prompts scores text-to-image models; {args.model} is a class-conditional image DiT: drop "
                         f"--prompts")
    if args.plot and not args.cfg_sweep:
        raise ValueError(f"--plot {args.plot} draws a --cfg-sweep for image models; add --cfg-sweep 1.0,1.25,1.5")
    if args.num_samples is not None and args.num_samples < 2:
        raise ValueError(f"--num-samples {args.num_samples}: the Fréchet distance needs at least 2 samples (1000 "
                         f"recommended)")


def check_text_flags_for_eval(args) -> bool:
    """Whether ``--model`` is a text-to-image model (its flags checked; --prompts, not --prompt)."""
    if is_diffusers_text_folder(args.model):
        raise ValueError(f"ditkit eval scores ditkit's MNIST-scene text models on the scene grammar; {args.model} is a "
                         f"diffusers PixArt folder: measure recipes on it with `ditkit bench --model {args.model}` "
                         f"(speed, PSNR / SSIM vs full compute) or `ditkit tune`")
    text = not diffusers_folder_kind(args.model) and is_text_model(args.model)
    if not text:
        args.prompt = args.prompts_file = None
        check_text_flags(args)
        return False
    if args.task or args.cfg_sweep:
        raise ValueError(f"{args.model} is a text-to-image model: drop {'--task' if args.task else '--cfg-sweep'} "
                         f"(it is scored on --prompts)")
    if args.plot:
        raise ValueError(f"--plot applies to --cfg-sweep and video --task evaluations; drop it for {args.model}")
    args.prompts_file, args.prompt = args.prompts or HELDOUT_PROMPTS, None
    check_text_flags(args)
    read_prompts(args.prompts_file)
    return True


def run(args):
    check_args(args)
    text = is_text_model(args.model) and not diffusers_folder_kind(args.model)
    if args.cfg_scale is None:
        args.cfg_scale = TEXT_EVAL_CFG_SCALE if text else EVAL_CFG_SCALE
    if args.guidance_interval is None and not text:
        args.guidance_interval = list(EVAL_GUIDANCE_INTERVAL)
    if args.num_samples is None:
        args.num_samples = 10 ** 9 if text else 1000
    if text:
        result = run_text_eval(args)
    elif args.cfg_sweep:
        result = run_cfg_sweep(args)
    elif args.task:
        result = run_video_eval(args)
    else:
        result = run_image_eval(args)
    if args.json:
        print(f"wrote {write_json(args.json, result, indent=2)}")


def register(sub):
    p = sub.add_parser("eval", help="sample a model and score it (MNIST: classifier accuracy and Fréchet distance on "
                                    "ditkit's MNIST-classifier features)",
                       description="Defaults: image models --cfg-scale 1.5 --guidance-interval 0 0.6; text-to-image "
                                   f"models --cfg-scale {TEXT_EVAL_CFG_SCALE:g}, no interval.")
    add_sampling_args(p, default_cfg=None)
    p.set_defaults(fn=run)
    p.add_argument("--recipe", help="score the model with this acceleration recipe applied, e.g. fora:interval=3")
    p.add_argument("--num-samples", type=positive_int, default=None,
                   help="class-balanced samples to generate (label i %% 10; default 1000); text models: the first N "
                        "prompts (default all)")
    p.add_argument("--prompts", metavar="FILE", help="text-to-image models: one caption per line of the scene grammar "
                                                     "(default: the bundled held-out prompt set)")
    add_text_args(p, prompts=False)
    p.add_argument("--json", help="also write all results to this JSON file (a video --task evaluation also writes "
                                  "its per-frame plot and example clips next to it: NAME-per-frame.png, "
                                  "NAME-examples.png)")
    p.add_argument("--task", choices=EVAL_TASKS,
                   help="video models: score this masked task on held-out Moving MNIST against a baseline (PSNR/SSIM; "
                        "predict and rollout also the true digit's identity; story: label accuracy, guided by "
                        "--cfg-scale)")
    p.add_argument("--num-videos", type=positive_int, default=200, help="--task: held-out clips to evaluate")
    p.add_argument("--num-frames", type=positive_int, help=f"--task rollout: frames per video, beyond the model's "
                                                           f"window (default {ROLLOUT_FRAMES})")
    add_history_guidance_args(p)
    p.add_argument("--cfg-sweep", help="image models: evaluate at each of these comma-separated guidance scales "
                                       "(same seeds) and report the one with the lowest Fréchet distance")
    p.add_argument("--plot", help="--cfg-sweep: Fréchet distance and accuracy against the scale; video --task: each "
                                  "metric per generated frame (.png, .pdf or .svg)")
    p.add_argument("--examples", help="video --task: the first clips as rows truth / model / baseline; text models: "
                                      "the first 16 samples captioned (.png)")
