"""Official DC-AE-V checkpoints (DC-Gen release, `dc-ae-v-f32t4c32-1.0-bf16.pt`) -> AutoencoderDCV.

The official file is a torch pickle holding ``{"ema_model_state_dict": {name: state_dict}}`` or
``{"model_state_dict": state_dict}``; it is read with ``torch.load(weights_only=True)``. Its module
tree differs from ours only in names (``stages.i.op_list.j.main.conv1.conv`` vs
``stages.i.blocks.j.conv1``), so the key map is derived from the architecture, stage by stage.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ...errors import DCVGError
from .config import PRESETS, DCAEVConfig, get_preset


class CheckpointError(DCVGError):
    """A checkpoint that cannot be read or does not fit the requested architecture."""


def official_key_map(cfg: DCAEVConfig) -> dict[str, str]:
    """{official parameter name: our parameter name} for an architecture."""
    m: dict[str, str] = {}

    def conv(off: str, ours: str, bias: bool = True) -> None:
        m[f"{off}.weight"] = f"{ours}.weight"
        if bias:
            m[f"{off}.bias"] = f"{ours}.bias"

    def block(off: str, ours: str) -> None:
        conv(f"{off}.main.conv1.conv", f"{ours}.conv1")
        conv(f"{off}.main.conv2.conv", f"{ours}.conv2", bias=False)
        conv(f"{off}.main.conv2.norm", f"{ours}.norm")

    conv("encoder.project_in.conv.conv", "encoder.conv_in")
    for i, depth in enumerate(cfg.layers_per_block):
        for j in range(depth):
            block(f"encoder.stages.{i}.op_list.{j}", f"encoder.stages.{i}.blocks.{j}")
        if cfg.has_resample(i):
            conv(f"encoder.stages.{i}.op_list.{depth}.main.conv.conv", f"encoder.stages.{i}.downsample.conv")
    conv("encoder.project_out.conv", "encoder.conv_out")

    conv("decoder.project_in.conv", "decoder.conv_in")
    for i, depth in enumerate(cfg.layers_per_block):
        offset = 0
        if cfg.has_resample(i):
            conv(f"decoder.stages.{i}.op_list.0.main.conv.conv", f"decoder.stages.{i}.upsample.conv")
            offset = 1
        for j in range(depth):
            block(f"decoder.stages.{i}.op_list.{j + offset}", f"decoder.stages.{i}.blocks.{j}")
    conv("decoder.project_out.op_list.0", "decoder.norm_out")
    conv("decoder.project_out.op_list.2.conv.conv", "decoder.conv_out")
    return m


def read_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside an official `.pt` file (EMA weights when present)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; give the path of the official .pt file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds on truncated or foreign files
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(e).__name__}); re-download the official .pt file"
        ) from e
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(ckpt).__name__}")
    if "ema_model_state_dict" in ckpt:
        ema = ckpt["ema_model_state_dict"]
        if not isinstance(ema, Mapping) or not ema:
            raise CheckpointError(f"{path}: 'ema_model_state_dict' is empty")
        first = next(iter(ema.values()))
        sd = first if isinstance(first, Mapping) and not isinstance(first, torch.Tensor) else ema
    elif "model_state_dict" in ckpt:
        sd = ckpt["model_state_dict"]
    else:
        raise CheckpointError(
            f"{path}: no 'model_state_dict' or 'ema_model_state_dict' inside (keys: {sorted(ckpt)[:5]}); "
            "is this an official DC-AE-V checkpoint?"
        )
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


_BLOCK = re.compile(r"^encoder\.stages\.(\d+)\.op_list\.(\d+)\.main\.conv1\.conv\.weight$")


def infer_config(sd: Mapping[str, torch.Tensor], chunk_size: int = 40) -> DCAEVConfig:
    """Architecture of an official state dict (chunk-causal; the chunk size is not stored in the file).

    Named presets are returned as such (with their latent scale); an empty first stage gets half the
    second stage's width, which the official code also never uses.
    """
    try:
        latent = sd["encoder.project_out.conv.weight"].shape[0]
        in_ch = sd["encoder.project_in.conv.conv.weight"].shape[1]
    except KeyError as e:
        raise CheckpointError(f"not an official DC-AE-V state dict: key {e.args[0]!r} is missing") from e
    stage_ids = {int(k.split(".")[2]) for k in sd if k.startswith("encoder.stages.")}
    if not stage_ids:
        raise CheckpointError("not an official DC-AE-V state dict: no encoder stages")
    num_stages = max(stage_ids) + 1
    depths = [0] * num_stages
    widths = [0] * num_stages
    for k, v in sd.items():
        if mt := _BLOCK.match(k):
            i, j = int(mt.group(1)), int(mt.group(2))
            depths[i] = max(depths[i], j + 1)
            widths[i] = v.shape[0]
    if widths[0] == 0:
        widths[0] = widths[1] // 2
    cfg = DCAEVConfig(
        in_channels=in_ch,
        latent_channels=latent,
        block_out_channels=tuple(widths),
        layers_per_block=tuple(depths),
        chunk_size=chunk_size,
    )
    for preset in PRESETS.values():
        if preset.replace(chunk_size=chunk_size, scaling_factor=1.0) == cfg:
            return preset.replace(chunk_size=chunk_size)
    return cfg


def preset_name(cfg: DCAEVConfig) -> str | None:
    """The preset whose architecture `cfg` has (chunk size and latent scale aside), if any."""
    for name, preset in PRESETS.items():
        if (
            preset.replace(
                chunk_size=cfg.chunk_size, scaling_factor=cfg.scaling_factor, temporal_mode=cfg.temporal_mode
            )
            == cfg
        ):
            return name
    return None


def convert_state_dict(
    sd: Mapping[str, torch.Tensor],
    cfg: DCAEVConfig,
    expected: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Rename an official state dict to ours, checking every key and shape against `expected` (our model's).

    Raises CheckpointError naming the first key that is missing or has the wrong shape.
    """
    key_map = official_key_map(cfg)
    out: dict[str, torch.Tensor] = {}
    for off_key, our_key in key_map.items():
        if our_key not in expected:
            raise AssertionError(f"key map names {our_key}, which the model lacks")  # internal invariant
        want = tuple(expected[our_key].shape)
        if off_key not in sd:
            raise CheckpointError(
                f"{source} does not fit {cfg.name} (widths {list(cfg.block_out_channels)}, depths "
                f"{list(cfg.layers_per_block)}): key {off_key!r} (model shape {want}) is missing; "
                "check --preset"
            )
        got = tuple(sd[off_key].shape)
        if got != want:
            raise CheckpointError(
                f"{source} does not fit {cfg.name}: first mismatched key {off_key!r} has checkpoint shape "
                f"{got} but the model expects {want}; check --preset"
            )
        out[our_key] = sd[off_key]
    extra = sorted(set(sd) - set(key_map))
    if extra:
        raise CheckpointError(
            f"{source} does not fit {cfg.name}: {len(extra)} unexpected keys, first {extra[0]!r} "
            f"(shape {tuple(sd[extra[0]].shape)}); check --preset"
        )
    return out


def load_official(path: str | Path, preset: str | DCAEVConfig | None = None, chunk_size: int | None = None):
    """AutoencoderDCV with the weights of an official `.pt` file; architecture from `preset` (a name or a
    config) or inferred from the file's shapes."""
    from .autoencoder import AutoencoderDCV

    sd = read_official_checkpoint(path)
    if preset is not None:
        cfg = preset if isinstance(preset, DCAEVConfig) else get_preset(preset)
        if chunk_size is not None:
            cfg = cfg.replace(chunk_size=chunk_size)
    else:
        cfg = infer_config(sd, chunk_size or 40)
    with torch.device("meta"):
        model = AutoencoderDCV.from_arch(cfg)
    ours = convert_state_dict(sd, cfg, model.state_dict(), source=str(path))
    model.load_state_dict(ours, strict=True, assign=True)  # parameters become the file's tensors (its dtype)
    return model.eval()
