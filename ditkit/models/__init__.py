from .attention import Attention, TokenLayout, sdpa
from .dit import DIT_CONFIGS, DiT, DiTBlock, DiTConfig, dit_config

__all__ = ["Attention", "TokenLayout", "sdpa", "DIT_CONFIGS", "DiT", "DiTBlock", "DiTConfig", "dit_config"]
