"""What the demo page's generation tab runs: a DC-VideoGen pipeline (text-to-video, or image-to-video from a
first frame) called with a step callback for the progress bar, decoded to frames.

The same steps as `dcvg generate`: sizes resolved (rounded, with notes) before any work, latents generated,
then decoded chunk by chunk (`pipe.decode_latents`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import DCVGError
from ..pipelines.conditioning import VideoGeometry, resolve_geometry

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..pipelines import DCVideoGenImageToVideoPipeline, DCVideoGenPipeline

# Called after each denoising step with (steps done, steps in all).
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationRequest:
    """What the user asks for on the page."""

    prompt: str
    num_frames: int
    height: int
    width: int
    steps: int = 20
    guidance: float = 5.0
    seed: int = 0
    negative_prompt: str = ""
    image: Image | None = None  # the first frame (image-to-video only)


@dataclass(frozen=True)
class Generated:
    """A generated clip and how it was made."""

    frames: torch.Tensor  # (3, T, H, W) float32 in [-1, 1] on the CPU
    geometry: VideoGeometry
    notes: list[str]  # the requested sizes that were rounded
    seconds: float


def check_request(pipe: DCVideoGenPipeline | DCVideoGenImageToVideoPipeline, req: GenerationRequest) -> None:
    """DCVGError for a request the pipeline cannot run (before any work)."""
    if not req.prompt.strip():
        raise DCVGError("the prompt is empty; describe the video to generate")
    if req.steps < 1:
        raise DCVGError(f"steps {req.steps}: must be at least 1")
    if pipe.task == "i2v" and req.image is None:
        raise DCVGError("this is an image-to-video model: give the first frame (an image)")
    if pipe.task == "t2v" and req.image is not None:
        raise DCVGError("this is a text-to-video model: it takes no image; remove it")


def request_geometry(
    pipe: DCVideoGenPipeline | DCVideoGenImageToVideoPipeline, req: GenerationRequest
) -> tuple[VideoGeometry, list[str]]:
    """The frames and size the pipeline will generate for `req`, and a note for each rounded value."""
    return resolve_geometry(
        req.num_frames,
        req.height,
        req.width,
        pipe.vae_scale_factor_temporal,
        pipe.vae_scale_factor_spatial,
        pipe.patch_size,
        pipe.min_frames,
    )


def generate(
    pipe: DCVideoGenPipeline | DCVideoGenImageToVideoPipeline,
    req: GenerationRequest,
    on_step: StepCallback | None = None,
) -> Generated:
    """Run the pipeline on `req`; `on_step(done, total)` after every denoising step."""
    check_request(pipe, req)
    geometry, notes = request_geometry(pipe, req)

    def step_end(_pipe, i: int, _t, _tensors: dict) -> dict:
        if on_step is not None:
            on_step(i + 1, req.steps)
        return {}

    inputs = dict(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        height=geometry.height,
        width=geometry.width,
        num_frames=geometry.num_frames,
        num_inference_steps=req.steps,
        guidance_scale=req.guidance,
        generator=torch.Generator("cpu").manual_seed(req.seed),
        output_type="latent",
        strict_size=True,  # resolved above
        callback_on_step_end=step_end,
    )
    if pipe.task == "i2v":
        inputs["image"] = req.image
    start = time.perf_counter()
    latents = pipe(**inputs).frames  # (1, Z, T', h, w), diffusion space
    pieces = list(pipe.decode_latents(latents, geometry))  # (1, 3, t, H, W) each
    frames = torch.cat(pieces, dim=2)[0]  # (3, T, H, W)
    return Generated(frames, geometry, notes, time.perf_counter() - start)
