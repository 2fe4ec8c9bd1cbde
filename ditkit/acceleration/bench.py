"""``ditkit bench``: speed and quality of acceleration recipes, side by side, measured in one run.

For every recipe, on the same labels, seeds, sampler and CFG: an untimed pass generates every sample (for quality)
and then, on one timed-size generation, counts transformer block evaluations exactly (:class:`BlockCounter`), FLOPs
(``torch.utils.flop_counter``) and the peak of newly allocated tensor memory (profiler allocation events); then
``--repeats`` timed rounds run every recipe once per round (rotated order, so machine noise hits all alike) and the
median wall time is reported (and the median process CPU time, less sensitive to other processes on a shared
machine). Quality is measured against the ``none`` images: PSNR and SSIM per sample (mean; PSNR capped at 100 dB,
which identical samples get), and for MNIST-shaped models ``class_accuracy`` and ``frechet_distance`` (Fréchet
distance on ditkit's MNIST-classifier features, not FID). TeaCache / MagCache entries without a calibration file
are calibrated first, in the same run, on ``--calibration-prompts`` samples with seeds disjoint from the benchmark's.
"""
from __future__ import annotations

import json
import math
import platform
import shlex
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..evaluation.metrics import PSNR_CAP
from .calibrate import calibrate, save_calibration
from .counting import BlockCounter
from .registry import Recipe, parse_recipe

NEVER_SKIPS = "fora:interval=1"                          # a recipe that never skips: the hooks' per-step overhead
CALIBRATED = {"teacache": "coefficients", "magcache": "ratios"}


def standard_suite() -> list[str]:
    """none, the never-skipping recipe, then each registered method's ``bench_settings`` (its paper default and a
    faster setting; methods without the attribute contribute their default alone). The faster settings of the
    caching methods were picked on mnist-dit by a sweep on seeds 500-507, disjoint from the benchmark's seeds."""
    from .methods import BUILTIN_METHOD_MODULES
    from .registry import REGISTRY, _load_builtin_methods
    _load_builtin_methods()
    order = lambda item: (BUILTIN_METHOD_MODULES + [item[1].__module__]).index(item[1].__module__.rsplit(".")[-1])
    return ["none", NEVER_SKIPS] + [s for name, cls in sorted(REGISTRY.items(), key=order)
                                    for s in getattr(cls, "bench_settings", (name,))]


def round_order(items: list, r: int) -> list:
    """Round ``r`` of interleaved timing: every item once, starting ``r`` places later, so drift hits all alike."""
    k = r % len(items)
    return items[k:] + items[:k]


def split_recipes(text: str) -> list[str]:
    """'none,fora:interval=3,magcache:threshold=0.2,max_skips=4' -> ['none', 'fora:interval=3',
    'magcache:threshold=0.2,max_skips=4']: a comma item 'key=value' continues the previous recipe's parameters."""
    out: list[str] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" in item and ":" not in item and "+" not in item.split("=")[0] and out:
            out[-1] += "," + item
        else:
            out.append(item)
    return out


@dataclass
class Entry:
    """One row: ``pipe`` generates; ``recipe_obj`` (if any) is attached to it only while the entry is active, so
    attaching (e.g. quantising weights) is never timed; ``counter()`` is a block-counting context."""
    recipe: str
    impl: str
    pipe: Any
    counter: Callable
    recipe_obj: Recipe | None = None
    row: dict = field(default_factory=dict)
    times: list = field(default_factory=list)
    cpu_times: list = field(default_factory=list)

    @contextmanager
    def active(self):
        if self.recipe_obj is not None:
            self.pipe.set_recipe(self.recipe_obj)
        try:
            yield self.pipe
        finally:
            if self.recipe_obj is not None:
                self.pipe.set_recipe(None)


def ditkit_entry(pipe, spec, display: str) -> Entry:
    return Entry(display, "ditkit", pipe, lambda: BlockCounter(pipe.model), Recipe(spec))


def with_calibration(specs: list[str], pipe, sampling: dict, num_prompts: int, seed: int, out_dir: Path):
    """Fill in missing TeaCache / MagCache calibration files; returns [(spec for Recipe, display string)]."""
    files, out = {}, []
    for spec in specs:
        parts, shown = [], []
        for name, params in parse_recipe(spec):
            if name in CALIBRATED and CALIBRATED[name] not in params:
                if name not in files:
                    t0 = time.perf_counter()
                    cal = calibrate(pipe, name, num_prompts, seed, **sampling)
                    files[name] = save_calibration(cal, out_dir / f"calibration-{name}.json")
                    print(f"calibrated {name} on {num_prompts} samples (seeds {seed}..) in "
                          f"{time.perf_counter() - t0:.1f} s: fit {json.dumps(cal['fit'])[:160]} -> {files[name]}")
                params = {**params, CALIBRATED[name]: str(files[name])}
            parts.append({"name": name, **params})
            visible = [f"{k}={v}" for k, v in params.items() if k != CALIBRATED.get(name)]
            shown.append(name + (":" + ",".join(visible) if visible else ""))
        out.append((parts or "none", "+".join(shown) or "none"))
    return out


