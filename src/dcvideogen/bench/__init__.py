"""Benchmarks of DC-VideoGen's promise: the transformer cost model, measured transformer latency (base
layout against the DC-AE-V layout) and autoencoder latency and memory (`dcvg bench`)."""

from .cost_model import (
    WAN_VAE_LAYOUT,
    CostPoint,
    ForwardFlops,
    FrameRule,
    GridRounding,
    LatentLayout,
    TransformerDims,
    compare,
    dcaev_layout,
    forward_flops,
)
from .paper import TABLE7, PaperLatency, paper_latency
from .wan import WAN_CONFIGS, WanConfig, load_wan_config

__all__ = [
    "TABLE7",
    "WAN_CONFIGS",
    "WAN_VAE_LAYOUT",
    "CostPoint",
    "ForwardFlops",
    "FrameRule",
    "GridRounding",
    "LatentLayout",
    "PaperLatency",
    "TransformerDims",
    "WanConfig",
    "compare",
    "dcaev_layout",
    "forward_flops",
    "load_wan_config",
    "paper_latency",
]
