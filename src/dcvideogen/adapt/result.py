"""What `dcvg adapt train` leaves for export: RUN/adapted/ with the adapted state and how to rebuild it.

    adapted.safetensors   the adapted parameters (model.py `adapted_state`; EMA weights when EMA was on)
    adapted.json          {"transformer_config", "lora" (rank, alpha, target_modules) or null,
                           "full_finetune", "task", "base", "autoencoder", "stages"}

Rebuild: `load_base_transformer(base)` -> `build_adapted_transformer` -> `add_lora(spec)` when there is one ->
`load_adapted_state`. Written atomically (a folder renamed into place).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import DCVGError
from ..utils.atomic import atomic_dir
from .model import LoraSpec

STATE_FILE = "adapted.safetensors"
META_FILE = "adapted.json"


@dataclass
class AdaptedResult:
    transformer_config: dict
    state: dict[str, torch.Tensor]
    lora: LoraSpec | None
    full_finetune: bool
    task: str
    base: str
    autoencoder: str
    stages: list[dict] = field(default_factory=list)


def write_adapted(folder: str | Path, result: AdaptedResult) -> Path:
    folder = Path(folder)
    meta = {
        "transformer_config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in result.transformer_config.items()
        },
        "lora": result.lora.to_dict() if result.lora is not None else None,
        "full_finetune": result.full_finetune,
        "task": result.task,
        "base": result.base,
        "autoencoder": result.autoencoder,
        "stages": result.stages,
    }
    with atomic_dir(folder, overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in result.state.items()}, str(tmp / STATE_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def read_adapted(folder: str | Path) -> AdaptedResult:
    """The result of a run folder (RUN or RUN/adapted)."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file() and (folder / "adapted" / META_FILE).is_file():
        folder = folder / "adapted"
    if not (folder / META_FILE).is_file():
        raise DCVGError(
            f"{folder}: no {META_FILE}; give the folder of a finished `dcvg adapt train` run (RUN or RUN/adapted)"
        )
    try:
        meta = json.loads((folder / META_FILE).read_text())
        state = load_file(str(folder / STATE_FILE))
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise DCVGError(f"{folder}: unreadable adaptation result ({e}); re-run dcvg adapt train") from e
    cfg = dict(meta["transformer_config"])
    cfg["patch_size"] = tuple(cfg["patch_size"])
    return AdaptedResult(
        transformer_config=cfg,
        state=state,
        lora=LoraSpec.from_dict(meta["lora"]) if meta.get("lora") else None,
        full_finetune=bool(meta.get("full_finetune", False)),
        task=meta["task"],
        base=meta["base"],
        autoencoder=meta["autoencoder"],
        stages=meta.get("stages", []),
    )
