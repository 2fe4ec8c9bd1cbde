"""The recipe side of quantization: a :class:`QuantMethod` swaps every ``nn.Linear`` of the model for a quantized layer
on attach and puts the original modules back on detach (bit-exact: the originals are never modified, and are kept
while attached, so a runtime recipe saves time, not memory; ``ditkit quantize`` writes a checkpoint that holds only
the quantized weights).

Methods that calibrate (SmoothQuant balancing, mixed precision) do so in ``prepare(pipe)``, which
:meth:`ditkit.DiTPipeline.set_recipe` calls before attaching: a few sampling trajectories of the float model.

While attached, ``model.quantization`` describes the layers ({"recipe", "computes" (count x label of the layers),
"layers": {name: {"kind", **config}}, "float_layers", "sensitivity"}); a quantized checkpoint stores the same dict
in its metadata.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections import Counter

import torch.nn as nn

from ...hooks.method import Method, param
from ...hooks.points import HookPoints
from .calibration import Calls, activation_absmax, layer_sensitivity, record_calls
from .layers import QuantLinear

FAKE_WARNING = ("FAKE-QUANT: the quantized layers simulate integer arithmetic in float32 (for quality studies); "
                "they are not faster and hold float-sized activations")


def linear_slots(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(qualified name, parent module, attribute) of every plain ``nn.Linear`` in the model, in module order, but
    those under the model's ``float_modules`` (name prefixes of modules that must keep float parameters)."""
    keep = tuple(getattr(model, "float_modules", ()))
    slots = [(f"{pname}.{cname}" if pname else cname, parent, cname)
             for pname, parent in model.named_modules() for cname, child in parent.named_children()
             if type(child) is nn.Linear]
    return [slot for slot in slots if not (keep and slot[0].startswith(keep))]


@dataclasses.dataclass
class QuantMethod(Method):
    """Base of the quantization recipes. ``float_layers``: keep this many linear layers in float, the ones whose
    quantization alone changes the network output most on the calibration trajectories (mixed precision)."""
    float_layers: int = param(0, low=0, example=2)
    calibration_samples: int = param(4, low=1)
    calibration_steps: int = param(20, low=1)

    def __post_init__(self):
        super().__post_init__()
        self._act_absmax: dict | None = None
        self._calibrated_for: nn.Module | None = None
        self._layers: dict[nn.Linear, tuple[int, QuantLinear]] = {}
        self._float: set = set()
        self._sensitivity: dict[str, float] = {}

    # --- what a subclass defines ---------------------------------------------------------------------------------
    def make_layer(self, linear: nn.Linear, act_absmax) -> QuantLinear:
        """The quantized replacement of ``linear``; ``act_absmax`` [K] is its calibrated input range, or None."""
        raise NotImplementedError

    def uses_activation_stats(self) -> bool:
        return False

    # --- calibration ---------------------------------------------------------------------------------------------
    def needs_calibration(self) -> bool:
        return self.float_layers > 0 or self.uses_activation_stats()

    def _quantize(self, linear: nn.Linear) -> QuantLinear:
        return self.make_layer(linear, (self._act_absmax or {}).get(linear))

    def _layer(self, linear: nn.Linear) -> QuantLinear:
        """The quantized layer of ``linear``, built once and reused by later attaches (``ditkit bench`` re-attaches
        for every run) unless the float weight changed in place since."""
        version = linear.weight._version
        cached = self._layers.get(linear)
        if cached is None or cached[0] != version:
            cached = self._layers[linear] = (version, self._quantize(linear))
        return cached[1]

    def prepare(self, pipe) -> None:
        """Calibrate on the pipeline's float model, once per model (no-op if this method needs no calibration)."""
        if not self.needs_calibration() or self._calibrated_for is pipe.model:
            return
        if getattr(pipe.model, "quantization", None) is not None:
            raise ValueError(already_quantized(pipe.model))
        calls = record_calls(pipe, self.calibration_samples, self.calibration_steps)
        self.calibrate(pipe.model, calls)
        self._calibrated_for = pipe.model

    def calibrate(self, model: nn.Module, calls: Calls) -> None:
        slots = linear_slots(model)
        linears = [getattr(parent, attr) for _, parent, attr in slots]
        self._act_absmax = activation_absmax(model, linears, calls) if self.uses_activation_stats() else {}
        self._float, self._sensitivity, self._layers = set(), {}, {}
        if self.float_layers:
            errors = layer_sensitivity(model, [(p, a) for _, p, a in slots], self._quantize, calls)
            self._sensitivity = {name: round(e, 6) for (name, _, _), e in zip(slots, errors)}
            ranked = sorted(range(len(slots)), key=lambda i: -errors[i])
            self._float = {linears[i] for i in ranked[:self.float_layers]}

    # --- life cycle ----------------------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        if getattr(model, "quantization", None) is not None:
            raise ValueError(already_quantized(model))
        if self.needs_calibration() and self._act_absmax is None:
            raise ValueError(f"'{self.spec()}' calibrates on sampling trajectories: apply it with "
                             f"DiTPipeline.set_recipe (or `ditkit quantize`), not to a bare model")
        plan, kept = [], []
        for name, parent, attr in linear_slots(model):
            linear = getattr(parent, attr)
            if linear in self._float:
                kept.append(name)
                continue
            try:
                plan.append((name, parent, attr, linear, self._layer(linear)))
            except ValueError as e:
                raise ValueError(f"{self.name}: layer {name}: {e}") from None
        points = HookPoints.of(model)
        for name, parent, attr, linear, layer in plan:
            points.set(f"linear.{name}", self, parent, attr, layer)
        labels = Counter(q.label for *_, q in plan)
        points.set("quantization", self, model, "quantization", {
            "recipe": self.spec(), "computes": "; ".join(f"{n} x {lab}" for lab, n in labels.items()),
            "layers": {n: {"kind": q.kind, **q.config()} for n, *_, q in plan}, "float_layers": kept,
            "sensitivity": self._sensitivity})
        if any(getattr(q, "fake", False) for *_, q in plan):
            warnings.warn(FAKE_WARNING, stacklevel=2)


def already_quantized(model: nn.Module) -> str:
    return (f"the model is already quantized ({model.quantization['recipe']}): use one quantization method per recipe, "
            f"and none with a model loaded from a quantized checkpoint")
