"""``ditkit tune``: the fastest recipe within a quality budget (:mod:`ditkit.bench.tune`), written as a recipe YAML
that ``--recipe FILE`` takes everywhere, with every candidate in a JSON file and the front in a plot."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
import yaml

from ..acceleration.recipes import REGISTRY
from ..bench.harness import machine, markdown_table
from ..bench.report import replace_generated_section
from ..bench.tune import Budget, Settings, Tuner, tune_bars, tune_markers, tune_plot, tune_section
from ..core.outputs import check_output_path, write_json, write_text
from .bench import recipe_list
from .flags import (add_sampling_args, add_task_args, load_task, nonnegative_float, nonnegative_int, positive_float,
                    positive_int, unit_float)

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def method_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in REGISTRY]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{','.join(bad) or repr(text)}: not a registered method; valid: "
                                         f"{', '.join(sorted(REGISTRY))}")
    return names


def check_args(args) -> None:
    check_output_path(args.out, "--out", (".yaml", ".yml"))
    check_output_path(args.json, "--json", (".json",))
    check_output_path(args.plot, "--plot", PLOT_SUFFIXES)
    check_output_path(args.markdown, "--markdown", (".md",))
    recipe_list(args.compare, "--compare")
    if args.probe_samples > args.calibration_samples:
        raise ValueError(f"--probe-samples {args.probe_samples} is more than --calibration-samples "
                         f"{args.calibration_samples}: probes use the first calibration samples")
    if args.time_samples > args.calibration_samples:
        raise ValueError(f"--time-samples {args.time_samples} is more than --calibration-samples "
                         f"{args.calibration_samples}: timed rounds generate the first calibration samples")
    if args.seed < args.calibration_seed + args.calibration_samples and \
            args.calibration_seed < args.seed + args.validation_samples:
        raise ValueError(f"validation seeds {args.seed}..{args.seed + args.validation_samples - 1} overlap the "
                         f"calibration seeds {args.calibration_seed}..{args.calibration_seed + args.calibration_samples - 1}"
                         f": give --calibration-seed {args.seed + args.validation_samples} or more")


def recipe_yaml(report: dict, budget: Budget, command: str) -> str:
    v, c = report["validation"], report["calibration"]
    spec = report["winner_spec"]
    body = [spec] if isinstance(spec, str) else spec
    header = (f"# ditkit tune: {report['winner']}\n# {command}\n"
              f"# budget: PSNR >= {budget.min_psnr:g} dB"
              + (f", SSIM >= {budget.min_ssim:g}" if budget.min_ssim is not None else "")
              + (f", accuracy drop <= {budget.max_accuracy_drop:g} points" if budget.max_accuracy_drop is not None else "")
              + f"\n# calibration: PSNR {c['psnr']:.2f} dB; validation: PSNR {v['psnr']:.2f} dB, "
                f"speed-up {v['speedup']:.2f}x\n")
    return header + yaml.safe_dump(body, sort_keys=False)


def run(args):
    check_args(args)
    budget = Budget(args.min_psnr, args.min_ssim, args.max_accuracy_drop)
    settings = Settings(args.probe_samples, args.calibration_samples, args.validation_samples, args.time_samples,
                        args.repeats, budget_minutes=args.budget_minutes, calibration_seed=args.calibration_seed,
                        validation_seed=args.seed, calibration_prompts=args.calibration_prompts,
                        methods=args.methods, compare=tuple(recipe_list(args.compare, "--compare")))
    pipe, validation = load_task(args, args.validation_samples, args.seed)
    out = Path(args.out)
    log = lambda m: print(m, file=sys.stderr)
    report = Tuner(pipe, validation, validation, budget, settings, out.parent, out.stem + "-", log).run()
    command = "ditkit tune " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["tune"] else [])
    s = validation.settings()
    print(markdown_table(report["validation_rows"]))
    v = report["validation"]
    print(f"winner: {report['winner']}: validation speed-up {v['speedup']:.2f}x at PSNR {v['psnr']:.2f} dB "
          f"(calibration {report['calibration']['psnr']:.2f} dB; {len(report['candidates'])} candidates, search "
          f"{report['search_seconds'] / 60:.1f} min{', stopped by the budget' if report['out_of_time'] else ''})")
    print(f"wrote {write_text(out, recipe_yaml(report, budget, command))}")
    data = {"settings": {"model": args.model, "command": command, "budget": vars(budget), "load": args.load,
                         **{k: v for k, v in vars(settings).items() if k not in ("methods", "compare")},
                         "methods": list(settings.methods or []), **s, "threads": torch.get_num_threads()},
            "machine": machine(), **report}
    for bar in tune_bars(data):
        print(bar)
    if args.plot:
        title = (f"ditkit tune {args.model}: {s['sampler']} {s['num_sampling_steps']} steps, cfg {s['cfg_scale']}, "
                 f"budget {budget.min_psnr:g} dB")
        data["plot"] = str(tune_plot(report, budget, args.plot, title) or "")
        print(f"wrote {data['plot'] or 'no plot (matplotlib missing)'}")
    if args.json:
        print(f"wrote {write_json(args.json, data)}")
    if args.markdown:
        section = tune_section(data, Path(args.markdown))
        path = replace_generated_section(args.markdown, section, "# Benchmarks: speed x quality",
                                         tune_markers(args.model))
        print(f"wrote {path}")


def register(sub):
    p = sub.add_parser("tune", help="find the fastest acceleration recipe within a quality budget (validated on "
                                    "held-out seeds)")
    add_sampling_args(p, threads=1)
    add_task_args(p)
    p.add_argument("--min-psnr", type=positive_float, default=30.0, help="PSNR vs full compute, dB (default 30)")
    p.add_argument("--min-ssim", type=unit_float, help="SSIM vs full compute")
    p.add_argument("--max-accuracy-drop", type=nonnegative_float,
                   help="points of class (or prompt) accuracy a recipe may lose against full compute")
    p.add_argument("--budget-minutes", type=positive_float, default=30.0, help="search time (validation not counted)")
    p.add_argument("--methods", type=method_list, help="comma-separated methods to search (default: all registered)")
    p.add_argument("--probe-samples", type=positive_int, default=8, help="samples of a probe (the cheap stage)")
    p.add_argument("--calibration-samples", type=positive_int, default=32,
                   help="samples a recipe must meet the budget on before it is timed")
    p.add_argument("--validation-samples", type=positive_int, default=64,
                   help="samples of the validation bench (seeds from --seed)")
    p.add_argument("--time-samples", type=positive_int, default=16, help="samples per timed generation")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed rounds of the finalists and the validation")
    p.add_argument("--calibration-seed", type=nonnegative_int, default=1000,
                   help="first calibration seed (disjoint from the validation seeds)")
    p.add_argument("--calibration-prompts", type=positive_int, default=10,
                   help="samples for TeaCache / MagCache calibration")
    p.add_argument("--out", default="out/recipe.yaml", help="the tuned recipe (.yaml), for --recipe FILE")
    p.add_argument("--json", help="every candidate with its speed and quality, the validation rows, the settings")
    p.add_argument("--plot", help="speed-up vs PSNR of the candidates, the budget and the winner (.png, .pdf, .svg)")
    p.add_argument("--compare", help="comma-separated hand-picked recipes benched beside the winner on the "
                                     "validation seeds, in the same run")
    p.add_argument("--markdown", help="write the report (command, machine, validation table, bars) into its generated "
                                      "section of this .md file")
    p.add_argument("--load", help="how loaded the machine was, for the report (e.g. 'a training job on the other "
                                  "core')")
    p.set_defaults(fn=run)

