"""Calibration (``ditkit calibrate``): fit TeaCache's rescaling polynomial or MagCache's magnitude ratios for any model.

Runs the uncached model on K prompts (``run(pipe)`` generates them; ``ditkit calibrate`` and ``ditkit bench`` use a
bench task, :mod:`ditkit.bench.tasks`: images: labels 0, 1, 2, ... cycling, seeds ``seed``, ``seed + 1``, ...;
videos: the VDT task on held-out clips ``seed``, ``seed + 1``, ...) with the given sampler, steps and CFG, records
every network call per branch and per sample, fits, and gives the fit quality and the JSON file a recipe points to
(``teacache:coefficients=FILE``, ``magcache:ratios=FILE``).

- teacache: pairs (x = rel_l1 change of block 0's modulated input, y = rel_l1 change of the network output)
  between consecutive calls of a sample, pooled over branches and samples; least-squares degree-4 polynomial y = P(x)
  (TeaCache's recipe, TeaCache #2). Quality: R^2 and RMSE on the pairs.
- magcache: mean over tokens of the channel L2 norm of the stack residual R = F(h) - h, averaged over samples at each
  timestep, per branch. Quality: mean / max |predicted - measured| step ratio m(t_s) / m(t_s-1) over samples.
"""
from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import torch

from ...models.attention import TokenLayout
from .base import CachingMethod, rel_l1

FORMAT = "ditkit-cache-calibration"
METHODS = ("teacache", "magcache")


def indicator(model, tokens: torch.Tensor, c: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """TeaCache's indicator: block 0's first modulated branch input, [N, T, D]."""
    branches = model.stack_blocks[0].branches(c, layout)
    return next((b for b in branches if b.gate is not None), branches[0]).prepare(tokens)


@dataclasses.dataclass
class Recorder(CachingMethod):
    """Computes every call normally and records per-row statistics (not a registered method)."""

    name: ClassVar[str] = "calibration recorder"

    def reset(self, num_steps):
        super().reset(num_steps)
        self.pairs = []                                    # (x, y) per row and call, TeaCache
        self.mags = defaultdict(list)                      # (branch, t) -> magnitudes, MagCache
        self.ratios = []                                   # (branch, t_prev, t, measured ratio) per row

    def new_state(self):
        return SimpleNamespace(u=None, pred=None, mag=None, t=None)

    def forward(self, state, tokens, c):
        u, out = indicator(self.model, tokens, c, self.layout), self.run(tokens, c)
        # the network output, as TeaCache's fit uses (an adapted model's head runs in its own forward: its stack output)
        pred = out if self.model.head is None else self.model.head(out, c)
        mag = (out - tokens).norm(dim=-1).mean(dim=1)
        t = self.timestep()
        if state.u is not None:
            self.pairs += zip(rel_l1(u, state.u).tolist(), rel_l1(pred, state.pred).tolist())
            self.ratios += [(b, state.t, t, r) for b, r in zip(self.row_branch, (mag / state.mag).tolist())]
        for branch, m in zip(self.row_branch, mag.tolist()):
            self.mags[branch, t].append(m)
        state.u, state.pred, state.mag, state.t = u, pred, mag, t
        return out


def record(pipe, run) -> Recorder:
    """Call ``run(pipe)`` (it generates the calibration samples) on the uncached pipeline with a recorder attached;
    the pipeline's recipe is put back afterwards."""
    rec, previous = Recorder(), pipe.recipe
    try:
        pipe.set_recipe(None)
        pipe.recipe.methods.append(rec)
        rec.attach(pipe.model)
        run(pipe)
    finally:
        pipe.set_recipe(previous)
    return rec


def fit_teacache(rec: Recorder) -> dict:
    x, y = np.array(rec.pairs).T
    coef = np.polyfit(x, y, 4)
    pred = np.polyval(coef, x)
    r2 = 1 - float(((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-30))
    return {"coefficients": coef.tolist(),
            "fit": {"r2": r2, "rmse": float(np.sqrt(((y - pred) ** 2).mean())), "pairs": len(x),
                    "x_range": [float(x.min()), float(x.max())]}}


def ascending_curve(curve: dict) -> tuple[list, list]:
    """{"t": [...], "magnitude": [...]} in sampling order -> (t ascending, magnitudes), for np.interp."""
    ts, ms = zip(*sorted(zip(curve["t"], curve["magnitude"])))
    return list(ts), list(ms)


def fit_magcache(rec: Recorder) -> dict:
    curves = {}
    for (branch, t), ms in rec.mags.items():               # sampling order
        curve = curves.setdefault(branch, {"t": [], "magnitude": []})
        curve["t"].append(t)
        curve["magnitude"].append(float(np.mean(ms)))
    err, ascending = [], {b: ascending_curve(c) for b, c in curves.items()}
    for branch, t0, t1, measured in rec.ratios:
        ts, ms = ascending[branch]
        err.append(abs(np.interp(t1, ts, ms) / np.interp(t0, ts, ms) - measured))
    return {"curves": curves, "fit": {"ratio_mae": float(np.mean(err)), "ratio_max_error": float(np.max(err)),
                                      "ratios": len(err)}}


def calibrate(pipe, method: str, run, **info) -> dict:
    """Record ``run(pipe)`` and fit ``method``; returns the calibration dict (what ``save_calibration`` writes): its
    format and method, ``info`` (what the samples were: num_prompts, seed, sampling) and the fit."""
    if method not in METHODS:
        raise ValueError(f"cannot calibrate {method!r}; valid: {', '.join(METHODS)}")
    rec = record(pipe, run)
    if not rec.pairs:
        raise ValueError("calibration needs at least 2 sampling steps")
    fitted = fit_teacache(rec) if method == "teacache" else fit_magcache(rec)
    return {"format": FORMAT, "method": method, **info, **fitted}


def save_calibration(cal: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cal, indent=1) + "\n")
    return path


def load_calibration(path: str | Path, method: str) -> dict:
    """Read a calibration file; for magcache ``curves`` becomes {branch: (t ascending, magnitudes)}."""
    try:
        cal = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no calibration file {path}: make one with `ditkit calibrate --method {method} "
                                f"--out {path}`") from None
    if cal.get("format") != FORMAT or cal.get("method") != method:
        raise ValueError(f"{path} is not a {method} calibration (format {cal.get('format')!r}, method "
                         f"{cal.get('method')!r}); make one with `ditkit calibrate --method {method}`")
    if method == "magcache":
        cal["curves"] = {b: ascending_curve(c) for b, c in cal["curves"].items()}
    return cal


def summary(cal: dict) -> str:
    fit = cal["fit"]
    if cal["method"] == "teacache":
        coef = ", ".join(f"{c:.6g}" for c in cal["coefficients"])
        return (f"teacache polynomial (c4..c0): {coef}\nfit on {fit['pairs']} pairs, x in "
                f"[{fit['x_range'][0]:.4g}, {fit['x_range'][1]:.4g}]: R^2 {fit['r2']:.4f}, RMSE {fit['rmse']:.4g}")
    lines = []
    for branch, curve in cal["curves"].items():
        ms = curve["magnitude"]
        ratios = [b / a for a, b in zip(ms, ms[1:])]
        lines.append(f"{branch}: {len(ms)} timesteps, step ratios " + " ".join(f"{r:.3f}" for r in ratios))
    lines.append(f"fit on {fit['ratios']} per-sample ratios: mean |error| {fit['ratio_mae']:.4f}, "
                 f"max {fit['ratio_max_error']:.4f}")
    return "\n".join(lines)
