"""BENCHMARKS.md from bench runs: settings, machine, date, the tables, the plots and the pass / fail bars, checked.

A report replaces only the part of the file between its two marker lines (``MARKERS`` for image models, written by
``make bench``; ``VIDEO_MARKERS`` for video models, written by ``make bench-video``; appended when absent), so the two
generated sections and the hand-written ones around them (attention backends, quantization) coexist."""
from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from pathlib import Path

from ..acceleration.recipes import REGISTRY, parse_recipe
from ..core.outputs import atomic_write
from .harness import NEVER_SKIPS, markdown_table, recipe_kinds

COLUMNS = """Columns: **speedup** = median wall time of `none` / median wall time of the recipe (timed rounds interleaved,
order rotated each round); **CPU-time speedup** = the same with process CPU time (less sensitive to other processes on
a shared machine); **compute ratio** = exact transformer block evaluations of `none` / of the recipe (attention and MLP
halves counted per sample and per token, noise-free); **GFLOPs** from `torch.utils.flop_counter` (matmuls,
convolutions, attention); **peak MB** = peak of tensor memory allocated during one generation (new storages alive at
once), which includes each method's caches; **PSNR / SSIM** = mean over samples against the `none` images of the same
seeds (PSNR capped at 100 dB: identical images); **class acc** and **Fréchet dist.** from ditkit's MNIST classifier
(the Fréchet distance on its 128-d features against the MNIST training digits, reported with more than 128 samples
only, so that the feature covariance has full rank; not FID)."""

VIDEO_COLUMNS = COLUMNS.split("; **PSNR / SSIM**")[0] + """; **PSNR / SSIM** = against the `none` videos of the same
clips and seeds, over the generated frames only (the given frames are the clip's, bitwise): PSNR on each frame's
generated pixels, capped at 100 dB (identical), and SSIM of those frames, mean over videos and frames (the JSON rows
add `psnr_per_frame` and `identical`, bitwise equality); class accuracy and the Fréchet distance apply to images only
(-)."""

MARKERS = ("<!-- ditkit bench: generated section begins (make bench rewrites it) -->",
           "<!-- ditkit bench: generated section ends -->")
VIDEO_MARKERS = ("<!-- ditkit bench-video: generated section begins (make bench-video rewrites it) -->",
                 "<!-- ditkit bench-video: generated section ends -->")
DIFFUSERS_MARKERS = ("<!-- ditkit bench-diffusers: generated section begins (make bench-diffusers rewrites it) -->",
                     "<!-- ditkit bench-diffusers: generated section ends -->")
PEER_IMPLS = ("cache-dit", "diffusers")
VIDEO_BAR_TOKENS = 8192                                  # the long-sequence setting: 128x128 canvas, 8 frames


def replace_generated_section(path, section: str, title: str = "# Benchmarks", markers=MARKERS) -> Path:
    """Write ``section`` between the ``markers`` of the file at ``path`` (created with ``title`` when missing), the
    file replaced atomically."""
    path = Path(path)
    begin, end = markers
    block = f"{begin}\n{section.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else f"{title}\n\n"
    if begin in text and end in text and text.index(begin) < text.index(end):
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def runs(data: dict) -> list[tuple[dict, list[dict], list]]:
    """(settings, rows, skipped) of every run of a bench JSON (one run, or several written with --append)."""
    settings = data["settings"] if isinstance(data["settings"], list) else [data["settings"]]
    if len(settings) == 1:
        return [(settings[0], data["rows"], data.get("skipped", []))]
    return [(s, [r for r in data["rows"] if r["tokens"] == s["tokens"]],
             [k for k in data.get("skipped", []) if k[2] == s["tokens"]]) for s in settings]


def _row(rows, recipe):
    return next((r for r in rows if r["recipe"] == recipe and r["impl"] == "ditkit"), None)


