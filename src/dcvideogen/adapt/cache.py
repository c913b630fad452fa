"""`dcvg adapt cache`: encode captioned clips with both autoencoders and UMT5 (+ CLIP for I2V) into the
sharded cache that `data.py` reads (layout there). Resumable (finished shards are kept), split across
ranks, unreadable clips skipped and counted; every user error is raised before a model is loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import AutoencoderKLWan
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import DCVGError
from ..evaluation.adapters import WanAdapter
from ..models.dcae_v.latents import to_diffusion_space
from ..models.dcae_v.loading import load_autoencoder
from ..pipelines.conditioning import image_condition_video
from ..utils.atomic import atomic_file
from ..video import VideoError, read_clip
from ..video.io import to_uint8
from ..video.transforms import resize_cover
from .config import AdaptConfig
from .data import (
    CACHE_DTYPES,
    CACHE_VERSION,
    EXPECTED_BASE,
    EXTRAS_FILE,
    INDEX_FILE,
    META_KEY,
    SHARD_RE,
    WAN_PIPELINES,
    ClipRecord,
    _read_json,
    find_clips,
    shard_name,
)
from .pairing import dcae_frame_range, source_frames, wan_frame_range

logger = logging.getLogger("dcvg.adapt")


# ---- the base Wan model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WanBase:
    path: Path
    task: str  # t2v | i2v, from the transformer's input channels
    wan_channels: int  # the Wan VAE's z_dim
    text_dim: int  # UMT5 d_model


def inspect_wan_base(base: str | Path, task: str) -> WanBase:
    """Check that `base` is a diffusers Wan 2.1 pipeline folder for `task`, from its config files only.

    T2V: transformer in_channels == VAE z_dim (16); I2V: in_channels == 2 z_dim + 4 (36: noisy latent, mask,
    condition latent) with Wan's CLIP in image_encoder/ and image_processor/."""
    path = Path(base)
    if not path.is_dir():
        raise DCVGError(f"model.base={base}: no such folder; give {EXPECTED_BASE}")
    if (path / "model_index.json").is_file():
        name = _read_json(path / "model_index.json").get("_class_name")
        if name not in WAN_PIPELINES:
            raise DCVGError(
                f"model.base={base}: model_index.json holds a {name}, not a Wan pipeline; give {EXPECTED_BASE}"
            )
    elif (
        not (path / "transformer" / "config.json").is_file()
        or _read_json(path / "transformer" / "config.json").get("_class_name") != "WanTransformer3DModel"
    ):
        raise DCVGError(
            f"model.base={base}: neither model_index.json nor a WanTransformer3DModel in transformer/; give "
            f"{EXPECTED_BASE}"
        )
    for sub in ("transformer/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer"):
        if not (path / sub).exists():
            raise DCVGError(f"model.base={base}: {sub} is missing; give {EXPECTED_BASE}")
    vae = _read_json(path / "vae" / "config.json")
    if vae.get("_class_name") != "AutoencoderKLWan":
        raise DCVGError(f"model.base={base}: vae/ holds a {vae.get('_class_name')}, not an AutoencoderKLWan")
    z = int(vae.get("z_dim", 16))
    in_channels = int(_read_json(path / "transformer" / "config.json").get("in_channels", 16))
    has_clip = (path / "image_encoder").is_dir() and (path / "image_processor").is_dir()
    kinds = {z: "t2v", 2 * z + 4: "i2v"}
    if in_channels not in kinds:
        raise DCVGError(
            f"model.base={base}: transformer in_channels {in_channels} is neither the VAE's z_dim {z} (T2V) nor "
            f"2 x {z} + 4 (I2V); give {EXPECTED_BASE}"
        )
    base_task = kinds[in_channels]
    if base_task != task:
        clip = "with" if has_clip else "without"
        raise DCVGError(
            f"model.task={task} but model.base={base} holds a Wan {base_task.upper()} model (transformer in_channels "
            f"{in_channels}, VAE z_dim {z}, {clip} image_encoder/); use a Wan {task.upper()} base or "
            f"model.task={base_task}"
        )
    if task == "i2v" and not has_clip:
        raise DCVGError(
            f"model.base={base}: an I2V base needs Wan's CLIP in image_encoder/ and image_processor/ (image features)"
        )
    text_dim = int(_read_json(path / "text_encoder" / "config.json").get("d_model", 0))
    return WanBase(path.resolve(), task, z, text_dim)


