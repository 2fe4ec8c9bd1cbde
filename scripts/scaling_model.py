"""Predicted step time and parallel efficiency of Ulysses, ring and USP for large video DiTs on 8 GPUs.

    python scripts/scaling_model.py [--bench out/bench-parallel.json] > docs/scaling.md

A roofline-style model, every input stated here:

- time of a generation on N GPUs = serial + steps x (compute / N + exposed communication); ``serial`` is what does
  not split (text encoding, VAE decoding, launch), ``compute`` the matmul FLOPs of one network call (self-attention
  projections 8 T D^2, attention 4 T^2 D, cross-attention to L text tokens 4 T D^2 + 4 L D^2 + 4 T L D, MLP
  4 T D F per block, times the CFG batch) at ``mfu`` x the GPU's dense bf16 peak;
- communication per GPU and call, bf16, by xDiT's table, the formulas ditkit's ``bench-parallel`` measures on this
  CPU (its measured/theory ratio, from ``--bench``, scales the volumes): Ulysses 4 (T/N) D (U-1)/U per block at the
  link bandwidth, not overlapped; ring 2 (T/N) D (R-1) per block, sent while the current part computes (only what
  exceeds the attention of the step is exposed); USP = Ulysses inside groups of U, ring across R = N/U;
- ``mfu`` and ``serial`` are fitted to one published measurement, HunyuanVideo 720p x 129 frames, 50 steps on
  H100 with Ulysses (xDiT): 1904 s on 1 GPU, 338 s on 8; the serial time of another model is scaled by its frame
  count. The Wan prediction is then a consequence of that fit, the FLOPs and the link, nothing tuned to it.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Model:
    name: str
    blocks: int
    hidden: int
    mlp: int
    tokens: int        # video tokens per call
    text: int          # text tokens (cross-attention keys; 0: joint attention counted in tokens)
    heads: int
    frames: int        # video frames (scales the serial time)
    cfg_batch: int     # samples per call: 2 with classifier-free guidance, 1 with guidance distilled in


@dataclass
class Link:
    name: str
    bandwidth: float   # bytes/s per GPU and direction, effective for all-to-all / point-to-point


# Wan 2.1 14B: 40 blocks, width 5120, 40 heads, MLP 13824; 720p x 81 frames -> latent 21 x 90 x 160, patch 1x2x2
WAN_14B = Model("Wan-2.1-14B, 1280x720, 81 frames", 40, 5120, 13824, 21 * 45 * 80, 512, 40, 81, 2)
# HunyuanVideo 13B: 20 dual + 40 single-stream blocks (counted as 60), width 3072, 24 heads, MLP 4x;
# 720p x 129 frames -> latent 33 x 90 x 160, patch 1x2x2; text tokens join the sequence (256); guidance distilled
HUNYUAN = Model("HunyuanVideo-13B, 1280x720, 129 frames", 60, 3072, 4 * 3072, 33 * 45 * 80 + 256, 0, 24, 129, 1)
PUBLISHED = (1904.0, 338.0, 50)       # HunyuanVideo: seconds on 1 and on 8 H100 (Ulysses 8), steps
H100_PEAK = 989e12                    # dense bf16 FLOP/s, H100 SXM
LINKS = [Link("NVLink 4 (H100 SXM, 450 GB/s per direction, ~70% achieved)", 0.7 * 450e9),
         Link("PCIe Gen5 x16 (64 GB/s per direction, ~80% achieved)", 0.8 * 64e9)]
LAYOUTS = [("Ulysses 8", 8, 1), ("ring 8", 1, 8), ("USP 4 x 2", 4, 2), ("USP 2 x 4", 2, 4)]


def flops(m: Model) -> tuple[float, float]:
    """(FLOPs of one network call, of which self-attention scores and weighting), CFG batch included."""
    T, D, F, L = m.tokens, m.hidden, m.mlp, m.text
    attention = 4 * T * T * D
    per_block = 8 * T * D * D + attention + 4 * T * D * F + (4 * T * D * D + 4 * L * D * D + 4 * T * L * D if L else 0)
    return m.cfg_batch * m.blocks * per_block, m.cfg_batch * m.blocks * attention


def communication(m: Model, link: Link, U: int, R: int, mfu: float, volume_scale: float) -> float:
    """Exposed communication seconds per network call on U x R GPUs."""
    N = U * R
    part = m.tokens / N * m.hidden * 2 * m.cfg_batch                # bytes of one GPU's hidden states, bf16
    ulysses = m.blocks * 4 * part * (U - 1) / U / link.bandwidth * volume_scale
    ring_comm = 2 * part * (R - 1) / link.bandwidth * volume_scale  # per block: every other part's K, V
    ring_attention = flops(m)[1] / m.blocks / N / (mfu * H100_PEAK)  # per block: this GPU's share of attention
    return ulysses + m.blocks * max(0.0, ring_comm - ring_attention * (R - 1) / R)


def fit(link: Link, volume_scale: float) -> tuple[float, float]:
    """(mfu, serial seconds of HunyuanVideo) from the published 1- and 8-GPU times (module docstring)."""
    t1, t8, steps = PUBLISHED
    total = flops(HUNYUAN)[0]
    mfu = 0.4
    for _ in range(50):                   # the exposed communication depends on mfu only through the ring term
        comm = communication(HUNYUAN, link, 8, 1, mfu, volume_scale)
        mfu = steps * total * 7 / 8 / (H100_PEAK * (t1 - t8 + steps * comm))
    return mfu, t1 - steps * total / (mfu * H100_PEAK)


def generation_time(m: Model, link: Link, U: int, R: int, mfu: float, serial: float, steps: int,
                    volume_scale: float) -> float:
    """Seconds of a whole generation on U x R GPUs."""
    compute = flops(m)[0] / (U * R) / (mfu * H100_PEAK)
    return serial * m.frames / HUNYUAN.frames + steps * (compute + communication(m, link, U, R, mfu, volume_scale))


def measured_scale(path: Path | None) -> tuple[float, str]:
    """Measured / theoretical bytes of a ``ditkit bench-parallel`` JSON (1.0 without one)."""
    if path is None or not path.is_file():
        return 1.0, "no bench-parallel JSON given: volumes as in theory"
    rows = [r for r in json.loads(path.read_text())["rows"] if r["bytes_per_step_theory"]]
    ratio = max(r["bytes_per_step"] / r["bytes_per_step_theory"] for r in rows)
    return ratio, (f"measured on this CPU ({path}): bytes per step / theory = "
                   + ", ".join(f"{r['mode']} {r['bytes_per_step'] / r['bytes_per_step_theory']:.3f}" for r in rows))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", type=Path, default=Path("out/bench-parallel.json"))
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    scale, note = measured_scale(args.bench)
    mfu, serial = fit(LINKS[0], scale)
    print("# Scaling model: sequence parallelism for large video DiTs on 8 GPUs\n")
    print(f"Generated by `python scripts/scaling_model.py --steps {args.steps}`; the model and every assumption are "
          f"in the script's docstring. Communication volumes: {note} (the larger ratio scales every volume). "
          f"Fitted to HunyuanVideo's published H100 times (1904 s on 1 GPU, 338 s on 8 with Ulysses): matmuls at "
          f"**{mfu:.0%} of the bf16 peak**, **{serial:.0f} s serial** per 129-frame video.\n")
    for m in (WAN_14B, HUNYUAN):
        total, attention = flops(m)
        one = generation_time(m, LINKS[0], 1, 1, mfu, serial, args.steps, scale)
        print(f"## {m.name}\n")
        print(f"{m.tokens:,} tokens per call, {m.blocks} blocks, width {m.hidden}, batch {m.cfg_batch} per call: "
              f"{total / 1e15:.1f} PFLOP per call ({attention / total:.0%} in attention scores). One GPU: "
              f"{one:.0f} s for {args.steps} steps.\n")
        print("| layout (8 GPUs) | " + " | ".join(f"{link.name.split(' (')[0]}: seconds, speed-up, efficiency"
                                                    for link in LINKS) + " |")
        print("|---|" + "---|" * len(LINKS))
        for name, U, R in LAYOUTS:
            if U > m.heads or m.heads % U:
                continue
            cells = []
            for link in LINKS:
                t = generation_time(m, link, U, R, mfu, serial, args.steps, scale)
                cells.append(f"{t:.0f} s, {one / t:.2f}x, {one / (8 * t):.0%}")
            print(f"| {name} | " + " | ".join(cells) + " |")
        print()
    print("Links: " + "; ".join(link.name for link in LINKS) + ".\n")
    print("What the model leaves out: kernel efficiency falling as each GPU's share shrinks, stragglers, and the "
          "overlap of Ulysses' all-to-all with other work; the fit folds the first two into the serial time.")


if __name__ == "__main__":
    main()