def _never_skips_bar(rows, bitwise: bool) -> str | None:
    """The never-skipping recipe within 5% of none's wall time (and, if ``bitwise``, with bitwise equal output)."""
    never = _row(rows, NEVER_SKIPS)
    if never is None:
        return None
    slow = 1 / never["speedup"] - 1
    same = never["identical"] if bitwise else never["psnr"] >= 100
    return (f"**{'met' if slow <= 0.05 and (same or not bitwise) else 'not met'}** — a never-skipping recipe within 5% "
            f"of none{' with bitwise identical output' if bitwise else ''}: `{NEVER_SKIPS}` wall time "
            f"{100 * slow:+.1f}% (CPU time {100 * (1 / never['cpu_speedup'] - 1):+.1f}%), "
            f"{'videos bitwise identical' if bitwise else 'images identical'}: {same}")


def bars(rows: list[dict]) -> list[str]:
    """The image-model bars, each as a met / not met line with its numbers: a recipe >= 4x at >= 30 dB and the same class
    accuracy; ditkit's best faster than diffusers' best at equal PSNR; the never-skipping recipe's overhead."""
    none, out = rows[0], []
    ok = [r for r in rows if r["impl"] == "ditkit" and r["speedup"] >= 4 and r["psnr"] >= 30
          and (none["class_accuracy"] is None or abs(r["class_accuracy"] - none["class_accuracy"]) <= 0.01)]
    best = max(ok, key=lambda r: r["speedup"], default=None)
    acc = lambda r: "" if r["class_accuracy"] is None else f", class accuracy {100 * r['class_accuracy']:.1f}% " \
                                                            f"(none {100 * none['class_accuracy']:.1f}%)"
    out.append(f"**{'met' if best else 'not met'}** — some ditkit recipe >= 4x wall-clock with PSNR >= 30 dB and class "
               f"accuracy within 1 point: " + (f"`{best['recipe']}` {best['speedup']:.2f}x, PSNR {best['psnr']:.2f} dB"
                                               + acc(best) if best else "none qualifies"))
    peers = [r for r in rows if r["impl"] == "diffusers" and r["psnr"] >= 30]
    if peers:
        d = max(peers, key=lambda r: r["speedup"])
        rivals = [r for r in rows[1:] if r["impl"] == "ditkit" and r["psnr"] >= d["psnr"]]
        k = max(rivals, key=lambda r: r["speedup"], default=None)
        ours = f"`{k['recipe']}` {k['speedup']:.2f}x at {k['psnr']:.2f} dB" if k else "no ditkit recipe reaches it"
        out.append(f"**{'met' if k and k['speedup'] > d['speedup'] else 'not met'}** — at equal or better PSNR, ditkit's "
                   f"best is faster than diffusers' best (its fastest hook with PSNR >= 30 dB): {ours} vs diffusers "
                   f"`{d['recipe']}` {d['speedup']:.2f}x at {d['psnr']:.2f} dB")
    never = _never_skips_bar(rows, bitwise=False)
    return out + [never] * (never is not None)


def text_bars(rows: list[dict]) -> list[str]:
    """The text-to-image bar: a ditkit recipe >= 3x wall-clock at PSNR >= 30 dB vs full compute (with its prompt
    accuracy next to full compute's), and the never-skipping recipe's overhead."""
    none = rows[0]
    ok = [r for r in rows[1:] if r["impl"] == "ditkit" and r["speedup"] >= 3 and r["psnr"] >= 30]
    best = max(ok, key=lambda r: r["speedup"], default=None)
    acc = lambda r: "" if r["prompt_accuracy"] is None else \
        f", prompt accuracy {100 * r['prompt_accuracy']:.1f}% (none {100 * none['prompt_accuracy']:.1f}%)"
    line = (f"**{'met' if best else 'not met'}** — some ditkit recipe >= 3x wall-clock with PSNR >= 30 dB: "
            + (f"`{best['recipe']}` {best['speedup']:.2f}x, PSNR {best['psnr']:.2f} dB" + acc(best) if best
               else "none qualifies"))
    never = _never_skips_bar(rows, bitwise=False)
    return [line] + [never] * (never is not None)


