"""DC-AE-V: deep-compression video autoencoder with chunk-causal temporal modeling."""

from .autoencoder import AutoencoderDCV, pad_video
from .config import PRESETS, DCAEVConfig, TemporalMode, get_preset
from .layers import TemporalCache
from .official import CheckpointError, load_official

__all__ = [
    "PRESETS",
    "AutoencoderDCV",
    "CheckpointError",
    "DCAEVConfig",
    "TemporalCache",
    "TemporalMode",
    "get_preset",
    "load_official",
    "pad_video",
]
