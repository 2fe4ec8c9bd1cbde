"""``ditkit quantize``: write a quantized checkpoint (safetensors with codes and scales) and its JSON card.

    ditkit quantize --model mnist-dit --recipe w8a8 --out out/mnist-dit-w8a8.safetensors
    ditkit quantize --model mnist-dit --recipe w8a8:smooth=0.5,float_layers=2 --calibration-samples 8 --out ...
    ditkit generate --model out/mnist-dit-w8a8.safetensors        # generate / eval / bench load it directly
"""
from __future__ import annotations

import time

from ..acceleration.quant.base import QuantMethod
from ..acceleration.quantize import quantize_checkpoint
from ..acceleration.recipes import REGISTRY, check_recipe
from ..core.outputs import check_output_path
from ..pipelines.base import resolve_model_path
from ..pipelines.image import load
from .flags import add_threads_arg, positive_int


def run(args):
    out = check_output_path(args.out, "--out", (".safetensors",))
    parsed = check_recipe(args.recipe)
    if len(parsed) != 1 or not issubclass(REGISTRY[parsed[0][0]], QuantMethod):
        raise ValueError(f"--recipe {args.recipe}: not a single quantization method; a quantized checkpoint holds "
                         f"one of w8a8, w8, w4, bf16 (apply caching or attention recipes at generation time)")
    t0 = time.time()
    source = resolve_model_path(args.model)
    if out.resolve() == source.resolve():
        raise ValueError(f"--out {args.out} is the model's own file; write the quantized checkpoint to another file, "
                         f"e.g. --out {out.with_name(out.stem + '-' + parsed[0][0] + '.safetensors')}")
    card = quantize_checkpoint(load(source, args.device), args.recipe, args.out, source, args.calibration_samples,
                               not args.no_check)
    mib = lambda b: f"{b / 2 ** 20:.2f} MiB"
    print(f"wrote {args.out} ({mib(card['file_bytes'])}) and its card {card['card']} in {time.time() - t0:.1f} s")
    print(f"  computes: {card['computes']}")
    print(f"  weight memory: {mib(card['weight_bytes'])} vs {mib(card['float32_weight_bytes'])} float32 "
          f"({card['weight_memory_ratio']:.2f}x smaller)")
    if card["float_layers"]:
        print(f"  kept float (most sensitive): {', '.join(card['float_layers'])}")
    if "fidelity" in card:
        f = card["fidelity"]
        print(f"  check: PSNR {f['psnr_db_vs_float_mean']:.2f} dB vs float32 ({f['num_samples']} samples, "
              f"{f['sampler']} {f['num_sampling_steps']} steps, cfg {f['cfg_scale']}, seeds {f['seed']}..)")


def register(sub):
    p = sub.add_parser("quantize", help="write a quantized checkpoint (w8a8, w8, w4, bf16) with its card")
    p.add_argument("--model", default="mnist-dit", help="bundled model name, .safetensors file or results folder")
    p.add_argument("--recipe", required=True, help="one quantization recipe, e.g. w8a8, 'w8a8:smooth=0.5', w4, bf16")
    p.add_argument("--out", required=True, help="output .safetensors (the card is written next to it as .json)")
    p.add_argument("--calibration-samples", type=positive_int, default=None,
                   help="trajectories for SmoothQuant / mixed-precision calibration (default: the recipe's, 4)")
    p.add_argument("--no-check", action="store_true", help="skip the PSNR check against the float model")
    add_threads_arg(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.set_defaults(fn=run)
