"""``ditkit generate-video``: conditional video generation by masking (VDT tasks) written as GIF, MP4 and a
frame-strip PNG (given frames framed in green, partly given in orange).

    ditkit generate-video --model moving-mnist-vdt --task predict --context clip.gif --out out/predict.gif
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..acceleration.recipes import check_recipe
from ..core.config import from_dict
from ..core.outputs import check_output_path
from ..core.configs import VideoTrainConfig
from ..core.video_io import load_video, resize_frames, save_video
from ..diffusion.masks import TASKS
from ..evaluation.video import heldout_clip
from ..pipelines.base import is_video_model, resolve_model_path
from ..pipelines.video import VideoPipeline, video_condition
from .flags import (add_history_guidance_args, add_parallel_args, add_sampling_args, history_kwargs, nonnegative_int,
                    parallel_config, parallel_note, positive_int, unit_float)

VIDEO_SUFFIXES = (".gif", ".mp4", ".png")


def load_mask(path: str | Path) -> torch.Tensor:
    """A user mask, 1 = generate: .npy [F, H, W] or [H, W] (0/1 or booleans), or a PNG (white = generate)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist")
    if path.suffix.lower() == ".npy":
        return torch.from_numpy(np.load(path).astype(np.float32))
    return torch.from_numpy((np.asarray(Image.open(path).convert("L")) > 127).astype(np.float32))


def frame_labels(args, num_frames: int) -> torch.Tensor | None:
    """[1] or [1, F] labels from --label / --frame-labels (a single --frame-labels value applies to every frame)."""
    if args.task == "story" and not args.frame_labels and not args.frame_prompts:
        raise ValueError("task 'story' needs --frame-labels (one class per frame, the label sequence to follow) or, "
                         "for a captioned model, --frame-prompts (one caption per frame)")
    if args.frame_labels:
        labels = args.frame_labels * num_frames if len(args.frame_labels) == 1 else args.frame_labels
        if len(labels) != num_frames:
            raise ValueError(f"--frame-labels needs 1 or {num_frames} values (one per frame), got {len(labels)}")
        return torch.tensor([labels])
    return None if args.label is None else torch.tensor([args.label])


def frame_captions(args, num_frames: int) -> dict:
    """{'prompt': caption} from --prompt or {'frame_prompts': one caption per frame} from --frame-prompts (a single
    value applies to every frame); {} without either."""
    if args.prompt is not None and args.frame_prompts:
        raise ValueError("give --prompt (one caption for the video) or --frame-prompts (one per frame), not both")
    if args.frame_prompts:
        prompts = args.frame_prompts * num_frames if len(args.frame_prompts) == 1 else args.frame_prompts
        if len(prompts) != num_frames:
            raise ValueError(f"--frame-prompts needs 1 or {num_frames} captions (one per frame), got "
                             f"{len(args.frame_prompts)}")
        return {"frame_prompts": list(prompts)}
    return {} if args.prompt is None else {"prompt": args.prompt}


def load_context(spec: str, pipe) -> torch.Tensor:
    """A context file, or 'heldout:I' = clip I of the held-out Moving MNIST evaluation set -> [C, F, H, W]."""
    if spec.startswith("heldout:"):
        index = spec.split(":", 1)[1]
        if not index.isdigit():
            raise ValueError(f"--context {spec}: expected heldout:I with a clip number I >= 0")
        return heldout_clip(from_dict(VideoTrainConfig, pipe.metadata["train_config"]), int(index))
    return load_video(spec, pipe.frame_shape[0])