# ---- encoders ---------------------------------------------------------------------------------------------


def encode_text(tokenizer, text_encoder, prompt: str, text_tokens: int) -> torch.Tensor:
    """UMT5 embedding (L, D) of one prompt, computed as diffusers' `WanPipeline._get_t5_prompt_embeds` does
    (prompt_clean, pad/truncate to `text_tokens`, encoder with the attention mask, the first L = number of
    real tokens rows), without the zero padding the pipeline appends (`pad_text` restores it)."""
    inputs = tokenizer(
        [prompt_clean(prompt)],
        padding="max_length",
        max_length=text_tokens,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    device = text_encoder.device
    ids, mask = inputs.input_ids.to(device), inputs.attention_mask.to(device)  # (1, text_tokens)
    length = int(mask.gt(0).sum())
    hidden = text_encoder(ids, mask).last_hidden_state  # (1, text_tokens, D)
    return hidden[0, :length]  # (L, D)


class Encoders:
    """The models the cache runs, each loaded on first use, so a resumed cache loads only what it needs:
    the Wan VAE (normalised posterior mode, `WanAdapter`), DC-AE-V (diffusion space), UMT5 and, for I2V,
    Wan's CLIP image encoder. Float32, except UMT5 in bf16 on CUDA with `precision=bf16`, as Wan runs it."""

    def __init__(
        self, base: WanBase, autoencoder: str, device: torch.device, text_dtype: torch.dtype
    ) -> None:
        self.base, self.autoencoder, self.device, self.text_dtype = base, autoencoder, device, text_dtype

    @cached_property
    def wan(self) -> WanAdapter:
        logger.info(f"loading the Wan VAE from {self.base.path / 'vae'}")
        vae = AutoencoderKLWan.from_pretrained(self.base.path / "vae", torch_dtype=torch.float32)
        return WanAdapter(vae.to(self.device))

    @cached_property
    def dcae(self):
        logger.info(f"loading DC-AE-V {self.autoencoder}")
        return load_autoencoder(self.autoencoder, device=self.device, dtype=torch.float32)

    @cached_property
    def text(self):
        from transformers import AutoTokenizer, UMT5EncoderModel

        logger.info(f"loading UMT5 from {self.base.path / 'text_encoder'}")
        tokenizer = AutoTokenizer.from_pretrained(self.base.path / "tokenizer")
        model = UMT5EncoderModel.from_pretrained(self.base.path / "text_encoder", dtype=self.text_dtype)
        return tokenizer, model.to(self.device).eval()

    @cached_property
    def clip(self):
        from transformers import AutoImageProcessor, CLIPVisionModel

        logger.info(f"loading the CLIP image encoder from {self.base.path / 'image_encoder'}")
        processor = AutoImageProcessor.from_pretrained(self.base.path / "image_processor")
        model = CLIPVisionModel.from_pretrained(self.base.path / "image_encoder", dtype=torch.float32)
        return processor, model.to(self.device).eval()

    @property
    def scaling_factor(self) -> float:
        return float(self.dcae.config.scaling_factor)

    @torch.no_grad()
    def wan_latent(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 1 + 4m, H, W) -> (B, 16, 1 + m, H/8, W/8): (mode - latents_mean) / latents_std."""
        return self.wan.encode(x.to(self.device, torch.float32)).float()

    @torch.no_grad()
    def dcae_latent(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 4k, H, W) -> (B, Z, k, H/32, W/32) in diffusion space; latent frames of the chunk padding
        are dropped."""
        k = x.shape[2] // 4
        raw = self.dcae.encode(x.to(self.device, torch.float32)).latent  # (B, Z, T'_pad, h, w)
        return to_diffusion_space(raw[:, :, :k].float(), self.scaling_factor)

    @torch.no_grad()
    def text_embedding(self, prompt: str, text_tokens: int) -> torch.Tensor:
        tokenizer, model = self.text
        return encode_text(tokenizer, model, prompt, text_tokens).float()  # (L, D)

    @torch.no_grad()
    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) in [-1, 1] -> (N, D) CLIP features as `WanImageToVideoPipeline.encode_image` computes them
        (the image processor on the image, the penultimate hidden state)."""
        from PIL import Image

        processor, model = self.clip
        pil = Image.fromarray(to_uint8(image[:, None])[0])  # (H, W, 3) uint8
        pixels = processor(images=pil, return_tensors="pt").pixel_values.to(self.device, model.dtype)
        return model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][0].float()  # (N, D)


# ---- one clip ---------------------------------------------------------------------------------------------


def load_image(path: Path, height: int, width: int) -> torch.Tensor:
    """An image (or a video's first frame) as (3, height, width) in [-1, 1], resized to cover and cropped."""
    return resize_cover(read_clip(path, 0, 1)[:, 0], height, width)


def load_source(record: ClipRecord, cfg: AdaptConfig) -> torch.Tensor:
    """The source frames of a clip, (3, source_frames, H, W) in [-1, 1], read from frame 0 with
    data.frame_stride, resized to cover (data.height, data.width) and center-cropped. VideoError when the
    file is unreadable or too short."""
    d = cfg.data
    video = read_clip(record.path, 0, source_frames(d.num_frames, d.pairing), d.frame_stride)  # (3, S, h, w)
    return resize_cover(video, d.height, d.width)  # (3, S, H, W)


def encode_clip(
    enc: Encoders, frames: torch.Tensor, caption: str, cfg: AdaptConfig, image: torch.Tensor | None = None
) -> dict:
    """The cached tensors of one clip (see the module docstring), float32 on the CPU. frames: from
    `load_source`; image: I2V, the given first frame (3, H, W), else each clip's own first frame is used."""
    d = cfg.data
    wan_range = wan_frame_range(d.num_frames, d.pairing)
    dcae_range = dcae_frame_range(d.num_frames, d.pairing)
    x = frames.unsqueeze(0)  # (1, 3, S, H, W)
    wan_x = x[:, :, wan_range.start : wan_range.stop]  # (1, 3, 1 + 4k | 4k - 3, H, W)
    dcae_x = x[:, :, dcae_range.start : dcae_range.stop]  # (1, 3, 4k, H, W)
    out = {
        "latent": enc.dcae_latent(dcae_x)[0],  # (Z, k, H/32, W/32)
        "wan_latent": enc.wan_latent(wan_x)[0],  # (16, 1 + k | k, H/8, W/8): all of it; pairing at use
        "text": enc.text_embedding(caption, d.text_tokens),  # (L, D)
    }
    if cfg.model.task == "i2v":
        dcae_image = image if image is not None else dcae_x[0, :, 0]  # DC-AE-V clip's first frame (3, H, W)
        wan_image = image if image is not None else wan_x[0, :, 0]  # Wan clip's first frame
        out["image_embeds"] = enc.image_features(dcae_image)  # (N, D_img)
        cond = image_condition_video(dcae_image[None], d.num_frames)  # (1, 3, 4k, H, W): image x4, zeros
        out["condition"] = enc.dcae_latent(cond)[0]  # (Z, k, H/32, W/32)
        # As WanImageToVideoPipeline.prepare_latents: the image, then zeros, as many frames as the Wan clip.
        wan_cond = torch.cat([wan_image[None, :, None], wan_x.new_zeros(wan_x[:, :, 1:].shape)], dim=2)
        out["wan_condition"] = enc.wan_latent(wan_cond)[0]  # (16, 1 + k | k, H/8, W/8)
    return {k: v.cpu() for k, v in out.items()}


# ---- the cache writer -------------------------------------------------------------------------------------


@dataclass
class CacheReport:
    folder: Path
    clips: int = 0  # cached clips in the shards present now
    skipped: int = 0  # clips left out (unreadable or too short) in those shards
    shards_written: list[int] = field(default_factory=list)  # by this call
    shards_kept: list[int] = field(default_factory=list)  # found done (this rank's)
    complete: bool = False  # index.json is written and up to date


def _autoencoder_id(spec: str) -> str:
    if not spec or spec == "default":
        return "default"
    return str(Path(spec).resolve()) if Path(spec).exists() else spec


def settings_fingerprint(cfg: AdaptConfig, base: WanBase) -> dict:
    """The fingerprint keys that follow from the config and the base folder's configs (no model loaded)."""
    d = cfg.data
    return {
        "task": cfg.model.task,
        "base": str(base.path),
        "autoencoder": _autoencoder_id(cfg.model.autoencoder),
        "num_frames": d.num_frames,
        "height": d.height,
        "width": d.width,
        "pairing": d.pairing,
        "frame_stride": d.frame_stride,
        "text_tokens": d.text_tokens,
        "wan_channels": base.wan_channels,
        "text_dim": base.text_dim,
    }


def _full_fingerprint(settings: dict, latent_channels: int, scaling_factor: float) -> dict:
    order = ("task", "base", "autoencoder", "num_frames", "height", "width", "pairing", "frame_stride")
    full = {k: settings[k] for k in order}
    full.update(text_tokens=settings["text_tokens"], latent_channels=latent_channels)
    full.update(
        wan_channels=settings["wan_channels"], text_dim=settings["text_dim"], scaling_factor=scaling_factor
    )
    return full


def _check_same(where: Path, old: dict, new: dict) -> None:
    for key, value in new.items():
        if old.get(key) != value:
            raise DCVGError(
                f"{where}: written with other settings ({key} {old.get(key)!r} there, {value!r} now); use another "
                "data.cache folder, or delete this one"
            )


def shard_metadata(path: Path) -> dict:
    """The "dcvg" metadata of a cache shard or extras file."""
    try:
        with safe_open(path, framework="pt") as f:
            return json.loads((f.metadata() or {})[META_KEY])
    except Exception as e:  # a foreign or truncated file raises many kinds
        raise DCVGError(
            f"{path}: not a cache shard of dcvg adapt cache ({type(e).__name__}); delete it"
        ) from e


def _existing_shards(
    folder: Path, num_shards: int, expected: list[list[str]], settings: dict
) -> dict[int, dict]:
    """Metadata of the shards already in `folder`, each checked against the settings and the clip list."""
    found = {}
    for file in sorted(folder.glob("shard-*.safetensors")):
        m = SHARD_RE.match(file.name)
        if not m:
            continue
        s = int(m.group(1))
        meta = shard_metadata(file)
        _check_same(file, meta.get("fingerprint", {}), settings)
        if s >= num_shards or meta.get("sources") != expected[s]:
            raise DCVGError(
                f"{file}: holds other clips than the clip list puts in shard {s} (data.source or data.shard_size "
                "changed since it was written); use another data.cache folder, or delete this one"
            )
        found[s] = meta
    return found


def _extras_current(folder: Path, fingerprint: dict, cfg: AdaptConfig) -> bool:
    path = folder / EXTRAS_FILE
    if not path.is_file():
        return False
    meta = shard_metadata(path)
    return (
        meta.get("fingerprint") == fingerprint
        and meta.get("val_prompts") == list(cfg.data.val_prompts)
        and meta.get("val_images") == [str(Path(p).resolve()) for p in cfg.data.val_images]
    )


def _save(path: Path, tensors: dict[str, torch.Tensor], meta: dict, dtype: torch.dtype) -> None:
    tensors = {k: v.to(dtype).contiguous().clone() for k, v in tensors.items()}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})


