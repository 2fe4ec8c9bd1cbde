"""``ditkit bench``: speed and quality of acceleration recipes, side by side, measured in one run (the harness:
:mod:`ditkit.bench.harness`), written as a table, JSON, a Pareto plot and a BENCHMARKS.md section. Every flag, recipe
and output path is checked before the model is loaded."""
from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from ..acceleration.attention.base import longest_attention
from ..acceleration.recipes import check_recipe
from ..bench.harness import (SUITES, append_run, compiled_entries, ditkit_entry, machine, markdown_table, pareto_plot,
                             run_bench, split_recipes, standard_suite, with_calibration)
from ..bench.cache_dit_peer import CACHE_DIT_NOTES, cache_dit_entries
from ..bench.peers import ADAPTER_NOTES, PEER_NOTES, adapter_entries, diffusers_entries
from ..bench.report import bars_of, write_markdown
from ..core.outputs import check_output_path, write_json
from ..parallel.mesh import distributed_env
from ..pipelines.base import is_video_model
from ..pipelines.diffusers_dit import diffusers_folder_kind
from .flags import (add_parallel_args, add_sampling_args, add_task_args, load_task, nonnegative_int, parallel_config,
                    positive_int)

PEERS = {"diffusers": "diffusers", "cache-dit": "cache_dit"}      # --peers name -> the package it needs
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def recipe_list(text: str | None, flag: str) -> list[str]:
    """The recipes of a comma-separated flag (:func:`split_recipes`), each checked (methods, parameters); an empty
    entry or a bad recipe is an error naming the flag."""
    if text is None:
        return []
    if not text.strip() or any(not part.strip() for part in text.split(",")):
        raise ValueError(f"{flag} {text!r} has an empty entry; give comma-separated recipes, e.g. "
                         f"{flag} 'fora:interval=3,teacache:threshold=0.1'")
    specs = split_recipes(text)
    for spec in specs:
        try:
            check_recipe(spec)
        except ValueError as e:
            raise ValueError(f"{flag}: recipe {spec!r}: {e}") from None
    return specs


def peer_list(text: str) -> list[str]:
    """'diffusers,cache-dit' -> the peers, each checked."""
    peers = [p.strip() for p in text.split(",")]
    bad = [p for p in peers if p not in PEERS]
    if bad or not peers:
        raise argparse.ArgumentTypeError(f"{','.join(bad) or repr(text)}: not a peer; valid: {', '.join(PEERS)}")
    return list(dict.fromkeys(peers))


def check_args(args) -> None:
    """Everything that can be checked without loading the model."""
    if args.time_samples is not None and args.time_samples > args.num_samples:
        raise ValueError(f"--time-samples {args.time_samples} is more than --num-samples {args.num_samples}: timed "
                         f"generations use the first samples; give --time-samples <= {args.num_samples}")
    if args.append and not args.json:
        raise ValueError("--append adds this run to the --json file: give --json FILE")
    check_output_path(args.json, "--json", (".json",))
    check_output_path(args.plot, "--plot", PLOT_SUFFIXES)
    check_output_path(args.markdown, "--markdown", (".md",))
    if args.append and Path(args.json).exists():
        try:
            old = json.loads(Path(args.json).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--append {args.json}: cannot read it as a bench JSON ({e}); give the --json file of "
                             f"an earlier `ditkit bench` run, or drop --append") from None
        if not isinstance(old, dict) or not {"settings", "rows"} <= set(old):
            raise ValueError(f"--append {args.json} is not a `ditkit bench` JSON (no settings and rows); give the "
                             f"--json file of an earlier bench run, or drop --append")
    if args.note is not None and any(not n.strip() for n in args.note):
        raise ValueError("--note '' is empty: give the note's text, e.g. --note 'other jobs were running'")
    if args.peers or args.through_diffusers:
        flag = f"--peers {','.join(args.peers)}" if args.peers else "--through-diffusers"
        if is_video_model(args.model):
            raise ValueError(f"{flag} runs on an image DiT converted to diffusers' DiTTransformer2DModel; there is no "
                             f"diffusers conversion of ditkit's VideoDiT: drop {flag.split()[0]} for {args.model}")
        if diffusers_folder_kind(args.model):
            raise ValueError(f"{flag} converts a ditkit model file to diffusers; {args.model} is already a diffusers "
                             f"folder: bench it without {flag.split()[0]} (its rows run through the adapter)")
        for package in ["diffusers"] + [PEERS[p] for p in args.peers or ()]:
            if importlib.util.find_spec(package) is None:
                raise ImportError(f"{flag} needs the {package.replace('_', '-')} package: pip install "
                                  f"{'--no-deps cache-dit==1.5.3' if package == 'cache_dit' else package} "
                                  f"(or drop {flag.split()[0]})")
    if (args.ulysses_degree > 1 or args.ring_degree > 1 or args.cfg_parallel) and \
            (args.compile or args.peers or args.through_diffusers):
        raise ValueError("--compile, --peers and --through-diffusers run on one process: drop them with "
                         "--ulysses-degree / --ring-degree / --cfg-parallel")
    if args.compile and args.device == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise ValueError("--compile compiles the blocks with torch.compile, which needs a C++ compiler on the CPU "
                         "(none of g++, c++, clang++ found): install one (e.g. apt install g++) or drop --compile")


