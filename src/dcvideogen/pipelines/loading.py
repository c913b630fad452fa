"""Load a DC-VideoGen pipeline by task from (a) a folder written by `save_pretrained` / `dcvg
convert-pipeline` or (b) the released folder, and turn (b) into (a). Finding and checking the parts is
`folders.py`; this module adds the task -> pipeline class dispatch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..errors import DCVGError, first_line
from ..models.dcae_v import AutoencoderDCV
from ..models.dcae_v.official import CheckpointError, load_official
from ..utils.atomic import atomic_dir
from .clip import load_wan_clip, wan_clip_image_processor
from .folders import (
    RELEASED_AE_FILE,
    Layout,
    ModelFolder,
    _diffusers_dtype,
    _load_scheduler,
    inspect_model_folder,
    released_parts,
)
from .i2v import DCVideoGenImageToVideoPipeline
from .t2v import DCVideoGenPipeline

PIPELINES = {"t2v": DCVideoGenPipeline, "i2v": DCVideoGenImageToVideoPipeline}


# ---- loading ------------------------------------------------------------------------------------------------


def load_pipeline(
    path: str | Path,
    task: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    image_encoder_dtype: torch.dtype = torch.float32,
    ae_chunk_size: int | None = None,
) -> DCVideoGenPipeline | DCVideoGenImageToVideoPipeline:
    """A pipeline (on the CPU) from either layout. The CLIP image encoder stays in float32 by default, as
    in the release. `ae_chunk_size` overrides the autoencoder's chunk (the official file does not store it;
    the release uses 40)."""
    folder = inspect_model_folder(path, task)
    folder.check(ae_chunk_size)
    if folder.layout is Layout.SAVED:
        return _load_saved(folder, dtype, image_encoder_dtype, ae_chunk_size)
    return PIPELINES[folder.task](**released_parts(folder, dtype, image_encoder_dtype, ae_chunk_size))


def _load_saved(folder: ModelFolder, dtype, image_encoder_dtype, ae_chunk_size):
    cls = PIPELINES[folder.task]
    extra = {}
    if ae_chunk_size:
        extra["vae"] = AutoencoderDCV.from_pretrained(folder.autoencoder, chunk_size=ae_chunk_size).to(dtype)
    try:
        return cls.from_pretrained(
            folder.path, **_diffusers_dtype({"default": dtype, "image_encoder": image_encoder_dtype}), **extra
        )
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{folder.path}: cannot load the pipeline ({first_line(e)})") from e


# ---- released -> saved ----------------------------------------------------------------------------------------


def convert_released(
    src: str | Path,
    out: str | Path,
    task: str = "t2v",
    ae_chunk_size: int | None = None,
    link: bool = False,
) -> ModelFolder:
    """Write the released folder `src` as a saved pipeline folder `out` for `task`.

    The transformer, text encoder, tokenizer and scheduler folders are already in diffusers /
    transformers format and are copied as they are (hard-linked with `link`); the DC-AE-V `.pt` becomes
    `vae/` and the Wan CLIP `.pth` `image_encoder/` + `image_processor/`, in the files' own dtypes. Memory
    stays at the size of the autoencoder and CLIP, whatever the size of the transformer.
    """
    import transformers
    from diffusers import WanTransformer3DModel
    from transformers import AutoConfig, AutoTokenizer

    folder = inspect_model_folder(src, task)
    if folder.layout is not Layout.RELEASED:
        raise DCVGError(f"{src}: already a saved pipeline (it has model_index.json); nothing to convert")
    folder.check(ae_chunk_size)
    root = folder.path
    vae = load_official(folder.autoencoder, chunk_size=ae_chunk_size)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    scheduler = _load_scheduler(root / "scheduler")
    text_config = AutoConfig.from_pretrained(root / "text_encoder")
    text_cls = getattr(transformers, (text_config.architectures or ["UMT5EncoderModel"])[0], None)
    if text_cls is None:
        raise DCVGError(f"{root / 'text_encoder'}: unknown architecture {text_config.architectures}")
    with torch.device("meta"):  # only to record the component classes in model_index.json
        transformer = WanTransformer3DModel.from_config(
            WanTransformer3DModel.load_config(folder.transformer_dir)
        )
        text_encoder = text_cls(text_config)
    parts = dict(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    if task == "i2v":
        image_encoder = load_wan_clip(folder.clip, dtype=None)
        parts.update(
            image_encoder=image_encoder,
            image_processor=wan_clip_image_processor(image_encoder.config.image_size),
        )
    pipe = PIPELINES[task](**parts)
    with atomic_dir(out) as tmp:
        pipe.save_config(tmp)  # model_index.json
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        if task == "i2v":
            parts["image_encoder"].save_pretrained(tmp / "image_encoder", safe_serialization=True)
            parts["image_processor"].save_pretrained(tmp / "image_processor")
        for name, source in (
            ("transformer", folder.transformer_dir),
            ("text_encoder", root / "text_encoder"),
            ("tokenizer", root / "tokenizer"),
            ("scheduler", root / "scheduler"),
        ):
            _copy_tree(source, tmp / name, link)
    return inspect_model_folder(out, task)


def _copy_tree(src: Path, dst: Path, link: bool) -> None:
    def copy(s: str, d: str) -> None:
        if link:
            try:
                os.link(s, d)
                return
            except OSError:  # another file system: fall back to a copy
                pass
        shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy)


__all__ = [
    "PIPELINES",
    "RELEASED_AE_FILE",
    "Layout",
    "ModelFolder",
    "convert_released",
    "inspect_model_folder",
    "load_pipeline",
]
