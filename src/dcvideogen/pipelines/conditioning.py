"""The pure conventions of the DC-VideoGen pipelines (DC-VideoGen Sec. 4, and the official release).

Frames, sizes, latent shapes, the image-to-video condition and per-token timesteps, as small typed
functions with no model in them, so that each convention is tested on its own:

- frames are rounded down to a multiple of the autoencoder's temporal factor (4): 81 -> 80 frames,
  20 latent frames; the autoencoder decodes 20 latent frames back to exactly 80 frames;
- height and width are multiples of the spatial factor (32) times the transformer's patch size;
- I2V (Sec. 4, "as Wan-2.1-I2V does"): the image is repeated 4 times, zeros fill the remaining frames,
  the clip is encoded and scaled; a 4-channel mask marks the first 4 pixel frames; the transformer
  input is cat(noisy latent 32, mask 4, condition latent 32) = 68 channels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import DCVGError


@dataclass(frozen=True)
class VideoGeometry:
    """The size a pipeline generates: pixels and the latent grid the transformer sees."""

    num_frames: int  # pixel frames, a multiple of temporal_factor * patch_t
    height: int  # pixels, a multiple of spatial_factor * patch_h
    width: int
    latent_frames: int  # num_frames // temporal_factor
    latent_height: int  # height // spatial_factor
    latent_width: int

    @property
    def latent_grid(self) -> tuple[int, int, int]:
        return self.latent_frames, self.latent_height, self.latent_width


def round_num_frames(num_frames: int, temporal_factor: int, patch_t: int = 1) -> int:
    """Frames rounded down to a multiple of temporal_factor * patch_t (the release: 81 -> 80)."""
    multiple = temporal_factor * patch_t
    return num_frames // multiple * multiple


def round_size(size: int, multiple: int) -> int:
    """Pixels rounded down to a multiple (the release: 720 -> 704 for 32), never below one multiple."""
    return max(multiple, size // multiple * multiple)


def resolve_geometry(
    num_frames: int,
    height: int,
    width: int,
    temporal_factor: int,
    spatial_factor: int,
    patch_size: tuple[int, int, int],
    min_frames: int,
    strict: bool = False,
) -> tuple[VideoGeometry, list[str]]:
    """The frames and size actually generated, and a note for each value that was rounded.

    Raises DCVGError for sizes that cannot be used (non-positive, below one chunk of `min_frames`) and,
    with `strict`, for any value that would have to be rounded.
    """
    pt, ph, pw = patch_size
    fm, hm, wm = temporal_factor * pt, spatial_factor * ph, spatial_factor * pw
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
        if int(value) != value or value < 1:
            raise DCVGError(f"{name} {value}: must be a positive whole number")
    notes: list[str] = []
    frames = round_num_frames(num_frames, temporal_factor, pt)
    if frames != num_frames:
        if strict:
            raise DCVGError(
                f"num_frames {num_frames} is not a multiple of {fm}; use {max(frames, fm)} or drop --strict"
            )
        notes.append(f"num_frames {num_frames} is not a multiple of {fm}; generating {frames} frames")
    if frames < min_frames:
        raise DCVGError(
            f"num_frames {num_frames} is below one chunk of the autoencoder ({min_frames} frames); "
            f"ask for at least {min_frames} frames"
        )
    size = []
    for name, value, multiple in (("height", height, hm), ("width", width, wm)):
        rounded = round_size(value, multiple)
        if rounded != value:
            if strict:
                raise DCVGError(
                    f"{name} {value} is not a multiple of {multiple}; use {rounded} or drop --strict"
                )
            notes.append(f"{name} {value} is not a multiple of {multiple}; generating {rounded} pixels")
        size.append(rounded)
    h, w = size
    geometry = VideoGeometry(
        num_frames=frames,
        height=h,
        width=w,
        latent_frames=frames // temporal_factor,
        latent_height=h // spatial_factor,
        latent_width=w // spatial_factor,
    )
    return geometry, notes


# ---- image-to-video condition -----------------------------------------------------------------------------


def image_condition_video(image: torch.Tensor, num_frames: int, repeats: int = 4) -> torch.Tensor:
    """The clip that is encoded as the I2V condition: the image `repeats` times, then black (zero) frames.

    image: (B, 3, H, W) in [-1, 1] -> (B, 3, num_frames, H, W).
    """
    if image.dim() != 4:
        raise ValueError(f"expected an image batch (B, 3, H, W), got shape {tuple(image.shape)}")
    if num_frames < repeats:
        raise ValueError(f"num_frames {num_frames} is shorter than the {repeats} image frames")
    b, c, h, w = image.shape
    first = image.unsqueeze(2).expand(b, c, repeats, h, w)  # (B, 3, 4, H, W)
    rest = image.new_zeros(b, c, num_frames - repeats, h, w)  # (B, 3, T - 4, H, W)
    return torch.cat([first, rest], dim=2)  # (B, 3, T, H, W)


def image_condition_pieces(
    image: torch.Tensor, num_frames: int, piece_frames: int, repeats: int = 4
) -> Iterator[torch.Tensor]:
    """`image_condition_video` in consecutive pieces of `piece_frames` frames (the last may be shorter), so
    that a long high-resolution condition clip is never held whole: (B, 3, <= piece_frames, H, W) each."""
    if image.dim() != 4:
        raise ValueError(f"expected an image batch (B, 3, H, W), got shape {tuple(image.shape)}")
    if num_frames < repeats or piece_frames < 1:
        raise ValueError(
            f"need num_frames >= {repeats} and piece_frames >= 1, got {num_frames}, {piece_frames}"
        )
    b, c, h, w = image.shape
    for start in range(0, num_frames, piece_frames):
        piece = image.new_zeros(b, c, min(piece_frames, num_frames - start), h, w)  # (B, 3, t, H, W)
        known = min(repeats - start, piece.shape[2])
        if known > 0:
            piece[:, :, :known] = image.unsqueeze(2)
        yield piece


def first_frames_mask(
    batch_size: int,
    num_frames: int,
    latent_height: int,
    latent_width: int,
    temporal_factor: int = 4,
    known_frames: int = 4,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The I2V mask: 1 on the first `known_frames` pixel frames, 0 elsewhere, folded into channels.

    The per-pixel-frame mask (B, T) is viewed as (B, T/4, 4) and the 4 frames of each latent frame are
    moved to channels: channel c of latent frame j is pixel frame 4j + c. Returns (B, 4, T/4, h, w).
    """
    if num_frames % temporal_factor:
        raise ValueError(
            f"num_frames {num_frames} must be a multiple of the temporal factor {temporal_factor}"
        )
    per_frame = torch.zeros(batch_size, num_frames, dtype=dtype, device=device)  # (B, T)
    per_frame[:, :known_frames] = 1
    mask = per_frame.view(batch_size, num_frames // temporal_factor, temporal_factor)  # (B, T/4, 4)
    mask = mask.transpose(1, 2)  # (B, 4, T/4)
    return (
        mask[..., None, None].expand(-1, -1, -1, latent_height, latent_width).contiguous()
    )  # (B, 4, T/4, h, w)


def i2v_transformer_input(latents: torch.Tensor, mask: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """Channel order of the released I2V transformer: cat(noisy latent, mask, condition latent).

    latents (B, Z, T', h, w), mask (B, 4, T', h, w), condition (B, Z, T', h, w) -> (B, 2Z + 4, T', h, w).
    """
    return torch.cat([latents, mask, condition], dim=1)


def expected_transformer_channels(latent_channels: int, task: str, expand_timesteps: bool = False) -> int:
    """in_channels the transformer must have for this autoencoder: Z for T2V, 2Z + 4 for concat-I2V."""
    if task == "t2v" or expand_timesteps:
        return latent_channels
    if task == "i2v":
        return 2 * latent_channels + 4
    raise ValueError(f"unknown task {task!r}; use 't2v' or 'i2v'")


def check_transformer_channels(
    in_channels: int,
    out_channels: int | None,
    latent_channels: int,
    task: str,
    expand_timesteps: bool = False,
) -> None:
    """DCVGError when a transformer cannot run on this autoencoder's latents."""
    want_in = expected_transformer_channels(latent_channels, task, expand_timesteps)
    out_channels = in_channels if out_channels is None else out_channels
    if in_channels != want_in or out_channels != latent_channels:
        layout = (
            f"{latent_channels} latent"
            if want_in == latent_channels
            else f"{latent_channels} latent + 4 mask + {latent_channels} condition"
        )
        raise DCVGError(
            f"the transformer has in_channels {in_channels} / out_channels {out_channels} but the autoencoder's "
            f"latent has {latent_channels} channels, so {task.upper()} needs in {want_in} ({layout}) / out "
            f"{latent_channels}; use the transformer adapted to this autoencoder"
        )


# ---- timesteps ------------------------------------------------------------------------------------------------


def token_timesteps(mask: torch.Tensor, t: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """Per-token timesteps for a (T', h, w) latent mask (1 = denoised, 0 = given): (S,) with
    S = (T'/pt)(h/ph)(w/pw), tokens in the transformer's order f·H'W' + y·W' + x.

    Strides by the patch size actually configured (diffusers' Wan pipelines hard-code 2x2).
    """
    pt, ph, pw = patch_size
    if mask.dim() != 3:
        raise ValueError(f"expected a (T, h, w) mask, got shape {tuple(mask.shape)}")
    return (mask[::pt, ::ph, ::pw] * t).flatten()
