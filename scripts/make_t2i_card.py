"""Write the card of the bundled text-to-image model (ditkit/assets/mnist-t2i.json) from the measurements:

    python scripts/make_t2i_card.py --model runs/mnist-t2i --eval out/t2i/eval.json --bench out/t2i/bench.json \\
        --cfg-sweep out/t2i/cfg-*.json --out ditkit/assets/mnist-t2i.json

It also measures, in this run, what keeping the cross-attention keys and values per generation saves: projections
counted and wall time against recomputing them at every step (interleaved rounds, same outputs).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ditkit.core.checkpoint import load_weights, read_metadata
from ditkit.core.outputs import write_json
from ditkit.pipelines.base import resolve_model_path

KEYS = ("digit", "position", "order", "size", "thickness", "prompt")


def measure_kv(path, num_prompts: int = 8, steps: int = 25, rounds: int = 3) -> dict:
    """Cross-attention key/value projections and seconds per generation (CFG 4.5, 8 prompts), kept per generation
    (ditkit's ``TextKeys``) vs recomputed at every network call."""
    import time

    import torch

    from ditkit.models import cross_attention
    from ditkit.pipelines.text import TextPipeline
    torch.set_num_threads(1)
    pipe = TextPipeline.from_pretrained(path)
    prompts = ["a bold 7 at the top left", "3 above 8", "a small thin 2", "the number five in the center",
               "1 on the left and 9 on the right", "a large 4 at the bottom right", "six", "a thin 0"][:num_prompts]
    calls = {"n": 0}
    kv = cross_attention.CrossAttention.keys_values

    def counted(self, text):
        calls["n"] += 1
        return kv(self, text)
    project = cross_attention.TextKeys.project

    def uncached(self, text):
        projected = self.projection(text)
        return projected, lambda cross: cross_attention._keys_values(cross, projected)
    runs = {"kept": project, "recomputed": uncached}
    seconds, counts, outputs = {k: [] for k in runs}, {}, {}
    cross_attention.CrossAttention.keys_values = counted
    try:
        for _ in range(rounds):
            for name, fn in runs.items():
                cross_attention.TextKeys.project = fn
                calls["n"] = 0
                t0 = time.perf_counter()
                outputs[name] = pipe(prompt=prompts, num_sampling_steps=steps, cfg_scale=4.5, seed=0)
                seconds[name].append(time.perf_counter() - t0)
                counts[name] = calls["n"]
    finally:
        cross_attention.CrossAttention.keys_values, cross_attention.TextKeys.project = kv, project
    best = {k: min(v) for k, v in seconds.items()}
    return {"settings": f"{len(prompts)} prompts, {steps} Euler steps, CFG 4.5 batched, 1 thread, {rounds} interleaved "
                        f"rounds (best of each)",
            "projections_kept": counts["kept"], "projections_recomputed": counts["recomputed"],
            "seconds_kept": best["kept"], "seconds_recomputed": best["recomputed"],
            "speedup": best["recomputed"] / best["kept"],
            "same_images": bool(torch.equal(outputs["kept"], outputs["recomputed"]))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--eval", required=True)
    p.add_argument("--bench", required=True)
    p.add_argument("--cfg-sweep", nargs="+", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    path = resolve_model_path(args.model)
    meta = read_metadata(path)
    params = sum(v.numel() for v in load_weights(path).values())
    run = Path(args.model)
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ev, bench = (json.loads(Path(f).read_text()) for f in (args.eval, args.bench))
    kv = measure_kv(path)
    sweep = sorted((json.loads(Path(f).read_text()) for f in args.cfg_sweep), key=lambda r: r["sampling"]["cfg_scale"])
    t, enc = meta["train_config"], meta["text_encoder"]
    card = {
        "name": "mnist-t2i",
        "model": f"PixArt-alpha-style DiT: {t['model']['depth']} blocks of self-attention, cross-attention to the "
                 f"caption (masked) and MLP, adaLN-single; width {t['model']['hidden_size']}, "
                 f"{t['model']['num_heads']} heads, patch {t['model']['patch_size']} ({(40 // 4) ** 2} tokens), "
                 f"40x40x1; text encoder: word-level tokenizer ({len(enc['tokenizer']['vocabulary'])} words), "
                 f"{enc['depth']} transformer blocks of width {enc['dim']}, {enc['max_length']} tokens, trained jointly; "
                 f"{params:,} parameters in the file",
        "objective": "rectified flow, SiT convention (t=0 noise, t=1 data, velocity target); the network sees t*1000",
        "data": "captioned MNIST scenes (ditkit.data.scenes): one or two of the 4,000 training digits on a 40x40 "
                "canvas with the size, stroke and position the caption states, fresh scenes every step; 30 % "
                "two-digit scenes; each attribute of a one-digit caption left out with probability 0.25",
        "training": {"command": "ditkit train --config configs/mnist-t2i.yaml", "config": t, "steps": meta["step"],
                     "initialised_from": "mnist-dit (PixArt's re-parameterisation: ditkit.models.pixart.init_from_dit)",
                     "final_loss_mean_last_250_steps": sum(r["loss"] for r in log[-5:]) / 5,
                     "wall_time_seconds": log[-1]["elapsed_sec"],
                     "machine": "2-core CPU shared with other jobs (benchmarks, tests), 1 torch thread, "
                                "torch 2.13.0+cpu",
                     "weights": "EMA (decay 0.999 with warm-up)"},
        "evaluation": {
            "command": f"ditkit eval --model mnist-t2i --json out/t2i/eval.json   (defaults: the "
                       f"{ev['num_prompts']} bundled held-out prompts, ddim = Euler, 50 steps, CFG "
                       f"{ev['sampling']['cfg_scale']:g}, seed 0)",
            "prompts": "ditkit/assets/mnist-scene-prompts.txt: captions of held-out scenes none of which occurs among "
                       "the captions of the 160,000 training scenes (scripts/make_scene_prompts.py)",
            **{f"{k}_accuracy": ev[f"{k}_accuracy"] for k in KEYS},
            **{f"real_{k}_accuracy": ev[f"real_{k}_accuracy"] for k in KEYS},
            "frechet_distance": ev["frechet_distance"],
            "frechet_distance_real_baseline": ev["frechet_distance_real_baseline"], "metric": ev["metric"],
            "reference": ev["reference"], "num_prompts": ev["num_prompts"], "sampling_seconds": ev["sampling_seconds"],
        },
        "cfg_selection": {"prompts": "out/t2i/calibration-prompts.txt: 80 captions of held-out scenes (seed 2), none in "
                                     "the evaluation set; noise seeds from 5000",
                          "sweep": [{"cfg_scale": r["sampling"]["cfg_scale"],
                                     **{f"{k}_accuracy": r[f"{k}_accuracy"] for k in KEYS}} for r in sweep]},
        "acceleration": {"command": bench["settings"]["command"],
                         "rows": [{k: r[k] for k in ("recipe", "speedup", "compute_ratio", "psnr", "ssim",
                                                     "prompt_accuracy")} for r in bench["rows"]]},
        "cross_attention_keys_values": kv,
    }
    print(f"wrote {write_json(args.out, card, indent=1)}")


if __name__ == "__main__":
    main()
