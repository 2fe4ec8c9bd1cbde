"""``ditkit calibrate``: fit TeaCache's rescaling polynomial or MagCache's magnitude ratios for a model (image or
video) on K prompts of a bench task, print the fit quality and write the JSON file a recipe points to."""
from __future__ import annotations

from ..acceleration.cache.calibration import METHODS, save_calibration, summary
from ..bench.tasks import calibrate_on_task
from ..core.outputs import check_output_path
from .flags import add_sampling_args, add_task_args, load_task, positive_int


def run(args):
    check_output_path(args.out, "--out", (".json",))
    pipe, task = load_task(args, args.num_prompts, args.seed)
    cal = calibrate_on_task(pipe, args.method, args.num_prompts, args.seed, task=task)
    path = save_calibration({"model": args.model, **cal}, args.out)
    print(summary(cal))
    print(f"wrote {path}; use it as {args.method}:{'coefficients' if args.method == 'teacache' else 'ratios'}={path}")


def register(sub):
    p = sub.add_parser("calibrate", help="fit TeaCache's polynomial or MagCache's ratios for a model (image or video)")
    add_sampling_args(p)
    add_task_args(p)
    p.set_defaults(seed=1000)
    p.add_argument("--method", required=True, choices=METHODS, help="the cache whose calibration to fit")
    p.add_argument("--num-prompts", type=positive_int, default=10, help="samples to record (images: labels cycle over the "
                                                               "classes; videos: held-out clips from --seed)")
    p.add_argument("--out", required=True, help="the calibration .json file to write")
    p.set_defaults(fn=run)
