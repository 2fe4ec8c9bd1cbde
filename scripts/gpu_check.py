"""Every registered recipe on the bundled image and video models, on ``--device`` vs the CPU: a few sampling steps
from the same seeds (ditkit's noise is drawn on the CPU, so both devices start from the same noise), compared per
(model, recipe) by max |difference| and PSNR (images in [-1, 1]). One line per pair, PASS / FAIL / ERROR / SKIP:

- SKIP: the recipe cannot apply to the model (ValueError at set_recipe, or MagCache's calibration failed) or a
  kernel is not implemented on a device (NotImplementedError); the reason is printed.
- ERROR: any other exception; FAIL: non-finite samples or PSNR under the threshold (``--psnr``; ``--psnr-low``
  for recipes computing in bfloat16 or int8 activations, whose rounding may differ between devices).

Attention recipes run with ``min_tokens=0`` (the bundled models' calls are shorter than the default 1,024). MagCache
gets ``ratios=`` from :func:`ditkit.bench.tasks.calibrate_on_task` on the CPU model at the same settings;
TeaCache runs uncalibrated. ``--device cpu`` compares CPU with CPU (a smoke test). Exit status 1 on any FAIL or
ERROR. Not imported by the library.

    python scripts/gpu_check.py --device cuda --json out/gpu-check.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import ditkit
from ditkit.acceleration.attention.base import AttentionMethod
from ditkit.acceleration.cache.calibration import save_calibration
from ditkit.acceleration.recipes import REGISTRY, parse_recipe
from ditkit.bench.tasks import calibrate_on_task
from ditkit.core.metrics import PSNR_CAP, psnr
from ditkit.pipelines.video import VideoPipeline

MODELS = ["mnist-dit", "moving-mnist-vdt"]
STACKED = ["taylorseer:interval=6,order=1+w8a8", "fora+topk"]
LOW_PRECISION = {"w8a8", "bf16"}


def default_recipes() -> list[str]:
    return ["none", *REGISTRY, *STACKED]


def applied_spec(recipe: str, magcache_ratios: str | None) -> str | None:
    """The recipe as run: ``min_tokens=0`` for attention methods, MagCache's calibration file (None: needed and
    missing)."""
    parts = []
    for name, params in parse_recipe(recipe):
        if name in REGISTRY and issubclass(REGISTRY[name], AttentionMethod):
            params.setdefault("min_tokens", 0)
        if name == "magcache":
            if magcache_ratios is None:
                return None
            params.setdefault("ratios", magcache_ratios)
        parts.append(name + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else ""))
    return "+".join(parts) or "none"


def generate(pipe, args) -> tuple[torch.Tensor, float]:
    """``num_samples`` images (labels 0, 1, ...) or videos (one label each) with CFG ``cfg_scale`` from seed
    ``seed``, with the pipeline's recipe: samples [N, C, (F,) H, W] on the CPU, and seconds."""
    labels = [i % pipe.num_classes for i in range(args.num_samples)]
    kwargs = dict(num_sampling_steps=args.steps, cfg_scale=args.cfg_scale, seed=args.seed)
    t0 = time.perf_counter()
    if isinstance(pipe, VideoPipeline):
        out = pipe(labels=labels, num_videos=len(labels), **kwargs)
    else:
        out = pipe(labels, **kwargs)
    out = out.cpu()
    return out, time.perf_counter() - t0


