"""ditkit: train, sample and accelerate Diffusion Transformers."""
__version__ = "0.1.0"

from .pipelines.image import DiTPipeline, load  # noqa: E402

__all__ = ["DiTPipeline", "load", "__version__"]