def peak_tensor_memory(fn):
    """Run fn(); returns (result, peak bytes of tensors allocated during the call and alive at the same time)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return result, peak


def measure(entry: Entry, labels, sampling: dict, time_samples: int | None = None) -> torch.Tensor:
    """Untimed: the images of all labels, then block count, FLOPs and peak memory of one timed-size generation."""
    from torch.utils.flop_counter import FlopCounterMode
    flops = FlopCounterMode(display=False)
    with entry.active() as pipe:
        images = pipe(labels, **sampling)
        with entry.counter() as counter, flops:
            _, peak = peak_tensor_memory(lambda: pipe(labels[:time_samples], **sampling))
    entry.row.update(blocks=counter.blocks, flops=flops.get_total_flops(), peak_memory_mb=peak / 2 ** 20)
    return images


def quality(images: torch.Tensor, reference: torch.Tensor, labels, mnist: bool) -> dict:
    from ..evaluation.metrics import psnr, ssim
    row = {"psnr": psnr(images, reference, cap=PSNR_CAP).mean().item(),
           "ssim": ssim(images, reference).mean().item()}
    if mnist:
        from ..evaluation.evaluate import classifier_metrics
        m = classifier_metrics(images, labels)
        row.update(class_accuracy=m["class_accuracy"], frechet_distance=m["frechet_distance"])
    else:
        row.update(class_accuracy=None, frechet_distance=None)
    return row


def run_bench(entries: list[Entry], labels, sampling: dict, repeats: int, mnist: bool, log=print,
              time_samples: int | None = None, skipped: list | None = None) -> list[dict]:
    """Measure every entry (entries[0] is the full-compute reference); returns the JSON rows. Timed rounds generate
    the first ``time_samples`` labels (default: all of them). Entries that cannot apply to the model are left out
    and appended to ``skipped`` as (recipe, reason)."""
    skipped = [] if skipped is None else skipped
    images, kept = [], []
    for e in entries:
        t0 = time.perf_counter()
        try:
            images.append(measure(e, labels, sampling, time_samples))
        except (ValueError, RuntimeError, NotImplementedError) as err:
            if e is entries[0]:
                raise
            log(f"  skipped {e.impl} {e.recipe}: cannot apply to this model: {err}")
            skipped.append((e.recipe, str(err)))
            continue
        kept.append(e)
        log(f"  measured {e.impl} {e.recipe} ({time.perf_counter() - t0:.1f} s)")
    entries = kept
    for r in range(repeats):
        for e in round_order(entries, r):
            with e.active() as pipe:
                t0, c0 = time.perf_counter(), time.process_time()
                pipe(labels[:time_samples], **sampling)
                e.times.append(time.perf_counter() - t0)
                e.cpu_times.append(time.process_time() - c0)
        log(f"  round {r + 1}/{repeats} done")
    base = entries[0]
    base_time, base_cpu = statistics.median(base.times), statistics.median(base.cpu_times)
    rows = []
    for e, img in zip(entries, images):
        sec, cpu = statistics.median(e.times), statistics.median(e.cpu_times)
        rows.append({"recipe": e.recipe, "impl": e.impl, "speedup": base_time / sec,
                     "compute_ratio": base.row["blocks"] / max(e.row["blocks"], 1e-9),
                     **quality(img, images[0], labels, mnist), "seconds": sec, "seconds_all": e.times,
                     "cpu_seconds": cpu, "cpu_speedup": base_cpu / cpu,
                     "flops_ratio": base.row["flops"] / max(e.row["flops"], 1), **e.row})
    return rows


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def markdown_table(rows: list[dict]) -> str:
    head = ("| recipe | impl | speedup | CPU-time speedup | compute ratio | blocks | GFLOPs | peak MB | seconds "
            "| PSNR dB | SSIM | class acc % | Fréchet dist. |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| `{r['recipe']}` | {r['impl']} | {r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x | "
                     f"{r['compute_ratio']:.2f}x | "
                     f"{r['blocks']:.0f} | {r['flops'] / 1e9:.1f} | {r['peak_memory_mb']:.1f} | {r['seconds']:.2f} | "
                     f"{'>= 100' if r['psnr'] >= PSNR_CAP else format(r['psnr'], '.2f')} | {r['ssim']:.4f} | "
                     f"{_fmt(r['class_accuracy'] and 100 * r['class_accuracy'], '.1f')} | "
                     f"{_fmt(r['frechet_distance'], '.2f')} |")
    return "\n".join(lines)


def pareto_plot(rows: list[dict], path: str | Path, title: str) -> Path:
    from ..visual import pyplot, save_figure
    plt = pyplot()
    if plt is None:
        raise ImportError("the speed x quality plot needs matplotlib: pip install matplotlib (or drop --plot)")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for impl, marker in (("ditkit", "o"), ("diffusers", "s")):
        pts = sorted((r["speedup"], r["psnr"], r["recipe"]) for r in rows if r["impl"] == impl and r["psnr"] < PSNR_CAP)
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=impl, zorder=3)
        for x, y, name in pts:
            ax.annotate(name.split(":coefficients")[0], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front, best = [], -math.inf
        for x, y, _ in sorted(pts, reverse=True):
            if y > best:
                front.append((x, y))
                best = y
        ax.plot(*zip(*sorted(front)), linestyle="--", linewidth=1, zorder=2)
    ax.axhline(30, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("wall-clock speed-up vs none (median)")
    ax.set_ylabel("PSNR vs full compute (dB)")
    ax.set_title(title + f"\n(rows at >= {PSNR_CAP:.0f} dB, i.e. identical to full compute, not shown)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def machine() -> dict:
    import os
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads()}


def run(args):
    import sys

    from ..generate import load_pipeline, sampling_kwargs
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args)
    sampling = sampling_kwargs(args)
    seed = sampling.pop("seed")
    labels = [i % pipe.num_classes for i in range(args.num_samples)]
    specs = split_recipes(args.recipes) if args.recipes else standard_suite()
    specs += split_recipes(args.add_recipes) if args.add_recipes else []
    specs = ["none"] + [s for s in specs if s.strip().lower() != "none"]
    out_dir = Path(args.json).parent if args.json else Path("out")
    resolved = with_calibration(specs, pipe, sampling, args.calibration_prompts, args.calibration_seed, out_dir)
    entries = [ditkit_entry(pipe, spec, shown) for spec, shown in resolved]
    if args.peers:
        if args.peers != "diffusers":
            raise ValueError(f"unknown peer {args.peers!r}; valid: diffusers")
        from .peers import diffusers_entries
        entries += diffusers_entries(pipe, sampling, args.calibration_prompts, args.calibration_seed)
    C, (H, W) = pipe.model.in_channels, pipe.model.config.image_hw
    mnist = (C, H, W, pipe.num_classes) == (1, 32, 32, 10)
    sampling["seed"] = seed
    timed = args.time_samples or args.num_samples
    print(f"bench: {args.model}, {len(entries)} recipes x {args.repeats} rounds of {timed} samples (quality on "
          f"{args.num_samples}), "
          f"{args.sampler} {args.num_sampling_steps} steps, cfg {args.cfg_scale}, {args.threads} thread(s)")
    skipped = []
    rows = run_bench(entries, labels, sampling, args.repeats, mnist, log=lambda m: print(m, file=sys.stderr),
                     time_samples=args.time_samples, skipped=skipped)
    table = markdown_table(rows)
    print(table)
    settings = {"model": args.model, "num_samples": args.num_samples, "repeats": args.repeats,
                "time_samples": args.time_samples or args.num_samples,
                "calibration_prompts": args.calibration_prompts, "calibration_seed": args.calibration_seed,
                **sampling, "command": "ditkit bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else [])}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"settings": settings, "machine": machine(), "rows": rows,
                                               "skipped": skipped}, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        title = (f"{args.model}: {args.sampler} {args.num_sampling_steps} steps, cfg {args.cfg_scale}, "
                 f"{args.num_samples} samples")
        print(f"wrote {pareto_plot(rows, args.plot, title)}")
    if args.markdown:
        import os

        from .peers import PEER_NOTES
        from .report import bars, write_markdown
        plot = os.path.relpath(args.plot, Path(args.markdown).parent) if args.plot else None
        print("\n".join(bars(rows)))
        notes = list(args.note or [])
        notes += [f"`{r}` was left out: it cannot apply to this model ({why})" for r, why in skipped]
        notes += PEER_NOTES if args.peers else []
        print(f"wrote {write_markdown(args.markdown, rows, settings, machine(), table, plot, notes)}")


def register(sub):
    from ..generate import add_sampling_args
    p = sub.add_parser("bench", help="speed x quality of acceleration recipes (and diffusers' caches) in one run")
    add_sampling_args(p)
    p.add_argument("--recipes", help="comma-separated recipes (default: the standard suite, every registered method at "
                                     "its paper default and a faster setting)")
    p.add_argument("--add-recipes", help="comma-separated recipes run after --recipes or the standard suite, e.g. "
                                         "stacked ones ('taylorseer:interval=6,order=1+w8a8')")
    p.add_argument("--num-samples", type=int, default=100, help="images per recipe (labels cycle over the classes)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--time-samples", type=int, help="samples per timed generation (default: --num-samples; quality "
                                                    "and counts always use all of them)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 = the least noisy on a shared machine)")
    p.add_argument("--peers", help="also run a peer library's caches on the same weights: diffusers")
    p.add_argument("--calibration-prompts", type=int, default=10, help="samples for TeaCache / MagCache calibration")
    p.add_argument("--calibration-seed", type=int, default=1000, help="first calibration seed (disjoint from --seed)")
    p.add_argument("--json", help="write the rows (and settings, machine) to this JSON file")
    p.add_argument("--plot", help="write the speed-up vs PSNR Pareto plot to this PNG")
    p.add_argument("--markdown", help="write a BENCHMARKS.md-style report (command, machine, date, table, plot, bars)")
    p.add_argument("--note", action="append", help="a note for the report (repeatable)")
    p.set_defaults(fn=run)
