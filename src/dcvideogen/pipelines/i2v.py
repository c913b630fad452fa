"""DC-VideoGen image-to-video (DC-VideoGen Sec. 4: "the image is repeated 4 times, blank frames are
appended, the result is encoded by DC-AE-V and concatenated with the latent, as Wan-2.1-I2V does").

`DCVideoGenImageToVideoPipeline` is a diffusers `WanImageToVideoPipeline` whose autoencoder is an
`AutoencoderDCV`. The released transformer takes 68 channels: cat(noisy latent 32, first-frames mask 4,
condition latent 32), plus CLIP ViT-H/14 image features through its image cross-attention. With
`expand_timesteps` (Wan 2.2 style) the condition is the latent of the image x4 instead, written into
the first latent frame, whose tokens get timestep 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers import WanImageToVideoPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.schedulers import SchedulerMixin
from transformers import CLIPVisionModel, PreTrainedTokenizerBase, UMT5EncoderModel
from transformers.image_processing_utils import BaseImageProcessor

from ..errors import DCVGError
from ..models.dcae_v import AutoencoderDCV
from .base import DCVideoGenMixin
from .conditioning import (
    VideoGeometry,
    first_frames_mask,
    i2v_transformer_input,
    image_condition_pieces,
    image_condition_video,
    token_timesteps,
)

# Wan's image cross-attention splits the context as [image tokens, text tokens] assuming 512 text tokens.
WAN_I2V_TEXT_TOKENS = 512


@dataclass
class I2VCondition:
    """What the transformer sees besides the noisy latent (batch already expanded)."""

    latent: torch.Tensor  # (B, Z, T', h, w) concat mode; (B, Z, 1, h, w) expand mode; diffusion space
    mask: torch.Tensor  # (B, 4, T', h, w) concat mode; (1, 1, T', h, w) expand mode (0 = given)
    expand_timesteps: bool

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        if self.expand_timesteps:  # the first latent frame is the image's latent
            return (1 - self.mask) * self.latent + self.mask * latents  # (B, Z, T', h, w)
        return i2v_transformer_input(latents, self.mask, self.latent)  # (B, 2Z + 4, T', h, w)


class DCVideoGenImageToVideoPipeline(DCVideoGenMixin, WanImageToVideoPipeline):
    r"""Image-to-video with a DC-VideoGen model.

    Components: `tokenizer`, `text_encoder` (UMT5), `transformer` (`WanTransformer3DModel`, in 2Z + 4 = 68
    channels and out Z = 32 for f32t4c32; `image_dim` set when it takes CLIP features), `vae`
    (`AutoencoderDCV`), `scheduler`, and `image_encoder` (`CLIPVisionModel`) with `image_processor`
    (`CLIPImageProcessor`) for transformers with image cross-attention.
    """

    task: ClassVar[str] = "i2v"
    model_cpu_offload_seq = "text_encoder->image_encoder->transformer->vae"
    _optional_components: ClassVar[list[str]] = ["image_encoder", "image_processor"]

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: UMT5EncoderModel,
        vae: AutoencoderDCV,
        scheduler: SchedulerMixin,
        transformer: torch.nn.Module,
        image_encoder: CLIPVisionModel | None = None,
        image_processor: BaseImageProcessor | None = None,
        expand_timesteps: bool = False,
    ) -> None:
        DiffusionPipeline.__init__(self)  # WanImageToVideoPipeline.__init__ reads Wan-VAE-only config keys
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            image_encoder=image_encoder,
            transformer=transformer,
            scheduler=scheduler,
            image_processor=image_processor,
        )
        self.register_to_config(expand_timesteps=expand_timesteps)
        self._init_geometry()

    @property
    def uses_image_features(self) -> bool:
        return self.transformer.config.image_dim is not None

    def check_components(self) -> None:
        super().check_components()
        given = getattr(self, "_image_embeds_given", False)  # CLIP features passed in: no encoder needed
        if (
            self.uses_image_features
            and not given
            and (self.image_encoder is None or self.image_processor is None)
        ):
            raise DCVGError(
                "the I2V transformer takes CLIP image features (image_dim "
                f"{self.transformer.config.image_dim}) but the pipeline has no image_encoder/image_processor; "
                "load the Wan CLIP checkpoint with the pipeline"
            )

    # ---- the condition ------------------------------------------------------------------------------------
    def preprocess_image(self, image: PipelineImageInput, geometry: VideoGeometry) -> torch.Tensor:
        """PIL / numpy / tensor image(s) -> (N, 3, H, W) in [-1, 1], resized to the generated size."""
        if image is None:
            raise DCVGError("no image given; pass the first frame as `image` (PIL image, array or tensor)")
        return self.video_processor.preprocess(image, height=geometry.height, width=geometry.width).float()

    def prepare_condition(
        self, image: torch.Tensor, batch_size: int, geometry: VideoGeometry, device: torch.device
    ) -> I2VCondition:
        """Encode the condition clip of `image` (N, 3, H, W), N = 1 or `batch_size`; see the module docstring."""
        n = image.shape[0]
        if n not in (1, batch_size):
            raise ValueError(f"{n} images for {batch_size} videos; give one image, or one per video")
        t, h, w = geometry.latent_grid
        if self.config.expand_timesteps:
            clip = image_condition_video(image, self.vae_scale_factor_temporal)  # (N, 3, 4, H, W)
            latent = self.encode_video(clip, 1)  # (N, Z, 1, h, w)
            mask = torch.ones(1, 1, t, h, w, device=device)
            mask[:, :, 0] = 0
        else:
            # image x4 + black frames (N, 3, T, H, W), made and encoded one autoencoder chunk at a time
            pieces = image_condition_pieces(image.to(device), geometry.num_frames, self.vae.stream_frames)
            latent = self.encode_video(pieces, t)  # (N, Z, T', h, w)
            mask = first_frames_mask(
                n, geometry.num_frames, h, w, self.vae_scale_factor_temporal, device=device
            )
            mask = mask.expand(batch_size, -1, -1, -1, -1)  # (B, 4, T', h, w)
        latent = latent.to(device).expand(batch_size, -1, -1, -1, -1)
        return I2VCondition(latent=latent, mask=mask, expand_timesteps=bool(self.config.expand_timesteps))

    def prepare_latents(
        self,
        image: torch.Tensor,
        batch_size: int,
        num_channels_latents: int = 32,
        height: int = 480,
        width: int = 832,
        num_frames: int = 80,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Wan's signature and return values on DC-AE-V's conventions: (noise, cat(mask, condition)), or
        (noise, condition, first-frame mask) with `expand_timesteps`."""
        geometry = self.resolve_geometry(num_frames, height, width)
        device = device or self._execution_device
        noise = self.prepare_noise(batch_size, geometry, device, generator, latents)
        cond = self.prepare_condition(image, batch_size, geometry, device)
        if dtype is not None:
            noise = noise.to(dtype)
        if cond.expand_timesteps:
            return noise, cond.latent, cond.mask
        return noise, torch.cat([cond.mask, cond.latent], dim=1)

    # ---- the call ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        image: PipelineImageInput = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int = 480,
        width: int = 832,
        num_frames: int = 80,
        num_inference_steps: int = 20,
        guidance_scale: float = 5.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int = 512,
        strict_size: bool = False,
    ) -> WanPipelineOutput | tuple:
        r"""Generate videos that start from `image`.

        Args:
            image: the first frame (PIL image, array or tensor); resized to `height` x `width`.
            image_embeds: precomputed CLIP features (B, 257, 1280) instead of running the image encoder.
            other arguments: as `DCVideoGenPipeline.__call__`. With image cross-attention the text is always
                `max_sequence_length` = 512 tokens (Wan's attention splits the context at 512).

        Returns:
            `WanPipelineOutput` with `.frames`, or `(frames,)`. Seconds per phase are in `self.timings`.
        """
        self._image_embeds_given = image_embeds is not None
        callback_on_step_end_tensor_inputs = self._start_call(
            guidance_scale, attention_kwargs, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        num_prompts = self.check_prompt(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, callback_on_step_end_tensor_inputs
        )
        geometry = self.resolve_geometry(num_frames, height, width, strict_size)
        pixels = self.preprocess_image(image, geometry)  # (N, 3, H, W), before any model runs
        if self.transformer.config.added_kv_proj_dim is not None:
            text_tokens = max_sequence_length if prompt_embeds is None else prompt_embeds.shape[1]
            if text_tokens != WAN_I2V_TEXT_TOKENS:
                raise DCVGError(
                    f"{text_tokens} text tokens: Wan's image cross-attention needs exactly {WAN_I2V_TEXT_TOKENS}; "
                    f"use max_sequence_length={WAN_I2V_TEXT_TOKENS}"
                )
        batch_size = num_prompts * num_videos_per_prompt
        prompt_embeds, negative_prompt_embeds = self._encode_prompts(
            prompt,
            negative_prompt,
            num_videos_per_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            max_sequence_length,
        )
        device = self._execution_device

        if self.uses_image_features:
            if image_embeds is None:
                with self._timer("encode_image"):
                    image_embeds = self.encode_image(image, device)  # (N, 257, 1280) CLIP penultimate layer
            if image_embeds.shape[0] not in (1, batch_size):
                image_embeds = image_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
            image_embeds = image_embeds.to(device, self.transformer.dtype).expand(batch_size, -1, -1)
        else:
            image_embeds = None

        if pixels.shape[0] not in (1, batch_size):
            pixels = pixels.repeat_interleave(num_videos_per_prompt, dim=0)
        with self._timer("encode_condition"):
            condition = self.prepare_condition(pixels, batch_size, geometry, device)
        self._offload(self.vae)
        latents = self.prepare_noise(batch_size, geometry, device, generator, latents)

        def model_timestep(t: torch.Tensor, batch: int) -> torch.Tensor:
            if condition.expand_timesteps:  # given first latent frame at t = 0
                return token_timesteps(condition.mask[0, 0], t, self.patch_size).expand(batch, -1)  # (B, S)
            return t.expand(batch)

        with self._timer("denoise"):
            latents = self.denoise(
                latents,
                num_inference_steps,
                prompt_embeds,
                negative_prompt_embeds,
                model_input=condition.model_input,
                model_timestep=model_timestep,
                image_embeds=image_embeds,
                attention_kwargs=attention_kwargs,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            )
        if condition.expand_timesteps:
            latents = condition.model_input(latents)
        video = self._finish_call(latents, geometry, output_type)
        return WanPipelineOutput(frames=video) if return_dict else (video,)
