"""The video-model rows of BENCHMARKS.md's quantization section: float32 moving-mnist-vdt vs the checkpoints of
`ditkit quantize --model moving-mnist-vdt --recipe R --out out/quant/moving-mnist-vdt-R.safetensors` (R = w8a8, w8,
w4), same seeds, 3 interleaved timed rounds on one thread; PSNR / SSIM of the frames vs float32.
Run from the repository root: python docs/data/quant_video_speed.py  (writes docs/data/quant_video_dit.json)."""
import json
import statistics
import time

import torch

from ditkit.acceleration.bench import round_order
from ditkit.evaluation.metrics import psnr, ssim
from ditkit.video_pipeline import VideoPipeline

ROUNDS = 3
SAMPLING = dict(num_videos=8, num_sampling_steps=20, seed=0)


def frames(video: torch.Tensor) -> torch.Tensor:
    """[N, C, F, H, W] -> [N * F, C, H, W]."""
    return video.transpose(1, 2).flatten(0, 1)


def main():
    torch.set_num_threads(1)
    pipes = {"float32": VideoPipeline.from_pretrained("moving-mnist-vdt")}
    for recipe in ("w8a8", "w8", "w4"):
        pipes[recipe] = VideoPipeline.from_pretrained(f"out/quant/moving-mnist-vdt-{recipe}.safetensors")
    videos, seconds = {}, {name: [] for name in pipes}
    for r in range(ROUNDS):
        for name in round_order(list(pipes), r):
            t0 = time.perf_counter()
            videos[name] = pipes[name](**SAMPLING)
            seconds[name].append(time.perf_counter() - t0)
    reference = statistics.median(seconds["float32"])
    rows = []
    for name in pipes:
        sec = statistics.median(seconds[name])
        rows.append({"recipe": name, "seconds": round(sec, 2), "speedup": round(reference / sec, 2),
                     "psnr": round(min(float(psnr(frames(videos[name]), frames(videos["float32"])).mean()), 100.0), 2),
                     "ssim": round(float(ssim(frames(videos[name]), frames(videos["float32"])).mean()), 4)})
        print(rows[-1])
    settings = {**SAMPLING, "rounds": ROUNDS, "threads": 1, "task": "uncond"}
    with open("docs/data/quant_video_dit.json", "w") as f:
        json.dump({"settings": settings, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