def check_args(args) -> None:
    """Everything checked before the model is loaded."""
    check_output_path(args.out, "--out", VIDEO_SUFFIXES)
    check_recipe(args.recipe)
    if args.mask is not None and args.task != "complete":
        raise ValueError(f"--mask gives the region to generate in every frame, which is task 'complete'; --task "
                         f"{args.task} sets its own mask (which frames are given): use --task complete --mask "
                         f"{args.mask}, or drop --mask")
    if args.mask is not None and not Path(args.mask).is_file():
        raise FileNotFoundError(f"--mask {args.mask}: no such file; give a .npy [F, H, W] or [H, W] array, or a .png "
                                f"(white = generate)")
    if args.context is not None and not args.context.startswith("heldout:") and not Path(args.context).is_file():
        raise FileNotFoundError(f"--context {args.context}: no such file; give a video (.gif, .mp4, ...), a frame "
                                f"(.png, .jpg), a .npy array, or heldout:I for held-out clip I")
    if not is_video_model(resolve_model_path(args.model)):
        raise ValueError(f"{args.model} is not a video DiT: image DiTs sample with `ditkit "
                         f"generate --model {args.model}`; bundled video model: moving-mnist-vdt")


def run(args):
    check_args(args)
    parallel = parallel_config(args)
    pipe = VideoPipeline.from_pretrained(args.model, args.device).set_parallel(parallel).set_recipe(args.recipe)
    F = args.num_frames or pipe.num_frames
    if F < 2:
        raise ValueError(f"--num-frames must be at least 2, got {F}")
    context = None if args.context is None else load_context(args.context, pipe)
    if context is not None and args.resize:
        context = resize_frames(context, pipe.frame_shape[1:])
    if args.task == "uncond" and context is not None:
        raise ValueError("task 'uncond' takes no --context")
    window = min(F, pipe.num_frames)
    if F > window and args.task not in ("predict", "animate", "story", "uncond"):
        raise ValueError(f"videos longer than the model's {window} frames are continued autoregressively, which "
                         f"applies to predict, animate, story and uncond; use --num-frames <= {window} for {args.task}")
    if F > window:
        pipe.rollout_plan(args.history_frames, args.window_stride)
        if args.stabilize_history and not (args.stabilize_history < 1 and pipe.frame_timesteps):
            raise ValueError(f"--stabilize-history {args.stabilize_history}: a noise level in (0, 1) for models "
                             f"trained with per-frame noise levels (model.frame_timesteps); {args.model} is not one "
                             f"or the level is 1: drop it or use a level such as 0.1")
    elif args.history_frames or args.window_stride or args.stabilize_history:
        raise ValueError(f"--history-frames, --window-stride and --stabilize-history shape a rollout beyond the "
                         f"model's {window} frames; add --num-frames > {window} or drop them")
    mask = None if args.mask is None else load_mask(args.mask)
    context, mask = video_condition(args.task, context, window, pipe.frame_shape, args.given_frames, args.stride, mask)
    labels = frame_labels(args, F)
    captions = frame_captions(args, F)
    if args.cfg_scale != 1.0 and labels is None and not captions:
        raise ValueError("classifier-free guidance needs labels or captions: pass --label, --frame-labels, --prompt or "
                         "--frame-prompts, or --cfg-scale 1")
    t0 = time.time()
    progress = not args.no_progress and os.isatty(2)
    kwargs = dict(num_sampling_steps=args.num_sampling_steps, sampler=args.sampler, cfg_scale=args.cfg_scale,
                  eta=args.eta, prompt=captions.get("prompt"), **history_kwargs(args))
    pipe.check_history_guidance(args.history_guidance, args.history_scale, args.history_noise)
    first = labels[:, :window] if labels is not None and labels.dim() == 2 else labels
    per_frame = captions.get("frame_prompts")
    video = pipe(context[None], mask, first, seed=args.seed, progress=progress and F <= window,
                 frame_prompts=None if per_frame is None else [per_frame[:window]], **kwargs)
    if F > window:
        video = pipe.extend(video, F, labels, history=args.history_frames, stride=args.window_stride, seed=args.seed,
                            progress=progress, frame_prompts=None if per_frame is None else [per_frame],
                            stabilize=args.stabilize_history, **kwargs)
        mask = torch.cat([mask, torch.ones(F - window, *mask.shape[1:])])
    if not pipe.is_main:                        # every process holds the video; the first one writes it
        return
    paths = save_video(video[0], args.out, mask, args.fps, args.upscale)
    given = [f for f in range(F) if not mask[f].any()]
    print(f"wrote {', '.join(map(str, paths))} ({args.task}: {F} frames, given frames {given or 'none'}, "
          f"{args.num_sampling_steps} {args.sampler or pipe.default_sampler} steps"
          + (f", recipe {pipe.recipe}" if pipe.recipe else "") + f"{parallel_note(pipe)}) in {time.time() - t0:.1f} s")


