"""AE-Adapt-V data: captioned clips, the latent/text cache `dcvg adapt cache` writes, and its reader.

Adaptation (DC-VideoGen Sec. 3.3) trains on clean latents of both autoencoders and UMT5 text embeddings,
never on pixels, so each clip is encoded once (FACTS section 6: the authors cached per-clip latents; users'
trainers keep per-clip safetensors):

- `find_clips`: a folder of `clip.mp4` + `clip.txt`, or a `.csv` / `.jsonl` manifest (`path`, `caption`,
  optional `image`, the I2V first frame); every user error is raised before a model is loaded.
- `build_cache`: for each clip, the Wan-VAE latent of the Wan frames and the DC-AE-V latent of the DC-AE-V
  frames (the temporal pairing of `pairing.py`), the trimmed UMT5 embedding of its caption, and for I2V the
  two condition latents and the CLIP image features. Layout of the cache folder:

      shard-00000.safetensors   clips [0, shard_size) of the clip list; keys "{j}.latent" (Z, k, H/32, W/32),
      shard-00001.safetensors   "{j}.wan_latent" (16, 1 + k | k, H/8, W/8), "{j}.text" (L_j, D), and for I2V
      ...                       "{j}.condition", "{j}.wan_condition", "{j}.image_embeds"; j counts the clips
                                cached in the shard; metadata "dcvg": JSON with the fingerprint, the sources
                                of the slice, the cached clips' captions and the skipped clips
      extras.safetensors        "null_text" (the empty prompt), "val_text.{i}" (+ I2V "val_image.{i}",
                                "val_image_embeds.{i}")
      index.json                {"version", "fingerprint", "shards": [{"file", "clips"}], "clips", "skipped",
                                 "skipped_files", ...}, written last: a cache without it is incomplete

  Shards are written atomically and kept when present, so a killed run resumes where it stopped; ranks take
  shards s with s % world == rank.
- `LatentCache`, `CacheStream`, `make_cache_loader`: float32 items read lazily, and an endless stream that is
  a pure function of (seed, position), like the autoencoder trainer's (`training/data.py`), so resuming at a
  step continues exactly.
"""

from __future__ import annotations

import bisect
import csv
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import AutoencoderKLWan
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import DCVGError
from ..evaluation.adapters import WanAdapter
from ..models.dcae_v.latents import to_diffusion_space
from ..models.dcae_v.loading import load_autoencoder
from ..pipelines.conditioning import image_condition_video
from ..training.data import StreamSampler, sample_generator
from ..utils.atomic import atomic_file
from ..video import VIDEO_SUFFIXES, VideoError, read_clip
from ..video.io import to_uint8
from ..video.transforms import resize_cover
from .config import AdaptConfig
from .pairing import dcae_frame_range, source_frames, wan_frame_range

logger = logging.getLogger("dcvg.adapt")

CACHE_VERSION = 1
INDEX_FILE = "index.json"
EXTRAS_FILE = "extras.safetensors"
SHARD_RE = re.compile(r"^shard-(\d{5,})\.safetensors$")
META_KEY = "dcvg"
CACHE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
I2V_KEYS = ("condition", "wan_condition", "image_embeds")
WAN_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline")
EXPECTED_BASE = (
    "a diffusers Wan 2.1 folder (model_index.json of a WanPipeline or WanImageToVideoPipeline, or transformer/ "
    "with a WanTransformer3DModel, vae/, text_encoder/, tokenizer/)"
)


def shard_name(s: int) -> str:
    return f"shard-{s:05d}.safetensors"


# ---- captioned clips ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipRecord:
    path: Path  # the video
    caption: str
    image: Path | None = None  # I2V: the first frame to condition on (default: the clip's own first frame)


def find_clips(source: str | Path) -> list[ClipRecord]:
    """The captioned clips of `source`: a folder (searched recursively; each video with its caption in a `.txt`
    of the same name beside it), a `.csv` manifest (header `path,caption[,image]`) or a `.jsonl` manifest
    (objects with `path`, `caption`, optional `image`); relative manifest paths are resolved against the
    manifest's folder. DCVGError for a video without caption, an empty caption, a manifest row naming a
    missing file, or no clips at all."""
    if not str(source):
        raise DCVGError(
            "data.source is not set; give a folder of clips with captions, or a .csv / .jsonl manifest"
        )
    path = Path(source)
    if not path.exists():
        raise DCVGError(f"data.source={source}: no such folder or manifest file")
    if path.is_dir():
        records = _clips_in_folder(path)
    elif path.suffix.lower() in (".csv", ".jsonl"):
        records = _clips_in_manifest(path)
    else:
        raise DCVGError(f"data.source={source}: not a folder, .csv or .jsonl manifest")
    if not records:
        raise DCVGError(
            f"data.source={source}: no clips found; add videos ({', '.join(VIDEO_SUFFIXES)}) with captions"
        )
    return records


