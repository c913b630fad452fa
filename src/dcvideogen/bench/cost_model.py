"""Analytic cost of the diffusion transformer: tokens and FLOPs per forward, base Wan against DC-VideoGen.

The base model (Wan 2.1) denoises latents of its own VAE (f8t4c16) cut into 1x2x2 patches; DC-VideoGen
denoises DC-AE-V latents (f32t4cZ) with patch 1 (Sec. 4, AE-Adapt-V). Both run the same transformer
blocks, so the cost of a forward depends only on the number of tokens N (FACTS §5):

    per layer, 2 FLOPs per multiply-add:
    12·N·D²  (self-attention q, k, v, o + cross-attention q, o)
    + 4·L·D² (cross-attention k, v of the L text tokens)
    + 4·N·D·F (feed-forward)
    + 4·N²·D (self-attention scores and weighted sum)
    + 4·N·L·D (cross-attention scores and weighted sum)

The patch embedder, output head and the time / text embedders are left out: together they are under
0.01% of a forward at 480p.

Frame and size rules follow the released pipelines: diffusers' `WanPipeline` rounds a frame count F to
F // 4 * 4 + 1 (80 -> 81, 21 latent frames); the DC-VideoGen pipeline rounds it down to a multiple of 4
(81 -> 80, 20 latent frames). In space the frame is padded up to the token grid by default
(`GridRounding.PAD`, the cost of a video at least the size asked for), or floor-divided as the released
DC-VideoGen pipeline does (`GridRounding.FLOOR`: 720 px -> 22 latent rows, a 704 px video).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..errors import DCVGError
from ..models.dcae_v import get_preset

TEXT_TOKENS = 512  # Wan pads / truncates every prompt to 512 UMT5 tokens


class FrameRule(str, Enum):
    """How a pipeline turns a requested frame count into the frames its autoencoder sees."""

    ONE_PLUS_T = "1+tk"  # causal first frame, then t frames per latent frame (Wan VAE): F -> F//t*t + 1
    MULTIPLE_OF_T = "tk"  # t frames per latent frame (DC-AE-V pipeline): F -> F//t*t


class GridRounding(str, Enum):
    """How a frame size that is not a multiple of the token stride becomes a token grid."""

    PAD = "pad"  # pad the frame up to the grid: ceil(H / stride)
    FLOOR = "floor"  # floor division, as the released DC-VideoGen pipeline: H // spatial, then // patch


@dataclass(frozen=True)
class LatentLayout:
    """An autoencoder (fXtYcZ) and the transformer patch size on its latents."""

    name: str
    spatial: int  # X: pixels per latent pixel
    temporal: int  # Y: frames per latent frame
    channels: int  # Z: latent channels = transformer in/out channels
    patch: tuple[int, int, int]  # (pt, ph, pw)
    frame_rule: FrameRule

    def pixel_frames(self, frames: int) -> int:
        """The frame count the pipeline actually generates for a requested `frames`."""
        if frames < 1:
            raise DCVGError(f"frames {frames}: must be at least 1")
        t = self.temporal
        if self.frame_rule is FrameRule.ONE_PLUS_T:
            return frames // t * t + 1
        if frames < t:
            raise DCVGError(f"frames {frames}: {self.name} needs at least {t} frames (one latent frame)")
        return frames // t * t

    def latent_frames(self, frames: int) -> int:
        f = self.pixel_frames(frames)
        return (f - 1) // self.temporal + 1 if self.frame_rule is FrameRule.ONE_PLUS_T else f // self.temporal

    def latent_grid(
        self, frames: int, height: int, width: int, rounding: GridRounding = GridRounding.PAD
    ) -> tuple[int, int, int]:
        """(T', H', W') of the latent the transformer denoises; H', W' are whole patches."""
        if height < 1 or width < 1:
            raise DCVGError(f"size {height}x{width}: height and width must be positive")
        _, ph, pw = self.patch
        if rounding is GridRounding.PAD:
            sh, sw = self.spatial * ph, self.spatial * pw
            h, w = -(-height // sh) * ph, -(-width // sw) * pw
        else:
            h, w = height // self.spatial // ph * ph, width // self.spatial // pw * pw
        if h == 0 or w == 0:
            raise DCVGError(
                f"size {height}x{width}: smaller than one token ({self.spatial * ph}x{self.spatial * pw} "
                f"pixels for {self.name}); use a larger size or --rounding pad"
            )
        return self.latent_frames(frames), h, w

    def token_grid(
        self, frames: int, height: int, width: int, rounding: GridRounding = GridRounding.PAD
    ) -> tuple[int, int, int]:
        """(F, H, W) token grid: the latent grid divided by the patch size (the RoPE grid)."""
        t, h, w = self.latent_grid(frames, height, width, rounding)
        pt, ph, pw = self.patch
        return t // pt, h // ph, w // pw

    def num_tokens(
        self, frames: int, height: int, width: int, rounding: GridRounding = GridRounding.PAD
    ) -> int:
        f, h, w = self.token_grid(frames, height, width, rounding)
        return f * h * w


# Wan 2.1's VAE (f8t4c16) with the Wan transformer's 1x2x2 patches.
WAN_VAE_LAYOUT = LatentLayout("wan-2.1 f8t4c16 p1x2x2", 8, 4, 16, (1, 2, 2), FrameRule.ONE_PLUS_T)


def dcaev_layout(preset: str = "dc-ae-v-f32t4c32") -> LatentLayout:
    """A DC-AE-V preset with patch size 1, as DC-VideoGen adapts the transformer (AE-Adapt-V)."""
    cfg = get_preset(preset)
    return LatentLayout(
        f"dc-ae-v {cfg.name} p1x1x1",
        cfg.spatial_compression,
        cfg.temporal_compression,
        cfg.latent_channels,
        (1, 1, 1),
        FrameRule.MULTIPLE_OF_T,
    )


@dataclass(frozen=True)
class TransformerDims:
    """The sizes the FLOP count depends on."""

    num_layers: int
    hidden_dim: int  # D = heads * head_dim
    ffn_dim: int  # F
    text_tokens: int = TEXT_TOKENS  # L


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one transformer forward (batch 1), by term of the FACTS §5 formula, summed over layers."""

    projections: float  # 12·N·D²
    cross_kv: float  # 4·L·D²
    ffn: float  # 4·N·D·F
    self_attention: float  # 4·N²·D
    cross_attention: float  # 4·N·L·D

    @property
    def total(self) -> float:
        return self.projections + self.cross_kv + self.ffn + self.self_attention + self.cross_attention

    @property
    def attention_share(self) -> float:
        """Fraction of the FLOPs in the N² self-attention term (runs at the attention kernel's rate)."""
        return self.self_attention / self.total


def forward_flops(dims: TransformerDims, tokens: int) -> ForwardFlops:
    """FLOPs of one forward over `tokens` video tokens (FACTS §5 formula, times the number of layers)."""
    n, d, f, text, k = tokens, dims.hidden_dim, dims.ffn_dim, dims.text_tokens, dims.num_layers
    return ForwardFlops(
        projections=k * 12.0 * n * d * d,
        cross_kv=k * 4.0 * text * d * d,
        ffn=k * 4.0 * n * d * f,
        self_attention=k * 4.0 * n * n * d,
        cross_attention=k * 4.0 * n * text * d,
    )


@dataclass(frozen=True)
class CostPoint:
    """Base against adapted layout at one requested (height, width, frames)."""

    height: int
    width: int
    frames: int
    base_frames: int  # frames the base pipeline generates (81 for 80)
    adapted_frames: int  # frames the adapted pipeline generates (80 for 81)
    base_grid: tuple[int, int, int]  # token grid (F, H, W)
    adapted_grid: tuple[int, int, int]
    base_flops: ForwardFlops
    adapted_flops: ForwardFlops

    @property
    def base_tokens(self) -> int:
        return self.base_grid[0] * self.base_grid[1] * self.base_grid[2]

    @property
    def adapted_tokens(self) -> int:
        return self.adapted_grid[0] * self.adapted_grid[1] * self.adapted_grid[2]

    @property
    def flop_ratio(self) -> float:
        """How many times fewer FLOPs the adapted forward needs."""
        return self.base_flops.total / self.adapted_flops.total


def compare(
    dims: TransformerDims,
    height: int,
    width: int,
    frames: int,
    base: LatentLayout = WAN_VAE_LAYOUT,
    adapted: LatentLayout | None = None,
    rounding: GridRounding = GridRounding.PAD,
) -> CostPoint:
    """Tokens and FLOPs per forward of the base and the adapted layout for one clip size."""
    adapted = adapted or dcaev_layout()
    bg = base.token_grid(frames, height, width, rounding)
    ag = adapted.token_grid(frames, height, width, rounding)
    return CostPoint(
        height=height,
        width=width,
        frames=frames,
        base_frames=base.pixel_frames(frames),
        adapted_frames=adapted.pixel_frames(frames),
        base_grid=bg,
        adapted_grid=ag,
        base_flops=forward_flops(dims, bg[0] * bg[1] * bg[2]),
        adapted_flops=forward_flops(dims, ag[0] * ag[1] * ag[2]),
    )


def video_seconds(forward_seconds: float, steps: int, cfg: bool) -> float:
    """Transformer time for one video: `steps` denoising steps, two forwards a step with CFG."""
    return forward_seconds * steps * (2 if cfg else 1)
