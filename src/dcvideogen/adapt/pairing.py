"""Temporal pairing of the two latents AE-Adapt-V aligns (DC-VideoGen Sec. 3.3, Eq. 2; FACTS section 6).

Stage 1a matches the new patch embedder on DC-AE-V latents to Wan's embedder on Wan-VAE latents of the
same clip, so each DC-AE-V latent frame needs a Wan latent frame that covers the same pixels.

- Wan's VAE is causal in its first frame: it takes 1 + 4k frames and gives 1 + k latent frames; latent
  frame 0 covers pixel frame 0 alone, latent frame i >= 1 covers pixel frames 4i - 3 .. 4i.
- DC-AE-V takes 4k frames and gives k latent frames; latent frame j covers frames 4j .. 4j + 3 of its input.

Two pairings (config `data.pairing`):

- `exact` (default): read source frames 0 .. 4k (1 + 4k frames). Wan encodes all of them, DC-AE-V
  encodes frames 1 .. 4k. DC-AE-V latent frame j covers source frames 1 + 4j .. 4 + 4j and Wan latent
  frame j + 1 covers 4(j + 1) - 3 .. 4(j + 1) = 4j + 1 .. 4j + 4: the same four frames. The teacher
  drops Wan's latent frame 0 (`teacher_latent_slice` = slice(1, None)).
- `authors` (the authors' notes: 77 Wan frames against 80 DC-AE-V frames): read 4k frames. Wan encodes
  frames 0 .. 4k - 4 (4k - 3 = 1 + 4(k - 1) frames -> k latent frames), DC-AE-V frames 0 .. 4k - 1
  (k latent frames); paired index by index. For j >= 1 Wan's frame covers 4j - 3 .. 4j and DC-AE-V's
  covers 4j .. 4j + 3: DC-AE-V's span is 3 frames later, the two share one frame (4j). For j = 0 Wan's
  frame covers frame 0 only, the first of DC-AE-V's four.

All frame indices here are indices into the frames read from the source (after `data.frame_stride`).
"""

from __future__ import annotations

from ..errors import DCVGError

PAIRINGS = ("exact", "authors")
TEMPORAL_FACTOR = 4  # both Wan 2.1's VAE and DC-AE-V compress time 4x


def _latent_frames(num_frames: int) -> int:
    """k for num_frames = 4k DC-AE-V frames."""
    if num_frames < TEMPORAL_FACTOR or num_frames % TEMPORAL_FACTOR:
        raise DCVGError(f"data.num_frames={num_frames} must be a positive multiple of {TEMPORAL_FACTOR}")
    return num_frames // TEMPORAL_FACTOR


def _check(pairing: str) -> str:
    if pairing not in PAIRINGS:
        raise DCVGError(f"data.pairing={pairing!r}: use {' or '.join(PAIRINGS)}")
    return pairing


def source_frames(num_frames: int, pairing: str) -> int:
    """Frames to read from the source: exact 1 + 4k, authors 4k (num_frames = 4k)."""
    k = _latent_frames(num_frames)
    return 1 + TEMPORAL_FACTOR * k if _check(pairing) == "exact" else TEMPORAL_FACTOR * k


def wan_frame_range(num_frames: int, pairing: str) -> range:
    """Source frames the Wan VAE encodes: exact 0 .. 4k (1 + k latent frames), authors 0 .. 4k - 4
    (4k - 3 frames, k latent frames)."""
    k = _latent_frames(num_frames)
    return range(1 + TEMPORAL_FACTOR * k) if _check(pairing) == "exact" else range(TEMPORAL_FACTOR * k - 3)


def dcae_frame_range(num_frames: int, pairing: str) -> range:
    """Source frames DC-AE-V encodes (4k of them, k latent frames): exact 1 .. 4k, authors 0 .. 4k - 1."""
    k = _latent_frames(num_frames)
    start = 1 if _check(pairing) == "exact" else 0
    return range(start, start + TEMPORAL_FACTOR * k)


def wan_latent_frames(num_frames: int, pairing: str) -> int:
    """Latent frames of the Wan latent the cache stores: 1 + (frames - 1) / 4, i.e. exact 1 + k, authors k."""
    return 1 + (len(wan_frame_range(num_frames, pairing)) - 1) // TEMPORAL_FACTOR


def teacher_latent_slice(pairing: str) -> slice:
    """The Wan latent frames that pair with DC-AE-V's k latent frames, in order: exact drops Wan's latent
    frame 0 (it covers source frame 0, which DC-AE-V does not see); authors pairs index by index."""
    return slice(1, None) if _check(pairing) == "exact" else slice(None)


def pixel_span_wan(i: int) -> range:
    """Source frames covered by Wan latent frame i: frame 0 for i = 0, else 4i - 3 .. 4i (the Wan VAE's input
    starts at source frame 0 in both pairings)."""
    if i < 0:
        raise ValueError(f"latent frame {i} must be >= 0")
    return range(0, 1) if i == 0 else range(TEMPORAL_FACTOR * i - 3, TEMPORAL_FACTOR * i + 1)


def pixel_span_dcae(j: int, pairing: str) -> range:
    """Source frames covered by DC-AE-V latent frame j: 4j .. 4j + 3 of its input, shifted by where its input
    starts (exact: source frame 1, authors: source frame 0)."""
    if j < 0:
        raise ValueError(f"latent frame {j} must be >= 0")
    start = (1 if _check(pairing) == "exact" else 0) + TEMPORAL_FACTOR * j
    return range(start, start + TEMPORAL_FACTOR)


def paired_spans(num_frames: int, pairing: str) -> list[tuple[range, range]]:
    """(Wan span, DC-AE-V span) of each of the k pairs the teacher/student alignment uses."""
    k = _latent_frames(num_frames)
    wan = list(range(wan_latent_frames(num_frames, pairing)))[teacher_latent_slice(pairing)]
    return [(pixel_span_wan(i), pixel_span_dcae(j, pairing)) for j, i in zip(range(k), wan, strict=True)]
