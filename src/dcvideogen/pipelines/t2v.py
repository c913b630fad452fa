"""DC-VideoGen text-to-video: a Wan 2.1 transformer adapted to the DC-AE-V latent (DC-VideoGen Sec. 4).

`DCVideoGenPipeline` is a diffusers `WanPipeline` whose autoencoder is an `AutoencoderDCV`: prompt
encoding (UMT5), LoRA loading, offload and the progress bar come from diffusers; frames, latent grid,
latent scale and streaming decode follow the DC-VideoGen release (see `base.py` and `conditioning.py`).

    pipe = DCVideoGenPipeline.from_pretrained("DIR", torch_dtype=torch.bfloat16).to("cuda")
    frames = pipe(prompt="a corgi jumps over a log", num_frames=80).frames[0]  # (80, H, W, 3) in [0, 1]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from diffusers import WanPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.schedulers import SchedulerMixin
from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

from ..models.dcae_v import AutoencoderDCV
from .base import DCVideoGenMixin
from .conditioning import VideoGeometry, token_timesteps


class DCVideoGenPipeline(DCVideoGenMixin, WanPipeline):
    r"""Text-to-video with a DC-VideoGen model (a Wan transformer on DC-AE-V latents).

    Components: `tokenizer` and `text_encoder` (UMT5), `transformer` (`WanTransformer3DModel` with in/out
    channels = the autoencoder's latent channels, patch (1, 1, 1) for f32t4c32), `vae` (`AutoencoderDCV`),
    `scheduler` (flow matching: UniPC as released, or Euler). `expand_timesteps` gives every latent token its
    own timestep, strided by the transformer's patch size.
    """

    task: ClassVar[str] = "t2v"
    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components: ClassVar[list[str]] = []

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: UMT5EncoderModel,
        vae: AutoencoderDCV,
        scheduler: SchedulerMixin,
        transformer: torch.nn.Module,
        expand_timesteps: bool = False,
    ) -> None:
        DiffusionPipeline.__init__(self)  # WanPipeline.__init__ reads Wan-VAE-only config keys
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
            scheduler=scheduler,
        )
        self.register_to_config(expand_timesteps=expand_timesteps)
        self._init_geometry()

    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int = 32,
        height: int = 480,
        width: int = 832,
        num_frames: int = 80,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise (B, Z, T/4, H/32, W/32): Wan's signature, DC-AE-V's latent grid (no 4k + 1 frames)."""
        geometry = self.resolve_geometry(num_frames, height, width)
        noise = self.prepare_noise(batch_size, geometry, device or self._execution_device, generator, latents)
        return noise if dtype is None else noise.to(dtype)

    @torch.no_grad()
    def __call__(
        self,
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
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int = 512,
        strict_size: bool = False,
    ) -> WanPipelineOutput | tuple:
        r"""Generate videos from text.

        Args:
            prompt: the text, or a list of texts (one video each, times `num_videos_per_prompt`).
            negative_prompt: what to steer away from under classifier-free guidance (default: empty text).
            height, width: pixels; rounded down to a multiple of 32 x patch size with a logged note
                (720 -> 704, as the release does), or refused when `strict_size`.
            num_frames: rounded down to a multiple of 4 (81 -> 80); at least one autoencoder chunk (40).
            num_inference_steps, guidance_scale: sampling steps and CFG weight (no CFG when <= 1).
            generator, latents: seed the noise, or give it: (B, Z, T/4, H/32, W/32).
            output_type: "np" (B, T, H, W, 3) in [0, 1], "pt" (B, T, 3, H, W), "pil", or "latent" (the
                diffusion-space latent; decode it with `decode_latents`).
            callback_on_step_end, callback_on_step_end_tensor_inputs: diffusers' step callback.
            max_sequence_length: text tokens (512 as Wan was trained).

        Returns:
            `WanPipelineOutput` with `.frames`, or `(frames,)`. Seconds per phase are in `self.timings`.
        """
        callback_on_step_end_tensor_inputs = self._start_call(
            guidance_scale, attention_kwargs, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        num_prompts = self.check_prompt(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, callback_on_step_end_tensor_inputs
        )
        geometry = self.resolve_geometry(num_frames, height, width, strict_size)
        prompt_embeds, negative_prompt_embeds = self._encode_prompts(
            prompt,
            negative_prompt,
            num_videos_per_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            max_sequence_length,
        )
        device = self._execution_device
        latents = self.prepare_noise(
            num_prompts * num_videos_per_prompt, geometry, device, generator, latents
        )

        with self._timer("denoise"):
            latents = self.denoise(
                latents,
                num_inference_steps,
                prompt_embeds,
                negative_prompt_embeds,
                model_input=lambda x: x,
                model_timestep=self._timestep_fn(geometry, device),
                attention_kwargs=attention_kwargs,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            )
        video = self._finish_call(latents, geometry, output_type)
        return WanPipelineOutput(frames=video) if return_dict else (video,)

    def _timestep_fn(self, geometry: VideoGeometry, device: torch.device):
        if not self.config.expand_timesteps:
            return lambda t, batch: t.expand(batch)
        mask = torch.ones(geometry.latent_grid, device=device)  # (T', h, w): every token is denoised
        return lambda t, batch: token_timesteps(mask, t, self.patch_size).expand(batch, -1)  # (B, S)