def _read_caption(path: Path) -> str:
    try:
        caption = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise DCVGError(f"{path}: the caption is not UTF-8 text ({e.reason}); save it as UTF-8") from e
    if not caption:
        raise DCVGError(f"{path}: the caption is empty; write the clip's description there")
    return caption


def _clips_in_folder(root: Path) -> list[ClipRecord]:
    videos = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in VIDEO_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)  # hidden and temporary files
    )
    missing = [v for v in videos if not v.with_suffix(".txt").is_file()]
    if missing:
        raise DCVGError(
            f"{missing[0]}: no caption file {missing[0].with_suffix('.txt').name} beside it ({len(missing)} of "
            f"{len(videos)} videos in {root} have none); write one caption .txt per clip, or move the clip out"
        )
    return [ClipRecord(v, _read_caption(v.with_suffix(".txt"))) for v in videos]


def _manifest_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a .csv (header line 1) or .jsonl manifest."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "path" not in columns or "caption" not in columns:
                raise DCVGError(
                    f"{path}: the header has columns {columns}; a manifest needs path,caption[,image]"
                )
            for row in reader:
                yield reader.line_num, row
        return
    with open(path, encoding="utf-8") as f:
        for line_num, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DCVGError(f"{path} line {line_num}: not a JSON object ({e.msg})") from e
            if not isinstance(row, dict):
                raise DCVGError(f"{path} line {line_num}: not a JSON object with path and caption")
            yield line_num, row


def _clips_in_manifest(path: Path) -> list[ClipRecord]:
    records = []
    for line_num, row in _manifest_rows(path):
        where = f"{path} line {line_num}"
        if not row.get("path"):
            raise DCVGError(f"{where}: no path; every row needs path and caption")
        caption = str(row.get("caption") or "").strip()
        if not caption:
            raise DCVGError(
                f"{where}: the caption of {row['path']} is empty; write the clip's description there"
            )
        files = []
        for key in ("path", "image"):
            value = row.get(key)
            if not value:
                files.append(None)
                continue
            file = Path(value) if Path(value).is_absolute() else path.parent / value
            if not file.exists():
                raise DCVGError(f"{where}: {key} {file} does not exist; fix the row or remove it")
            files.append(file)
        records.append(ClipRecord(files[0], caption, files[1]))
    return records


# ---- the base Wan model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WanBase:
    path: Path
    task: str  # t2v | i2v, from the transformer's input channels
    wan_channels: int  # the Wan VAE's z_dim
    text_dim: int  # UMT5 d_model


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DCVGError(f"{path}: not readable JSON ({e}); is the model folder complete?") from e
    if not isinstance(data, dict):
        raise DCVGError(f"{path}: not a JSON object; is the model folder complete?")
    return data


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


def pad_text(text: torch.Tensor, text_tokens: int) -> torch.Tensor:
    """(L, D) -> (text_tokens, D) with zero rows after the L real ones, as the Wan pipelines pad."""
    return torch.cat([text, text.new_zeros(text_tokens - text.shape[0], text.shape[1])])


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


# ---- the reader -------------------------------------------------------------------------------------------


