"""The ``ditkit`` command line (the top layer: it may import every layer; no library module imports it). One module
per command, each with ``register(sub)``; :mod:`.flags` holds the flags several commands share.

Flag names follow DiT's sample.py (dashed: --num-sampling-steps, --cfg-scale, --seed) with diffusers' names
(--num-inference-steps, --guidance-scale) accepted as aliases.
"""
from __future__ import annotations

import argparse
import sys

from . import bench, bench_attention, calibrate, distill_linear
from . import eval as evaluate
from . import generate, generate_video, quantize, train

COMMANDS = [train, generate, generate_video, calibrate, bench, bench_attention, distill_linear, evaluate, quantize]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ditkit", description="Train, sample and accelerate Diffusion Transformers.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"ditkit {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
