"""dcvideogen: DC-VideoGen (arXiv 2509.25182) in PyTorch."""

__version__ = "0.1.0"

from .models import AutoencoderDCV, DCAEVConfig, TemporalMode, get_preset

__all__ = ["AutoencoderDCV", "DCAEVConfig", "TemporalMode", "__version__", "get_preset"]
