"""Quantized checkpoints: a ditkit DiT safetensors file whose quantized linear layers hold their integer codes and
scales (keys ``<layer>.qweight``, ``.weight_scale``, ``.weight_low``, ``.smooth_inv``, ``.bias``), with the layer
layout under the metadata key ``quantization``, plus a JSON card next to it (written by
:mod:`ditkit.acceleration.quantize`). ``ditkit.load`` / ``load_dit`` (hence ``ditkit generate``, ``eval`` and
``bench``) rebuild the layers from that layout and load the file directly.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from .base import FAKE_WARNING
from .layers import empty_layer


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
