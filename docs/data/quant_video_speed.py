"""Video model: float32 vs quantized checkpoints (ditkit quantize output), same seeds, interleaved rounds."""
import json, statistics, sys, time, torch
torch.set_num_threads(1)
from ditkit.video_pipeline import VideoPipeline
from ditkit.evaluation.metrics import psnr, ssim
pipes = {"float32": VideoPipeline.from_pretrained("moving-mnist-vdt")}
for r in ("w8a8", "w8", "w4"):
    pipes[r] = VideoPipeline.from_pretrained(f"out/quant/moving-mnist-vdt-{r}.safetensors")
kw = dict(num_videos=8, num_sampling_steps=20, seed=0)
out, times = {}, {k: [] for k in pipes}
names = list(pipes)
for rnd in range(3):
    for k in names[rnd % len(names):] + names[:rnd % len(names)]:
        t0 = time.perf_counter(); out[k] = pipes[k](**kw); times[k].append(time.perf_counter() - t0)
ref = statistics.median(times["float32"])
rows = []
for k in names:
    frames = lambda v: v.transpose(1, 2).flatten(0, 1)
    row = {"recipe": k, "seconds": round(statistics.median(times[k]), 2), "speedup": round(ref / statistics.median(times[k]), 2),
           "psnr": round(min(float(psnr(frames(out[k]), frames(out["float32"])).mean()), 100.0), 2),
           "ssim": round(float(ssim(frames(out[k]), frames(out["float32"])).mean()), 4)}
    rows.append(row); print(row)
json.dump({"settings": {**kw, "rounds": 3, "threads": 1, "task": "uncond"}, "rows": rows}, open("docs/data/quant_video_dit.json", "w"), indent=1)
