"""dv: train, sample and evaluate DreamVideo-style image-to-video diffusion models."""

__version__ = "0.1.0"
