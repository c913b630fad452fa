"""Find and check the parts of a DC-VideoGen model folder, (a) written by `save_pretrained` / `dcvg
convert-pipeline` or (b) the released folder (Hugging Face `nvidia/DC-VideoGen-Wan2.1-14B`), and load the
components of (b). Pipeline classes are not imported here (`loading.py` dispatches by task), so the
pipelines' own `from_pretrained` can use this module without an import circle.

Released layout (b)::

    dc-ae-v-f32t4c32-1.0-bf16.pt      DC-AE-V weights (official format, see models/dcae_v/official.py)
    transformer_t2v/, transformer_i2v/ diffusers WanTransformer3DModel folders
    text_encoder/, tokenizer/          UMT5 (transformers)
    scheduler/                         UniPCMultistepScheduler
    models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth   Wan 2.1's CLIP (I2V only)

Saved layout (a): diffusers' `model_index.json` + one folder per component (`vae/` is an `AutoencoderDCV`,
`image_encoder/` a transformers `CLIPVisionModel`), one task per folder.

Everything that can be checked from configs and file names (missing parts, channels that do not fit,
the autoencoder's chunk and the transformer's patch size for the frame and size checks) is checked by
`inspect_model_folder` / `ModelFolder.check` before any weights are read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from ..errors import DCVGError, first_line
from ..models.dcae_v import DCAEVConfig
from ..models.dcae_v.official import CheckpointError, infer_config, load_official
from .clip import WAN_CLIP_FILE, load_wan_clip, wan_clip_image_processor
from .conditioning import check_transformer_channels

logger = logging.getLogger(__name__)

RELEASED_AE_FILE = "dc-ae-v-f32t4c32-1.0-bf16.pt"
RELEASED_HUB_REPO = "nvidia/DC-VideoGen-Wan2.1-14B"
TASK_OF_CLASS = {"DCVideoGenPipeline": "t2v", "DCVideoGenImageToVideoPipeline": "i2v"}
TASK_NAMES = {"t2v": "text-to-video", "i2v": "image-to-video"}


class Layout(str, Enum):
    SAVED = "saved"  # save_pretrained / dcvg convert-pipeline
    RELEASED = "released"  # the official release's folder


@dataclass(frozen=True)
class ModelFolder:
    """A model folder, resolved and checked for completeness; no weights read."""

    path: Path
    layout: Layout
    task: str
    transformer_dir: Path
    autoencoder: Path  # vae/ folder (saved) or the official .pt (released)
    clip: Path | None = None  # released I2V: the Wan CLIP .pth
    expand_timesteps: bool = False

    # ---- configs (cheap) -------------------------------------------------------------------------------
    def transformer_config(self) -> dict:
        return _read_json(self.transformer_dir / "config.json")

    def autoencoder_config(self, chunk_size: int | None = None) -> DCAEVConfig:
        """The autoencoder's architecture from its config (saved) or its tensor shapes (released, memory-mapped)."""
        if self.layout is Layout.SAVED:
            raw = _read_json(self.autoencoder / "config.json")
            fields = {k: v for k, v in raw.items() if k in DCAEVConfig.__dataclass_fields__}
            if chunk_size:
                fields["chunk_size"] = chunk_size
            try:
                return DCAEVConfig(**fields)
            except (TypeError, ValueError) as e:
                raise DCVGError(f"{self.autoencoder / 'config.json'}: not a DC-AE-V config ({e})") from e
        return infer_config(_peek_official(self.autoencoder), chunk_size or 40)

    def check(self, chunk_size: int | None = None) -> None:
        """DCVGError when the transformer cannot run on the autoencoder's latent."""
        cfg = self.transformer_config()
        for key in ("in_channels", "patch_size"):
            if key not in cfg:
                raise DCVGError(
                    f"{self.transformer_dir / 'config.json'}: no {key!r}; is it a WanTransformer3DModel?"
                )
        latent = self.autoencoder_config(chunk_size).latent_channels
        try:
            check_transformer_channels(
                cfg["in_channels"], cfg.get("out_channels"), latent, self.task, self.expand_timesteps
            )
        except DCVGError as e:
            raise DCVGError(f"{self.transformer_dir}: {e}") from None

    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.transformer_config()["patch_size"])


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DCVGError(f"{path}: missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DCVGError(f"{path}: not valid JSON ({e}); re-download or re-save it") from e


def _peek_official(path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict of an official DC-AE-V file, memory-mapped (shapes only are read)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many kinds on truncated or foreign files
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(e).__name__}); re-download {RELEASED_AE_FILE}"
        ) from e
    if isinstance(ckpt, Mapping) and "ema_model_state_dict" in ckpt:
        ema = ckpt["ema_model_state_dict"]
        first = next(iter(ema.values()), None) if isinstance(ema, Mapping) else None
        return first if isinstance(first, Mapping) else ema
    if isinstance(ckpt, Mapping) and "model_state_dict" in ckpt:
        return ckpt["model_state_dict"]
    raise CheckpointError(
        f"{path}: no 'model_state_dict' or 'ema_model_state_dict'; is it a DC-AE-V checkpoint?"
    )


# ---- finding the parts --------------------------------------------------------------------------------------


def inspect_model_folder(path: str | Path, task: str | None = None) -> ModelFolder:
    """Resolve a model folder of either layout for `task` ("t2v", "i2v"; None: the saved folder's own task,
    or t2v for the released layout). Raises DCVGError naming every missing part and where it goes."""
    path = Path(path)
    if task is not None and task not in TASK_NAMES:
        raise DCVGError(f"task {task!r}: use 't2v' or 'i2v'")
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise DCVGError(
            f"{path}: {what}; give a model folder (saved by save_pretrained / dcvg convert-pipeline, or the "
            f"released {RELEASED_HUB_REPO} folder)"
        )
    if (path / "model_index.json").is_file():
        return _inspect_saved(path, task)
    return _inspect_released(path, task or "t2v")


