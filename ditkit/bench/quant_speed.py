"""Forward-pass speed of quantization recipes on any DiT shape, side by side in one run (random weights: a speed
measurement only, never a quality one).

    python -m ditkit.bench.quant_speed --model DiT-S/2 --input-size 32 --batch 8 --threads 2 \\
        --recipes none,w8a8,w8a8:act=tensor,w8,w4,bf16

Every recipe is attached to its own copy of one random model; ``--repeats`` rounds time one forward of every
recipe in rotated order (so machine noise hits all alike); the median and the minimum are reported with their
ratio to ``none``. The relative error per forward is against the float model on the same random weights.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from ..acceleration.quant.export import quantization_label, weight_bytes
from ..acceleration.recipes import Recipe
from ..models.dit import DiT, dit_config


def random_dit(name: str, input_size: int, in_channels: int = 4, num_classes: int = 1000, seed: int = 0) -> DiT:
    """A DiT with every linear layer random (DiT zero-initialises adaLN and the head, which would make int8 look
    better than it is)."""
    torch.manual_seed(seed)
    model = DiT(dit_config(name, input_size=input_size, in_channels=in_channels, num_classes=num_classes)).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5)
            torch.nn.init.normal_(m.bias, std=0.02)
    return model


@torch.no_grad()
def forward_speed(model: DiT, recipes: list[str], batch: int, repeats: int = 10) -> list[dict]:
    """Rows {recipe, computes, median_ms, min_ms, speedup_median, speedup_min, rel_error, weight_mib}."""
    C, (H, W) = model.in_channels, model.config.image_hw
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, C, H, W, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    y = torch.randint(0, model.config.num_classes, (batch,), generator=gen)
    models = []
    for spec in recipes:
        m = copy.deepcopy(model)
        Recipe(spec).attach(m)           # no calibration here: recipes that calibrate need a pipeline
        models.append(m)
    ref = model(x, t, y)
    times = [[] for _ in recipes]
    for m in models:
        m(x, t, y)                       # warm-up (fbgemm packs its weights on first use)
    for r in range(repeats):
        for i in range(len(models)):
            j = (i + r) % len(models)
            t0 = time.perf_counter()
            models[j](x, t, y)
            times[j].append(time.perf_counter() - t0)
    base_med, base_min = statistics.median(times[0]), min(times[0])
    rows = []
    for spec, m, ts in zip(recipes, models, times):
        q = getattr(m, "quantization", None)
        # weight_mib counts the state dict, i.e. what a quantized checkpoint holds (the recipe keeps the float
        # originals aside for detach)
        rows.append({"recipe": spec, "computes": quantization_label(q), "median_ms": 1e3 * statistics.median(ts),
                     "min_ms": 1e3 * min(ts), "speedup_median": base_med / statistics.median(ts),
                     "speedup_min": base_min / min(ts),
                     "rel_error": float((m(x, t, y) - ref).norm() / ref.norm()),
                     "weight_mib": weight_bytes(m) / 2 ** 20})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ditkit.bench.quant_speed", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="DiT-S/2", help="DiT config name, e.g. DiT-S/2, DiT-T/4")
    p.add_argument("--input-size", type=int, default=32, help="input side (tokens = (size / patch)^2)")
    p.add_argument("--in-channels", type=int, default=4)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8, help="forward batch (2 x samples with batched CFG)")
    p.add_argument("--recipes", default="none,w8a8,w8a8:act=tensor,w8,w4,bf16")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = random_dit(args.model, args.input_size, args.in_channels, args.num_classes)
    recipes = ["none"] + [r for r in args.recipes.split(",") if r.strip() and r != "none"]
    rows = forward_speed(model, recipes, args.batch, args.repeats)
    tokens = model.grid[0] * model.grid[1]
    print(f"{args.model}, {tokens} tokens, batch {args.batch}, {args.threads} thread(s), {args.repeats} rounds; "
          f"RANDOM weights: speed only, the error column is not a quality measure")
    print("| recipe | computes | weights MiB | median ms | speed-up (median) | min ms | speed-up (min) "
          "| rel. error / forward |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['recipe']}` | {r['computes']} | {r['weight_mib']:.2f} | {r['median_ms']:.1f} | {r['speedup_median']:.2f}x | "
              f"{r['min_ms']:.1f} | {r['speedup_min']:.2f}x | {r['rel_error']:.4f} |")


if __name__ == "__main__":
    main()
