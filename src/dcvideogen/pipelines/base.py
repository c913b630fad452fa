"""What the DC-VideoGen text-to-video and image-to-video pipelines share.

Both subclass diffusers' Wan pipelines and keep their prompt encoding, image encoding, LoRA loading,
progress bar and CPU offload. What differs from Wan lives here, once: the autoencoder is a DC-AE-V
(`AutoencoderDCV`: 32x space, 4x time, no per-channel latent statistics, one latent scale), so frames
are a multiple of 4 (not 4k + 1), the latent grid is (T/4, H/32, W/32), latents move between raw and
diffusion space in `models.dcae_v.latents`, and decoding streams chunk by chunk, tiling in space when a
chunk would not fit in memory. The denoising loop is written once and takes the task's transformer
input and timesteps as two small functions.

A saved folder also carries a small module file naming its pipeline class (`loader_module_source`):
diffusers' generic `DiffusionPipeline.from_pretrained` looks `model_index.json`'s `_class_name` up in the
diffusers namespace only, and a custom pipeline file in the folder is the way it offers around that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from ..errors import DCVGError
from ..models.dcae_v.latents import from_diffusion_space, to_diffusion_space
from ..utils.atomic import atomic_file
from .conditioning import VideoGeometry, check_transformer_channels, resolve_geometry

logger = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_module(task: str) -> str:
    """Name (no .py) of the module file a saved `task` folder carries for diffusers' generic loader: one name per
    task, because diffusers re-runs every local custom pipeline file in one cached module per name, where a
    class imported by an earlier folder would stay and make the pipeline class ambiguous."""
    return f"dcvideogen_{task}"


def loader_module_source(pipeline_class: type, task: str) -> str:
    """The module file of a saved folder: it imports `pipeline_class` from the installed package, the one
    `DiffusionPipeline` subclass that diffusers' custom pipeline loading then finds in it."""
    name = pipeline_class.__name__
    return (
        f'"""The pipeline class of this folder for diffusers\' generic loader (needs `pip install dcvideogen`):\n\n'
        f'    DiffusionPipeline.from_pretrained(FOLDER, custom_pipeline="{loader_module(task)}", trust_remote_code=True)\n\n'
        f"It only imports {name} from the installed dcvideogen package; written by save_pretrained.\n"
        '"""\n\n'
        f"from dcvideogen.pipelines import {name}\n\n"
        f'__all__ = ["{name}"]\n'
    )


