"""Quantized checkpoints: a ditkit DiT safetensors file whose quantized linear layers hold their integer codes and
scales (keys ``<layer>.qweight``, ``.weight_scale``, ``.weight_low``, ``.smooth_inv``, ``.bias``), with the layer
layout under the metadata key ``quantization``, plus a JSON card next to it. ``ditkit.load`` / ``load_dit`` (hence
``ditkit generate``, ``eval`` and ``bench``) rebuild the layers from that layout and load the file directly.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .. import checkpoint as ckpt
from ..acceleration.registry import Recipe, parse_recipe
from ..diffusion.flow import FlowMatching
from .layers import empty_layer
from .method import FAKE_WARNING, QuantMethod

CARD_FORMAT = "ditkit-quantized-card"


def install_quantized_layers(model: nn.Module, quantization: dict) -> None:
    """Replace the linear layers listed in ``quantization["layers"]`` by empty quantized layers (to be loaded)."""
    for name, cfg in quantization["layers"].items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, attr)
        if type(linear) is not nn.Linear:
            raise ValueError(f"quantized checkpoint lists layer {name!r}, which is not a linear layer of this model")
        cfg = dict(cfg)
        setattr(parent, attr, empty_layer(cfg.pop("kind"), linear.in_features, linear.out_features,
                                          linear.bias is not None, cfg))
    model.quantization = quantization
    if any(c.get("fake") for c in quantization["layers"].values()):
        warnings.warn(FAKE_WARNING, stacklevel=2)


def build_quantized(make_model, quantization: dict) -> nn.Module:
    """The model of a quantized checkpoint without ever allocating its float32 weights: ``make_model()`` runs on the
    meta device, the listed layers are replaced, then the model is materialised on the CPU and re-initialised (the
    caller loads the file into it). Peak memory is the quantized model's, not the float one's."""
    with torch.device("meta"):
        model = make_model()
        install_quantized_layers(model, quantization)
    model = model.to_empty(device="cpu")
    model.initialize_weights()              # deterministic values (e.g. the fixed pos_embed) before loading
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in the model's state dict (parameters and buffers, quantized codes and scales)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def quantization_label(quantization: dict | None) -> str:
    """One line saying what a model computes: recipe, layer kinds and kernels, layers kept float."""
    if not quantization:
        return "float32"
    kept = len(quantization.get("float_layers", []))
    return f"{quantization['recipe']}: {quantization['computes']}" + (f"; {kept} kept float" if kept else "")


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


def load_any(model: str, device="cpu"):
    """The image or video pipeline of a ditkit model file (by its metadata format)."""
    from ..pipeline import load, resolve_model_path
    if ckpt.read_metadata(resolve_model_path(model)).get("format") == "ditkit-video-dit":
        from ..video_pipeline import VideoPipeline
        return VideoPipeline.from_pretrained(model, device)
    return load(model, device)


def quantize_checkpoint(model: str, recipe: str, out: str | Path, calibration_samples: int | None = None,
                        check: bool = True, device="cpu") -> dict:
    """Load ``model``, quantize it with ``recipe``, write ``out`` (.safetensors) and its card (``out`` with suffix
    .json); with ``check``, the card holds the PSNR of 4 final images (20 steps) vs the float model. Returns the card."""
    from ..evaluation.metrics import psnr
    from ..pipeline import resolve_model_path
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: a quantized checkpoint is a .safetensors file")
    pipe = load_any(model, device)
    float_bytes = weight_bytes(pipe.model)
    kw = _check_kwargs(pipe)
    ref = pipe(**kw) if check else None
    method = quantize_pipeline(pipe, recipe, calibration_samples)
    q = pipe.model.quantization
    source = str(resolve_model_path(model))
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