def _write_shard(
    enc: Encoders, cfg: AdaptConfig, s: int, records: Sequence[ClipRecord], fingerprint: dict, bar: tqdm
) -> None:
    folder, dtype = Path(cfg.data.cache), CACHE_DTYPES[cfg.data.cache_dtype]
    tensors, clips, skipped = {}, [], []
    for record in records:
        try:
            frames = load_source(record, cfg)  # (3, S, H, W)
            image = None
            if cfg.model.task == "i2v" and record.image:
                image = load_image(record.image, cfg.data.height, cfg.data.width)  # (3, H, W)
        except VideoError as e:
            logger.warning(f"skipping {record.path}: {e}")
            skipped.append({"path": str(record.path), "reason": str(e)})
            bar.update()
            continue
        for key, value in encode_clip(enc, frames, record.caption, cfg, image).items():
            tensors[f"{len(clips)}.{key}"] = value
        clips.append(
            {
                "path": str(record.path),
                "caption": record.caption,
                "image": str(record.image) if record.image else None,
            }
        )
        bar.update()
    meta = {
        "version": CACHE_VERSION,
        "shard": s,
        "fingerprint": fingerprint,
        "sources": [str(r.path) for r in records],
        "clips": clips,
        "skipped": skipped,
    }
    _save(folder / shard_name(s), tensors, meta, dtype)


