"""Models: the DiT and the video DiT, the attention entry point (with the token layout), RoPE, the block-stack
contract every acceleration works through (:mod:`.stack`), regional compilation and, in :mod:`.interop`, other
checkpoint formats. It imports only the layers below it (core, data)."""
from .attention import Attention, TokenLayout, sdpa
from .dit import DIT_CONFIGS, DiT, DiTBlock, DiTConfig, dit_config

__all__ = ["Attention", "TokenLayout", "sdpa", "DIT_CONFIGS", "DiT", "DiTBlock", "DiTConfig", "dit_config"]
