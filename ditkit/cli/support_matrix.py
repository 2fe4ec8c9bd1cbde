"""``ditkit support-matrix``: every registered recipe on every adapted diffusers class, checked live on tiny random
configurations on the CPU; prints the table (ok / n/a = cannot apply / FAIL) and the reasons, writes JSON rows
``{model, recipe, status, detail}``; exit status 1 if any cell failed."""
from __future__ import annotations

import sys

from ..acceleration.recipes import REGISTRY
from ..bench.report import replace_generated_section
from ..bench.support_matrix import MARKERS, markdown, support_matrix, table
from ..bench.tiny_diffusers import TINY
from ..core.outputs import check_output_path, write_json


def run(args):
    check_output_path(args.json, "--json", (".json",))
    check_output_path(args.markdown, "--markdown", (".md",))
    for flag, given, valid in (("--models", args.models, TINY), ("--recipes", args.recipes, REGISTRY)):
        bad = [v for v in given or () if v not in valid]
        if bad:
            raise ValueError(f"{flag} {','.join(bad)}: not known; valid: {', '.join(valid)}")
    rows = support_matrix(args.models, args.recipes)
    print(table(rows))
    if args.json:
        print(f"wrote {write_json(args.json, rows)}")
    if args.markdown:
        command = "ditkit support-matrix" + "".join(f" --{k} {','.join(v)}" for k, v in
                                                    (("models", args.models), ("recipes", args.recipes)) if v)
        print(f"wrote {replace_generated_section(args.markdown, markdown(rows, command), markers=MARKERS)}")
    if any(r["status"] == "failed" for r in rows):
        sys.exit(1)


def register(sub):
    p = sub.add_parser("support-matrix", help="check every recipe on every adapted diffusers transformer (tiny random "
                                              "configurations, CPU)")
    p.add_argument("--models", type=lambda s: s.split(","), help="comma-separated class names (default: all adapted)")
    p.add_argument("--recipes", type=lambda s: s.split(","), help="comma-separated method names (default: all)")
    p.add_argument("--json", help="write the rows {model, recipe, status, detail} to this .json file")
    p.add_argument("--markdown", help="write the matrix into its generated section of this .md file (BENCHMARKS.md)")
    p.set_defaults(fn=run)
