"""The attention backends against dense SDPA, per call and end to end (``ditkit bench-attention``).

Per call, for every token count: milliseconds (median of ``--repeats`` interleaved rounds, every backend once per
round so machine noise hits all alike), speed-up vs SDPA, density (fraction of query-key pairs computed), the
efficiency speedup x density (1 = the ideal speed-up 1/density), peak memory of tensors allocated by the call, and
the relative error ||out - dense|| / ||dense|| on *real* activations: q, k, v of a trained model's attention layer
(the bundled video DiT's spatial attention, frames stacked into one F x H x W sequence, run on the requested canvas;
or the image DiT) at a mid-noise step; random tensors otherwise, and the ``activations`` column says which. With
``linear`` among the backends, the linear-attention crossover length (shortest sequence from which linear attention
is faster than SDPA) is searched on 64 ... 4096 tokens.

End to end (``--e2e``): a trained video DiT sampled with dense attention and with each recipe, same seeds; wall
clock speed-up and PSNR / SSIM of the videos vs the dense ones.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F_

from ..acceleration.attention.base import AttentionMethod, longest_attention, text_dense
from ..acceleration.attention.fastattn import WindowResidualAttention
from ..acceleration.recipes import REGISTRY, build_method, check_recipe, parse_recipe
from ..core import checkpoint as ckpt
from ..core.config import from_dict
from ..core.configs import DiffusionSection
from ..core.metrics import PSNR_CAP, psnr, ssim
from ..data.images import load_image_data
from ..data.video import MovingMNIST
from ..diffusion.flow import FlowMatching
from ..models.attention import TokenLayout, linear_attention, sdpa
from ..pipelines.base import model_on_canvas, resolve_model_path
from ..pipelines.build import build_process
from ..pipelines.image import DiTPipeline
from ..pipelines.video import VideoPipeline
from .harness import peak_tensor_memory, round_order

VIDEO_MODEL, IMAGE_MODEL = "moving-mnist-vdt", "mnist-dit"


def attention_backends() -> list[str]:
    """Names of the registered attention methods."""
    return sorted(n for n, cls in REGISTRY.items() if issubclass(cls, AttentionMethod))


def parse_layout(spec: str, tokens: int) -> TokenLayout:
    """'16x32x32' (must hold ``tokens``), or 'F' / 'FxHxW' with letters: F frames of square frames of tokens/F."""
    parts = spec.lower().split("x")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        layout = TokenLayout(*map(int, parts))
        if layout.num_tokens == tokens and min(layout.shape) >= 1:
            return layout
    if not parts[0].isdigit() or int(parts[0]) < 1 or len(parts) not in (1, 3):
        raise ValueError(f"--layout {spec!r}: give F (a number of square frames, e.g. --layout 16) or FxHxW "
                         f"(e.g. --layout 16x8x8)")
    frames = int(parts[0])
    side = math.isqrt(tokens // frames)
    if side < 1 or frames * side * side != tokens:
        raise ValueError(f"{tokens} tokens are not {frames} square frames; give --layout FxHxW exactly (F*H*W = "
                         f"{tokens}) or a token count F*S*S, e.g. --tokens {frames * 16 * 16}")
    return TokenLayout(frames, side, side)


def check_end_to_end(recipes: list[str], canvas: int, model_name: str) -> None:
    """The ``--e2e`` recipes, model and canvas checked from the model file's metadata only, before any work."""
    for spec in recipes:
        check_recipe(spec)
    p = ckpt.read_metadata(resolve_model_path(model_name)).get("dit_config", {}).get("patch_size")
    if p is None:
        raise ValueError(f"--e2e-model {model_name}: not a ditkit DiT or video DiT file (no dit_config in its "
                         f"metadata); give a bundled name or a file written by ditkit train")
    if canvas % p:
        raise ValueError(f"--e2e-canvas {canvas}: must be a multiple of the model's patch size {p}, e.g. "
                         f"--e2e-canvas {max(p, canvas // p * p)}")