def _write_extras(enc: Encoders, cfg: AdaptConfig, fingerprint: dict) -> None:
    d = cfg.data
    tensors = {"null_text": enc.text_embedding("", d.text_tokens)}  # the pipelines' unconditional prompt
    for i, prompt in enumerate(d.val_prompts):
        tensors[f"val_text.{i}"] = enc.text_embedding(prompt, d.text_tokens)
    if cfg.model.task == "i2v":
        for i, file in enumerate(d.val_images):
            image = load_image(Path(file), d.height, d.width)  # (3, H, W)
            tensors[f"val_image.{i}"] = image
            tensors[f"val_image_embeds.{i}"] = enc.image_features(image).cpu()
    meta = {
        "version": CACHE_VERSION,
        "fingerprint": fingerprint,
        "val_prompts": list(d.val_prompts),
        "val_images": [str(Path(p).resolve()) for p in d.val_images],
    }
    _save(
        Path(d.cache) / EXTRAS_FILE,
        {k: v.cpu() for k, v in tensors.items()},
        meta,
        CACHE_DTYPES[d.cache_dtype],
    )


def _index(cfg: AdaptConfig, fingerprint: dict, shards: dict[int, dict], num_sources: int) -> dict:
    skipped = [item["path"] for s in sorted(shards) for item in shards[s]["skipped"]]
    return {
        "version": CACHE_VERSION,
        "fingerprint": fingerprint,
        "shards": [{"file": shard_name(s), "clips": len(shards[s]["clips"])} for s in sorted(shards)],
        "clips": sum(len(m["clips"]) for m in shards.values()),
        "skipped": len(skipped),
        "skipped_files": skipped,
        "sources": num_sources,
        "shard_size": cfg.data.shard_size,
        "cache_dtype": cfg.data.cache_dtype,
        "extras": EXTRAS_FILE,
    }


