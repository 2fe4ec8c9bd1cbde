"""``ditkit tune``: the fastest recipe that meets a quality budget, found on calibration samples and re-measured on
disjoint validation samples.

Search space: every registered method (its ``knob``: one parameter ordered from the least to the most aggressive,
searched for each of its ``variants``; methods without a knob as they are), and stacks of the best setting of each
caching or attention family with each quantization setting. Quality is measured against full compute on the same
samples, as ``ditkit bench`` does (PSNR, SSIM, accuracy where the task has one).

Strategy, deterministic (same seeds, same candidates, so a run is reproducible up to timing noise):

1. probe: each candidate generates the first ``probe_samples`` calibration samples once, with exact block counts;
   along a knob, quality falls monotonically, so a bisection finds its most aggressive value that meets the budget
   (by a ``margin`` in dB, against probe noise) in log2(len) probes instead of len. A setting that cannot apply to the
   model (an attention backend on short sequences) drops its family, with the reason recorded.
2. stacks: the best of each caching / attention family with each quantization setting that met the budget alone;
   one knob step back (more conservative) when the stack misses it.
3. check: every candidate that met the budget on the probe generates all ``calibration_samples`` samples; the ones
   still within the budget go on.
4. timing by successive halving: interleaved rounds (every survivor once per round, rotated order, as ``ditkit
   bench``), the slower half dropped after each round until ``finalists`` remain, then ``repeats`` more rounds;
   the winner is the fastest by median time.
5. validation: the winner and the calibration Pareto front (speed vs PSNR) are benched on ``validation_samples``
   samples with seeds disjoint from the calibration ones (``ditkit bench``'s harness, interleaved).

The budget in minutes bounds steps 1-4 (each stops where it is when time runs out; validation always runs).
TeaCache / MagCache are calibrated once, on calibration samples.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import statistics
import time
from pathlib import Path

import torch

from ..acceleration.counting import BlockCounter
from ..acceleration.recipes import BUILTIN_METHOD_MODULES, REGISTRY, Recipe, parse_recipe
from ..core.visual import pyplot, save_figure
from .harness import (CALIBRATED, Entry, ditkit_entry, markdown_table, method_kind, round_order, run_bench,
                      with_calibration)


@dataclasses.dataclass
class Budget:
    """The quality a recipe must keep against full compute on the same samples."""
    min_psnr: float = 30.0
    min_ssim: float | None = None
    max_accuracy_drop: float | None = None      # points (percent) of the task's accuracy, where it has one

    def misses(self, row: dict, reference: dict, margin: float = 0.0) -> str | None:
        """Why ``row`` misses the budget (``margin`` dB / its share of SSIM stricter), or None if it meets it."""
        if row["psnr"] < self.min_psnr + margin:
            return f"PSNR {row['psnr']:.2f} < {self.min_psnr + margin:g} dB"
        if self.min_ssim is not None and row["ssim"] < self.min_ssim:
            return f"SSIM {row['ssim']:.4f} < {self.min_ssim:g}"
        key = accuracy_key(row)
        if self.max_accuracy_drop is not None and key and row[key] is not None:
            drop = 100 * (reference[key] - row[key])
            if drop > self.max_accuracy_drop:
                return f"{key.replace('_', ' ')} {drop:.1f} points below full compute"
        return None


def accuracy_key(row: dict) -> str | None:
    return "prompt_accuracy" if row.get("prompt_accuracy") is not None else \
        "class_accuracy" if row.get("class_accuracy") is not None else None


@dataclasses.dataclass
class Settings:
    probe_samples: int = 8
    calibration_samples: int = 32
    validation_samples: int = 64
    time_samples: int = 16
    repeats: int = 3
    finalists: int = 3
    front: int = 4                               # Pareto-front recipes re-measured on validation besides the winner
    margin: float = 0.5                          # dB above min_psnr a probe must reach
    budget_minutes: float = 30.0
    calibration_seed: int = 1000
    validation_seed: int = 0
    calibration_prompts: int = 10                # TeaCache / MagCache calibration samples
    methods: tuple[str, ...] | None = None       # registered methods searched (None: all)
    compare: tuple[str, ...] = ()                # hand-picked recipes benched beside the winner on validation


class Tuner:
    """One tuning run of ``pipe`` on ``task`` (a bench task: :mod:`.tasks`); :meth:`run` returns the report."""

    def __init__(self, pipe, task, validation_task, budget: Budget, settings: Settings, out_dir: Path,
                 prefix: str = "", log=print):
        self.pipe, self.budget, self.s, self.log = pipe, budget, settings, log
        self.calibration = task.resample(settings.calibration_samples, settings.calibration_seed)
        self.probe_task = task.resample(settings.probe_samples, settings.calibration_seed)
        self.validation_task = validation_task
        self.out_dir, self.prefix = Path(out_dir), prefix
        self.deadline = time.monotonic() + 60 * settings.budget_minutes
        self.candidates: dict[str, dict] = {}     # recipe -> its record
        self.skipped: dict[str, str] = {}         # family -> why it cannot apply
        self.resolved: dict[str, object] = {}     # recipe -> spec with calibration files
        self.recipes: dict[str, Recipe] = {}      # recipe -> its Recipe, built (and calibrated) once
        self.calibration_files: dict[str, str] = {}   # TeaCache / MagCache -> its calibration file

    # -- measurements --------------------------------------------------------------------------------------
    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    def _spec(self, recipe: str):
        """``recipe`` as a list of method dicts, TeaCache / MagCache with their calibration file (calibrated once
        per method, on calibration samples)."""
        if recipe not in self.resolved:
            parts = []
            for name, params in parse_recipe(recipe):
                if name in CALIBRATED and CALIBRATED[name] not in params:
                    if name not in self.calibration_files:
                        (spec, _), = with_calibration([name], self.pipe, self.calibration, self.s.calibration_prompts,
                                                      self.s.calibration_seed, self.out_dir, self.prefix, log=self.log)
                        self.calibration_files[name] = spec[0][CALIBRATED[name]]
                    params = {**params, CALIBRATED[name]: self.calibration_files[name]}
                parts.append({"name": name, **params})
            self.resolved[recipe] = parts or "none"
        return self.resolved[recipe]

    def _recipe(self, recipe: str) -> Recipe:
        if recipe not in self.recipes:
            self.recipes[recipe] = Recipe(self._spec(recipe))
        return self.recipes[recipe]

    def _generate(self, recipe: str, task) -> tuple[torch.Tensor, float]:
        """Samples of ``task`` with ``recipe`` applied and the sample-block evaluations it took."""
        self.pipe.set_recipe(self._recipe(recipe))
        try:
            with BlockCounter(self.pipe.model) as counter:
                samples = task(self.pipe)
        finally:
            self.pipe.set_recipe(None)
        return samples, counter.blocks

    def probe(self, recipe: str, stage: str = "probe") -> dict | None:
        """Quality and compute ratio of ``recipe`` on the probe samples (cached); None if it cannot apply."""
        if recipe in self.candidates:
            return self.candidates[recipe]
        try:
            samples, blocks = self._generate(recipe, self.probe_task)
        except (ValueError, RuntimeError, NotImplementedError) as err:
            self.log(f"  {recipe}: cannot apply ({err})")
            self.candidates[recipe], self.skipped[recipe] = None, str(err)
            return None
        row = {"recipe": recipe, "stage": stage, **self.probe_task.quality(samples, self.probe_reference),
               "compute_ratio": self.probe_blocks / max(blocks, 1e-9)}
        row["probe_misses"] = self.budget.misses(row, self.probe_ref_row, self.s.margin)
        self.candidates[recipe] = row
        self.log(f"  {stage} {recipe}: PSNR {row['psnr']:.2f} dB, compute ratio {row['compute_ratio']:.2f}x"
                 + (f" ({row['probe_misses']})" if row["probe_misses"] else ""))
        return row

    def meets(self, recipe: str) -> bool:
        row = self.probe(recipe)
        return row is not None and row["probe_misses"] is None

    # -- search --------------------------------------------------------------------------------------------
    def families(self) -> list[tuple[str, dict]]:
        """(method, variant) of every searched method, in registration order."""
        builtin = {m.__name__: i for i, m in enumerate(BUILTIN_METHOD_MODULES)}
        names = sorted(REGISTRY, key=lambda n: builtin.get(REGISTRY[n].__module__, len(builtin)))
        if self.s.methods is not None:
            names = [n for n in names if n in self.s.methods]
        return [(n, v) for n in names for v in REGISTRY[n].variants]

    @staticmethod
    def recipe_of(name: str, variant: dict, value=None) -> str:
        knob = REGISTRY[name].knob
        params = {**variant, **({knob[0]: value} if knob and value is not None else {})}
        return name + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")

    def best_along_knob(self, name: str, variant: dict) -> list[str]:
        """The recipes of one family from its most aggressive setting within the budget towards conservative ones
        (bisection along the knob; [] if none meets it or the family cannot apply)."""
        knob = REGISTRY[name].knob
        if knob is None:
            recipe = self.recipe_of(name, variant)
            return [recipe] if self.meets(recipe) else []
        values = knob[1]
        lo, hi = -1, len(values)                    # values[:lo+1] meet the budget, values[hi:] miss it
        while hi - lo > 1 and not self.out_of_time():
            mid = (lo + hi) // 2
            recipe = self.recipe_of(name, variant, values[mid])
            row = self.probe(recipe)
            if row is None:                            # the family cannot apply: recorded under its name
                self.skipped[self.recipe_of(name, variant)] = self.skipped.pop(recipe)
                return []
            if row["probe_misses"] is None:
                lo = mid
            else:
                hi = mid
        return [self.recipe_of(name, variant, values[i]) for i in range(lo, -1, -1)]

    def search(self) -> list[str]:
        """Probe every family and the stacks; the recipes that met the budget on the probe."""
        ladders = {}
        for name, variant in self.families():
            if self.out_of_time():
                break
            ladder = self.best_along_knob(name, variant)
            if ladder:
                ladders[self.recipe_of(name, variant)] = (method_kind(name), ladder)
        quant = [ladder[0] for kind, ladder in ladders.values() if kind == "quantization"]
        for kind, ladder in list(ladders.values()):
            if kind == "quantization":
                continue
            for q in quant:
                for base in ladder[:2]:                # the best, then one step more conservative
                    if self.out_of_time() or self.meets(f"{base}+{q}"):
                        break
        return [r for r, row in self.candidates.items() if row is not None and row["probe_misses"] is None]

    def check(self, recipes: list[str]) -> list[str]:
        """Quality of ``recipes`` on all calibration samples; the ones within the budget."""
        kept = []
        for recipe in recipes:
            if self.out_of_time():
                break
            samples, _ = self._generate(recipe, self.calibration)
            row = self.candidates[recipe]
            row["calibration"] = self.calibration.quality(samples, self.calibration_reference)
            row["calibration_misses"] = self.budget.misses(row["calibration"], self.calibration_ref_row)
            self.log(f"  check {recipe}: PSNR {row['calibration']['psnr']:.2f} dB on {self.s.calibration_samples} "
                     f"samples" + (f" ({row['calibration_misses']})" if row["calibration_misses"] else ""))
            if row["calibration_misses"] is None:
                kept.append(recipe)
        return kept

    def time_rounds(self, recipes: list[str]) -> list[str]:
        """Successive halving on interleaved timed rounds (``none`` timed alongside); recipes by median time."""
        entries = {r: Entry(r, "ditkit", self.pipe, lambda: None, self._recipe(r) if r != "none" else None)
                   for r in ["none", *recipes]}
        task = self.calibration
        alive, r = list(recipes), 0
        while alive:
            for recipe in round_order(["none", *alive], r):
                with entries[recipe].active() as pipe:
                    t0 = time.perf_counter()
                    task(pipe, self.s.time_samples)
                    entries[recipe].times.append(time.perf_counter() - t0)
            r += 1
            median = lambda x: statistics.median(entries[x].times)
            alive.sort(key=median)
            if self.out_of_time():                     # the budget is spent: the fastest so far are the finalists
                alive = alive[:self.s.finalists]
                break
            if len(alive) > self.s.finalists:
                alive = alive[:max(self.s.finalists, math.ceil(len(alive) / 2))]
            elif r >= self.s.repeats:
                break
        base = statistics.median(entries["none"].times)
        for recipe, entry in entries.items():
            if recipe != "none":
                self.candidates[recipe].update(seconds=statistics.median(entry.times), rounds=len(entry.times),
                                               speedup=base / statistics.median(entry.times))
        return sorted(recipes, key=lambda x: -self.candidates[x]["speedup"])

    def front(self, recipes: list[str]) -> list[str]:
        """The timed recipes no other timed one beats in both speed-up and calibration PSNR, fastest first."""
        timed = [r for r in recipes if "speedup" in self.candidates[r]]
        psnr = lambda r: self.candidates[r]["calibration"]["psnr"]
        return [r for r in timed if not any(self.candidates[o]["speedup"] > self.candidates[r]["speedup"]
                                            and psnr(o) >= psnr(r) for o in timed if o != r)]

    # -- the run -------------------------------------------------------------------------------------------
    def run(self) -> dict:
        t0 = time.monotonic()
        self.log(f"tune: full compute on {self.s.calibration_samples} calibration samples")
        self.calibration_reference, _ = self._generate("none", self.calibration)
        self.calibration_ref_row = self.calibration.quality(self.calibration_reference, self.calibration_reference)
        self.probe_reference, self.probe_blocks = self._generate("none", self.probe_task)
        self.probe_ref_row = self.probe_task.quality(self.probe_reference, self.probe_reference)
        self.log("tune: probing every method along its knob, then stacks")
        passed = self.search()
        self.log(f"tune: {len(passed)} recipes met the budget on the probe; checking them on all calibration samples")
        kept = self.check(passed)
        if not kept:
            raise ValueError(f"no recipe kept PSNR >= {self.budget.min_psnr:g} dB (and the other bounds) on the "
                             f"calibration samples: loosen the budget (e.g. --min-psnr "
                             f"{max(self.budget.min_psnr - 4, 20):g}) or raise --budget-minutes")
        self.log(f"tune: timing {len(kept)} recipes (successive halving, interleaved rounds)")
        ranked = self.time_rounds(kept)
        winner = ranked[0]
        search_seconds = time.monotonic() - t0
        shown = [winner] + [r for r in self.front(kept) if r != winner][:self.s.front]
        compare = [r for r in self.s.compare if r not in shown]
        self.log(f"tune: winner {winner}; validating it, {len(shown) - 1} Pareto recipes and {len(compare)} compared "
                 f"ones on {self.s.validation_samples} validation samples (seeds from {self.s.validation_seed})")
        shown += compare
        entries = [ditkit_entry(self.pipe, "none", "none")] + [
            Entry(r, "ditkit", self.pipe, lambda: BlockCounter(self.pipe.model), self._recipe(r)) for r in shown]
        validation = run_bench(entries, self.validation_task, self.s.repeats, log=self.log,
                               time_samples=min(self.s.time_samples, self.s.validation_samples))
        by_recipe = {row["recipe"]: row for row in validation}
        win = by_recipe[winner]
        return {"winner": winner, "winner_spec": self._spec(winner),
                "calibration": self.candidates[winner]["calibration"], "validation": win,
                "validation_meets_budget": self.budget.misses(win, validation[0]) is None,
                "psnr_gap_db": self.candidates[winner]["calibration"]["psnr"] - win["psnr"],
                "candidates": [row for row in self.candidates.values() if row is not None],
                "skipped": self.skipped, "front": shown[:len(shown) - len(compare)], "compare": compare,
                "validation_rows": validation,
                "search_seconds": search_seconds, "total_seconds": time.monotonic() - t0,
                "out_of_time": self.out_of_time()}


def tune_markers(model: str) -> tuple[str, str]:
    """The markers of the generated BENCHMARKS.md section of a tune run on ``model`` (one section per model)."""
    return (f"<!-- ditkit tune {model}: generated section begins (make bench-tune rewrites it) -->",
            f"<!-- ditkit tune {model}: generated section ends -->")


def tune_bars(data: dict) -> list[str]:
    """The tune bars: the winner's validation speed-up against the fastest compared (hand-picked) recipe that meets
    the budget in the same validation run, and its validation PSNR within 1 dB of its calibration PSNR."""
    budget = Budget(**data["settings"]["budget"])
    rows = data["validation_rows"]
    win = data["validation"]
    picked = [r for r in rows if r["recipe"] in data["compare"] and budget.misses(r, rows[0]) is None]
    best = max(picked, key=lambda r: r["speedup"], default=None)
    out = []
    if data["compare"]:
        out.append(f"**{'met' if best is None or win['speedup'] >= best['speedup'] else 'not met'}** — the tuned "
                   f"recipe is at least as fast on validation seeds as the best hand-picked recipe within the budget, "
                   f"in the same run: `{data['winner']}` {win['speedup']:.2f}x at {win['psnr']:.2f} dB vs "
                   + (f"`{best['recipe']}` {best['speedup']:.2f}x at {best['psnr']:.2f} dB" if best
                      else "no compared recipe meets the budget"))
    gap = data["psnr_gap_db"]
    out.append(f"**{'met' if abs(gap) <= 1 else 'not met'}** — validation PSNR within 1 dB of calibration PSNR (not "
               f"overfitted to the calibration seeds): {data['calibration']['psnr']:.2f} dB on calibration, "
               f"{win['psnr']:.2f} dB on validation ({gap:+.2f} dB)")
    out.append(f"**{'met' if win['psnr'] >= budget.min_psnr else 'not met'}** — the winner meets the PSNR budget on "
               f"validation seeds: {win['psnr']:.2f} dB vs {budget.min_psnr:g} dB")
    return out


def tune_section(data: dict, path: Path) -> str:
    """A BENCHMARKS.md section for a tune JSON: command, machine, search, validation table, bars."""
    s, m = data["settings"], data["machine"]
    timed = sum(1 for r in data["candidates"] if "speedup" in r)
    plot = [f"![tune: speed-up vs PSNR]({os.path.relpath(data['plot'], path.parent)})", ""] if data.get("plot") else []
    return "\n".join([
        f"## `ditkit tune` on `{s['model']}`: the fastest recipe within {s['budget']['min_psnr']:g} dB", "",
        f"Generated on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by:", "", f"    {s['command']}",
        "", f"Machine: {m['processor']}, {m['cpus']} CPUs, {m['threads']} torch thread(s), torch {m['torch']}"
        + (f"; {s['load']}" if s.get("load") else "") + ".", "",
        f"Settings: sampler {s['sampler']}, {s['num_sampling_steps']} steps, CFG scale {s['cfg_scale']}; calibration "
        f"seeds from {s['calibration_seed']} ({s['probe_samples']} samples per probe, {s['calibration_samples']} for "
        f"the check), validation seeds from {s['validation_seed']} ({s['validation_samples']} samples, "
        f"{s['time_samples']} per timed generation, {s['repeats']} interleaved rounds).", "",
        f"Search: {len(data['candidates'])} candidates probed, {timed} timed, in {data['search_seconds'] / 60:.1f} "
        f"minutes (budget {s['budget_minutes']:g}); winner `{data['winner']}`. Validation (the winner, the calibration "
        f"Pareto front and the compared hand-picked recipes; `ditkit bench`'s harness, one run):", "",
        markdown_table(data["validation_rows"]), "", *plot, "### Bars", "",
        *[f"- {b}" for b in tune_bars(data)], ""])


def tune_plot(report: dict, budget: Budget, path: str | Path, title: str) -> Path | None:
    """Calibration candidates (speed-up measured, or the exact compute ratio where untimed) against PSNR, the
    budget, the winner and its validation point."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = report["candidates"]
    timed = [r for r in rows if "speedup" in r]
    untimed = [r for r in rows if "speedup" not in r]
    ax.scatter([r["compute_ratio"] for r in untimed], [min(r["psnr"], 60) for r in untimed], s=12, c="lightgray",
               label="probed (x: compute ratio)")
    ax.scatter([r["speedup"] for r in timed], [min(r["calibration"]["psnr"], 60) for r in timed], s=22, c="tab:blue",
               label="timed (x: measured speed-up)")
    win, val = next(r for r in rows if r["recipe"] == report["winner"]), report["validation"]
    ax.scatter([win["speedup"]], [min(win["calibration"]["psnr"], 60)], marker="*", s=220, c="tab:red",
               label=f"winner {report['winner']}")
    ax.scatter([val["speedup"]], [min(val["psnr"], 60)], marker="X", s=90, c="tab:green", label="winner, validation")
    ax.axhline(budget.min_psnr, color="gray", ls="--", label=f"budget {budget.min_psnr:g} dB")
    ax.set_xlabel("speed-up vs full compute")
    ax.set_ylabel("PSNR vs full compute (dB, capped at 60)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path)