def interleaved_ms(fns: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds per call; each round runs every function once, in rotated order."""
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in round_order(names, r):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def capture_activations(layout: TokenLayout, models=(VIDEO_MODEL, IMAGE_MODEL), timesteps=(500, 480), seed: int = 0):
    """([(q, k, v) per timestep], label): q, k, v [1, heads, N, d] of the middle attention layer (spatial, or full 3D)
    of the first available trained model of ``models`` on ``layout`` at each network timestep of ``timesteps``
    (input noised with the model's own process): a video DiT sees a held-out Moving MNIST clip (one 16-px digit
    bouncing over the canvas; half the canvas on smaller ones), an image DiT one held-out 32-px digit per frame at a
    random place (the canvas's size on smaller ones); None if no model exists."""
    for name in models:
        built = model_on_canvas(name, layout)
        if built is not None:
            break
    else:
        return None
    model, kind, meta = built
    diffusion = meta.get("train_config", {}).get("diffusion", {})
    process = build_process(from_dict(DiffusionSection, diffusion), model.config.learn_sigma)
    mid = len(model.blocks) // 2
    attn = model.blocks[mid].attn
    F, C = layout.frames, model.in_channels
    H, W = model.config.image_hw
    g = torch.Generator().manual_seed(seed)
    if kind == "video":
        side = max(H, W)                                          # a square clip, cropped to a non-square canvas
        clip = MovingMNIST("heldout", side, F, digit_size=min(16, side // 2), seed=seed).get([0])[0][0]
        frames = clip.transpose(0, 1)[:, :, :H, :W]                             # [F, C, H, W]
    else:
        size = min(32, H, W)
        digits = load_image_data("mnist", 32, split="heldout").images[torch.randperm(1000, generator=g)[:F]]
        if size < 32:
            digits = F_.interpolate(digits, size=(size, size), mode="area")
        frames = torch.full((F, C, H, W), -1.0)
        ys, xs = torch.randint(0, H - size + 1, (F,), generator=g), torch.randint(0, W - size + 1, (F,), generator=g)
        for i in range(F):                                            # one real digit per frame, random place
            frames[i, :, ys[i]:ys[i] + size, xs[i]:xs[i] + size] = digits[i]
    noise = torch.randn(frames.shape, generator=g)
    captured = []
    attn.backend = lambda q, k, v, lay: captured.append((q, k, v)) or sdpa(q, k, v)
    try:
        for t in timesteps:
            tt = torch.full((F,), float(t))
            if isinstance(process, FlowMatching):
                x = process.interpolate(frames, noise, tt / process.timestep_scale)
            else:
                x = process.q_sample(frames, tt.long(), noise)
            if kind == "video":                                   # frames of one clip: [1, C, F, H, W]
                model(x.transpose(0, 1)[None], tt[:1], torch.tensor([model.config.num_classes]))
            else:                                                 # F images = F frames
                model(x, tt, torch.full((F,), model.config.num_classes))
    finally:
        attn.backend = None
    if captured and captured[0][0].shape[2] == layout.num_tokens:    # full 3D attention: already one sequence
        acts, what = captured, "full 3D attention"
    else:                                                         # per-frame calls [F, h, S, d] -> [1, h, F*S, d]
        stack = lambda t: t.transpose(0, 1).reshape(1, t.shape[1], -1, t.shape[-1])
        acts = [tuple(stack(t) for t in c) for c in captured if c[0].shape[2] == layout.height * layout.width]
        what = "spatial attention" + (", frames stacked" if F > 1 else "")
    content = "a held-out Moving MNIST clip" if kind == "video" else "one held-out digit per frame"
    label = (f"real: {name} layer {mid} {what}, {F} frame(s) of a {layout.height}x{layout.width} token canvas "
             f"({content}), network timestep {timesteps[0]}")
    return acts, label


def joint_density(image_density: float, text: int, tokens: int) -> float:
    """Fraction of the query-key pairs of a joint call over ``text`` + ``tokens`` tokens computed when the text rows
    and columns stay dense (:func:`~ditkit.acceleration.attention.base.text_dense`) and the image block has
    ``image_density``."""
    n = text + tokens
    return (text * n + tokens * text + image_density * tokens * tokens) / (n * n)


def bench_tokens(tokens: int, layout: TokenLayout, heads: int, head_dim: int, backends: list[str], repeats: int,
                 real=None, seed: int = 0, log=print, text: int = 0) -> list[dict]:
    """One row per backend (SDPA first) at one sequence length; ``text`` > 0: joint calls with that many text tokens
    before the image tokens (SD3, FLUX), the text kept dense (random text q, k, v at the image activations' scale)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, text + tokens, head_dim, generator=g) for _ in range(3))
    call_layout = TokenLayout(*layout.shape, text=text)
    methods = {spec: build_method(*parse_recipe(spec)[0]) for spec in backends}
    if text:
        skipped = [spec for spec, m in methods.items() if not m.joint]
        for spec in skipped:
            log(f"  {spec}: skipped, it cannot keep a joint call's text dense (no log-sum-exp)")
        methods = {spec: m for spec, m in methods.items() if m.joint}

    def run(m, q, k, v, key):
        if isinstance(m, WindowResidualAttention):
            return m.kernel(q, k, v, call_layout, key)
        return text_dense(m.kernel, q, k, v, call_layout)

    for m in methods.values():
        if isinstance(m, WindowResidualAttention):
            m.prime("bench", q, k, v, call_layout)
    fns = {"sdpa": lambda: sdpa(q, k, v)}
    fns.update({spec: (lambda m=m: run(m, q, k, v, "bench")) for spec, m in methods.items()})
    for f in fns.values():                                        # warm-up
        f()
    ms = interleaved_ms(fns, repeats)
    if real is not None:
        (rq, rk, rv), (pq, pk, pv) = real[0][-1], real[0][0]      # current step; fastattn's residual from the step before
        err_src = real[1] + (f", {text} random text tokens before it" if text else "")
        if text:
            with_text = lambda t: torch.cat([torch.randn(*t.shape[:2], text, t.shape[3], generator=g) * t.std(), t], 2)
            rq, rk, rv, pq, pk, pv = map(with_text, (rq, rk, rv, pq, pk, pv))
    else:
        (rq, rk, rv), (pq, pk, pv), err_src = (q, k, v), (q, k, v), "random (no trained model bundled)"
    ref = sdpa(rq, rk, rv)
    rows = []
    for spec in ["sdpa", *methods]:
        m = methods.get(spec)
        if m is None:
            out, density = ref, 1.0
        else:
            if isinstance(m, WindowResidualAttention):
                m.prime("real", pq, pk, pv, call_layout)
            out = run(m, rq, rk, rv, "real")
            density = joint_density(m.layout_density(layout), text, tokens)
        _, peak = peak_tensor_memory(fns[spec])
        err = float((out - ref).norm() / ref.norm())
        if real is None and isinstance(m, WindowResidualAttention):
            err = None                                            # residual from the same tensors: 0 by construction
        row = {"backend": spec, "tokens": tokens, "layout": "x".join(map(str, layout.shape)), "heads": heads,
               "head_dim": head_dim, "density": round(density, 4), "ms": round(ms[spec], 2),
               "speedup": round(ms["sdpa"] / ms[spec], 3), "efficiency": round(ms["sdpa"] / ms[spec] * density, 3),
               "rel_error": err, "activations": err_src,
               "peak_memory_mb": round(peak / 2 ** 20, 1)}
        if text:
            row["text_tokens"] = text
        rows.append(row)
        log(f"  {spec:28s} {row['ms']:9.1f} ms  x{row['speedup']:6.2f}  density {row['density']:.3f}  "
            f"err {_fmt(err)}  peak {row['peak_memory_mb']:.0f} MiB")
    return rows


def linear_crossover(heads: int, head_dim: int, repeats: int, lengths=(64, 128, 256, 512, 1024, 2048, 4096)) -> dict:
    """ms of SDPA and linear attention per length; crossover = shortest length from which linear is always faster."""
    table = []
    for n in lengths:
        q, k, v = (torch.randn(1, heads, n, head_dim) for _ in range(3))
        ms = interleaved_ms({"sdpa": lambda: sdpa(q, k, v), "linear": lambda: linear_attention(q, k, v)}, repeats)
        table.append({"tokens": n, "sdpa_ms": round(ms["sdpa"], 3), "linear_ms": round(ms["linear"], 3)})
    faster = [r["linear_ms"] < r["sdpa_ms"] for r in table]
    cross = next((r["tokens"] for i, r in enumerate(table) if all(faster[i:])), None)
    return {"crossover_tokens": cross, "table": table}


def end_to_end(recipes: list[str], canvas: int, frames: int, steps: int, seed: int, cfg_scale: float,
               model_name: str = VIDEO_MODEL, repeats: int = 1, log=print) -> list[dict]:
    """Sample a trained model rebuilt for a ``canvas`` x ``canvas`` canvas — a video DiT: one ``frames``-frame video;
    an image DiT: ``frames`` images — dense and with each recipe (same seeds, so the same noise); median wall clock
    of ``repeats`` interleaved runs, PSNR / SSIM vs dense."""
    p = ckpt.read_metadata(resolve_model_path(model_name))["dit_config"]["patch_size"]
    layout = TokenLayout(frames, canvas // p, canvas // p)
    model, kind, _ = model_on_canvas(model_name, layout)
    if kind == "video":
        pipe = VideoPipeline.from_pretrained(model_name)
        generate = lambda: pipe(labels=torch.tensor([[3] * frames]), num_sampling_steps=steps, cfg_scale=cfg_scale,
                                seed=seed)
    else:
        pipe = DiTPipeline.from_pretrained(model_name)
        generate = lambda: pipe([i % 10 for i in range(frames)], num_sampling_steps=steps, cfg_scale=cfg_scale,
                                seed=seed)
    pipe.model = model
    specs = ["none", *recipes]
    videos, times = {}, {s: [] for s in specs}
    for r in range(repeats):
        for spec in round_order(specs, r):
            pipe.set_recipe(None if spec == "none" else spec)
            t0 = time.perf_counter()
            videos[spec] = generate()
            times[spec].append(time.perf_counter() - t0)
    pipe.set_recipe(None)
    rows = []
    for spec in specs:
        sec = statistics.median(times[spec])
        row = {"recipe": spec, "seconds": round(sec, 2), "speedup": round(statistics.median(times["none"]) / sec, 3),
               "psnr": float(psnr(videos[spec], videos["none"], cap=PSNR_CAP).mean()),
               "ssim": float(ssim(videos[spec], videos["none"]).mean()), "model": model_name, "kind": kind,
               "canvas": canvas, "frames": frames, "tokens_per_frame": layout.height * layout.width,
               "attention_tokens": longest_attention(model), "steps": steps}
        rows.append(row)
        log(f"  e2e {spec:28s} {sec:8.1f} s  x{row['speedup']:.2f}  PSNR {row['psnr']:.2f}  SSIM {row['ssim']:.4f}")
    return rows


def _fmt(x, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(rows: list[dict]) -> str:
    head = "| backend | tokens | layout | density | ms | speed-up | ideal | efficiency | rel. error | peak MiB |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['tokens']} | {r['layout']} | {r['density']:.3f} | {r['ms']:.1f} | "
                     f"{r['speedup']:.2f} | {1 / r['density']:.2f} | {r['efficiency']:.2f} | {_fmt(r['rel_error'])} | "
                     f"{r['peak_memory_mb']:.0f} |")
    return "\n".join(lines)
