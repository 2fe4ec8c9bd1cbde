"""Post-training quantization of DiTs: W8A8 with integer kernels, weight-only int8/int4, bf16 (recipes ``w8a8``, ``w8``,
``w4``, ``bf16``) and quantized checkpoints (``ditkit quantize``)."""
from .export import install_quantized_layers, quantize_checkpoint, quantize_pipeline, weight_bytes
from .layers import BF16Linear, W8A8Linear, WeightOnlyLinear

__all__ = ["BF16Linear", "W8A8Linear", "WeightOnlyLinear", "install_quantized_layers", "quantize_checkpoint",
           "quantize_pipeline", "weight_bytes"]
