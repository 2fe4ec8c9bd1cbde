"""``ditkit support-matrix``: every registered recipe on every adapted diffusers class, checked live on a tiny random
configuration (:mod:`ditkit.bench.tiny_diffusers`) on the CPU.

A check samples ``STEPS`` steps of a batched CFG pair (rows [uncond, cond], the diffusers batching) with a plain
Euler update, the recipe driven through its ``accelerate`` handle, and compares the final latent with the same loop
without a recipe:

- caching methods: a never-skipping setting is bitwise identical; a skipping setting runs, computes fewer block
  evaluations, and the counted evaluations equal what the method's recorded decisions imply;
- attention backends: a keep-everything setting equals dense attention to 1e-5 (relative to the latent's scale);
  a sparse setting runs and changes the output (the backend really is in the model's attention);
- quantization: the relative L2 error of the final latent stays within the method's tolerance
  (``QUANT_TOLERANCE``);
- always: after ``remove()`` the model computes exactly what it computed before.

Rows are ``{model, recipe, status, detail}`` with status ``ok``, ``cannot apply`` (the method's own reason) or
``failed`` (the error or the failed check).
"""
from __future__ import annotations

import math
import tempfile
import traceback
from pathlib import Path

import torch

from ..acceleration.attention.base import AttentionMethod
from ..acceleration.cache.base import CachingMethod
from ..acceleration.cache.calibration import Recorder, fit_magcache, save_calibration
from ..acceleration.counting import BlockCounter
from ..acceleration.quant.base import QuantMethod
from ..acceleration.recipes import REGISTRY, Recipe
from ..adapters import ADAPTERS, accelerate
from ..adapters.models import NOT_ADAPTED
from .tiny_diffusers import TIMESTEP_SCALE, TINY

STEPS = 6
NEVER_SKIP = {"fora": "interval=1", "firstblockcache": "threshold=0", "teacache": "threshold=0",
              "magcache": "threshold=0", "taylorseer": "interval=1", "toca": "interval=1", "delta_dit": "interval=1"}
SKIPPING = {"fora": "interval=3", "firstblockcache": "threshold=10", "teacache": "threshold=10",
            "magcache": "threshold=10,max_skips=3", "taylorseer": "interval=3,order=2,warmup=1", "toca": "ratio=0.3",
            "delta_dit": "interval=3"}
DENSE_RULES_OFF = {"svg": "dense_steps=0,dense_layers=0", "sta": "full_steps=0", "fastattn": "warmup=0",
                   "topk": "", "linear": ""}
KEEP_ALL = {"svg": "sparsity=1", "sta": "density=1", "topk": "density=1", "fastattn": "density=1"}
SPARSE = {"svg": "sparsity=0.5", "sta": "density=0.5,tile=1x2x2", "topk": "density=0.5,tile=1x2x2",
          "fastattn": "density=0.5,tile=1x2x2", "linear": "dropin=true"}       # tiles of 4 on the 4 x 4 grids
QUANT = {"w4": "group_size=8"}                                        # tiny layers: 8-wide groups
QUANT_TOLERANCE = {"w8a8": 0.01, "w8": 0.005, "w4": 0.05, "bf16": 0.005}   # relative L2 error of the final latent


def _spec(name: str, *parts: str) -> str:
    params = ",".join(p for p in parts if p)
    return f"{name}:{params}" if params else name


def _timesteps(model_name: str) -> list[float]:
    scale = TIMESTEP_SCALE[model_name]
    return [scale * (0.9 - 0.8 * s / (STEPS - 1)) for s in range(STEPS)]


def sample(model, inputs: dict, model_name: str, handle=None, trace_method=None):
    """``STEPS`` Euler steps x <- x - 0.1 * prediction (its first C channels) of a batched CFG pair; returns the
    final latent (and the number of counted block evaluations when ``handle`` is given)."""
    x, timesteps = inputs["hidden_states"], _timesteps(model_name)
    counter = BlockCounter(handle.model) if handle is not None else None
    if handle is not None:
        handle.reset(STEPS)
        counter.__enter__()
    try:
        with torch.no_grad():
            for step, t in enumerate(timesteps):
                if handle is not None:
                    handle.begin_step(step, STEPS)
                    handle.set_timestep(t)
                    handle.begin_branch("uncond+cond")
                t_in = torch.full_like(inputs["timestep"], t) if inputs["timestep"].is_floating_point() else \
                    torch.full_like(inputs["timestep"], round(t))
                out = model(**{**inputs, "hidden_states": x, "timestep": t_in}, return_dict=False)[0]
                x = x - 0.1 * out[:, :x.shape[1]]
    finally:
        if counter is not None:
            counter.__exit__(None, None, None)
    return x, (counter.blocks if counter is not None else None)


