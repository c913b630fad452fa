"""Typed configuration and named presets of DC-AE-V (DC-VideoGen, Sec. 3.1 and Table 1).

A DC-AE-V is a stack of 3D ResNet stages. The input projection halves the frame size; every stage but
the last is followed by a resampling step: space (x2) for all of them except the one before the last
stage, which resamples time (x4). So a 7-stage model compresses 32x in space (2 * 2**4) and 4x in time.
As in the official release, the first stage may be empty (depth 0): the input projection then lands
directly on the second stage's width and the empty stage has no resampling step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from ...errors import DCVGError


class TemporalMode(str, Enum):
    """How convolutions see time (Sec. 3.2, Fig. 4)."""

    CHUNK_CAUSAL = "chunk_causal"  # both ways inside fixed chunks, causal across chunks (the paper's choice)
    CAUSAL = "causal"  # past frames only
    NON_CAUSAL = "non_causal"  # both ways over the whole clip


@dataclass(frozen=True)
class DCAEVConfig:
    """Architecture of one DC-AE-V. Validated on construction; every field has the official meaning."""

    in_channels: int = 3
    latent_channels: int = 32
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024, 1024)
    layers_per_block: tuple[int, ...] = (0, 5, 10, 4, 4, 4, 4)
    temporal_compression: int = 4  # done by the resampling before the last stage
    temporal_mode: TemporalMode = TemporalMode.CHUNK_CAUSAL
    chunk_size: int = 40  # frames per chunk at the input frame rate (chunk-causal mode)
    kernel_size: int = 3  # temporal and spatial kernel of every convolution
    norm_eps: float = 1e-5
    scaling_factor: float = 1.0  # diffusion-space latent = latent * scaling_factor (see latents.py)
    # Not in the paper or the official release (off there): an end-to-end linear path per latent cell, from
    # its t x f x f x 3 pixel block to its Z values (encoder) and back (decoder), added to the network's
    # output, as DC-AE's parameter-free shortcuts are added to each resampling block. Fitted by PCA of the
    # training footage (`training.pca_init`), it starts the model at the best linear block codec.
    patch_shortcut: bool = False
    # Spatial kernel of the decoder's side of it: 1 reads each block from its own cell; 3 from the cell's 3x3
    # neighbourhood (a lapped linear decoder: smoother block edges; replicate padding at the frame's edge).
    patch_shortcut_kernel: int = 1
    # Also ours, off (0) by default: a per-frame 2D CNN after the decoder that reads the decoded luma and adds
    # one correction to R, G and B alike, so chroma stays what the decoder made (`layers.LumaFilter`). Its
    # width (channels at a quarter of the resolution) and its number of residual blocks. Zero-initialised
    # output: adding it to a trained model changes nothing until it is trained.
    luma_filter_width: int = 0
    luma_filter_blocks: int = 6

    def __post_init__(self) -> None:
        # Accept lists (JSON) and strings (JSON, CLI) and store tuples / enums.
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        object.__setattr__(self, "layers_per_block", tuple(int(d) for d in self.layers_per_block))
        object.__setattr__(self, "temporal_mode", TemporalMode(self.temporal_mode))
        self._validate()

    def _validate(self) -> None:
        widths, depths = self.block_out_channels, self.layers_per_block
        if len(widths) != len(depths):
            raise ValueError(
                f"block_out_channels has {len(widths)} stages but layers_per_block has {len(depths)}; "
                "give one width and one depth per stage"
            )
        if len(widths) < 2:
            raise ValueError(f"DC-AE-V needs at least 2 stages, got {len(widths)}")
        empty = [i for i, d in enumerate(depths) if d <= 0]
        if any(i != 0 for i in empty):
            raise ValueError(
                f"layers_per_block={depths}: only the first stage may be empty (depth 0), stage {empty[-1]} is"
            )
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.patch_shortcut_kernel < 1 or self.patch_shortcut_kernel % 2 != 1:
            raise ValueError(f"patch_shortcut_kernel must be odd and >= 1, got {self.patch_shortcut_kernel}")
        if self.luma_filter_width < 0 or self.luma_filter_blocks < 0:
            raise ValueError(
                f"luma_filter_width {self.luma_filter_width} and luma_filter_blocks {self.luma_filter_blocks} "
                "must be >= 0 (width 0: no luma filter)"
            )
        if self.luma_filter_width and self.in_channels != 3:
            raise ValueError(
                f"the luma filter needs RGB frames (in_channels 3), got in_channels {self.in_channels}"
            )
        t = self.temporal_compression
        if t < 1:
            raise ValueError(f"temporal_compression must be >= 1, got {t}")
        if self.chunk_size < 1 or self.chunk_size % t != 0:
            raise ValueError(
                f"chunk_size {self.chunk_size} must be a positive multiple of temporal_compression {t}"
            )
        for i, (w_in, w_out) in enumerate(self.transitions()):
            s, tf = self.resample_factors(i)
            ratio = s * s * tf
            if w_out % ratio != 0:
                raise ValueError(
                    f"stage {i + 1} width {w_out} must be divisible by the resampling ratio {ratio} "
                    f"(space {s}x{s}, time {tf})"
                )
            if (w_in * ratio) % w_out != 0:
                raise ValueError(
                    f"residual shortcut between stage {i} (width {w_in}) and stage {i + 1} (width {w_out}) "
                    f"needs {w_in}*{ratio} divisible by {w_out}"
                )
        first = self.first_width
        if first % 4 != 0:
            raise ValueError(
                f"the input projection's width {first} must be divisible by 4 (space-to-channel x2)"
            )
        if self.luma_filter_width and self.spatial_compression % 4 != 0:
            raise ValueError(
                f"the luma filter works at a quarter of the resolution: it needs a spatial compression divisible "
                f"by 4, got {self.spatial_compression}"
            )

    # ---- derived structure -------------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.block_out_channels)

    @property
    def first_width(self) -> int:
        """Width the input projection produces (and the output projection reads)."""
        return self.block_out_channels[0] if self.layers_per_block[0] > 0 else self.block_out_channels[1]

    def has_resample(self, stage: int) -> bool:
        """Whether stage `stage` is followed by a down-sampling (encoder) / preceded by an up-sampling (decoder)."""
        return stage < self.num_stages - 1 and self.layers_per_block[stage] > 0

    def resample_factors(self, stage: int) -> tuple[int, int]:
        """(spatial, temporal) factor of the resampling after `stage`: time before the last stage, else space."""
        return (1, self.temporal_compression) if stage == self.num_stages - 2 else (2, 1)

    def transitions(self) -> list[tuple[int, int]]:
        """(width in, width out) of every resampling step that exists, in encoder order."""
        w = self.block_out_channels
        return [(w[i], w[i + 1]) for i in range(self.num_stages - 1) if self.has_resample(i)]

    @property
    def spatial_compression(self) -> int:
        factor = 2  # input projection
        for i in range(self.num_stages - 1):
            if self.has_resample(i):
                factor *= self.resample_factors(i)[0]
        return factor

    @property
    def latent_chunk_size(self) -> int:
        return self.chunk_size // self.temporal_compression

    @property
    def compression_ratio(self) -> float:
        """3 * X^2 * Y / Z for a fXtYcZ autoencoder (Sec. 3, notation)."""
        s, t = self.spatial_compression, self.temporal_compression
        return self.in_channels * s * s * t / self.latent_channels

    @property
    def name(self) -> str:
        """The paper's notation, e.g. ``f32t4c32``."""
        return f"f{self.spatial_compression}t{self.temporal_compression}c{self.latent_channels}"

    @property
    def frame_multiple(self) -> int:
        """Input frame counts are padded to a multiple of this (see AutoencoderDCV.encode)."""
        if self.temporal_mode is TemporalMode.CHUNK_CAUSAL:
            return self.chunk_size
        return self.temporal_compression

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["temporal_mode"] = self.temporal_mode.value
        d["block_out_channels"] = list(self.block_out_channels)
        d["layers_per_block"] = list(self.layers_per_block)
        return d

    def replace(self, **changes) -> DCAEVConfig:
        return dataclasses.replace(self, **changes)