def run(args):
    check_args(args)
    specs = recipe_list(args.recipes, "--recipes") or standard_suite(SUITES[args.suite])
    specs += recipe_list(args.add_recipes, "--add-recipes")
    specs = ["none"] + [s for s in specs if s.strip().lower() != "none"]
    parallel = parallel_config(args)
    pipe, task = load_task(args, args.num_samples, args.seed)
    main = parallel is None or distributed_env()[0] == 0
    log = (lambda m: print(m, file=sys.stderr)) if main else (lambda m: None)
    with tempfile.TemporaryDirectory(prefix="ditkit-bench-") as scratch:
        # calibration files: next to --json (named after it), else only for this run
        out_dir, prefix = (Path(args.json).parent, Path(args.json).stem + "-") if args.json else (Path(scratch), "")
        resolved = with_calibration(specs, pipe, task, args.calibration_prompts, args.calibration_seed, out_dir,
                                    prefix, log=log)
        pipe.set_parallel(parallel)     # after calibrating on each process alone; every process times, rank 0 reports
        entries = [ditkit_entry(pipe, spec, shown) for spec, shown in resolved]
        if args.compile:
            entries += compiled_entries(pipe, resolved)
        notes = list(args.note or [])
        if args.through_diffusers:
            for e in entries:
                e.impl = "ditkit-native" if e.impl == "ditkit" else e.impl
            entries += adapter_entries(pipe, resolved)
            notes += ADAPTER_NOTES
        if "diffusers" in (args.peers or ()):
            entries += diffusers_entries(pipe, task, args.calibration_prompts, args.calibration_seed)
            notes += PEER_NOTES
        if "cache-dit" in (args.peers or ()):
            entries += cache_dit_entries(pipe)
            notes += CACHE_DIT_NOTES
    timed = args.time_samples or args.num_samples
    tokens = longest_attention(pipe.model)
    s = task.settings()
    what = {"image": "samples", "text": "text-to-image samples"}.get(task.kind) or \
        f"videos ({s['task']}, {s['num_frames']} frames of {s['canvas']}x{s['canvas']}, {tokens}-token attention)"
    where = "" if pipe.parallel is None else f", {pipe.parallel.describe()}"
    log(f"bench: {args.model}, {len(entries)} recipes x {args.repeats} rounds of {timed} {what} (quality on "
        f"{args.num_samples}), {s['sampler']} {s['num_sampling_steps']} steps, cfg {s['cfg_scale']}, "
        f"{torch.get_num_threads()} thread(s){' per process' if where else ''}{where}")
    skipped = []
    rows = [{"subject": args.model, **r} for r in run_bench(entries, task, args.repeats, log=log,
                                                            time_samples=args.time_samples, skipped=skipped)]
    del entries
    if not pipe.is_main:
        return
    print(markdown_table(rows))
    settings = {"model": args.model, "kind": task.kind, "tokens": tokens, "num_samples": args.num_samples,
                "repeats": args.repeats, "time_samples": timed,
                "calibration_prompts": args.calibration_prompts, "calibration_seed": args.calibration_seed,
                **s, "command": "ditkit bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else []),
                "plot": args.plot, "notes": notes, "through_diffusers": args.through_diffusers,
                "peers": args.peers or [], "parallel": None if pipe.parallel is None else pipe.parallel.describe()}
    data = {"settings": settings, "machine": machine(), "rows": rows,
            "skipped": [[recipe, why, tokens] for recipe, why in skipped]}
    print(f"peak resident memory of this run: {data['machine']['peak_rss_mb']:.0f} MiB")
    if args.append:
        data = append_run(args.json, data)
    if args.json:
        print(f"wrote {write_json(args.json, data)}")
    if args.plot:
        noun = {"image": "samples", "text": "prompts"}.get(task.kind) or f"{s['task']} videos"
        title = (f"{args.model}: {tokens} tokens, {s['sampler']} {s['num_sampling_steps']} steps, "
                 f"cfg {s['cfg_scale']}, {args.num_samples} {noun}")
        print(f"wrote {pareto_plot(rows, args.plot, title)}")
    if args.markdown:
        print("\n".join(bars_of(data)))
        print(f"wrote {write_markdown(args.markdown, data)}")


