"""`dcvg adapt cache`: encode captioned clips with both autoencoders and UMT5 (+ CLIP for I2V) into the
sharded caches that `data.py` reads (layout there): data.cache for stages 1a, 1b, 2, data.cache/NAME for each
resolution stage. Resumable (finished shards are kept), split across ranks, unreadable clips skipped and
counted; every user error is raised before a model is loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
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
from ..video import VideoError, probe_video, read_clip
from ..video.io import VideoInfo, to_uint8
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
    CacheSpec,
    ClipRecord,
    _read_json,
    assign_bucket,
    cache_spec,
    cache_specs,
    find_clips,
    shape_name,
    shard_name,
    spread,
    usable_frames,
)
from .pairing import TEMPORAL_FACTOR, dcae_frame_range, source_frames, wan_frame_range

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


def load_source(
    record: ClipRecord, cfg: AdaptConfig, shape: tuple[int, int, int] | None = None
) -> torch.Tensor:
    """The source frames of a clip for bucket `shape` = (frames, H, W) (default: data.num_frames x data.height
    x data.width), (3, source_frames, H, W) in [-1, 1], read from frame 0 with data.frame_stride, resized to
    cover (H, W) and center-cropped. VideoError when the file is unreadable or too short."""
    d = cfg.data
    f, h, w = shape or (d.num_frames, d.height, d.width)
    video = read_clip(record.path, 0, source_frames(f, d.pairing), d.frame_stride)  # (3, S, h0, w0)
    return resize_cover(video, h, w)  # (3, S, H, W)


def precomputed_fits(latent: torch.Tensor, wan_x: torch.Tensor, loaded: int) -> bool:
    """Whether a known Wan latent (C, t, h, w) is the latent of `wan_x` (1, 3, 1 + 4k, H, W): Wan reads every
    loaded frame (exact pairing) and the latent has 1 + k frames at an 8x or 16x (Wan 2.2) smaller size."""
    frames, height, width = wan_x.shape[2:]
    if frames != loaded or latent.dim() != 4 or latent.shape[1] != (frames - 1) // TEMPORAL_FACTOR + 1:
        return False
    factor = height // latent.shape[2]
    return factor in (8, 16) and (height, width) == (latent.shape[2] * factor, latent.shape[3] * factor)


def encode_clip(
    enc: Encoders,
    frames: torch.Tensor,
    caption: str,
    cfg: AdaptConfig,
    image: torch.Tensor | None = None,
    wan: bool = True,
    wan_latent: torch.Tensor | None = None,
) -> dict:
    """The cached tensors of one clip (see the module docstring), float32 on the CPU. frames: from
    `load_source` (1 + 4k or 4k source frames, by the pairing); image: I2V, the given first frame (3, H, W),
    else each clip's own first frame is used; wan: also the Wan latents (stage 1a's teacher input); wan_latent:
    the clip's Wan latent when it is already known (`dcvg adapt synth`: the generated latent itself), used
    instead of encoding when it covers exactly the frames Wan reads here (`precomputed_fits`)."""
    d = cfg.data
    num_frames = TEMPORAL_FACTOR * (frames.shape[1] // TEMPORAL_FACTOR)  # 4k for 1 + 4k (exact) or 4k
    wan_range = wan_frame_range(num_frames, d.pairing)
    dcae_range = dcae_frame_range(num_frames, d.pairing)
    x = frames.unsqueeze(0)  # (1, 3, S, H, W)
    wan_x = x[:, :, wan_range.start : wan_range.stop]  # (1, 3, 1 + 4k | 4k - 3, H, W)
    dcae_x = x[:, :, dcae_range.start : dcae_range.stop]  # (1, 3, 4k, H, W)
    out = {
        "latent": enc.dcae_latent(dcae_x)[0],  # (Z, k, H/32, W/32)
        "text": enc.text_embedding(caption, d.text_tokens),  # (L, D)
    }
    if wan and wan_latent is not None and precomputed_fits(wan_latent, wan_x, frames.shape[1]):
        out["wan_latent"] = wan_latent.float()
    elif wan:
        out["wan_latent"] = enc.wan_latent(wan_x)[0]  # (16, 1 + k | k, H/8, W/8): all of it; pairing at use
    if cfg.model.task == "i2v":
        dcae_image = image if image is not None else dcae_x[0, :, 0]  # DC-AE-V clip's first frame (3, H, W)
        out["image_embeds"] = enc.image_features(dcae_image)  # (N, D_img)
        cond = image_condition_video(dcae_image[None], num_frames)  # (1, 3, 4k, H, W): image x4, zeros
        out["condition"] = enc.dcae_latent(cond)[0]  # (Z, k, H/32, W/32)
        if wan:
            wan_image = image if image is not None else wan_x[0, :, 0]  # Wan clip's first frame
            # As WanImageToVideoPipeline.prepare_latents: the image, then zeros, as many frames as the Wan clip.
            wan_cond = torch.cat([wan_image[None, :, None], wan_x.new_zeros(wan_x[:, :, 1:].shape)], dim=2)
            out["wan_condition"] = enc.wan_latent(wan_cond)[0]  # (16, 1 + k | k, H/8, W/8)
    return {k: v.cpu() for k, v in out.items()}


# ---- the cache writer -------------------------------------------------------------------------------------


@dataclass
class CacheReport:
    folder: Path
    clips: int = 0  # cached clips in the shards present now
    skipped: int = 0  # clips left out (unreadable, too short, or fitting no bucket)
    shards_written: list[int] = field(default_factory=list)  # by this call
    shards_kept: list[int] = field(default_factory=list)  # found done (this rank's)
    complete: bool = False  # index.json is written and up to date
    bucket_clips: list[int] = field(default_factory=list)  # cached clips per bucket
    stages: dict[str, CacheReport] = field(
        default_factory=dict
    )  # data.cache's report: the resolution stages'


@dataclass
class CachePlan:
    """Which clips go into which shard of one cache folder, decided before any model loads."""

    spec: CacheSpec
    shards: list[tuple[int, list[ClipRecord]]]  # (bucket, clips) of shard 0, 1, ...
    unassigned: list[dict]  # {"path", "reason"} of the clips no bucket takes
    sources: int  # clips considered (after resolution_stages[].max_clips)

    @property
    def expected(self) -> list[list[str]]:
        return [[str(r.path) for r in records] for _, records in self.shards]

    @property
    def bucketed(self) -> bool:
        return len(self.spec.shapes) > 1


def _autoencoder_id(spec: str) -> str:
    if not spec or spec == "default":
        return "default"
    return str(Path(spec).resolve()) if Path(spec).exists() else spec


def settings_fingerprint(cfg: AdaptConfig, base: WanBase, spec: CacheSpec | None = None) -> dict:
    """The fingerprint keys that follow from the config, the cache's buckets and the base folder's configs (no
    model loaded). One bucket: num_frames, height, width (as before buckets existed); several: "buckets"."""
    d, spec = cfg.data, spec or cache_spec(cfg)
    out = {
        "task": cfg.model.task,
        "base": str(base.path),
        "autoencoder": _autoencoder_id(cfg.model.autoencoder),
    }
    if len(spec.shapes) == 1:
        out.update(zip(("num_frames", "height", "width"), spec.shapes[0]))
    else:
        out["buckets"] = [list(shape) for shape in spec.shapes]
    out.update(pairing=d.pairing, frame_stride=d.frame_stride, text_tokens=d.text_tokens)
    out.update(wan_channels=base.wan_channels, text_dim=base.text_dim)
    if not spec.wan:
        out["wan_latents"] = False
    if spec.max_clips:
        out["max_clips"] = spec.max_clips
    return out


def _full_fingerprint(settings: dict, latent_channels: int, scaling_factor: float) -> dict:
    return {**settings, "latent_channels": latent_channels, "scaling_factor": scaling_factor}


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


def probe_clips(records: list[ClipRecord], rank: int = 0, world: int = 1) -> dict[Path, VideoInfo | str]:
    """`probe_video` of each clip: its VideoInfo, or the VideoError's message. Under torch.distributed each
    rank probes every world-th clip and the results are gathered; otherwise this process probes them all."""
    share = records[rank::world] if _distributed(world) else records
    found: dict[Path, VideoInfo | str] = {}
    for r in share:
        try:
            found[r.path] = probe_video(r.path)
        except VideoError as e:
            found[r.path] = str(e)
    if _distributed(world):
        parts: list = [None] * world
        dist.all_gather_object(parts, found)
        found = {path: info for part in parts for path, info in part.items()}
    return found


def _chosen(records: list[ClipRecord], spec: CacheSpec) -> list[ClipRecord]:
    return [records[i] for i in spread(len(records), spec.max_clips)]


def plan_cache(
    cfg: AdaptConfig, spec: CacheSpec, records: list[ClipRecord], probe: dict[Path, VideoInfo | str]
) -> CachePlan:
    """Assign the clips to `spec`'s buckets (`assign_bucket` on the `probe_clips` results; one bucket takes
    every clip unprobed, and a clip too short for it is skipped when read) and cut each bucket's clips into
    shards of data.shard_size."""
    d = cfg.data
    chosen = _chosen(records, spec)
    groups: list[list[ClipRecord]] = [[] for _ in spec.shapes]
    unassigned = []
    if len(spec.shapes) == 1:
        groups[0] = chosen
    else:
        for r in chosen:
            info = probe[r.path]
            if isinstance(info, str):
                unassigned.append({"path": str(r.path), "reason": info})
                continue
            b = assign_bucket(
                info.num_frames, info.height, info.width, spec.shapes, d.pairing, d.frame_stride
            )
            if b is None:
                need = min(source_frames(f, d.pairing) for f, _, _ in spec.shapes)
                have = usable_frames(info.num_frames, d.frame_stride)
                unassigned.append(
                    {
                        "path": str(r.path),
                        "reason": f"{have} frames (data.frame_stride={d.frame_stride}), the shortest bucket needs {need}",
                    }
                )
                continue
            groups[b].append(r)
    size = d.shard_size
    shards = [(b, g[i : i + size]) for b, g in enumerate(groups) for i in range(0, len(g), size)]
    return CachePlan(spec, shards, unassigned, len(chosen))


def _existing_shards(folder: Path, plan: CachePlan, settings: dict) -> dict[int, dict]:
    """Metadata of the shards already in `folder`, each checked against the settings and the plan."""
    found, expected = {}, plan.expected
    for file in sorted(folder.glob("shard-*.safetensors")):
        m = SHARD_RE.match(file.name)
        if not m:
            continue
        s = int(m.group(1))
        meta = shard_metadata(file)
        _check_same(file, meta.get("fingerprint", {}), settings)
        if (
            s >= len(expected)
            or meta.get("sources") != expected[s]
            or meta.get("bucket", 0) != plan.shards[s][0]
        ):
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
    enc: Encoders,
    cfg: AdaptConfig,
    plan: CachePlan,
    s: int,
    fingerprint: dict,
    bar: tqdm,
    precomputed: Callable[[ClipRecord], torch.Tensor | None] | None = None,
) -> None:
    spec, (bucket, records) = plan.spec, plan.shards[s]
    shape, dtype = spec.shapes[bucket], CACHE_DTYPES[cfg.data.cache_dtype]
    tensors, clips, skipped = {}, [], []
    for record in records:
        try:
            frames = load_source(record, cfg, shape)  # (3, S, H, W)
            image = None
            if cfg.model.task == "i2v" and record.image:
                image = load_image(record.image, shape[1], shape[2])  # (3, H, W)
        except VideoError as e:
            logger.warning(f"skipping {record.path}: {e}")
            skipped.append({"path": str(record.path), "reason": str(e)})
            bar.update()
            continue
        known = precomputed(record) if precomputed is not None and spec.wan else None
        if known is not None and cfg.data.frame_stride != 1:
            known = None  # the latent is of consecutive frames
        for key, value in encode_clip(enc, frames, record.caption, cfg, image, spec.wan, known).items():
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
    if plan.bucketed:
        meta["bucket"] = bucket
    _save(spec.folder / shard_name(s), tensors, meta, dtype)


def _write_extras(enc: Encoders, cfg: AdaptConfig, spec: CacheSpec, fingerprint: dict) -> None:
    d = cfg.data
    _, height, width = spec.shapes[0]  # the sample videos' size
    tensors = {"null_text": enc.text_embedding("", d.text_tokens)}  # the pipelines' unconditional prompt
    for i, prompt in enumerate(d.val_prompts):
        tensors[f"val_text.{i}"] = enc.text_embedding(prompt, d.text_tokens)
    if cfg.model.task == "i2v":
        for i, file in enumerate(d.val_images):
            image = load_image(Path(file), height, width)  # (3, H, W)
            tensors[f"val_image.{i}"] = image
            tensors[f"val_image_embeds.{i}"] = enc.image_features(image).cpu()
    meta = {
        "version": CACHE_VERSION,
        "fingerprint": fingerprint,
        "val_prompts": list(d.val_prompts),
        "val_images": [str(Path(p).resolve()) for p in d.val_images],
    }
    _save(
        spec.folder / EXTRAS_FILE,
        {k: v.cpu() for k, v in tensors.items()},
        meta,
        CACHE_DTYPES[d.cache_dtype],
    )


def _index(cfg: AdaptConfig, fingerprint: dict, shards: dict[int, dict], plan: CachePlan) -> dict:
    skipped = [item["path"] for item in plan.unassigned]
    skipped += [item["path"] for s in sorted(shards) for item in shards[s]["skipped"]]
    entries = [{"file": shard_name(s), "clips": len(shards[s]["clips"])} for s in sorted(shards)]
    if plan.bucketed:
        for entry, s in zip(entries, sorted(shards)):
            entry["bucket"] = plan.shards[s][0]
    index = {
        "version": CACHE_VERSION,
        "fingerprint": fingerprint,
        "shards": entries,
        "clips": sum(len(m["clips"]) for m in shards.values()),
        "skipped": len(skipped),
        "skipped_files": skipped,
        "sources": plan.sources,
        "shard_size": cfg.data.shard_size,
        "cache_dtype": cfg.data.cache_dtype,
        "extras": EXTRAS_FILE,
    }
    if plan.bucketed:
        index["bucket_clips"] = _bucket_clips(plan, shards)
    return index


def _bucket_clips(plan: CachePlan, shards: dict[int, dict]) -> list[int]:
    counts = [0] * len(plan.spec.shapes)
    for s, meta in shards.items():
        counts[plan.shards[s][0]] += len(meta["clips"])
    return counts


def _distributed(world: int) -> bool:
    return world > 1 and dist.is_available() and dist.is_initialized()


def build_cache(
    cfg: AdaptConfig,
    rank: int = 0,
    world: int = 1,
    device: str | torch.device = "cpu",
    precomputed: Callable[[ClipRecord], torch.Tensor | None] | None = None,
) -> CacheReport:
    """Encode the clips of `data.source` into every cache the config's stages read (`cache_specs`): data.cache
    (stages 1a, 1b, 2; layout in data.py) and data.cache/NAME per resolution stage. Returns data.cache's
    report, with the resolution stages' in `.stages`.

    Rank `rank` of `world` writes the missing shards s with s % world == rank; after all are done (a barrier
    when torch.distributed is initialised; otherwise whichever rank finds every shard present) rank 0 writes
    extras.safetensors and index.json. Existing shards are kept, so a killed run resumes; a complete cache
    with the same settings is left as it is. Every user error is raised before a model is loaded.
    `precomputed(record)` may give a clip's Wan latent (`dcvg adapt synth`), cached instead of encoding it."""
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
    specs = cache_specs(cfg)
    for spec in specs:
        if spec.folder.exists() and not spec.folder.is_dir():
            raise DCVGError(f"data.cache: {spec.folder} is a file; give a folder")
    bucketed = {r.path: r for spec in specs if len(spec.shapes) > 1 for r in _chosen(records, spec)}
    if bucketed:
        logger.info(f"reading the frame count and size of {len(bucketed)} clips to choose their buckets")
    probe = probe_clips(list(bucketed.values()), rank, world)
    plans = [plan_cache(cfg, spec, records, probe) for spec in specs]
    dev = torch.device(device)
    text_dtype = torch.bfloat16 if cfg.precision == "bf16" and dev.type == "cuda" else torch.float32
    enc = (
        Encoders(base, cfg.model.autoencoder, dev, text_dtype) if _needs_encoders(cfg, base, plans) else None
    )
    reports = [_build_one(cfg, plan, base, enc, rank, world, precomputed) for plan in plans]
    reports[0].stages = {plan.spec.stage: r for plan, r in zip(plans[1:], reports[1:])}
    return reports[0]