def magcache_calibration(pipe, model: str, args, folder: Path) -> tuple[str | None, str]:
    """MagCache ratios for the CPU pipeline at the check's settings: (file, '') or (None, why not)."""
    try:
        cal = calibrate_on_task(pipe, "magcache", num_prompts=args.num_samples, seed=1000,
                                num_sampling_steps=args.steps, cfg_scale=args.cfg_scale)
    except Exception as err:                         # reported as the reason magcache is skipped
        return None, f"calibration failed: {type(err).__name__}: {err}"
    return str(save_calibration(cal, folder / f"magcache-{model}.json")), ""


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, mean PSNR in dB capped at PSNR_CAP)."""
    return float((a - b).abs().max()), float(psnr(a, b, cap=PSNR_CAP).mean())


def check(model: str, recipe: str, pipes: list, args, ratios, calibration_error: str) -> dict:
    """One row: ``recipe`` on the two (label, pipeline) of ``pipes``, the CPU one first."""
    row = {"model": model, "recipe": recipe, "status": None, "reason": "", "applied": None,
           "max_abs_diff": None, "psnr_db": None, "seconds": {}}
    names = {n for n, _ in parse_recipe(recipe)}
    row["threshold_db"] = args.psnr_low if names & LOW_PRECISION else args.psnr
    row["applied"] = spec = applied_spec(recipe, ratios)
    if spec is None:
        return {**row, "status": "SKIP", "reason": f"magcache {calibration_error}"}
    outs = {}
    for device, pipe in pipes:
        applied = False
        try:
            pipe.set_recipe(spec)
            applied = True
            outs[device], row["seconds"][device] = generate(pipe, args)
        except ValueError as err:
            if applied:                              # raised while sampling, not by set_recipe
                return {**row, "status": "ERROR", "reason": f"on {device}: ValueError: {err}"}
            return {**row, "status": "SKIP", "reason": f"cannot apply: {err}"}
        except NotImplementedError as err:
            return {**row, "status": "SKIP", "reason": f"not implemented on {device}: {err or 'NotImplementedError'}"}
        except Exception as err:
            return {**row, "status": "ERROR", "reason": f"on {device}: {type(err).__name__}: {err}"}
        finally:
            pipe.set_recipe(None)
    ref, out = outs.values()
    if not (torch.isfinite(ref).all() and torch.isfinite(out).all()):
        return {**row, "status": "FAIL", "reason": "non-finite samples"}
    row["max_abs_diff"], row["psnr_db"] = compare(ref, out)
    ok = row["psnr_db"] >= row["threshold_db"]
    return {**row, "status": "PASS" if ok else "FAIL", "reason": "" if ok else f"PSNR under {row['threshold_db']} dB"}


def line(row: dict) -> str:
    metrics = (f"PSNR {row['psnr_db']:6.2f} dB  max|diff| {row['max_abs_diff']:.2e}" if row["psnr_db"] is not None
               else " " * 36)
    return f"{row['status']:5s} {row['model']:17s} {row['recipe']:36s} {metrics}  {row['reason']}".rstrip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="device compared with the CPU (cpu: a smoke test)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated bundled models")
    p.add_argument("--recipes", help="';'-separated recipes (default: every registered method at its defaults, "
                                     "'none' and " + ", ".join(STACKED) + ")")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--num-samples", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--psnr", type=float, default=40.0, help="pass threshold in dB (float recipes)")
    p.add_argument("--psnr-low", type=float, default=30.0, help="pass threshold in dB (bf16 / int8-activation recipes)")
    p.add_argument("--threads", type=int, default=0, help="CPU torch threads (0 = torch's default)")
    p.add_argument("--json", help="write the rows and settings to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available in this torch build / on this machine")
    recipes = args.recipes.split(";") if args.recipes else default_recipes()
    rows = []
    print(f"gpu-check: {args.device} vs cpu, {args.steps} steps, {args.num_samples} samples, CFG {args.cfg_scale}, "
          f"seed {args.seed}; torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models.split(","):
            pipes = [("cpu", ditkit.load(model, "cpu")),
                     (args.device if device.type != "cpu" else "cpu, again", ditkit.load(model, args.device))]
            wanted = any(n == "magcache" for r in recipes for n, _ in parse_recipe(r))
            ratios, why = magcache_calibration(pipes[0][1], model, args, Path(folder)) if wanted else (None, "")
            for recipe in recipes:
                row = check(model, recipe, pipes, args, ratios, why)
                rows.append(row)
                print(line(row), flush=True)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("PASS", "FAIL", "ERROR", "SKIP")}
    print("gpu-check: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {"torch": torch.__version__, "cuda": torch.version.cuda,
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
        path.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "json"}, "machine": info,
                                    "counts": counts, "rows": rows}, indent=1) + "\n")
        print(f"wrote {path}")
    return 1 if counts["FAIL"] or counts["ERROR"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
