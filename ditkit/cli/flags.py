"""Flag helpers shared by the commands: the sampling flags (DiT names, diffusers names as aliases), the video
history-guidance flags and the bench-task flags, with what turns them into a pipeline, its keyword arguments or a
bench task."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..bench.tasks import ImageTask, TextTask, VideoTask, default_task, video_pipeline_on_canvas, video_task
from ..diffusion.guidance import HISTORY_GUIDANCE
from ..diffusion.masks import TASKS
from ..diffusion.samplers import SAMPLERS
from ..evaluation.text import TEXT_EVAL_CFG_SCALE
from ..models.dit import DIT_CONFIGS
from ..parallel.mesh import ParallelConfig, distributed_env, process_device
from ..pipelines.base import is_video_model
from ..pipelines.diffusers_dit import is_diffusers_text_folder
from ..pipelines.image import DiTPipeline
from ..pipelines.text import TextPipeline, is_text_model, read_prompts_file

IMAGE_FLAGS = {"model_name": "--model-name", "vae": "--vae", "dit_cfg": "--dit-cfg"}
VIDEO_FLAGS = {"task": "--task", "canvas": "--canvas", "num_frames": "--num-frames", "label": "--label",
               "given_frames": "--given-frames", "stride": "--stride"}


def _number(kind, low: float | None = None, high: float | None = None, low_open: bool = False, what: str = ""):
    """An argparse ``type``: ``kind`` (int or float) that is finite and within [low, high] (``low_open``: > low);
    a bad value is a parse error naming it and the range, before anything is loaded."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or ('an integer' if kind is int else 'a number')}, "
                                             f"got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        bad_low = low is not None and (value <= low if low_open else value < low)
        if bad_low or (high is not None and value > high):
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"<= {high:g}"
            raise argparse.ArgumentTypeError(f"must be {' and '.join(x for x in (lo, hi) if x)}, got {text}")
        return value
    parse.__name__ = what or kind.__name__
    return parse


positive_int = _number(int, 1, what="an integer >= 1")
nonnegative_int = _number(int, 0, what="an integer >= 0")
finite_float = _number(float, what="a finite number")
nonnegative_float = _number(float, 0.0, what="a number >= 0")
positive_float = _number(float, 0.0, low_open=True, what="a number > 0")
unit_float = _number(float, 0.0, 1.0, what="a number in [0, 1]")


def guidance_interval(values: list[float] | None) -> tuple[float, float] | None:
    """--guidance-interval LOW HIGH checked (0 <= LOW <= HIGH <= 1)."""
    if values is None:
        return None
    low, high = values
    if not 0 <= low <= high <= 1:
        raise ValueError(f"--guidance-interval {low:g} {high:g}: give noise levels LOW <= HIGH in [0, 1] (1 = pure "
                         f"noise), e.g. --guidance-interval 0.1 0.9")
    return low, high


