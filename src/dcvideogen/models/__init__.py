from .dcae_v import AutoencoderDCV, DCAEVConfig, TemporalMode, get_preset

__all__ = ["AutoencoderDCV", "DCAEVConfig", "TemporalMode", "get_preset"]
