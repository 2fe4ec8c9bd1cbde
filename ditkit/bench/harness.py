"""The harness of ``ditkit bench``: speed and quality of acceleration recipes, side by side, measured in one run.

Image DiTs and video DiTs run through the same harness: a bench task (:mod:`.tasks`) gives the inputs and the
generation call of the N samples with fixed seeds (images: labels cycling over the classes; videos: a VDT task on
held-out Moving MNIST clips, optionally on a larger canvas). For every recipe, on the same inputs, seeds, sampler
and CFG: an untimed pass generates every sample (for quality) and then, on one timed-size generation, counts
transformer block evaluations exactly (:class:`BlockCounter`), FLOPs (``torch.utils.flop_counter``) and the peak of
newly allocated tensor memory (:class:`LiveTensorBytes`, no profiler); then ``--repeats`` timed rounds run every recipe once per
round (rotated order, so machine noise hits all alike) and the median wall time is reported (and the median process
CPU time, less sensitive to other processes on a shared machine). Quality is measured against the ``none`` samples
(:meth:`~.tasks.ImageTask.quality`, :meth:`~.tasks.VideoTask.quality`): PSNR (capped at 100 dB, which identical
samples get) and SSIM, ``identical`` (bitwise equal), for MNIST-shaped image models ``class_accuracy`` and, with
more than 128 samples, ``frechet_distance`` (Fréchet distance on ditkit's MNIST-classifier features, not FID).
Every row carries ``tokens``, the length of the model's longest attention call. TeaCache / MagCache entries without
a calibration file are calibrated first, in the same run, on ``--calibration-prompts`` samples with seeds (and
clips) disjoint from the benchmark's; their files go where the caller says (``ditkit bench``: next to ``--json``,
else a temporary folder). ``--append`` adds a run to an existing JSON file (``make bench-video``: the
video model at its native size and on a larger canvas), whose report then covers every run in it.
"""
from __future__ import annotations

import copy
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from ..acceleration.attention.base import AttentionMethod, longest_attention
from ..acceleration.cache.calibration import save_calibration
from ..acceleration.counting import BlockCounter
from ..acceleration.quant.base import QuantMethod
from ..acceleration.recipes import BUILTIN_METHOD_MODULES, REGISTRY, Recipe, parse_recipe
from ..core.metrics import PSNR_CAP
from ..core.visual import pyplot, save_figure
from ..models.compile import compile_blocks
from .tasks import calibrate_on_task

NEVER_SKIPS = "fora:interval=1"                          # a recipe that never skips: the hooks' per-step overhead
CALIBRATED = {"teacache": "coefficients", "magcache": "ratios"}


# Bench settings per method: its paper default, then a faster setting (the caching methods' picked on mnist-dit by a
# sweep on seeds 500-507, disjoint from the benchmark's). Registered methods not listed contribute their default.
SUITE: dict[str, tuple[str, ...]] = {
    "fora": ("fora", "fora:interval=6"),
    "firstblockcache": ("firstblockcache", "firstblockcache:threshold=0.2"),
    "teacache": ("teacache", "teacache:threshold=0.06"),
    "magcache": ("magcache", "magcache:threshold=0.3,max_skips=6,retention=0.1"),
    "taylorseer": ("taylorseer", "taylorseer:interval=6,order=1"),
    "toca": ("toca", "toca:interval=5"),
    "delta_dit": ("delta_dit", "delta_dit:interval=5,span=0.75"),
    "w8a8": ("w8a8", "w8a8:act=tensor"),
    "linear": ("linear:dropin=true",),           # drop-in on softmax weights: what it costs without distillation
}
KINDS = ("caching", "attention", "quantization")
SUITES = {"standard": KINDS, **{k: (k,) for k in KINDS}}


def method_kind(name: str) -> str:
    """'attention' (an attention backend), 'quantization' or 'caching' (any other method) of a registered method."""
    cls = REGISTRY[name]
    return "attention" if issubclass(cls, AttentionMethod) else "quantization" if issubclass(cls, QuantMethod) \
        else "caching"


def recipe_kinds(recipe: str) -> set[str]:
    """'taylorseer:interval=6+topk' -> {'caching', 'attention'}; 'none' -> set()."""
    return {method_kind(name) for name, _ in parse_recipe(recipe)}