class _Timer:
    """Wall-clock seconds of one phase, synchronising the accelerator so queued kernels are counted."""

    def __init__(self, timings: dict[str, float], key: str, device: torch.device) -> None:
        self.timings, self.key, self.device = timings, key, device

    def __enter__(self) -> _Timer:
        _sync(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        _sync(self.device)
        self.timings[self.key] = self.timings.get(self.key, 0.0) + time.perf_counter() - self.start


class DCVideoGenMixin:
    """Shared by `DCVideoGenPipeline` and `DCVideoGenImageToVideoPipeline` (mixed in before the Wan class)."""

    task: ClassVar[str]  # "t2v" or "i2v"
    # Seconds per phase of the last call (encode_prompt, encode_image, encode_condition, denoise, decode),
    # and seconds_per_step = denoise / steps.
    timings: dict[str, float]

    def _init_geometry(self) -> None:
        """Scale factors from the DC-AE-V itself (its config has no Wan-VAE keys such as scale_factor_temporal)."""
        vae = getattr(self, "vae", None)
        self.vae_scale_factor_temporal = vae.temporal_compression_ratio if vae is not None else 4
        self.vae_scale_factor_spatial = vae.spatial_compression_ratio if vae is not None else 32
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)
        self.timings = {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' `from_pretrained`, plus the released folder layout (a local folder without
        model_index.json: dc-ae-v-*.pt, transformer_t2v/ or transformer_i2v/, ...). For that layout only
        `dtype` / `torch_dtype` (default bfloat16; the CLIP encoder stays float32) and `ae_chunk_size` are
        accepted."""
        path = Path(str(pretrained_model_name_or_path))
        if not path.is_dir() or (path / "model_index.json").is_file():
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        from .folders import inspect_model_folder, released_parts

        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None) or torch.bfloat16
        ae_chunk_size = kwargs.pop("ae_chunk_size", None)
        if kwargs:
            raise TypeError(f"{sorted(kwargs)}: not supported when loading the released layout from {path}")
        if isinstance(dtype, dict):
            dtype = dtype.get("default", torch.bfloat16)
        folder = inspect_model_folder(path, cls.task)
        folder.check(ae_chunk_size)
        return cls(**released_parts(folder, dtype, ae_chunk_size=ae_chunk_size))

    def save_config(self, save_directory: str | Path, push_to_hub: bool = False, **kwargs) -> None:
        """diffusers' `save_config` (model_index.json; `save_pretrained` calls it first), plus the module file
        that lets diffusers' generic loader resolve this class (see `loader_module_source`)."""
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)
        with atomic_file(Path(save_directory) / f"{loader_module(self.task)}.py") as tmp:
            tmp.write_text(loader_module_source(type(self), self.task))

    # ---- checks -------------------------------------------------------------------------------------------
    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.transformer.config.patch_size)

    @property
    def min_frames(self) -> int:
        """One chunk of the autoencoder: the shortest clip it encodes without padding."""
        return self.vae.arch.frame_multiple

    def check_components(self) -> None:
        """DCVGError when the transformer's channels do not fit the autoencoder's latent."""
        if self.transformer is None or self.vae is None:
            raise DCVGError(f"{type(self).__name__} needs a transformer and a vae; pass both")
        cfg = self.transformer.config
        check_transformer_channels(
            cfg.in_channels,
            cfg.out_channels,
            self.vae.arch.latent_channels,
            self.task,
            bool(self.config.get("expand_timesteps", False)),
        )

    def resolve_geometry(
        self, num_frames: int, height: int, width: int, strict: bool = False
    ) -> VideoGeometry:
        """Frames and size actually generated; rounding is logged (or refused with `strict`)."""
        geometry, notes = resolve_geometry(
            num_frames,
            height,
            width,
            self.vae_scale_factor_temporal,
            self.vae_scale_factor_spatial,
            self.patch_size,
            self.min_frames,
            strict,
        )
        for note in notes:
            logger.warning(note)
        return geometry

    def check_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
    ) -> int:
        """Validate the text inputs; returns the number of prompts."""
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass either `prompt` or `prompt_embeds`, not both")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass either `negative_prompt` or `negative_prompt_embeds`, not both")
        if prompt is None and prompt_embeds is None:
            raise DCVGError("no prompt given; pass `prompt` (a non-empty text) or `prompt_embeds`")
        bad = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback tensor inputs {bad} are not among {self._callback_tensor_inputs}")
        if prompt_embeds is not None:
            return prompt_embeds.shape[0]
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}")
        if not prompts or any(not p.strip() for p in prompts):
            raise DCVGError("the prompt is empty; describe the video to generate")
        # A single negative text applies to every prompt; a list needs one per prompt.
        if isinstance(negative_prompt, list) and len(negative_prompt) != len(prompts):
            raise ValueError(
                f"{len(negative_prompt)} negative prompts for {len(prompts)} prompts; give one each"
            )
        return len(prompts)

    # ---- latents --------------------------------------------------------------------------------------------
    def prepare_noise(
        self,
        batch_size: int,
        geometry: VideoGeometry,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Initial noise (B, Z, T/4, H/32, W/32) in float32, or the given `latents` after a shape check."""
        shape = (batch_size, self.vae.arch.latent_channels, *geometry.latent_grid)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(
                    f"latents of shape {tuple(latents.shape)} do not fit {geometry.num_frames} frames of "
                    f"{geometry.height}x{geometry.width}; expected {shape}"
                )
            return latents.to(device=device, dtype=torch.float32)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"{len(generator)} generators for a batch of {batch_size}; give one per video")
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

    def _onload(self, module: torch.nn.Module) -> None:
        """Under model CPU offload, move `module` to the accelerator before calling a method other than forward
        (accelerate hooks only `forward`; the autoencoder is used through encode / decode_stream)."""
        hook = getattr(module, "_hf_hook", None)
        if hook is None:
            return
        from accelerate.hooks import CpuOffload

        if isinstance(hook, CpuOffload):
            hook.pre_forward(module)

    def _offload(self, module: torch.nn.Module) -> None:
        """Under model CPU offload, send `module` back to the CPU now (the I2V autoencoder is used before the
        transformer and again after it; it should not sit on the accelerator in between)."""
        hook = getattr(module, "_hf_hook", None)
        if hook is None:
            return
        from accelerate.hooks import CpuOffload

        if isinstance(hook, CpuOffload):
            hook.init_hook(module)

    @contextmanager
    def _vae_on_device(self) -> Iterator[torch.device]:
        """The autoencoder ready to run on the execution device (yielded).

        Under model offload it is moved there first. Under sequential offload its weights stay on the CPU
        (its `device` is meta), so its automatic tiling would budget by host memory; the budget is then set
        from the GPU's free memory for the duration."""
        device = self._execution_device
        self._onload(self.vae)
        budget = self.vae.memory_budget
        if budget is None and device.type == "cuda" and self.vae.device.type != "cuda":
            self.vae.memory_budget = int(torch.cuda.mem_get_info(device)[0] * 0.6)
        try:
            yield device
        finally:
            self.vae.memory_budget = budget

    def encode_video(self, video: torch.Tensor | Iterable[torch.Tensor], latent_frames: int) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1], whole or as consecutive pieces -> diffusion-space latent
        (B, Z, latent_frames, h, w), float32. Pieces are encoded as they come (streaming).

        The autoencoder pads the clip to whole chunks; the latent frames past `latent_frames` belong to the
        padding and are dropped."""
        pieces = [video] if isinstance(video, torch.Tensor) else video
        with self._vae_on_device() as device:
            pieces = (p.to(device=device, dtype=self.vae.dtype) for p in pieces)
            if self.vae.use_streaming:
                raw = torch.cat(list(self.vae.encode_stream(pieces)), dim=2)  # (B, Z, T'_pad, h, w)
            else:
                raw = self.vae.encode(torch.cat(list(pieces), dim=2)).latent
        return to_diffusion_space(raw[:, :, :latent_frames].float(), self.vae.config.scaling_factor)

    def decode_latents(self, latents: torch.Tensor, geometry: VideoGeometry) -> Iterator[torch.Tensor]:
        """Diffusion-space latent (B, Z, T/4, h, w) -> video pieces (B, 3, t, H, W), float32 in [-1, 1] on the
        CPU, one chunk of the autoencoder at a time (tiled in space when a chunk would not fit)."""
        with self._vae_on_device() as device:
            raw = from_diffusion_space(
                latents.to(device=device, dtype=self.vae.dtype), self.vae.config.scaling_factor
            )
            for piece in self.vae.decode_stream(
                raw, num_frames=geometry.num_frames, height=geometry.height, width=geometry.width
            ):
                yield piece.float().clamp(-1, 1).cpu()  # (B, 3, t, H, W)

    # ---- the denoising loop -----------------------------------------------------------------------------------
    def _predict_noise(self, name: str, context: dict, text: torch.Tensor, call: dict) -> torch.Tensor:
        """One transformer forward under its cache context ("cond" / "uncond"), as diffusers' Wan pipelines."""
        with self.transformer.cache_context(name, **context):
            return self.transformer(encoder_hidden_states=text, return_dict=False, **call)[0]

    def denoise(
        self,
        latents: torch.Tensor,
        num_inference_steps: int,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        model_input: Callable[[torch.Tensor], torch.Tensor],
        model_timestep: Callable[[torch.Tensor, int], torch.Tensor],
        image_embeds: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> torch.Tensor:
        """Flow-matching sampling with classifier-free guidance; returns the denoised latent (float32).

        model_input(latents) -> transformer input (the I2V condition is concatenated there);
        model_timestep(t, batch) -> (B,) or per-token (B, S) timesteps.
        """
        device = latents.device
        dtype = self.transformer.dtype
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self.scheduler.set_begin_index(0)
        self._num_timesteps = len(timesteps)
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        extra = {} if image_embeds is None else {"encoder_hidden_states_image": image_embeds}
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                x = model_input(latents).to(dtype)  # (B, C_in, T', h, w)
                timestep = model_timestep(t, latents.shape[0])
                context = {"step_index": i, "num_inference_steps": len(timesteps)}
                call = {
                    "hidden_states": x,
                    "timestep": timestep,
                    "attention_kwargs": attention_kwargs,
                    **extra,
                }
                noise_pred = self._predict_noise("cond", context, prompt_embeds, call)
                if self.do_classifier_free_guidance:
                    noise_uncond = self._predict_noise("uncond", context, negative_prompt_embeds, call)
                    noise_pred = noise_uncond + self.guidance_scale * (noise_pred - noise_uncond)
                latents = self.scheduler.step(noise_pred.float(), t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    values = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                    }
                    out = callback_on_step_end(
                        self, i, t, {k: values[k] for k in callback_on_step_end_tensor_inputs or []}
                    )
                    latents = out.pop("latents", latents)
                    prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = out.pop("negative_prompt_embeds", negative_prompt_embeds)
                if i == len(timesteps) - 1 or (
                    (i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0
                ):
                    progress_bar.update()
        self._current_timestep = None
        return latents

    # ---- shared call plumbing ------------------------------------------------------------------------------
    def _start_call(
        self,
        guidance_scale: float,
        attention_kwargs: dict[str, Any] | None,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> list[str]:
        self.check_components()
        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        self.timings = {}
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            return callback_on_step_end.tensor_inputs
        return callback_on_step_end_tensor_inputs

    def _timer(self, key: str) -> _Timer:
        return _Timer(self.timings, key, self._execution_device)

    def _encode_prompts(
        self,
        prompt,
        negative_prompt,
        num_videos_per_prompt: int,
        prompt_embeds,
        negative_prompt_embeds,
        max_sequence_length: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with self._timer("encode_prompt"):
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(
                prompt=prompt,
                negative_prompt=negative_prompt,
                do_classifier_free_guidance=self.do_classifier_free_guidance,
                num_videos_per_prompt=num_videos_per_prompt,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                max_sequence_length=max_sequence_length,
                device=self._execution_device,
            )
        dtype = self.transformer.dtype
        prompt_embeds = prompt_embeds.to(dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype)
        return prompt_embeds, negative_prompt_embeds

    def _decode_batch(self, latents: torch.Tensor, geometry: VideoGeometry) -> torch.Tensor:
        """Diffusion-space latent (B, Z, T', h, w) -> video (B, 3, T, H, W) on the CPU; one video at a time
        after `vae.enable_slicing()`, as diffusers' pipelines decode a sliced batch."""
        if not (self.vae.use_slicing and latents.shape[0] > 1):
            return torch.cat(list(self.decode_latents(latents, geometry)), dim=2)
        return torch.cat([torch.cat(list(self.decode_latents(z, geometry)), dim=2) for z in latents.split(1)])

    def _finish_call(self, latents: torch.Tensor, geometry: VideoGeometry, output_type: str):
        """Decode (unless output_type is "latent") and release offload hooks."""
        if output_type == "latent":
            video = latents
        else:
            with self._timer("decode"):
                video = self._decode_batch(latents, geometry)  # (B, 3, T, H, W)
            video = self.video_processor.postprocess_video(video, output_type=output_type)
        steps = self._num_timesteps
        if "denoise" in self.timings and steps:
            self.timings["seconds_per_step"] = self.timings["denoise"] / steps
        self.maybe_free_model_hooks()
        return video