_F32 = dict(
    block_out_channels=(128, 256, 512, 512, 1024, 1024, 1024), layers_per_block=(0, 5, 10, 4, 4, 4, 4)
)
_F64 = dict(
    block_out_channels=(128, 256, 512, 512, 1024, 1024, 1024, 1024),
    layers_per_block=(0, 5, 10, 4, 4, 4, 4, 4),
)

# Presets named as in the paper. The official release uses chunk 40 for all of them; only f32t4c32 has a
# published latent scale (0.7241, the official pipelines); the others keep 1.0 until one is measured.
PRESETS: dict[str, DCAEVConfig] = {
    "dc-ae-v-f32t4c32": DCAEVConfig(latent_channels=32, scaling_factor=0.7241, **_F32),
    "dc-ae-v-f32t4c64": DCAEVConfig(latent_channels=64, **_F32),
    "dc-ae-v-f32t4c128": DCAEVConfig(latent_channels=128, **_F32),
    "dc-ae-v-f32t4c256": DCAEVConfig(latent_channels=256, **_F32),
    "dc-ae-v-f64t4c128": DCAEVConfig(latent_channels=128, **_F64),
    # Small model for demos and the bundled default (same wiring, narrow and shallow, chunk 8 frames):
    # 12.4M parameters, small enough to train on a CPU and ship inside the package.
    "dc-ae-v-f32t4c32-small": DCAEVConfig(
        latent_channels=32,
        block_out_channels=(16, 32, 64, 64, 128, 128, 128),
        layers_per_block=(0, 1, 2, 1, 1, 1, 1),
        chunk_size=8,
    ),
    # Tiny models for tests: the wiring of the official fixtures (widths 8..64, chunk 8).
    "dc-ae-v-f32t4c32-tiny": DCAEVConfig(
        latent_channels=32,
        block_out_channels=(8, 16, 32, 32, 64, 64, 64),
        layers_per_block=(0, 1, 2, 1, 1, 1, 1),
        chunk_size=8,
    ),
    "dc-ae-v-f64t4c128-tiny": DCAEVConfig(
        latent_channels=128,
        block_out_channels=(8, 16, 32, 32, 64, 64, 64, 64),
        layers_per_block=(0, 1, 1, 1, 1, 1, 1, 1),
        chunk_size=8,
    ),
}


def get_preset(name: str, **overrides) -> DCAEVConfig:
    """The preset `name` (``dc-ae-v-f32t4c32`` ...), with optional field overrides."""
    key = name if name.startswith("dc-ae-v-") else f"dc-ae-v-{name}"
    if key not in PRESETS:
        raise DCVGError(f"unknown DC-AE-V preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key].replace(**overrides) if overrides else PRESETS[key]