def _inspect_saved(path: Path, task: str | None) -> ModelFolder:
    index = _read_json(path / "model_index.json")
    cls_name = index.get("_class_name")
    if cls_name not in TASK_OF_CLASS:
        raise DCVGError(
            f"{path}: model_index.json describes a {cls_name}, not a DC-VideoGen pipeline "
            f"({' or '.join(TASK_OF_CLASS)})"
        )
    saved_task = TASK_OF_CLASS[cls_name]
    if task is not None and task != saved_task:
        raise DCVGError(
            f"{path} holds a {TASK_NAMES[saved_task]} pipeline, not {TASK_NAMES[task]}; use --task {saved_task}, or "
            f"convert the released folder for {task} with: dcvg convert-pipeline RELEASED_DIR OUT --task {task}"
        )
    missing = [
        f"{name}/ (the {spec[1]})"
        for name, spec in index.items()
        if isinstance(spec, list) and spec[0] is not None and not (path / name).is_dir()
    ]
    if missing:
        raise DCVGError(
            f"{path}: model_index.json lists parts that are missing: {', '.join(missing)}; re-save the pipeline "
            "or run dcvg convert-pipeline again"
        )
    return ModelFolder(
        path=path,
        layout=Layout.SAVED,
        task=saved_task,
        transformer_dir=path / "transformer",
        autoencoder=path / "vae",
        expand_timesteps=bool(index.get("expand_timesteps", False)),
    )


def _find_one(folder: Path, preferred: str, pattern: str) -> Path | None:
    if (folder / preferred).is_file():
        return folder / preferred
    found = sorted(folder.glob(pattern))
    return found[0] if len(found) == 1 else None


def _inspect_released(path: Path, task: str) -> ModelFolder:
    ae = _find_one(path, RELEASED_AE_FILE, "dc-ae-v-*.pt")
    clip = _find_one(path, WAN_CLIP_FILE, "*clip*.pth")
    transformer = path / f"transformer_{task}"
    parts = [  # (present, what to put where)
        (ae is not None, f"{RELEASED_AE_FILE} (the DC-AE-V checkpoint from {RELEASED_HUB_REPO})"),
        (
            (transformer / "config.json").is_file(),
            f"transformer_{task}/ (the {task.upper()} WanTransformer3DModel folder: config.json + weights)",
        ),
        (
            (path / "text_encoder" / "config.json").is_file(),
            "text_encoder/ (UMT5 encoder: config.json + weights)",
        ),
        (_has_tokenizer(path / "tokenizer"), "tokenizer/ (the UMT5 tokenizer files)"),
        (
            (path / "scheduler" / "scheduler_config.json").is_file(),
            "scheduler/ (scheduler_config.json of the flow-matching scheduler)",
        ),
    ]
    if task == "i2v":
        parts.append(
            (
                clip is not None,
                f"{WAN_CLIP_FILE} (Wan 2.1's CLIP image encoder, from Wan-AI/Wan2.1-I2V-14B-720P)",
            )
        )
    missing = [what for present, what in parts if not present]
    if len(missing) == len(parts):
        raise DCVGError(
            f"{path}: not a model folder: no model_index.json (a saved pipeline) and none of the released parts "
            f"({RELEASED_AE_FILE}, transformer_{task}/, text_encoder/, tokenizer/, scheduler/); download "
            f"{RELEASED_HUB_REPO} there or save a pipeline with save_pretrained"
        )
    if missing:
        raise DCVGError(
            f"{path}: the released layout for {task} is incomplete; put these in the folder: {'; '.join(missing)}"
        )
    return ModelFolder(
        path=path,
        layout=Layout.RELEASED,
        task=task,
        transformer_dir=transformer,
        autoencoder=ae,
        clip=clip if task == "i2v" else None,
    )


def _has_tokenizer(folder: Path) -> bool:
    names = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
    return folder.is_dir() and any((folder / n).is_file() for n in names)


# ---- the released layout's components ------------------------------------------------------------------


def _diffusers_dtype(dtype) -> dict:
    """The dtype keyword of diffusers' from_pretrained: `dtype` since it deprecated `torch_dtype`."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def _load_scheduler(folder: Path):
    import diffusers

    name = _read_json(folder / "scheduler_config.json").get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise DCVGError(f"{folder / 'scheduler_config.json'}: unknown scheduler class {name!r}")
    return cls.from_pretrained(folder)


def released_parts(folder: ModelFolder, dtype, image_encoder_dtype=torch.float32, ae_chunk_size=None) -> dict:
    """The components of a released-layout folder (checked by `inspect_model_folder`), for the task's pipeline."""
    from diffusers import WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    root = folder.path
    try:
        vae = load_official(folder.autoencoder, chunk_size=ae_chunk_size).to(dtype)
        transformer = WanTransformer3DModel.from_pretrained(folder.transformer_dir, **_diffusers_dtype(dtype))
        text_encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder", torch_dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        scheduler = _load_scheduler(root / "scheduler")
    except DCVGError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{root}: cannot load the released pipeline ({first_line(e)})") from e
    parts = dict(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    if folder.task == "i2v":
        image_encoder = load_wan_clip(folder.clip, dtype=image_encoder_dtype)
        parts.update(
            image_encoder=image_encoder,
            image_processor=wan_clip_image_processor(image_encoder.config.image_size),
        )
    return parts