def register(sub):
    p = sub.add_parser("bench", help="speed x quality of acceleration recipes (and diffusers' caches) in one run, "
                                     "on image or video DiTs")
    add_sampling_args(p, threads=1)
    add_task_args(p)
    add_parallel_args(p)
    p.add_argument("--recipes", help="comma-separated recipes (default: the --suite)")
    p.add_argument("--suite", choices=SUITES, default="standard",
                   help="without --recipes: every registered method at its paper default and a faster setting "
                        "(standard), or only the caching, attention or quantization methods")
    p.add_argument("--add-recipes", help="comma-separated recipes run after --recipes or the suite, e.g. "
                                         "stacked ones ('taylorseer:interval=6,order=1+w8a8')")
    p.add_argument("--num-samples", type=positive_int, default=100,
                   help="samples per recipe (images: labels cycle over the classes; videos: held-out clips)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (median reported)")
    p.add_argument("--time-samples", type=positive_int,
                   help="samples per timed generation, at most --num-samples (default: --num-samples; quality and "
                        "counts always use all of them)")
    p.add_argument("--compile", action="store_true", help="also run every recipe on a copy of the model whose block "
                                                          "stack is compiled (torch.compile of the repeated attention "
                                                          "and MLP modules), rows 'ditkit+compile', interleaved")
    p.add_argument("--peers", type=peer_list,
                   help=f"image DiTs: also run peer libraries' caches on the same weights, converted to diffusers' "
                        f"DiTTransformer2DModel (comma-separated: {', '.join(PEERS)})")
    p.add_argument("--through-diffusers", action="store_true",
                   help="image DiTs: also run every recipe through ditkit's diffusers adapter on the model converted "
                        "to DiTTransformer2DModel (rows impl 'ditkit', each with psnr_vs_native; the native rows "
                        "become 'ditkit-native')")
    p.add_argument("--calibration-prompts", type=positive_int, default=10,
                   help="samples for TeaCache / MagCache calibration")
    p.add_argument("--calibration-seed", type=nonnegative_int, default=1000,
                   help="first calibration seed (disjoint from --seed)")
    p.add_argument("--json", help="write the rows (and settings, machine, peak memory) to this JSON file; the "
                                  "TeaCache / MagCache calibrations of the run go next to it (NAME-calibration-"
                                  "METHOD.json), without --json they are not kept")
    p.add_argument("--append", action="store_true", help="add this run to the --json file (replacing a run at the "
                                                         "same token count); --markdown then reports every run in it")
    p.add_argument("--plot", help="write the speed-up vs PSNR Pareto plot to this file (.png, .pdf or .svg)")
    p.add_argument("--markdown", help="write a BENCHMARKS.md-style report (command, machine, date, table, plot, bars) "
                                      "into its generated section of this .md file")
    p.add_argument("--note", action="append", help="a note for the report (repeatable)")
    p.set_defaults(fn=run)
