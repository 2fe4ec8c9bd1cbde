"""diffusers transformers and pipelines behind ditkit's block-stack contract, so every recipe applies to them."""
from .accelerate import Accelerated, accelerate
from .models import ADAPTERS, spec_for
from .stack import BlockArgs, BlockStack, StackAdapter, latent_grid

__all__ = ["accelerate", "Accelerated", "ADAPTERS", "spec_for", "BlockStack", "BlockArgs", "StackAdapter",
           "latent_grid"]