class LatentCache:
    """Read-only view of a cache folder written by `build_cache`. Items are read lazily from the shards with
    safetensors' `safe_open` (one handle per shard and process, so DataLoader workers open their own)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index_file = self.folder / INDEX_FILE
        if not index_file.is_file():
            raise DCVGError(
                f"{self.folder}: no {INDEX_FILE}; run dcvg adapt cache first (data.cache={self.folder}), or let it "
                "finish"
            )
        self.index = _read_json(index_file)
        if self.index.get("version") != CACHE_VERSION:
            raise DCVGError(
                f"{index_file}: cache version {self.index.get('version')}, this dcvideogen reads {CACHE_VERSION}; "
                "rebuild the cache in another data.cache folder"
            )
        self.files = [self.folder / s["file"] for s in self.index["shards"]]
        counts = [int(s["clips"]) for s in self.index["shards"]]
        self._starts = [0]
        for n in counts:
            self._starts.append(self._starts[-1] + n)
        self._handles: dict[Path, object] = {}
        self._meta: dict[Path, dict] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:  # handles are not picklable; each process opens its own
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    @property
    def fingerprint(self) -> dict:
        return self.index["fingerprint"]

    @property
    def task(self) -> str:
        return self.fingerprint["task"]

    @property
    def text_tokens(self) -> int:
        return int(self.fingerprint["text_tokens"])

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, i: int) -> tuple[Path, int]:
        """(shard file, position in the shard) of clip i."""
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} of a cache of {len(self)}")
        s = bisect.bisect_right(self._starts, i) - 1
        return self.files[s], i - self._starts[s]

    def _open(self, file: Path):
        if self._pid != os.getpid():  # a forked worker: the parent's handles are not ours
            self._handles, self._pid = {}, os.getpid()
        if file not in self._handles:
            if not file.is_file():
                raise DCVGError(f"{file}: missing from the cache; rerun dcvg adapt cache to rewrite it")
            self._handles[file] = safe_open(file, framework="pt")
        return self._handles[file]

    def _metadata(self, file: Path) -> dict:
        if file not in self._meta:
            self._meta[file] = json.loads(self._open(file).metadata()[META_KEY])
        return self._meta[file]

    def caption(self, i: int) -> str:
        file, j = self.locate(i)
        return self._metadata(file)["clips"][j]["caption"]

    def __getitem__(self, i: int) -> dict:
        """Clip i: float32 `latent` (Z, k, h, w), `wan_latent` (16, 1 + k | k, H/8, W/8), `text` (text_tokens, D)
        zero-padded, `text_len`, for I2V `condition`, `wan_condition`, `image_embeds`; `caption`, `index`."""
        file, j = self.locate(i)
        f = self._open(file)
        keys = ("latent", "wan_latent", "text") + (I2V_KEYS if self.task == "i2v" else ())
        item = {key: f.get_tensor(f"{j}.{key}").float() for key in keys}
        item["text_len"] = torch.tensor(item["text"].shape[0])
        item["text"] = pad_text(item["text"], self.text_tokens)  # (text_tokens, D)
        item["caption"] = self._metadata(file)["clips"][j]["caption"]
        item["index"] = i if i >= 0 else i + len(self)
        return item

    def _extras(self) -> dict[str, torch.Tensor]:
        path = self.folder / self.index.get("extras", EXTRAS_FILE)
        if not path.is_file():
            raise DCVGError(f"{path}: missing from the cache; rerun dcvg adapt cache to rewrite it")
        with safe_open(path, framework="pt") as f:
            meta = json.loads(f.metadata()[META_KEY])
            tensors = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118 (a safe_open handle is not a dict)
        tensors["_prompts"] = meta["val_prompts"]
        return tensors

    def null_text(self) -> torch.Tensor:
        """(text_tokens, D): the embedding of the empty prompt, the pipelines' unconditional branch."""
        return pad_text(self._extras()["null_text"], self.text_tokens)

    def val_prompts(self) -> list[dict]:
        """One dict per data.val_prompts: `prompt`, `text` (text_tokens, D); I2V adds `image` (3, H, W) in
        [-1, 1] and its CLIP features `image_embeds` (N, D_img)."""
        ex = self._extras()
        out = []
        for i, prompt in enumerate(ex["_prompts"]):
            entry = {"prompt": prompt, "text": pad_text(ex[f"val_text.{i}"], self.text_tokens)}
            if self.task == "i2v":
                entry.update(image=ex[f"val_image.{i}"], image_embeds=ex[f"val_image_embeds.{i}"])
            out.append(entry)
        return out

    def split(self, holdout: int) -> tuple[list[int], list[int]]:
        """(training indices, held-out indices): the last `holdout` clips are held out."""
        n = len(self)
        if holdout < 0 or holdout >= n:
            raise DCVGError(
                f"data.holdout={holdout} leaves no training clips of the {n} cached in {self.folder}; lower it "
                "or cache more clips"
            )
        return list(range(n - holdout)), list(range(n - holdout, n))


class CacheStream(Dataset):
    """Map-style dataset over an infinite index space: position p is clip indices[perm_e[p % n]] of epoch
    e = p // n, with a fresh permutation per epoch seeded by (seed, e). A pure function of (seed, p), so any
    number of workers or ranks reads the same stream and resuming at a step continues exactly."""

    def __init__(self, cache: LatentCache, indices: Sequence[int], seed: int) -> None:
        if not len(indices):
            raise DCVGError(f"{cache.folder}: no clips to read (an empty index list); check data.holdout")
        self.cache, self.indices, self.seed = cache, list(indices), seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:  # the stream is infinite; samplers provide the positions
        return 2**62

    def clip_index(self, position: int) -> int:
        epoch, slot = divmod(position, len(self.indices))
        if epoch != self._epoch:
            self._perm = torch.randperm(len(self.indices), generator=sample_generator(self.seed, epoch))
            self._epoch = epoch
        return self.indices[int(self._perm[slot])]

    def __getitem__(self, position: int) -> dict:
        item = self.cache[self.clip_index(position)]
        item["position"] = position
        return item


def collate(items: list[dict]) -> dict:
    """Tensors stacked ((B, Z, k, h, w), (B, text_tokens, D), ...), numbers as tensors, captions as a list."""
    out = {}
    for key, first in items[0].items():
        values = [it[key] for it in items]
        if torch.is_tensor(first):
            out[key] = torch.stack(values)
        elif isinstance(first, int):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


def make_cache_loader(
    cache: LatentCache,
    indices: Sequence[int],
    seed: int,
    start_step: int,
    batch: int,
    accum: int = 1,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
) -> DataLoader:
    """Endless loader of this rank's batches from step `start_step` on (`StreamSampler` positions)."""
    return DataLoader(
        CacheStream(cache, indices, seed),
        batch_size=batch,
        sampler=StreamSampler(start_step, batch, accum, rank, world),
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
    )
