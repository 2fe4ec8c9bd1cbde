"""``ditkit distill-linear``: convert a trained DiT into a linear-attention DiT with the LiT recipe
(:mod:`ditkit.training.distill_linear`), optionally scoring teacher and student with the MNIST classifier metrics."""
from __future__ import annotations

import json

from ..core import checkpoint as ckpt
from ..core.outputs import check_output_path, write_json
from ..evaluation.evaluate import evaluate_pipeline
from ..pipelines.base import is_video_model, resolve_model_path
from ..pipelines.image import load
from ..training.distill_linear import distill
from .flags import add_threads_arg, nonnegative_int, positive_float, positive_int


def check_args(args) -> None:
    """Everything checked before the teacher is loaded."""
    out = check_output_path(args.out, "--out", (".safetensors",))
    teacher = resolve_model_path(args.teacher)
    if out.resolve() == teacher.resolve():
        raise ValueError(f"--out {args.out} is the teacher's file; write the student to another file, e.g. --out "
                         f"{out.with_name(out.stem + '-linear.safetensors')}")
    if is_video_model(teacher):
        raise ValueError(f"--teacher {args.teacher} is a video DiT; distill-linear converts image DiTs (e.g. "
                         f"mnist-dit)")
    if args.conv and args.conv % 2 == 0:
        raise ValueError(f"--conv {args.conv}: the depth-wise kernel must be odd to keep the token grid, e.g. "
                         f"--conv {args.conv + 1} (0 = none)")
    hidden = ckpt.read_metadata(teacher).get("dit_config", {}).get("hidden_size") \
        if teacher.suffix == ".safetensors" else None
    if hidden is not None and hidden % args.heads:
        divisors = [h for h in range(1, min(hidden, 16) + 1) if hidden % h == 0]
        raise ValueError(f"--heads {args.heads}: the teacher's hidden size {hidden} must split into equal heads; "
                         f"give one of {', '.join(map(str, divisors))}")
    if args.eval_samples == 1:
        raise ValueError("--eval-samples 1: the Fréchet distance needs at least 2 samples (0 = no evaluation)")


def run(args):
    check_args(args)
    path = distill(args.teacher, args.out, args.heads, args.conv, not args.no_inherit_attention, args.steps,
                   args.minutes, args.batch_size, args.lr, seed=args.seed,
                   progress=False if args.no_progress else None)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    if args.eval_samples:
        card = json.loads(path.with_suffix(".json").read_text())
        card["evaluation"] = {}
        for role, name in (("teacher", args.teacher), ("student", path)):
            r = evaluate_pipeline(load(name), args.eval_samples, batch_size=250)
            card["evaluation"][role] = {k: r[k] for k in ("class_accuracy", "frechet_distance", "num_samples",
                                                          "sampling", "sampling_seconds")}
            print(f"{role}: class accuracy {r['class_accuracy']:.4f}, Fréchet distance {r['frechet_distance']:.2f} "
                  f"({r['num_samples']} samples, {r['sampling_seconds']:.0f} s)")
        write_json(path.with_suffix(".json"), card, indent=2)


def register(sub):
    p = sub.add_parser("distill-linear", help="convert a trained DiT into a linear-attention DiT (LiT recipe)")
    p.add_argument("--teacher", required=True, help="bundled model name or .safetensors file of the softmax DiT")
    p.add_argument("--out", required=True, help="output .safetensors file (a .json card is written next to it)")
    p.add_argument("--heads", type=positive_int, default=2, help="linear-attention heads (LiT: fewer heads)")
    p.add_argument("--conv", type=nonnegative_int, default=5, help="depth-wise conv kernel on V (0 = none)")
    p.add_argument("--no-inherit-attention", action="store_true", help="do not copy the teacher's qkv/proj weights")
    p.add_argument("--steps", type=positive_int, default=3000, help="optimizer steps")
    p.add_argument("--minutes", type=positive_float, help="wall-clock budget; stops early and saves")
    p.add_argument("--batch-size", type=positive_int, default=64, help="samples per step")
    p.add_argument("--lr", type=positive_float, default=5e-4, help="AdamW learning rate")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the data order, noise and student init")
    add_threads_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--eval-samples", type=nonnegative_int, default=0,
                   help="after training, score teacher and student on this many samples (MNIST classifier metrics)")
    p.set_defaults(fn=run)
