"""The ``ditkit`` command line (the top layer: it may import every layer; no library module imports it). One module
per command, each with ``register(sub)``; :mod:`.flags` holds the flags several commands share.

Flag names follow DiT's sample.py (dashed: --num-sampling-steps, --cfg-scale, --seed) with diffusers' names
(--num-inference-steps, --guidance-scale) accepted as aliases. A user's mistake (a bad value, a missing file, an
output that cannot be written, Ctrl-C) ends with one line naming it and the fix, exit status 2 (130 for Ctrl-C);
only a bug in ditkit shows a traceback.
"""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import version

import torch

from ..core.devices import resolve_device
from ..parallel.mesh import distributed_env
from . import bench, bench_attention, bench_kernels, bench_parallel, calibrate, distill_linear
from . import eval as evaluate
from . import generate, generate_video, quantize, support_matrix, train, tune

COMMANDS = [train, generate, generate_video, calibrate, bench, bench_attention, bench_kernels, bench_parallel, distill_linear, evaluate,
            quantize, support_matrix, tune]
USER_ERRORS = (ValueError, FileNotFoundError, ImportError, PermissionError, IsADirectoryError, NotADirectoryError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's default in --help (flags without one, or whose help already states it, are left as written)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text.lower() or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class _Subcommands:
    """``sub`` of argparse whose parsers all use :class:`HelpFormatter`."""

    def __init__(self, sub):
        self.sub = sub

    def add_parser(self, name, **kwargs):
        return self.sub.add_parser(name, formatter_class=HelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ditkit", description="Train, sample and accelerate Diffusion Transformers.",
                                formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"ditkit {version('ditkit')}")
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(_Subcommands(sub))
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        threads = getattr(args, "threads", None)
        if threads is not None and threads < 0:
            raise ValueError(f"--threads {threads}: give a number of CPU threads >= 1 (0 = torch's default)")
        if threads:
            torch.set_num_threads(threads)
        if getattr(args, "device", None) is not None:
            resolve_device(args.device)
        args.fn(args)
    except USER_ERRORS as e:
        env = distributed_env()                     # under torchrun, say which process failed (the others stop)
        where = f" (process {env[0]} of {env[1]})" if env is not None and env[1] > 1 else ""
        print(f"ditkit {args.command}{where}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(f"ditkit {args.command}: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        sys.exit(130)
