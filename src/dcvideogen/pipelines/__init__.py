"""Diffusers pipelines for DC-VideoGen models: text-to-video and image-to-video on DC-AE-V latents.

The two classes need transformers (the `pipelines` extra) and are imported on first use, so the rest of
the package (`pipelines.conditioning`, `pipelines.folders`, ...) loads on a base install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .i2v import DCVideoGenImageToVideoPipeline
    from .t2v import DCVideoGenPipeline

_MODULE_OF = {"DCVideoGenPipeline": ".t2v", "DCVideoGenImageToVideoPipeline": ".i2v"}

__all__ = ["DCVideoGenImageToVideoPipeline", "DCVideoGenPipeline"]


def __getattr__(name: str) -> type:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