def _calibrated_magcache(model, inputs, model_name: str, folder: Path) -> str:
    """Fit MagCache ratios on this model (a recorder run of the same loop); returns the ratios file."""
    recorder = Recorder()
    recipe = Recipe()
    recipe.methods.append(recorder)
    with accelerate(model, recipe) as handle:
        sample(model, inputs, model_name, handle)
    path = folder / f"{model_name}-magcache.json"
    save_calibration({"format": "ditkit-cache-calibration", "method": "magcache", **fit_magcache(recorder)}, path)
    return str(path)


class CannotApply(Exception):
    """A method's own refusal to attach to a model (its ValueError at ``accelerate``), as opposed to a failure."""


def _installed(model, spec: str):
    """``accelerate(model, spec)``, its refusal raised as :class:`CannotApply` (a ValueError later is a failure)."""
    try:
        return accelerate(model, spec)
    except ValueError as e:
        raise CannotApply(str(e)) from None


def expected_blocks(name: str, method, trace: list, rows: int, depth: int) -> float:
    """The block evaluations a caching method's recorded decisions imply (per call: rows computed or not; for
    ToCa the full steps only)."""
    total = 0.0
    for _, _, computed in trace:
        per_row = computed if isinstance(computed, list) else [computed] * rows
        done = sum(per_row)
        if name == "firstblockcache":                   # block 0 always runs
            total += done * depth + (rows - done)
        elif name == "delta_dit":                       # a cached step still runs all but round(span x depth) blocks
            total += done * depth + (rows - done) * (depth - max(1, round(method.span * depth)))
        else:
            total += done * depth
    return total


def check(model_name: str, method_name: str, folder: Path) -> dict:
    """One support-matrix cell: ``{model, recipe, status, detail}``."""
    model, inputs = TINY[model_name]()
    cls = REGISTRY[method_name]
    row = {"model": model_name, "recipe": method_name}
    try:
        reference, _ = sample(model, inputs, model_name)
        scale = reference.abs().max().item()
        extra = (f"ratios={_calibrated_magcache(model, inputs, model_name, folder)}"
                 if method_name == "magcache" else "")
        if issubclass(cls, CachingMethod):
            same = _spec(method_name, NEVER_SKIP[method_name], extra)
            with _installed(model, same) as handle:
                out, full_blocks = sample(model, inputs, model_name, handle)
            if not torch.equal(out, reference):
                return {**row, "status": "failed", "detail": f"{same} is not bitwise full compute "
                        f"(max diff {(out - reference).abs().max().item():.3g})"}
            skipping = _spec(method_name, SKIPPING[method_name], extra)
            with _installed(model, skipping) as handle:
                method = handle.recipe.methods[0]
                method.trace = []
                out, blocks = sample(model, inputs, model_name, handle)
                depth = len(handle.model.stack_blocks)
                expected = expected_blocks(method_name, method, method.trace, out.shape[0], depth)
            if not blocks < full_blocks:
                return {**row, "status": "failed", "detail": f"{skipping} skipped nothing ({blocks} blocks)"}
            # ToCa's cached steps refresh some tokens of every MLP: more than its full steps, less than everything
            fits = (expected < blocks < full_blocks) if method_name == "toca" else blocks == expected
            if not fits:
                return {**row, "status": "failed",
                        "detail": f"{skipping}: {blocks} block evaluations counted, its decisions imply {expected}"
                                  f"{' plus partial MLP refreshes' if method_name == 'toca' else ''}"}
            detail = f"{same} bitwise; {skipping}: {blocks:g} of {full_blocks:g} block evaluations"
        elif issubclass(cls, AttentionMethod):
            off = DENSE_RULES_OFF[method_name]
            detail = ""
            if method_name in KEEP_ALL:
                keep = _spec(method_name, KEEP_ALL[method_name], "min_tokens=0", off)
                with _installed(model, keep) as handle:
                    out, _ = sample(model, inputs, model_name, handle)
                err = (out - reference).abs().max().item() / scale
                if err > 1e-5:
                    return {**row, "status": "failed", "detail": f"{keep} differs from dense by {err:.3g} (> 1e-5)"}
                detail = f"{keep} = dense ({err:.1g}); "
            sparse = _spec(method_name, SPARSE[method_name], "min_tokens=0", off)
            with _installed(model, sparse) as handle:
                out, _ = sample(model, inputs, model_name, handle)
            err = (out - reference).abs().max().item() / scale
            if not math.isfinite(err) or err == 0:
                return {**row, "status": "failed", "detail": f"{sparse} {'is not finite' if err else 'changed nothing'}"}
            detail += f"{sparse} runs (max diff {err:.2g} of the latent's scale)"
        elif issubclass(cls, QuantMethod):
            with _installed(model, _spec(method_name, QUANT.get(method_name, ""))) as handle:
                out, _ = sample(model, inputs, model_name, handle)
                computes = handle.model.quantization["computes"]
            err = ((out - reference).norm() / reference.norm()).item()
            if not err <= QUANT_TOLERANCE[method_name]:
                return {**row, "status": "failed", "detail": f"relative error {err:.3g} > "
                        f"{QUANT_TOLERANCE[method_name]} ({computes})"}
            detail = f"relative error {err:.2g} <= {QUANT_TOLERANCE[method_name]} ({computes})"
        else:
            return {**row, "status": "failed", "detail": f"no check for a {cls.__mro__[1].__name__}"}
        after, _ = sample(model, inputs, model_name)
        if not torch.equal(after, reference):
            return {**row, "status": "failed", "detail": "remove() did not restore the model exactly"}
        return {**row, "status": "ok", "detail": detail}
    except CannotApply as e:
        return {**row, "status": "cannot apply", "detail": str(e)}
    except Exception as e:                                # a failure is a row of the matrix, not the end of it
        where = traceback.extract_tb(e.__traceback__)[-1]
        return {**row, "status": "failed", "detail": f"{type(e).__name__}: {e} ({Path(where.filename).name}:"
                f"{where.lineno})"}


