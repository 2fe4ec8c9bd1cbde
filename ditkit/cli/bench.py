"""``ditkit bench``: speed and quality of acceleration recipes, side by side, measured in one run (the harness:
:mod:`ditkit.bench.harness`), written as a table, JSON, a Pareto plot and a BENCHMARKS.md section."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import torch

from ..acceleration.attention.base import longest_attention
from ..bench.harness import (SUITES, append_run, compiled_entries, ditkit_entry, machine, markdown_table, pareto_plot,
                             run_bench, split_recipes, standard_suite, with_calibration)
from ..bench.peers import PEER_NOTES, diffusers_entries
from ..bench.report import bars_of, write_markdown
from .flags import add_sampling_args, add_task_args, load_task


def run(args):
    if args.append and not args.json:
        raise ValueError("--append adds this run to the --json file: give --json FILE")
    torch.set_num_threads(args.threads)
    pipe, task = load_task(args, args.num_samples, args.seed)
    if args.peers and task.kind == "video":
        raise ValueError(f"--peers {args.peers} runs diffusers' caches on an image DiT converted to diffusers; "
                         f"there is no diffusers conversion of ditkit's VideoDiT: drop --peers for {args.model}")
    specs = split_recipes(args.recipes) if args.recipes else standard_suite(SUITES[args.suite])
    specs += split_recipes(args.add_recipes) if args.add_recipes else []
    specs = ["none"] + [s for s in specs if s.strip().lower() != "none"]
    out_dir = Path(args.json).parent if args.json else Path("out")
    resolved = with_calibration(specs, pipe, task, args.calibration_prompts, args.calibration_seed, out_dir)
    entries = [ditkit_entry(pipe, spec, shown) for spec, shown in resolved]
    if args.compile:
        entries += compiled_entries(pipe, resolved)
    notes = list(args.note or [])
    if args.peers:
        if args.peers != "diffusers":
            raise ValueError(f"unknown peer {args.peers!r}; valid: diffusers")
        entries += diffusers_entries(pipe, task, args.calibration_prompts, args.calibration_seed)
        notes += PEER_NOTES
    timed = args.time_samples or args.num_samples
    tokens = longest_attention(pipe.model)
    s = task.settings()
    what = "samples" if task.kind == "image" else \
        f"videos ({s['task']}, {s['num_frames']} frames of {s['canvas']}x{s['canvas']}, {tokens}-token attention)"
    print(f"bench: {args.model}, {len(entries)} recipes x {args.repeats} rounds of {timed} {what} (quality on "
          f"{args.num_samples}), "
          f"{s['sampler']} {s['num_sampling_steps']} steps, cfg {s['cfg_scale']}, {args.threads} thread(s)")
    skipped = []
    rows = run_bench(entries, task, args.repeats, log=lambda m: print(m, file=sys.stderr),
                     time_samples=args.time_samples, skipped=skipped)
    table = markdown_table(rows)
    print(table)
    settings = {"model": args.model, "kind": task.kind, "tokens": tokens, "num_samples": args.num_samples,
                "repeats": args.repeats, "time_samples": timed,
                "calibration_prompts": args.calibration_prompts, "calibration_seed": args.calibration_seed,
                **s, "command": "ditkit bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else []),
                "plot": args.plot, "notes": notes}
    data = {"settings": settings, "machine": machine(), "rows": rows,
            "skipped": [[recipe, why, tokens] for recipe, why in skipped]}
    if args.append:
        data = append_run(args.json, data)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        noun = "samples" if task.kind == "image" else f"{s['task']} videos"
        title = (f"{args.model}: {tokens} tokens, {s['sampler']} {s['num_sampling_steps']} steps, "
                 f"cfg {s['cfg_scale']}, {args.num_samples} {noun}")
        print(f"wrote {pareto_plot(rows, args.plot, title)}")
    if args.markdown:
        print("\n".join(bars_of(data)))
        print(f"wrote {write_markdown(args.markdown, data)}")


def register(sub):
    p = sub.add_parser("bench", help="speed x quality of acceleration recipes (and diffusers' caches) in one run, "
                                     "on image or video DiTs")
    add_sampling_args(p)
    add_task_args(p)
    p.add_argument("--recipes", help="comma-separated recipes (default: the --suite)")
    p.add_argument("--suite", choices=SUITES, default="standard",
                   help="without --recipes: every registered method at its paper default and a faster setting "
                        "(standard), or only the caching, attention or quantization methods")
    p.add_argument("--add-recipes", help="comma-separated recipes run after --recipes or the suite, e.g. "
                                         "stacked ones ('taylorseer:interval=6,order=1+w8a8')")
    p.add_argument("--num-samples", type=int, default=100, help="samples per recipe (images: labels cycle over the "
                                                                "classes; videos: held-out clips)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--time-samples", type=int, help="samples per timed generation (default: --num-samples; quality "
                                                    "and counts always use all of them)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 = the least noisy on a shared machine)")
    p.add_argument("--compile", action="store_true", help="also run every recipe on a copy of the model whose block "
                                                          "stack is compiled (torch.compile of the repeated attention "
                                                          "and MLP modules), rows 'ditkit+compile', interleaved")
    p.add_argument("--peers", help="image DiTs: also run a peer library's caches on the same weights: diffusers")
    p.add_argument("--calibration-prompts", type=int, default=10, help="samples for TeaCache / MagCache calibration")
    p.add_argument("--calibration-seed", type=int, default=1000, help="first calibration seed (disjoint from --seed)")
    p.add_argument("--json", help="write the rows (and settings, machine) to this JSON file")
    p.add_argument("--append", action="store_true", help="add this run to the --json file (replacing a run at the "
                                                         "same token count); --markdown then reports every run in it")
    p.add_argument("--plot", help="write the speed-up vs PSNR Pareto plot to this PNG")
    p.add_argument("--markdown", help="write a BENCHMARKS.md-style report (command, machine, date, table, plot, bars)")
    p.add_argument("--note", action="append", help="a note for the report (repeatable)")
    p.set_defaults(fn=run)
