"""The built-in methods: importing this module registers them (one module per method, listed here)."""
import importlib

BUILTIN_METHOD_MODULES: list[str] = ["fora", "firstblockcache", "teacache", "magcache", "taylorseer", "toca",
                                     "delta_dit",
                                     "svg", "sta", "topk", "fastattn", "linear_attn",
                                     "quant_w8a8", "quant_weight_only", "quant_bf16"]

for _name in BUILTIN_METHOD_MODULES:
    importlib.import_module(f"ditkit.acceleration.{_name}")