def standard_suite(kinds=KINDS) -> list[str]:
    """none, the never-skipping recipe (with caching), then the ``SUITE`` settings of every registered method of
    ``kinds``, in registration order (the built-in methods first)."""
    builtin = {m.__name__: i for i, m in enumerate(BUILTIN_METHOD_MODULES)}
    order = lambda item: builtin.get(item[1].__module__, len(builtin))
    return ["none"] + [NEVER_SKIPS] * ("caching" in kinds) + [
        s for name, _ in sorted(REGISTRY.items(), key=order) if method_kind(name) in kinds
        for s in SUITE.get(name, (name,))]


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


def compiled_entries(pipe, resolved: list[tuple]) -> list[Entry]:
    """The recipes ``resolved`` ([(spec, display)]) on a twin of ``pipe`` whose model copy has its block stack
    compiled (:func:`~ditkit.models.compile.compile_blocks`), as rows with impl "ditkit+compile"; the first, untimed
    pass of each row compiles."""
    twin = copy.copy(pipe)
    twin.model, twin.recipe = compile_blocks(copy.deepcopy(pipe.model)), Recipe()
    return [Entry(shown, "ditkit+compile", twin, lambda: BlockCounter(twin.model), Recipe(spec))
            for spec, shown in resolved]


def with_calibration(specs: list[str], pipe, task, num_prompts: int, seed: int, out_dir: Path, prefix: str = "",
                     log=print):
    """Fill in missing TeaCache / MagCache calibration files (calibrated on ``task`` resampled to ``num_prompts``
    samples from ``seed``), written to ``out_dir / f"{prefix}calibration-{method}.json"``; returns [(spec for
    Recipe, display string)]."""
    files, out = {}, []
    for spec in specs:
        parts, shown = [], []
        for name, params in parse_recipe(spec):
            if name in CALIBRATED and CALIBRATED[name] not in params:
                if name not in files:
                    t0 = time.perf_counter()
                    cal = calibrate_on_task(pipe, name, num_prompts, seed, task=task)
                    files[name] = save_calibration(cal, Path(out_dir) / f"{prefix}calibration-{name}.json")
                    log(f"calibrated {name} on {num_prompts} samples (seeds {seed}..) in "
                          f"{time.perf_counter() - t0:.1f} s: fit {json.dumps(cal['fit'])[:160]} -> {files[name]}")
                params = {**params, CALIBRATED[name]: str(files[name])}
            parts.append({"name": name, **params})
            visible = [f"{k}={v}" for k, v in params.items() if k != CALIBRATED.get(name)]
            shown.append(name + (":" + ",".join(visible) if visible else ""))
        out.append((parts or "none", "+".join(shown) or "none"))
    return out


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storage created by the operations run inside it and still alive (``live``), and their peak
    (``peak``): every new output storage is counted once and uncounted when it is freed (a finalizer on the
    storage), so no profiler and no per-event record is kept."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _freed(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":     # meta tensors hold no memory
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self.seen or key in inputs:          # a view or an in-place result: nothing new
                continue
            nbytes = storage.nbytes()
            self.seen.add(key)
            weakref.finalize(storage, self._freed, key, nbytes)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out


def peak_tensor_memory(fn):
    """Run fn(); returns (result, peak bytes of tensors allocated during the call and alive at the same time)."""
    with LiveTensorBytes() as counter:
        result = fn()
    return result, counter.peak


