"""Diffusers pipelines for DC-VideoGen models: text-to-video and image-to-video on DC-AE-V latents."""

from .i2v import DCVideoGenImageToVideoPipeline
from .t2v import DCVideoGenPipeline

__all__ = ["DCVideoGenImageToVideoPipeline", "DCVideoGenPipeline"]
