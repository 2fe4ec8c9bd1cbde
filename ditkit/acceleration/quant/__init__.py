"""Post-training quantization of DiTs: quantized layers (:mod:`.layers`) on integer tensors (:mod:`.qtensor`), their
calibration, the recipe base class (:mod:`.base`), the recipes ``w8a8``, ``w8``, ``w4``, ``bf16`` and the layout of
quantized checkpoints (:mod:`.export`; :mod:`ditkit.acceleration.quantize` writes them)."""
