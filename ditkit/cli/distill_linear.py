"""``ditkit distill-linear``: convert a trained DiT into a linear-attention DiT with the LiT recipe
(:mod:`ditkit.training.distill_linear`), optionally scoring teacher and student with the MNIST classifier metrics."""
from __future__ import annotations

import json

import torch

from ..evaluation.evaluate import evaluate_pipeline
from ..pipelines.image import load
from ..training.distill_linear import distill


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    path = distill(args.teacher, args.out, args.heads, args.conv, not args.no_inherit_attention, args.steps,
                   args.minutes, args.batch_size, args.lr, seed=args.seed)
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
        path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")


def register(sub):
    p = sub.add_parser("distill-linear", help="convert a trained DiT into a linear-attention DiT (LiT recipe)")
    p.add_argument("--teacher", required=True, help="bundled model name or .safetensors file of the softmax DiT")
    p.add_argument("--out", required=True, help="output .safetensors file (a .json card is written next to it)")
    p.add_argument("--heads", type=int, default=2, help="linear-attention heads (LiT: fewer heads)")
    p.add_argument("--conv", type=int, default=5, help="depth-wise conv kernel on V (0 = none)")
    p.add_argument("--no-inherit-attention", action="store_true", help="do not copy the teacher's qkv/proj weights")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--minutes", type=float, help="wall-clock budget; stops early and saves")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--eval-samples", type=int, default=0,
                   help="after training, score teacher and student on this many samples (MNIST classifier metrics)")
    p.set_defaults(fn=run)
