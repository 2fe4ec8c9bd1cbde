"""ditkit: train, sample and accelerate Diffusion Transformers."""
__version__ = "0.1.0"

from .adapters import BlockStack, accelerate  # noqa: E402
from .pipelines.image import DiTPipeline, load  # noqa: E402

__all__ = ["DiTPipeline", "load", "accelerate", "BlockStack", "__version__"]