def diffusers_bars(rows: list[dict]) -> list[str]:
    """The bars of a run with ``--through-diffusers``: the adapter reproduces the native recipes (PSNR >= 60 dB
    between their images); through the adapter, ditkit's fastest recipe at PSNR >= 30 dB beats every peer's fastest
    setting at PSNR >= 30 dB; no peer setting dominates every ditkit recipe (faster and at least as good)."""
    out = []
    paired = [r for r in rows if "psnr_vs_native" in r]
    worst = min(paired, key=lambda r: r["psnr_vs_native"], default=None)
    out.append(f"**{'met' if worst and worst['psnr_vs_native'] >= 60 else 'not met'}** — ditkit recipes through the "
               f"diffusers adapter give the images of the same recipes on the native model (PSNR >= 60 dB): "
               + (f"lowest `{worst['recipe']}` {min(worst['psnr_vs_native'], 100):.1f} dB over {len(paired)} recipes"
                  if worst else "no recipe ran both ways"))
    ours = [r for r in rows if r["impl"] == "ditkit" and r["recipe"] != "none"]
    peers = [r for r in rows if r["impl"] in PEER_IMPLS and r["recipe"] != "none"]
    fastest = lambda rs: max((r for r in rs if r["psnr"] >= 30), key=lambda r: r["speedup"], default=None)
    k = fastest(ours)
    for impl in PEER_IMPLS:
        p = fastest([r for r in peers if r["impl"] == impl])
        if p is None and not any(r["impl"] == impl for r in peers):
            continue
        met = k is not None and (p is None or k["speedup"] > p["speedup"])
        theirs = f"`{p['recipe']}` {p['speedup']:.2f}x at {p['psnr']:.2f} dB" if p else "none reaches 30 dB"
        mine = f"`{k['recipe']}` {k['speedup']:.2f}x at {k['psnr']:.2f} dB" if k else "none reaches 30 dB"
        out.append(f"**{'met' if met else 'not met'}** — ditkit's fastest recipe at PSNR >= 30 dB (through the "
                   f"adapter) is faster than {impl}'s fastest setting at PSNR >= 30 dB: {mine} vs {theirs}")
    beats = lambda p, q: p["speedup"] >= q["speedup"] and p["psnr"] >= q["psnr"]
    dominant = [p for p in peers if ours and all(beats(p, q) for q in ours)]
    out.append(f"**{'met' if ours and not dominant else 'not met'}** — no peer setting dominates every ditkit recipe: "
               + (", ".join(f"{p['impl']} `{p['recipe']}` does" for p in dominant) or
                  f"none of {len(peers)} peer settings does"))
    return out


def _speed_bar(rows, keep, speedup: float, psnr: float, text: str) -> str:
    """met if some ditkit row with ``keep(kinds of its recipe)`` reaches ``speedup`` at ``psnr`` dB."""
    rows = [r for r in rows[1:] if r["impl"] == "ditkit" and keep(recipe_kinds(r["recipe"]))]
    ok = [r for r in rows if r["speedup"] >= speedup and r["psnr"] >= psnr]
    best = max(ok or [r for r in rows if r["psnr"] >= psnr], key=lambda r: r["speedup"], default=None)
    found = f"`{best['recipe']}` {best['speedup']:.2f}x at {best['psnr']:.2f} dB" if best else "no such row"
    found = found if ok else f"none qualifies (fastest at >= {psnr:g} dB: {found})"
    return f"**{'met' if ok else 'not met'}** — {text}: {found}"


