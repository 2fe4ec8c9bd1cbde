"""BENCHMARKS.md from a bench run: settings, machine, date, the table, the plot and the issue's bars, checked.

The run's report replaces only the part of the file between the two ``MARKERS`` lines (appended when absent), so
hand-written sections around it (attention backends, quantization, video) survive ``make bench``."""
from __future__ import annotations

import datetime
from pathlib import Path

from .bench import NEVER_SKIPS
from .registry import parse_recipe

COLUMNS = """Columns: **speedup** = median wall time of `none` / median wall time of the recipe (timed rounds interleaved,
order rotated each round); **CPU-time speedup** = the same with process CPU time (less sensitive to other processes on
a shared machine); **compute ratio** = exact transformer block evaluations of `none` / of the recipe (attention and MLP
halves counted per sample and per token, noise-free); **GFLOPs** from `torch.utils.flop_counter` (matmuls,
convolutions, attention); **peak MB** = peak of tensor memory allocated during one generation (profiler allocation
events), which includes each method's caches; **PSNR / SSIM** = mean over samples against the `none` images of the same
seeds (PSNR capped at 100 dB: identical images); **class acc** and **Fréchet dist.** from ditkit's MNIST classifier
(the Fréchet distance on its 128-d features against the MNIST training digits; not FID)."""


MARKERS = ("<!-- ditkit bench: generated section begins (make bench rewrites it) -->",
           "<!-- ditkit bench: generated section ends -->")


def replace_generated_section(path, section: str, title: str = "# Benchmarks") -> Path:
    """Write ``section`` between the markers of the file at ``path`` (created with ``title`` when missing)."""
    path = Path(path)
    begin, end = MARKERS
    block = f"{begin}\n{section.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else f"{title}\n\n"
    if begin in text and end in text and text.index(begin) < text.index(end):
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    return path


def _row(rows, recipe):
    return next((r for r in rows if r["recipe"] == recipe and r["impl"] == "ditkit"), None)


def bars(rows: list[dict]) -> list[str]:
    """The three bars of issue 3 §5, each as a PASS / FAIL line with its numbers."""
    none, out = rows[0], []
    ok = [r for r in rows if r["impl"] == "ditkit" and r["speedup"] >= 4 and r["psnr"] >= 30
          and (none["class_accuracy"] is None or abs(r["class_accuracy"] - none["class_accuracy"]) <= 0.01)]
    best = max(ok, key=lambda r: r["speedup"], default=None)
    acc = lambda r: "" if r["class_accuracy"] is None else f", class accuracy {100 * r['class_accuracy']:.1f}% " \
                                                            f"(none {100 * none['class_accuracy']:.1f}%)"
    out.append(f"**{'PASS' if best else 'FAIL'}** — some ditkit recipe >= 4x wall-clock with PSNR >= 30 dB and class "
               f"accuracy within 1 point: " + (f"`{best['recipe']}` {best['speedup']:.2f}x, PSNR {best['psnr']:.2f} dB"
                                               + acc(best) if best else "none qualifies"))
    peers = [r for r in rows if r["impl"] == "diffusers" and r["psnr"] >= 30]
    if peers:
        d = max(peers, key=lambda r: r["speedup"])
        rivals = [r for r in rows[1:] if r["impl"] == "ditkit" and r["psnr"] >= d["psnr"]]
        k = max(rivals, key=lambda r: r["speedup"], default=None)
        ours = f"`{k['recipe']}` {k['speedup']:.2f}x at {k['psnr']:.2f} dB" if k else "no ditkit recipe reaches it"
        out.append(f"**{'PASS' if k and k['speedup'] > d['speedup'] else 'FAIL'}** — at equal or better PSNR, ditkit's "
                   f"best is faster than diffusers' best (its fastest hook with PSNR >= 30 dB): {ours} vs diffusers "
                   f"`{d['recipe']}` {d['speedup']:.2f}x at {d['psnr']:.2f} dB")
    never = _row(rows, NEVER_SKIPS)
    if never:
        slow = 1 / never["speedup"] - 1
        out.append(f"**{'PASS' if slow <= 0.05 else 'FAIL'}** — a never-skipping recipe within 5% of none: "
                   f"`{NEVER_SKIPS}` wall time {100 * slow:+.1f}% (CPU time {100 * (1 / never['cpu_speedup'] - 1):+.1f}%)"
                   f", images identical: {never['psnr'] >= 100}")
    return out


def method_defaults(names) -> list[str]:
    """'`fora` (interval=3): first sentence of its module docstring' for each registered method in ``names``."""
    import dataclasses
    import sys

    from .registry import REGISTRY, _load_builtin_methods
    _load_builtin_methods()
    out = []
    for name in dict.fromkeys(n for n in names if n in REGISTRY):
        cls = REGISTRY[name]
        params = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls))
        doc = " ".join((sys.modules[cls.__module__].__doc__ or "").split())
        out.append(f"`{name}` ({params}): {doc.split('. ')[0].rstrip('.')}.")
    return out


def write_markdown(path, rows: list[dict], settings: dict, machine: dict, table: str, plot: str | None,
                   notes: list[str]) -> Path:
    s = settings
    lines = [
        "## Acceleration recipes on the bundled model: speed x quality (`ditkit bench`)", "",
        f"Generated on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by:", "",
        f"    {s['command']}", "",
        f"Machine: {machine['processor']}, {machine['cpus']} CPUs (shared with other jobs), {machine['platform']}, "
        f"Python {machine['python']}, torch {machine['torch']}, {machine['threads']} torch thread(s).", "",
        f"Settings: model `{s['model']}`, sampler {s['sampler']}, {s['num_sampling_steps']} steps, CFG scale "
        f"{s['cfg_scale']} (batched cond+uncond), seeds {s['seed']}..{s['seed'] + s['num_samples'] - 1}, "
        f"{s['num_samples']} samples for quality, {s['time_samples']} samples per timed generation (also the one "
        f"counted for blocks, FLOPs and memory), "
        f"{s['repeats']} timed rounds. TeaCache / MagCache calibrated in the same run on {s['calibration_prompts']} "
        f"samples with seeds from {s['calibration_seed']}.", "",
        "### Results", "", table, "",
    ]
    if plot:
        lines += [f"![speed-up vs PSNR]({plot})", ""]
    lines += ["### Bars (issue 3, section 5)", ""] + [f"- {b}" for b in bars(rows)] + ["", "### Notes", "", COLUMNS, ""]
    names = [name for r in rows if r["impl"] == "ditkit" for name, _ in parse_recipe(r["recipe"])]
    lines += ["Methods and their defaults (module docstrings give the algorithm and deviations):", ""]
    lines += [f"- {m}" for m in method_defaults(names)] + [""]
    lines += [f"- {n}" for n in notes] + [""]
    return replace_generated_section(path, "\n".join(lines), "# Benchmarks: speed x quality")
