"""Resolve what a user names as a model: a saved folder, an official `.pt` file, a preset, or the default."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import torch

from ...errors import DCVGError, first_line
from .autoencoder import AutoencoderDCV
from .config import PRESETS, get_preset
from .official import CheckpointError, load_official

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "dc-ae-v-f32t4c32-small"


def default_model_dir() -> Path:
    """Folder of the small trained model shipped inside the package."""
    return Path(str(resources.files("dcvideogen") / "assets" / DEFAULT_MODEL_NAME))


def load_autoencoder(
    spec: str | Path | None = None,
    preset: str | None = None,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    allow_random: bool = False,
) -> AutoencoderDCV:
    """Load a DC-AE-V.

    spec: None or "default" (the bundled model), a folder written by `save_pretrained` / `dcvg convert`,
    an official `.pt` / `.pth` checkpoint (architecture from `preset` or inferred from its shapes), or
    a preset name (random weights; only with `allow_random`, for architecture info and benchmarks).
    """
    model = _load(spec, preset, chunk_size, allow_random)
    if dtype is not None or device is not None:
        # nn.Module.to: diffusers' ModelMixin.to warns about float32 modules on every dtype cast, even when
        # the model has none (diffusers 0.42)
        torch.nn.Module.to(model, device=device, dtype=dtype)
    return model.eval()


def _load(spec, preset, chunk_size, allow_random) -> AutoencoderDCV:
    if spec is None or str(spec) == "default":
        folder = default_model_dir()
        if not (folder / "config.json").is_file():
            raise DCVGError(
                f"the bundled default model is missing from this install ({folder}); pass --model with a "
                "model folder or an official .pt checkpoint"
            )
        return _from_folder(folder)
    path = Path(spec)
    if path.is_dir():
        return _from_folder(path, chunk_size)
    if path.is_file():
        if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
            return load_official(path, preset=preset, chunk_size=chunk_size)
        raise DCVGError(
            f"{path}: not a model; give a folder with config.json (from save_pretrained / dcvg convert) "
            "or an official .pt checkpoint"
        )
    key = str(spec) if str(spec).startswith("dc-ae-v-") else f"dc-ae-v-{spec}"
    if key in PRESETS:
        if not allow_random:
            raise DCVGError(
                f"{spec!r} is an architecture preset without weights; pass a model folder or an official .pt "
                f"checkpoint (convert one with: dcvg convert CHECKPOINT.pt OUTDIR --preset {key})"
            )
        overrides = {"chunk_size": chunk_size} if chunk_size else {}
        return AutoencoderDCV.from_arch(get_preset(key, **overrides))
    raise DCVGError(
        f"{spec}: no such model folder, checkpoint file or preset (presets: {', '.join(PRESETS)})"
    )


def _from_folder(folder: Path, chunk_size: int | None = None) -> AutoencoderDCV:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise DCVGError(
            f"{folder}: no config.json; is this a folder written by save_pretrained or dcvg convert?"
        )
    try:
        cls_name = json.loads(config_file.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_file}: not valid JSON ({e}); rewrite it with dcvg convert") from e
    if cls_name not in (None, AutoencoderDCV.__name__):
        raise DCVGError(f"{folder}: holds a {cls_name}, not an {AutoencoderDCV.__name__}")
    kwargs = {"chunk_size": chunk_size} if chunk_size else {}
    try:
        return AutoencoderDCV.from_pretrained(folder, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        first = first_line(e)
        raise CheckpointError(
            f"{folder}: cannot load the weights ({first}); re-create the folder with dcvg convert"
        ) from e


def latent_channels_of(spec: str | Path | None) -> int:
    """The latent channels of the DC-AE-V `spec` names, read from its config (a folder, the default) or
    its tensor shapes (an official file), without building the model."""
    if spec is None or str(spec) == "default":
        folder = default_model_dir()
    else:
        folder = Path(spec)
    if folder.is_dir():
        try:
            return int(json.loads((folder / "config.json").read_text())["latent_channels"])
        except (OSError, KeyError, ValueError) as e:
            raise DCVGError(f"{folder}: no readable config.json with latent_channels ({e})") from e
    if folder.is_file():
        from .official import infer_config, read_official_checkpoint

        return infer_config(read_official_checkpoint(folder)).latent_channels
    return get_preset(str(spec) if str(spec).startswith("dc-ae-v-") else f"dc-ae-v-{spec}").latent_channels