def video_bars(video_runs: list[tuple[dict, list[dict], list]]) -> list[str]:
    """The video-model bars: caching at the native size, a stacked recipe at 8,192 tokens, the never-skipping recipe's
    overhead; a bar whose run is missing is "not measured"."""
    native = [(s, rows) for s, rows, _ in video_runs
              if s["native"] and s["task"] == "predict" and s["num_sampling_steps"] == 50]
    long = [(s, rows) for s, rows, _ in video_runs if s["tokens"] == VIDEO_BAR_TOKENS]
    out = []
    text = "at the native {} (predict task, 50 steps), some caching recipe >= 3x wall-clock with PSNR >= 30 dB vs " \
           "full compute"
    if native:
        s, rows = native[0]
        out.append(_speed_bar(rows, lambda k: k == {"caching"}, 3, 30, text.format(f"{s['tokens']} tokens")))
    else:
        out.append(f"**not measured** — {text.format('size')}: no such run in this report")
    text = (f"at {VIDEO_BAR_TOKENS:,} tokens" + " ({}), a stacked recipe (caching + sparse attention, maybe + "
            "quantization) >= 5x wall-clock with PSNR >= 28 dB vs dense full compute")
    stacked = lambda k: {"caching", "attention"} <= k
    if long:
        s, rows = long[0]
        where = (f"{s['canvas']}x{s['canvas']} canvas, {s['num_frames']} frames, {s['task']}, "
                 f"{s['num_sampling_steps']} steps")
        out.append(_speed_bar(rows, stacked, 5, 28, text.format(where)))
    else:
        out.append(f"**not measured** — {text.format('128x128 canvas, 8 frames')}: no such run in this report")
    never = [b for _, rows, _ in video_runs for b in [_never_skips_bar(rows, bitwise=True)] if b]
    out.append(never[0] if never else f"**not measured** — a never-skipping recipe (`{NEVER_SKIPS}`) within 5% of none "
                                      f"with bitwise identical output: no run has it")
    return out


def bars_of(data: dict) -> list[str]:
    """The bars of a bench JSON: the image bars of each run, or the video bars over all runs."""
    all_runs = runs(data)
    if all_runs[0][0].get("kind", "image") == "video":
        return video_bars(all_runs)
    if all_runs[0][0].get("kind") == "text":
        return [b for _, rows, _ in all_runs for b in text_bars(rows)]
    if all_runs[0][0].get("through_diffusers"):
        return [b for _, rows, _ in all_runs for b in diffusers_bars(rows)]
    return [b for _, rows, _ in all_runs for b in bars(rows)]


def method_defaults(names) -> list[str]:
    """'`fora` (interval=3): first sentence of its module docstring' for each registered method in ``names``."""
    out = []
    for name in dict.fromkeys(n for n in names if n in REGISTRY):
        cls = REGISTRY[name]
        params = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls))
        doc = " ".join((sys.modules[cls.__module__].__doc__ or "").split())
        out.append(f"`{name}` ({params}): {doc.split('. ')[0].rstrip('.')}.")
    return out


def _machine(m: dict) -> str:
    return (f"Machine: {m['processor']}, {m['cpus']} CPUs (shared with other jobs), {m['platform']}, "
            f"Python {m['python']}, torch {m['torch']}, {m['threads']} torch thread(s)"
            + (f"; peak resident memory of the run {m['peak_rss_mb']:,.0f} MiB." if "peak_rss_mb" in m else "."))


def _plot(s: dict, path: Path) -> list[str]:
    return [f"![speed-up vs PSNR]({os.path.relpath(s['plot'], path.parent)})", ""] if s.get("plot") else []


def _notes(all_runs, columns: str) -> list[str]:
    lines = ["### Notes", "", columns, ""]
    names = [name for _, rows, _ in all_runs for r in rows if r["impl"] == "ditkit"
             for name, _ in parse_recipe(r["recipe"])]
    lines += ["Methods and their defaults (module docstrings give the algorithm and deviations):", ""]
    lines += [f"- {m}" for m in method_defaults(names)] + [""]
    notes = [n for s, _, skipped in all_runs for n in
             s.get("notes", []) + [f"`{k[0]}` was left out: it cannot apply to this model ({k[1]})" for k in skipped]]
    return lines + [f"- {n}" for n in dict.fromkeys(notes)] + [""]