def peak_resident_mb() -> float:
    """The process's peak resident memory so far (MiB; ``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


def measure(entry: Entry, task, time_samples: int | None = None) -> torch.Tensor:
    """Untimed: all samples of ``task``, then block count, FLOPs and peak memory of one timed-size generation."""
    flops = FlopCounterMode(display=False)
    with entry.active() as pipe:
        samples = task(pipe)
        with entry.counter() as counter, flops:
            _, peak = peak_tensor_memory(lambda: task(pipe, time_samples))
    entry.row.update(blocks=counter.blocks, flops=flops.get_total_flops(), peak_memory_mb=peak / 2 ** 20)
    return samples


def run_bench(entries: list[Entry], task, repeats: int, log=print, time_samples: int | None = None,
              skipped: list | None = None) -> list[dict]:
    """Measure every entry (entries[0] is the full-compute reference) on ``task``; returns the JSON rows. Timed
    rounds generate the first ``time_samples`` samples (default: all of them). Entries that cannot apply to the model
    are left out and appended to ``skipped`` as (recipe, reason)."""
    skipped = [] if skipped is None else skipped
    samples, kept = [], []
    for e in entries:
        t0 = time.perf_counter()
        try:
            samples.append(measure(e, task, time_samples))
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
                task(pipe, time_samples)
                e.times.append(time.perf_counter() - t0)
                e.cpu_times.append(time.process_time() - c0)
        log(f"  round {r + 1}/{repeats} done")
    base = entries[0]
    base_time, base_cpu = statistics.median(base.times), statistics.median(base.cpu_times)
    rows = []
    for e, out in zip(entries, samples):
        sec, cpu = statistics.median(e.times), statistics.median(e.cpu_times)
        rows.append({"recipe": e.recipe, "impl": e.impl, "tokens": longest_attention(e.pipe.model),
                     "speedup": base_time / sec, "compute_ratio": base.row["blocks"] / max(e.row["blocks"], 1e-9),
                     **task.quality(out, samples[0]), "identical": torch.equal(out, samples[0]), "seconds": sec,
                     "seconds_all": e.times, "cpu_seconds": cpu, "cpu_speedup": base_cpu / cpu,
                     "flops_ratio": base.row["flops"] / max(e.row["flops"], 1), **e.row})
    native = {e.recipe: out for e, out in zip(entries, samples) if e.impl == "ditkit-native"}
    for row, out in zip(rows, samples):
        if row["impl"] == "ditkit" and row["recipe"] in native:       # through an adapter vs the native model
            row["psnr_vs_native"] = task.quality(out, native[row["recipe"]])["psnr"]
    return rows


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table (a "PSNR vs native" column when rows ran through an adapter too; prompt accuracy
    in place of class accuracy for text-to-image rows)."""
    native = any("psnr_vs_native" in r for r in rows)
    accuracy = "prompt_accuracy" if rows and "prompt_accuracy" in rows[0] else "class_accuracy"
    db = lambda v: "-" if v is None else ">= 100" if v >= PSNR_CAP else format(v, ".2f")
    head = ("| recipe | impl | speedup | CPU-time speedup | compute ratio | blocks | GFLOPs | peak MB | seconds "
            f"| PSNR dB | SSIM | {accuracy.split('_')[0]} acc % | Fréchet dist. |" + " PSNR vs native dB |" * native)
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| `{r['recipe']}` | {r['impl']} | {r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x | "
                     f"{r['compute_ratio']:.2f}x | "
                     f"{r['blocks']:.0f} | {r['flops'] / 1e9:.1f} | {r['peak_memory_mb']:.1f} | {r['seconds']:.2f} | "
                     f"{db(r['psnr'])} | {r['ssim']:.4f} | "
                     f"{_fmt(r[accuracy] and 100 * r[accuracy], '.1f')} | "
                     f"{_fmt(r['frechet_distance'], '.2f')} |" + f" {db(r.get('psnr_vs_native'))} |" * native)
    return "\n".join(lines)


def pareto_plot(rows: list[dict], path: str | Path, title: str) -> Path:
    plt = pyplot()
    if plt is None:
        raise ImportError("the speed x quality plot needs matplotlib: pip install matplotlib (or drop --plot)")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for impl, marker in (("ditkit", "o"), ("ditkit-native", "."), ("ditkit+compile", "^"), ("diffusers", "s"),
                         ("cache-dit", "D")):
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
    """The machine and the run's peak resident memory (``peak_rss_mb``, measured when called: call it last)."""
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "peak_rss_mb": round(peak_resident_mb(), 1)}


def append_run(path: str | Path, data: dict) -> dict:
    """The bench JSON at ``path`` with the run ``data`` added: ``settings`` becomes the list of runs, rows and skipped
    entries are concatenated; an earlier run at the same token count is replaced."""
    path, new = Path(path), data["settings"]
    old = json.loads(path.read_text()) if path.exists() else {"settings": [], "rows": [], "skipped": []}
    runs = old["settings"] if isinstance(old["settings"], list) else [old["settings"]]
    other = [s for s in runs if s.get("kind", "image") != new["kind"]]
    if other:
        raise ValueError(f"{path} holds {other[0].get('kind', 'image')} runs of {other[0]['model']}; write this "
                         f"{new['kind']} run to another --json file (or drop --append)")
    same = lambda item_tokens: item_tokens == new["tokens"]
    return {"settings": [s for s in runs if not same(s.get("tokens"))] + [new], "machine": data["machine"],
            "rows": [r for r in old["rows"] if not same(r.get("tokens"))] + data["rows"],
            "skipped": [k for k in old["skipped"] if not same(k[2] if len(k) > 2 else None)] + data["skipped"]}
