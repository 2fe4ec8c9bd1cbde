"""The ``ditkit`` command line. Each command lives next to the code it drives, in a module with ``register(sub)``.

Flag names follow DiT's sample.py (dashed: --num-sampling-steps, --cfg-scale, --seed) with diffusers' names
(--num-inference-steps, --guidance-scale) accepted as aliases.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "ditkit.training.cli",
    "ditkit.generate",
    "ditkit.generate_video",
    "ditkit.acceleration.calibrate",
    "ditkit.acceleration.bench",
    "ditkit.acceleration.bench_attention",
    "ditkit.training.distill_linear",
    "ditkit.evaluation.evaluate",
    "ditkit.quantization.cli",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ditkit", description="Train, sample and accelerate Diffusion Transformers.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            print(f"ditkit: warning: command module {name} is missing from this install; skipped", file=sys.stderr)
            continue
        module.register(sub)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"ditkit {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