def _distributed(world: int) -> bool:
    return world > 1 and dist.is_available() and dist.is_initialized()


def build_cache(
    cfg: AdaptConfig, rank: int = 0, world: int = 1, device: str | torch.device = "cpu"
) -> CacheReport:
    """Encode the clips of `data.source` into `data.cache` (layout in the module docstring).

    Rank `rank` of `world` writes the missing shards s with s % world == rank; after all are done (a barrier
    when torch.distributed is initialised; otherwise whichever rank finds every shard present) rank 0 writes
    extras.safetensors and index.json. Existing shards are kept, so a killed run resumes; a complete cache
    with the same settings is left as it is. Every user error is raised before a model is loaded."""
    cfg.validate()
    cfg.require("model.base", "data.source", "data.cache")
    d = cfg.data
    if d.cache_dtype not in CACHE_DTYPES:
        raise DCVGError(f"adapt config: data.cache_dtype={d.cache_dtype!r}: use {' or '.join(CACHE_DTYPES)}")
    if cfg.model.task == "i2v":
        for file in d.val_images:
            if not Path(file).is_file():
                raise DCVGError(f"data.val_images: {file} does not exist; give one image file per val prompt")
    base = inspect_wan_base(cfg.model.base, cfg.model.task)
    records = find_clips(d.source)
    folder = Path(d.cache)
    if folder.exists() and not folder.is_dir():
        raise DCVGError(f"data.cache={folder}: is a file; give a folder")
    folder.mkdir(parents=True, exist_ok=True)

    num_shards = -(-len(records) // d.shard_size)
    expected = [
        [str(r.path) for r in records[s * d.shard_size : (s + 1) * d.shard_size]] for s in range(num_shards)
    ]
    settings = settings_fingerprint(cfg, base)
    index_file = folder / INDEX_FILE
    index = _read_json(index_file) if index_file.is_file() else None
    if index is not None:
        _check_same(index_file, index.get("fingerprint", {}), settings)
    shards = _existing_shards(folder, num_shards, expected, settings)
    fingerprint = None
    if shards:  # the model-derived keys of what is there; all shards must agree
        fingerprint = next(iter(shards.values()))["fingerprint"]
        for s, meta in shards.items():
            _check_same(folder / shard_name(s), meta["fingerprint"], fingerprint)
    report = CacheReport(folder, shards_kept=sorted(s for s in shards if s % world == rank))

    if (
        index is not None
        and len(shards) == num_shards
        and index.get("fingerprint") == fingerprint
        and index.get("shards") == _index(cfg, fingerprint, shards, len(records))["shards"]
        and _extras_current(folder, fingerprint, cfg)
    ):
        logger.info(
            f"{folder}: complete ({index['clips']} clips in {num_shards} shards, same settings); nothing to do"
        )
        return _finish(report, shards, complete=True)

    if index is not None:  # out of date: a reader must not see it while shards are rewritten
        index_file.unlink(missing_ok=True)
    dev = torch.device(device)
    text_dtype = torch.bfloat16 if cfg.precision == "bf16" and dev.type == "cuda" else torch.float32
    enc = Encoders(base, cfg.model.autoencoder, dev, text_dtype)
    mine = [s for s in range(num_shards) if s % world == rank and s not in shards]
    if mine:
        full = _full_fingerprint(settings, enc.dcae.arch.latent_channels, enc.scaling_factor)
        if fingerprint is not None:
            _check_same(folder, fingerprint, full)
        fingerprint = full
        total = sum(len(expected[s]) for s in mine)
        logger.info(f"rank {rank}: caching {total} clips in {len(mine)} shards into {folder}")
        with tqdm(total=total, desc="caching", unit="clip", disable=rank != 0) as bar:
            for s in mine:
                _write_shard(
                    enc, cfg, s, records[s * d.shard_size : (s + 1) * d.shard_size], fingerprint, bar
                )
                report.shards_written.append(s)
    if _distributed(world):
        dist.barrier()
    shards = _existing_shards(folder, num_shards, expected, settings)
    if len(shards) < num_shards:
        missing = [s for s in range(num_shards) if s not in shards]
        logger.info(
            f"rank {rank}: done; shards {missing} are left to other ranks, the last one writes the index"
        )
        return _finish(report, shards, complete=False)
    if rank == 0 or not _distributed(world):
        fingerprint = fingerprint or next(iter(shards.values()))["fingerprint"]
        new_index = _index(cfg, fingerprint, shards, len(records))
        if new_index["clips"] == 0:
            raise DCVGError(
                f"data.source={d.source}: none of the {len(records)} clips could be cached (see the warnings); "
                f"check the files, or lower data.num_frames={d.num_frames}"
            )
        if not _extras_current(folder, fingerprint, cfg):
            _write_extras(enc, cfg, fingerprint)
        with atomic_file(index_file) as tmp:
            tmp.write_text(json.dumps(new_index, indent=1))
        logger.info(
            f"{folder}: {new_index['clips']} clips cached in {num_shards} shards, {new_index['skipped']} skipped"
        )
    if _distributed(world):
        dist.barrier()
    return _finish(report, shards, complete=True)


def _finish(report: CacheReport, shards: dict[int, dict], complete: bool) -> CacheReport:
    report.clips = sum(len(m["clips"]) for m in shards.values())
    report.skipped = sum(len(m["skipped"]) for m in shards.values())
    report.complete = complete
    return report
