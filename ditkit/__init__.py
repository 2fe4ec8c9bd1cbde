"""ditkit: train, sample and accelerate Diffusion Transformers."""
__version__ = "0.1.0"
