"""Multi-process inference and training checks on a GPU machine (nccl), the CPU tests' counterparts.

    python scripts/parallel_gpu_check.py --device cuda --json out/parallel-gpu-check.json

1. the fused attention kernels' log-sum-exp (ring attention's merge input) against the math path, fp32 and bf16;
2. ring merging in one process: attention over key parts merged with the log-sum-exp rule equals dense attention;
3. FSDP2 training on a one-process nccl group equals plain training (4 steps, tiny DiT);
4. with 2 or more GPUs: Ulysses, ring and CFG parallelism on 2 processes (nccl) equal one process (tiny DiT).
``--device cpu`` runs the same on gloo as a smoke test. Prints one line per check and writes them to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ditkit.core.checkpoint import load_weights  # noqa: E402
from ditkit.parallel.attention import attention_with_lse, merge  # noqa: E402
from ditkit.parallel.launch import spawn  # noqa: E402


def lse_check(device: str, dtype: torch.dtype) -> float:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 300, 64, generator=g).to(device, dtype) for _ in range(3))
    out, lse = attention_with_lse(q, k, v)
    scores = (q.float() @ k.float().transpose(-2, -1)) / 8
    return max(float((out.float() - F.scaled_dot_product_attention(q.float(), k.float(), v.float())).abs().max()),
               float((lse - scores.logsumexp(-1)).abs().max()))


def ring_merge_check(device: str) -> float:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 257, 64, generator=g).to(device) for _ in range(3))
    out = lse = None
    for part in torch.arange(257).split(90):
        o, l_ = attention_with_lse(q, k[:, :, part], v[:, :, part])
        out, lse = (o.float(), l_) if out is None else merge(out, lse, o, l_)
    return float((out - F.scaled_dot_product_attention(q, k, v)).abs().max())


def fsdp_check(device: str) -> float:
    from test_training import tiny_cfg
    from ditkit.training.trainer import train
    with tempfile.TemporaryDirectory() as tmp:
        plain = train(tiny_cfg(Path(tmp) / "plain", "train.steps=4", f"train.device={device}"), progress=False)
        sharded = train(tiny_cfg(Path(tmp) / "fsdp", "train.steps=4", f"train.device={device}",
                                 "train.parallel=fsdp"), progress=False)
        a, b = load_weights(plain), load_weights(sharded)
        return max(float((a[k] - b[k]).abs().max()) for k in a)


def generate_on(rank: int, world_size: int, device: str, config: dict) -> torch.Tensor:
    from acceleration_util import tiny_dit
    from ditkit.diffusion.flow import FlowMatching
    from ditkit.parallel.mesh import ParallelConfig, process_device
    from ditkit.pipelines.image import DiTPipeline
    device = process_device(device)                   # this process's own GPU under spawn
    pipe = DiTPipeline(tiny_dit(40, flow=True).to(device), FlowMatching(1000.0))
    if config is not None:
        pipe.set_parallel(ParallelConfig(**config))
    return pipe(class_labels=[1, 2, 3], num_sampling_steps=6, sampler="euler", cfg_scale=3.0, seed=0).cpu()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", default="out/parallel-gpu-check.json")
    args = p.parse_args()
    checks = {"lse fp32": (lse_check(args.device, torch.float32), 1e-4),
              "lse bf16": (lse_check(args.device, torch.bfloat16), 5e-2),
              "ring merge": (ring_merge_check(args.device), 1e-5),
              "fsdp on one process": (fsdp_check(args.device), 1e-5)}
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 2
    if gpus >= 2:
        reference = generate_on(0, 1, args.device, None)
        for name, config in {"ulysses 2": {"ulysses_degree": 2}, "ring 2": {"ring_degree": 2},
                             "cfg parallel": {"cfg_parallel": True}}.items():
            out = spawn(generate_on, 2, args.device, config)
            checks[name] = (float((out - reference).abs().max()), 1e-4)
    rows = [{"check": k, "max_abs_diff": v, "tolerance": tol, "ok": v <= tol} for k, (v, tol) in checks.items()]
    for r in rows:
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']}: {r['max_abs_diff']:.2e} (tolerance {r['tolerance']:g})")
    if gpus < 2:
        print("skipped the 2-process checks: one GPU (nccl needs a GPU per process)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"device": args.device, "gpus": gpus, "rows": rows}, indent=1))
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