def add_sampling_args(p, default_steps: int = 50, default_cfg: float = 4.0, default_interval=None,
                      image: bool = True, threads: int = 0):
    """Flags shared by generate, generate-video, eval, calibrate and bench (DiT names; diffusers names as aliases).
    ``image``: also the flags only image DiTs take (--model-name, --vae, --dit-cfg); ``threads``: --threads default."""
    p.add_argument("--model", default="mnist-dit",
                   help="bundled model name, .safetensors file, results or checkpoint folder (EMA weights)"
                        + (", or an official DiT .pt checkpoint" if image else ""))
    if image:
        p.add_argument("--model-name", choices=DIT_CONFIGS, metavar="NAME",
                       help="architecture of an official .pt checkpoint, e.g. DiT-XL/2 (the default), DiT-B/4")
        p.add_argument("--vae", help="local diffusers AutoencoderKL folder (latent models, e.g. sd-vae-ft-ema)")
    p.add_argument("--num-sampling-steps", "--num-inference-steps", dest="num_sampling_steps", type=positive_int,
                   default=default_steps, help="denoising steps")
    p.add_argument("--sampler", default="ddim", choices=SAMPLERS,
                   help="ddpm | ddim | dpm++2m (DDPM models); euler | heun | ddim (flow models)")
    p.add_argument("--cfg-scale", "--guidance-scale", dest="cfg_scale", type=nonnegative_float, default=default_cfg,
                   help="classifier-free guidance scale (1 = off, 0 = unconditional)")
    p.add_argument("--guidance-interval", type=unit_float, nargs=2, metavar=("LOW", "HIGH"),
                   default=list(default_interval) if default_interval else None,
                   help="apply guidance only at noise levels in [LOW, HIGH] (1 = pure noise; 0 1 = everywhere)"
                        + (f"; default {default_interval[0]:g} {default_interval[1]:g}" if default_interval else ""))
    if image:
        p.add_argument("--dit-cfg", action="store_true", help="guide only the first 3 channels, as the original DiT")
    p.add_argument("--eta", type=unit_float, default=0.0, help="DDIM eta in [0, 1] (0 = deterministic)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="sample i uses seed + i, whatever the batch size")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="samples per forward batch (default: all at once)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_arg(p, threads)


def add_parallel_args(p):
    """xDiT's multi-process flags (kebab-case); the job is launched with ``torchrun --nproc_per_node N``."""
    g = p.add_argument_group("multi-process inference (launch with torchrun --nproc_per_node N -m ditkit.cli ...)")
    g.add_argument("--ulysses-degree", type=positive_int, default=1,
                   help="processes splitting the sequence with Ulysses all-to-all attention (default 1)")
    g.add_argument("--ring-degree", type=positive_int, default=1,
                   help="processes splitting the sequence with ring attention (default 1)")
    g.add_argument("--cfg-parallel", action="store_true",
                   help="conditional and unconditional guidance branches on two processes")


def parallel_config(args) -> ParallelConfig | None:
    """The multi-process layout of the flags, checked against torchrun's world size before any work (None: one
    process); a CUDA ``--device`` becomes this process's own GPU."""
    config = ParallelConfig(args.ulysses_degree, args.ring_degree, args.cfg_parallel)
    env = distributed_env()
    if env is None:
        if config.degree > 1:
            raise ValueError(f"--ulysses-degree / --ring-degree / --cfg-parallel need {config.degree} processes: "
                             f"launch with torchrun --nproc_per_node {config.degree} -m ditkit.cli {args.command} ...")
        return None
    config.data_degree(env[1])
    args.device = process_device(args.device)
    return config


def parallel_note(pipe) -> str:
    """', 4 processes: ulysses 2 x ring 2' for a message, '' on one process."""
    return "" if pipe.parallel is None else f", {pipe.parallel.describe()}"


def add_threads_arg(p, default: int = 0):
    """``--threads``: torch CPU threads, set by the CLI before the command runs (0 = torch's default)."""
    p.add_argument("--threads", type=nonnegative_int, default=default,
                   help=f"torch CPU threads (0 = torch's default){'' if default == 0 else f'; default {default}'}")


def sampling_kwargs(args) -> dict:
    """The image pipeline's sampling keyword arguments from the flags of :func:`add_sampling_args`."""
    return dict(num_sampling_steps=args.num_sampling_steps, sampler=args.sampler, cfg_scale=args.cfg_scale,
                seed=args.seed, eta=args.eta, guidance_interval=guidance_interval(args.guidance_interval),
                batch_size=args.batch_size, **({"guide_channels": 3} if getattr(args, "dit_cfg", False) else {}))


def load_pipeline(args) -> DiTPipeline | TextPipeline:
    """The image pipeline of ``--model`` (with ``--vae`` and ``--model-name`` for official checkpoints), or the
    text-to-image pipeline of a text model (with ``--text-encoder``)."""
    if is_text_model(args.model):
        return TextPipeline.from_pretrained(args.model, args.device, getattr(args, "text_encoder", None))
    return DiTPipeline.from_pretrained(args.model, args.device, autoencoder=args.vae,
                                       model_name=args.model_name or "DiT-XL/2")


def add_text_args(p, prompts: bool = True):
    """The flags of text-to-image models (diffusers' names); ``prompts``: also --prompt and --prompts-file."""
    g = p.add_argument_group("text-to-image models")
    if prompts:
        g.add_argument("--prompt", nargs="+", metavar="TEXT",
                       help="one or more prompts, e.g. \"a bold 7 at the top left\"")
        g.add_argument("--prompts-file", metavar="FILE", help="prompts, one per line (blank lines and # lines skipped)")
    g.add_argument("--negative-prompt", metavar="TEXT",
                   help="what guidance steers away from (default: the empty caption)")
    g.add_argument("--text-encoder", metavar="PATH",
                   help="local transformers text-encoder folder (with its tokenizer) for a model trained on one")


def check_text_flags(args) -> bool:
    """Whether ``--model`` is a text-to-image model, its flags checked before anything loads: prompts from exactly
    one of --prompt / --prompts-file, no image-DiT flags; for other models, no prompt flags."""
    text = is_text_model(args.model)
    given = [flag for dest, flag in (("prompt", "--prompt"), ("prompts_file", "--prompts-file"),
                                     ("negative_prompt", "--negative-prompt"), ("text_encoder", "--text-encoder"))
             if getattr(args, dest, None) is not None]
    if not text:
        if given:
            raise ValueError(f"{given[0]} applies to text-to-image models; {args.model} is not one: drop {given[0]} "
                             f"(text-to-image: e.g. --model mnist-t2i)")
        return False
    for dest, flag in IMAGE_FLAGS.items():
        if getattr(args, dest, None) not in (None, False):
            raise ValueError(f"{flag} applies to class-conditional image DiTs; {args.model} is a text-to-image model: "
                             f"drop {flag}")
    if (args.prompt is None) == (args.prompts_file is None):
        raise ValueError(f"{args.model} is a text-to-image model: give --prompt TEXT [TEXT ...] or --prompts-file "
                         f"FILE (one of them)")
    if args.prompts_file is not None:
        read_prompts_file(args.prompts_file)
    if args.text_encoder is not None and is_diffusers_text_folder(args.model):
        raise ValueError(f"--text-encoder {args.text_encoder}: {args.model} is a diffusers pipeline folder, which "
                         f"reads its own text_encoder/ and tokenizer/; drop --text-encoder")
    if args.text_encoder is not None and not (Path(args.text_encoder) / "config.json").is_file():
        raise FileNotFoundError(f"--text-encoder {args.text_encoder}: not a transformers model folder (no "
                                f"config.json); give a local folder saved with save_pretrained")
    return True


def prompts_of(args) -> list[str]:
    """The prompts of --prompt or --prompts-file."""
    return list(args.prompt) if args.prompt is not None else read_prompts_file(args.prompts_file)


def check_video_model_flags(args) -> None:
    """Refuse the flags only image DiTs take when ``--model`` is a video DiT."""
    for dest, flag in IMAGE_FLAGS.items():
        value = getattr(args, dest, None)
        if value not in (None, False):
            raise ValueError(f"{flag} applies to image DiTs; {args.model} is a video DiT (pixel space, no official "
                             f"checkpoint): drop {flag}")


def add_history_guidance_args(p):
    """History guidance of video models (:class:`~ditkit.diffusion.guidance.HistoryGuidedModel`)."""
    p.add_argument("--history-scale", type=nonnegative_float, default=1.0,
                   help="video: history guidance towards the given frames, w in v_free + w (v_given - v_free) with "
                        "v_free the prediction with nothing given (1 = off; one more network call per step)")
    p.add_argument("--history-guidance", choices=HISTORY_GUIDANCE, default="vanilla",
                   help="video: vanilla (above) or fractional: v_given + (w - 1) (v_noised - v_free), the history "
                        "noised to --history-noise (two more calls; models trained with per-frame noise levels)")
    p.add_argument("--history-noise", type=positive_float, default=0.5,
                   help="video, fractional history guidance: noise level of the history, in (0, 1) (1 = pure noise)")


def history_kwargs(args) -> dict:
    """The pipeline's history-guidance arguments from :func:`add_history_guidance_args`'s flags."""
    return dict(history_scale=args.history_scale, history_guidance=args.history_guidance,
                history_noise=args.history_noise)


def add_task_args(p):
    """The task flags of ``ditkit bench`` and ``ditkit calibrate`` (names as ``ditkit generate-video``'s); sampler
    and CFG scale default by model kind: image ddim / 4, video the model's default sampler / 1."""
    p.set_defaults(sampler=None, cfg_scale=None)
    add_history_guidance_args(p)
    p.add_argument("--task", choices=TASKS, help="video models: the VDT task on held-out Moving MNIST clips "
                                                 "(default predict: the first half of the frames given)")
    p.add_argument("--label", type=nonnegative_int,
                   help="video models: class of every video (default: none, the null label)")
    p.add_argument("--given-frames", type=positive_int,
                   help="video predict/backward: number of given frames (default half)")
    p.add_argument("--stride", type=positive_int,
                   help="video interpolate: every n-th frame is given (and the last) [4]")
    p.add_argument("--canvas", type=positive_int, help="video models: frame side in pixels, the model rebuilt for it "
                                                       "(default: its training size; a multiple of the patch size)")
    p.add_argument("--num-frames", type=positive_int,
                   help="video models: frames per video (default: the model's window)")


def load_task(args, num_samples: int, seed: int) -> tuple[Any, ImageTask | TextTask | VideoTask]:
    """(pipeline, task) from the flags of :func:`add_task_args` and :func:`add_sampling_args`: a VideoPipeline
    (rebuilt for ``--canvas`` / ``--num-frames``) for a video model, else :func:`load_pipeline` (image or text)."""
    sampling = sampling_kwargs(args)
    sampling.pop("seed")
    if not is_video_model(args.model):
        for dest, flag in VIDEO_FLAGS.items():
            if getattr(args, dest) is not None:
                raise ValueError(f"{flag} {getattr(args, dest)} applies to video models; {args.model} is an image "
                                 f"model: drop {flag}")
        if args.history_scale != 1.0:
            raise ValueError(f"--history-scale {args.history_scale} applies to video models; {args.model} is an "
                             f"image model: drop --history-scale")
        pipe = load_pipeline(args)
        default_cfg = TEXT_EVAL_CFG_SCALE if isinstance(pipe, TextPipeline) else 4.0
        sampling.update(sampler=args.sampler or "ddim", cfg_scale=default_cfg if args.cfg_scale is None else
                        args.cfg_scale)
        return pipe, default_task(pipe, num_samples, seed, sampling)
    check_video_model_flags(args)
    pipe, native = video_pipeline_on_canvas(args.model, args.device, args.canvas, args.num_frames)
    if args.task == "story" and args.label is not None:
        raise ValueError("task 'story' follows each clip's own per-frame labels: drop --label")
    sampling.update(sampler=args.sampler or pipe.default_sampler,
                    cfg_scale=1.0 if args.cfg_scale is None else args.cfg_scale, **history_kwargs(args))
    return pipe, video_task(pipe, num_samples, seed, sampling, args.task or "predict", args.label, args.given_frames,
                            4 if args.stride is None else args.stride, native)