def support_matrix(models=None, methods=None) -> list[dict]:
    """Every (adapted class, registered method) cell, plus one row per class ditkit cannot adapt."""
    with tempfile.TemporaryDirectory() as folder:
        rows = [check(m, r, Path(folder)) for m in models or TINY for r in methods or REGISTRY]
    if models is None:
        rows += [{"model": name, "recipe": "*", "status": "cannot apply", "detail": why.lstrip(": ")}
                 for name, why in NOT_ADAPTED.items()]
    return rows


def table(rows: list[dict]) -> str:
    """The matrix as text: one line per model, one column per recipe (ok / n/a / FAIL)."""
    methods = list(dict.fromkeys(r["recipe"] for r in rows if r["recipe"] != "*"))
    models = list(dict.fromkeys(r["model"] for r in rows))
    mark = {"ok": "ok", "cannot apply": "n/a", "failed": "FAIL"}
    cells = {(r["model"], r["recipe"]): mark[r["status"]] for r in rows}
    width = max(len(m) for m in models)
    lines = [" " * width + "  " + " ".join(f"{m[:9]:>9}" for m in methods)]
    for model in models:
        if (model, "*") in cells:
            lines.append(f"{model:<{width}}  (not adapted)")
            continue
        lines.append(f"{model:<{width}}  " + " ".join(f"{cells.get((model, m), '-'):>9}" for m in methods))
    notes = sorted({(r["status"], r["recipe"], r["detail"]) for r in rows if r["status"] != "ok"},
                   key=lambda n: (n[0], n[1]))
    lines += [""] + [f"{s} {m}: {d}" for s, m, d in notes]
    return "\n".join(lines)


CHECKS = (f"Each cell samples {STEPS} Euler steps of a batched CFG pair through `ditkit.accelerate` and compares the "
          "final latent with no recipe: caching methods must be bitwise identical at a never-skipping setting and, at "
          "a skipping one, count fewer block evaluations, exactly as many as their recorded decisions imply; "
          "attention backends must equal dense attention to 1e-5 at a keep-everything setting and change the output "
          "at a sparse one; quantization must stay within its tolerance (relative L2 error: "
          + ", ".join(f"{k} {v}" for k, v in QUANT_TOLERANCE.items()) + "); every recipe must leave the model "
          "bitwise as it was after `remove()`.")
MARKERS = ("<!-- ditkit support-matrix: generated section begins (make bench-diffusers rewrites it) -->",
           "<!-- ditkit support-matrix: generated section ends -->")


def markdown(rows: list[dict], command: str) -> str:
    """The matrix as a BENCHMARKS.md section: a model x recipe table and the reason of every cell that is not ok."""
    methods = list(dict.fromkeys(r["recipe"] for r in rows if r["recipe"] != "*"))
    cells = {(r["model"], r["recipe"]): r for r in rows}
    mark = {"ok": "ok", "cannot apply": "n/a", "failed": "**FAIL**"}
    lines = ["## Support matrix: every recipe on every adapted diffusers transformer (`ditkit support-matrix`)", "",
             f"Generated by `{command}` (tiny random configurations, CPU, diffusers 0.42.1). {CHECKS}", "",
             "| model | " + " | ".join(f"`{m}`" for m in methods) + " |", "|---|" + "---|" * len(methods)]
    for model in dict.fromkeys(r["model"] for r in rows):
        if (model, "*") in cells:
            lines.append(f"| {model} | " + " | ".join(["not adapted"] * len(methods)) + " |")
        else:
            lines.append(f"| {model} | " + " | ".join(mark[cells[model, m]["status"]] for m in methods) + " |")
    reasons = {}
    for r in rows:
        if r["status"] != "ok":
            reasons.setdefault((r["status"], r["detail"]), []).append(f"{r['model']} / {r['recipe']}")
    lines += ["", "Cells that are not ok:", ""]
    lines += [f"- {status} ({', '.join(where)}): {detail}" for (status, detail), where in reasons.items()]
    return "\n".join(lines) + "\n"


__all__ = ["support_matrix", "check", "table", "markdown", "ADAPTERS"]