def register(sub):
    g = sub.add_parser("generate-video", help="generate a video by masking: predict, backward, interpolate, animate, "
                                              "complete, story or uncond; writes GIF, MP4 and a frame-strip PNG")
    add_sampling_args(g, image=False)
    g.set_defaults(model="moving-mnist-vdt", sampler=None, cfg_scale=1.0)
    add_history_guidance_args(g)
    g.add_argument("--task", choices=TASKS, required=True,
                   help="predict: first frames given; backward: last frames; interpolate: every --stride-th frame and "
                        "the last; animate: first frame; story: first frame + --frame-labels; complete: a centred "
                        "box (or --mask) is generated in every frame; uncond: nothing given")
    g.add_argument("--context", help="known frames: .gif/.mp4/... video, .png/.jpg frame or .npy [F, H, W(, C)], a "
                                     "full-length video or just the given frames in order; 'heldout:I' = clip I of "
                                     "the held-out Moving MNIST evaluation set")
    g.add_argument("--resize", action="store_true", help="resize context frames to the model's frame size")
    g.add_argument("--num-frames", type=positive_int, help="frames to generate (default: the model's window; longer videos "
                                                  "are rolled out window by window, see --history-frames)")
    g.add_argument("--history-frames", type=positive_int, help="rollout: frames of the video so far that each new "
                                                               "window is given (default half the window)")
    g.add_argument("--stabilize-history", type=unit_float, default=0.0,
                   help="rollout: show each window its generated history at this noise level, in (0, 1) (Diffusion "
                        "Forcing's stabilisation; models trained with per-frame noise levels; 0 = clean)")
    g.add_argument("--window-stride", type=positive_int, help="rollout: new frames kept per window (default all the "
                                                              "window generates: window - history frames)")
    g.add_argument("--given-frames", type=positive_int, help="predict/backward: number of given frames (default: the "
                                                    "context's frame count, or half for a full-length context)")
    g.add_argument("--stride", type=positive_int, default=4, help="interpolate: every n-th frame is given (and the last)")
    g.add_argument("--mask", help="a custom mask, 1/white = generate: .npy [F, H, W] or [H, W], or .png")
    g.add_argument("--label", type=nonnegative_int, help="class of the whole video")
    g.add_argument("--frame-labels", type=nonnegative_int, nargs="+", help="one class per frame (story); 1 value = every frame")
    g.add_argument("--prompt", help="captioned models: the caption of the video, e.g. 'a 3 moving up and to the left' "
                                    "(text to video with --task uncond)")
    g.add_argument("--frame-prompts", nargs="+", metavar="CAPTION", help="captioned models: one caption per frame "
                                                                         "(story continuation); 1 value = every frame")
    g.add_argument("--out", default="out/video.gif", help="output path (.gif, .mp4 or .png); the .gif, the .mp4 and "
                                                           "the .png frame strip are written side by side")
    g.add_argument("--fps", type=positive_int, default=8, help="frames per second of the GIF and MP4")
    g.add_argument("--recipe", help="acceleration recipe, e.g. teacache:threshold=0.1, fora:interval=3+w8a8 or "
                                    "taylorseer+topk (a .yaml file works too)")
    g.add_argument("--upscale", type=positive_int, default=4, help="nearest-neighbour upscaling of the written frames")
    add_parallel_args(g)
    g.set_defaults(fn=run)