def _image_section(path: Path, data: dict, title: str = "Acceleration recipes on the bundled model: speed x quality "
                                                         "(`ditkit bench`)") -> str:
    all_runs = runs(data)
    lines = [f"## {title}", ""]
    for s, rows, _ in all_runs:
        lines += [
            f"Generated on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by:", "",
            f"    {s['command']}", "", _machine(data["machine"]), "",
            f"Settings: model `{s['model']}`, sampler {s['sampler']}, {s['num_sampling_steps']} steps, CFG scale "
            f"{s['cfg_scale']} (batched cond+uncond), seeds {s['seed']}..{s['seed'] + s['num_samples'] - 1}, "
            f"{s['num_samples']} samples for quality, {s['time_samples']} samples per timed generation (also the one "
            f"counted for blocks, FLOPs and memory), "
            f"{s['repeats']} timed rounds, {s.get('tokens')} tokens per attention call. TeaCache / MagCache calibrated "
            f"in the same run on {s['calibration_prompts']} samples with seeds from {s['calibration_seed']}.", "",
            "### Results", "", markdown_table(rows), "", *_plot(s, path)]
    lines += ["### Bars", ""] + [f"- {b}" for b in bars_of(data)] + [""]
    return "\n".join(lines + _notes(all_runs, COLUMNS))


def _video_settings(s: dict) -> str:
    size = "its training size" if s["native"] else "rebuilt for this canvas: same weights, sin-cos positions recomputed"
    label = "each clip's per-frame labels" if s["task"] == "story" else \
        "none (null label)" if s["label"] is None else f"class {s['label']} for every video"
    clips = f"held-out Moving MNIST clips {s['clips']} as context" if s["clips"] else "no context"
    return (f"Settings: model `{s['model']}` on {s['num_frames']} frames of {s['canvas']}x{s['canvas']} ({size}), "
            f"**{s['tokens']} tokens** per attention call; task `{s['task']}` (frames {s['generated_frames']} "
            f"generated), {clips}, labels {label}; sampler {s['sampler']}, {s['num_sampling_steps']} steps, CFG scale "
            f"{s['cfg_scale']}, {s.get('history_guidance', 'vanilla')} history guidance at scale "
            f"{s.get('history_scale', 1.0)}, noise seeds "
            f"from {s['seed']}; {s['num_samples']} "
            f"videos for quality, {s['time_samples']} per timed generation (also the one counted for blocks, FLOPs "
            f"and memory), {s['repeats']} timed rounds. TeaCache / MagCache calibrated in the same run on "
            f"{s['calibration_prompts']} clips from {s['calibration_seed']}.")


def _video_section(path: Path, data: dict) -> str:
    all_runs = runs(data)
    lines = ["## Acceleration recipes on the video model: speed x quality (`ditkit bench`)", "",
             f"Generated on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by:", ""]
    lines += [f"    {s['command']}" for s, _, _ in all_runs] + ["", _machine(data["machine"]), ""]
    for s, rows, _ in all_runs:
        lines += [f"### {s['tokens']} tokens: {s['num_frames']} frames of {s['canvas']}x{s['canvas']}", "",
                  _video_settings(s), "", markdown_table(rows), "", *_plot(s, path)]
    lines += ["### Bars", ""] + [f"- {b}" for b in bars_of(data)] + [""]
    return "\n".join(lines + _notes(all_runs, VIDEO_COLUMNS))


def write_markdown(path, data: dict) -> Path:
    """The report of a bench JSON (``data``: settings, machine, rows, skipped) into its generated section of
    ``path``: the image section, or the video section for video runs."""
    path = Path(path)
    if runs(data)[0][0].get("kind", "image") == "video":
        return replace_generated_section(path, _video_section(path, data), "# Benchmarks: speed x quality",
                                         VIDEO_MARKERS)
    if runs(data)[0][0].get("through_diffusers"):
        title = "ditkit recipes on a diffusers transformer, side by side with cache-dit and diffusers' hooks"
        return replace_generated_section(path, _image_section(path, data, title), "# Benchmarks: speed x quality",
                                         DIFFUSERS_MARKERS)
    return replace_generated_section(path, _image_section(path, data), "# Benchmarks: speed x quality")
