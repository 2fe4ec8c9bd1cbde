"""Writing quantized checkpoints (``ditkit quantize``): one quantization recipe applied to a pipeline's float model
(calibrated when the recipe needs it), saved with its layer layout (:mod:`ditkit.acceleration.quant.export`) and a
JSON card: what it computes, its weight memory against float32, the layers kept float and, optionally, its PSNR
against the float model."""
from __future__ import annotations

import json
from pathlib import Path

from ..core import checkpoint as ckpt
from ..core.metrics import psnr
from .quant.base import QuantMethod
from .quant.export import quantization_label, weight_bytes
from .recipes import Recipe, parse_recipe

CARD_FORMAT = "ditkit-quantized-card"


def quantize_pipeline(pipe, recipe: str, calibration_samples: int | None = None) -> QuantMethod:
    """Calibrate (if the recipe needs it) and apply a one-method quantization recipe to ``pipe``; returns the method.
    ``calibration_samples`` overrides the recipe's own."""
    r = Recipe(recipe)
    if len(r.methods) != 1 or not isinstance(r.methods[0], QuantMethod):
        raise ValueError(f"'{recipe}' is not a single quantization method; a quantized checkpoint holds one of "
                         f"w8a8, w8, w4, bf16 (apply caching or attention recipes at generation time)")
    if calibration_samples is not None and r.methods[0].needs_calibration():
        (name, params), = parse_recipe(recipe)
        r = Recipe({name: {**params, "calibration_samples": calibration_samples}})
    pipe.set_recipe(r)
    return r.methods[0]


def _check_kwargs(pipe, num_samples: int = 4, num_steps: int = 20, seed: int = 2000) -> dict:
    """Sampling settings of the fidelity check in the card (seeds apart from calibration and evaluation)."""
    kwargs = pipe.calibration_kwargs(num_samples, num_steps, seed)
    if "class_labels" in kwargs:                # labels cycling over the classes, as the check always used
        kwargs["class_labels"] = [i % pipe.num_classes for i in range(num_samples)]
    return kwargs


def quantize_checkpoint(pipe, recipe: str, out: str | Path, source: str | Path,
                        calibration_samples: int | None = None, check: bool = True) -> dict:
    """Quantize ``pipe`` (the float model of the file ``source``, no recipe applied) with ``recipe``, write ``out``
    (.safetensors) and its card (``out`` with suffix .json); with ``check``, the card holds the PSNR of 4 final
    images (20 steps) vs the float model. Returns the card."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: a quantized checkpoint is a .safetensors file")
    float_bytes = weight_bytes(pipe.model)
    kw = _check_kwargs(pipe)
    ref = pipe(**kw) if check else None
    method = quantize_pipeline(pipe, recipe, calibration_samples)
    q = pipe.model.quantization
    source = str(source)
    ckpt.save_weights(out, pipe.model.state_dict(), {**pipe.metadata, "quantization": q, "quantized_from": source})
    qbytes = weight_bytes(pipe.model)
    card = {"format": CARD_FORMAT, "recipe": q["recipe"], "computes": quantization_label(q), "source": source,
            "file_bytes": out.stat().st_size, "weight_bytes": qbytes, "float32_weight_bytes": float_bytes,
            "weight_memory_ratio": round(float_bytes / qbytes, 2),
            "layers": {k: sum(1 for c in q["layers"].values() if c["kind"] == k)
                       for k in sorted({c["kind"] for c in q["layers"].values()})},
            "float_layers": q["float_layers"],
            "most_sensitive_layers": dict(sorted(q["sensitivity"].items(), key=lambda kv: -kv[1])[:8]),
            "calibration": ({"samples": method.calibration_samples, "steps": method.calibration_steps, "seed": 1000}
                            if method.needs_calibration() else None)}
    if check:
        card["fidelity"] = {"psnr_db_vs_float_mean": round(float(psnr(pipe(**kw), ref).mean()), 2),
                            **{k: v for k, v in kw.items() if k not in ("class_labels", "num_videos")},
                            "num_samples": len(kw.get("class_labels", [])) or kw["num_videos"]}
    card["card"] = str(out.with_suffix(".json"))
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card