def _needs_encoders(cfg: AdaptConfig, base: WanBase, plans: list[CachePlan]) -> bool:
    """False when every cache is complete with the same settings (nothing to encode)."""
    for plan in plans:
        index_file = plan.spec.folder / INDEX_FILE
        if not index_file.is_file():
            return True
        index = _read_json(index_file)
        _check_same(index_file, index.get("fingerprint", {}), settings_fingerprint(cfg, base, plan.spec))
        shards = _existing_shards(plan.spec.folder, plan, settings_fingerprint(cfg, base, plan.spec))
        if not _complete(cfg, plan, index, shards):
            return True
    return False


def _complete(cfg: AdaptConfig, plan: CachePlan, index: dict | None, shards: dict[int, dict]) -> bool:
    """Whether `index` is the index of exactly these shards, every one present, with current extras."""
    if index is None or len(shards) != len(plan.shards) or not shards:
        return False
    fingerprint = next(iter(shards.values()))["fingerprint"]
    return (
        index.get("fingerprint") == fingerprint
        and index.get("shards") == _index(cfg, fingerprint, shards, plan)["shards"]
        and _extras_current(plan.spec.folder, fingerprint, cfg)
    )


def _build_one(
    cfg: AdaptConfig,
    plan: CachePlan,
    base: WanBase,
    enc: Encoders | None,
    rank: int,
    world: int,
    precomputed: Callable[[ClipRecord], torch.Tensor | None] | None = None,
) -> CacheReport:
    """`build_cache` for one cache folder."""
    d, spec = cfg.data, plan.spec
    folder = spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    settings = settings_fingerprint(cfg, base, spec)
    index_file = folder / INDEX_FILE
    index = _read_json(index_file) if index_file.is_file() else None
    if index is not None:
        _check_same(index_file, index.get("fingerprint", {}), settings)
    shards = _existing_shards(folder, plan, settings)
    fingerprint = None
    if shards:  # the model-derived keys of what is there; all shards must agree
        fingerprint = next(iter(shards.values()))["fingerprint"]
        for s, meta in shards.items():
            _check_same(folder / shard_name(s), meta["fingerprint"], fingerprint)
    report = CacheReport(folder, shards_kept=sorted(s for s in shards if s % world == rank))

    if _complete(cfg, plan, index, shards):
        logger.info(
            f"{folder}: complete ({index['clips']} clips in {len(plan.shards)} shards, same settings); nothing to do"
        )
        return _finish(report, plan, shards, complete=True)

    if index is not None:  # out of date: a reader must not see it while shards are rewritten
        index_file.unlink(missing_ok=True)
    assert enc is not None, "an incomplete cache needs the encoders"
    for item in plan.unassigned:
        logger.warning(f"skipping {item['path']}: {item['reason']}")
    mine = [s for s in range(len(plan.shards)) if s % world == rank and s not in shards]
    if mine:
        full = _full_fingerprint(settings, enc.dcae.arch.latent_channels, enc.scaling_factor)
        if fingerprint is not None:
            _check_same(folder, fingerprint, full)
        fingerprint = full
        _warn_partial_chunks(spec, enc.dcae.arch.frame_multiple)
        total = sum(len(plan.shards[s][1]) for s in mine)
        logger.info(f"rank {rank}: caching {total} clips in {len(mine)} shards into {folder}")
        with tqdm(total=total, desc="caching", unit="clip", disable=rank != 0) as bar:
            for s in mine:
                _write_shard(enc, cfg, plan, s, fingerprint, bar, precomputed)
                report.shards_written.append(s)
    if _distributed(world):
        dist.barrier()
    shards = _existing_shards(folder, plan, settings)
    if len(shards) < len(plan.shards):
        missing = [s for s in range(len(plan.shards)) if s not in shards]
        logger.info(
            f"rank {rank}: done; shards {missing} are left to other ranks, the last one writes the index"
        )
        return _finish(report, plan, shards, complete=False)
    if rank == 0 or not _distributed(world):
        if not shards:
            raise DCVGError(
                f"data.source={d.source}: none of the {plan.sources} clips fits a bucket of {folder} "
                f"({', '.join(map(shape_name, spec.shapes))}; see the warnings); check the files or the buckets"
            )
        fingerprint = fingerprint or next(iter(shards.values()))["fingerprint"]
        new_index = _index(cfg, fingerprint, shards, plan)
        if new_index["clips"] == 0:
            raise DCVGError(
                f"data.source={d.source}: none of the {plan.sources} clips could be cached (see the warnings); "
                f"check the files, or lower data.num_frames={d.num_frames}"
            )
        if not _extras_current(folder, fingerprint, cfg):
            _write_extras(enc, cfg, spec, fingerprint)
        with atomic_file(index_file) as tmp:
            tmp.write_text(json.dumps(new_index, indent=1))
        per_bucket = ""
        if plan.bucketed:
            counts = new_index["bucket_clips"]
            per_bucket = (
                " (" + ", ".join(f"{shape_name(sh)}: {n}" for sh, n in zip(spec.shapes, counts)) + ")"
            )
        logger.info(
            f"{folder}: {new_index['clips']} clips cached in {len(plan.shards)} shards{per_bucket}, "
            f"{new_index['skipped']} skipped"
        )
    if _distributed(world):
        dist.barrier()
    return _finish(report, plan, shards, complete=True)


def _warn_partial_chunks(spec: CacheSpec, frame_multiple: int) -> None:
    """DC-AE-V pads a clip to whole chunks (repeating its last frame): a bucket whose frames are not a multiple
    of the chunk trains on latents whose last chunk saw padding, as generating that many frames does."""
    for f, h, w in spec.shapes:
        if f % frame_multiple:
            logger.warning(
                f"{spec.folder}: bucket {f}x{h}x{w}: {f} frames is not a multiple of the DC-AE-V chunk "
                f"({frame_multiple} frames); its last chunk is padded. Prefer multiples of {frame_multiple}"
            )


def _finish(report: CacheReport, plan: CachePlan, shards: dict[int, dict], complete: bool) -> CacheReport:
    report.clips = sum(len(m["clips"]) for m in shards.values())
    report.skipped = len(plan.unassigned) + sum(len(m["skipped"]) for m in shards.values())
    report.bucket_clips = _bucket_clips(plan, shards)
    report.complete = complete
    return report
