"""Training checkpoints: the whole training state in one safetensors file, written atomically.

A nested state (dicts, lists, tensors, numbers, strings) is stored as its tensors plus a JSON
skeleton in the file's metadata, so loading never unpickles anything. Files are written under a
temporary name and renamed, so a crash during a write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import DCVGError
from ..utils.atomic import atomic_file

_NAME = re.compile(r"^step-(\d{8})\.safetensors$")


def flatten_state(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors, JSON skeleton) of a nested state."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = o.detach().cpu().contiguous().clone()
            return {"T": name}
        if isinstance(o, dict):
            return {"D": [[k, walk(v)] for k, v in o.items()]}
        if isinstance(o, (list, tuple)):
            return {"L": [walk(v) for v in o], "tuple": isinstance(o, tuple)}
        if o is None or isinstance(o, (bool, int, float, str)):
            return {"V": o}
        raise TypeError(f"cannot store a {type(o).__name__} in a checkpoint")

    return tensors, walk(obj)


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    def walk(s: Any) -> Any:
        if "T" in s:
            return tensors[s["T"]]
        if "D" in s:
            return {k: walk(v) for k, v in s["D"]}
        if "L" in s:
            items = [walk(v) for v in s["L"]]
            return tuple(items) if s["tuple"] else items
        return s["V"]

    return walk(skeleton)


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}.safetensors"


def save_checkpoint(folder: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write `state` atomically to `checkpoint_path(folder, step)` (step-00001000.safetensors for step 1000);
    keep the newest `keep` files."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors, skeleton = flatten_state(state)
    path = checkpoint_path(folder, step)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"skeleton": json.dumps(skeleton), "step": str(step)})
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: int(_NAME.match(p.name)[1])
    )


def load_checkpoint(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (SafetensorError, OSError) as e:
        raise DCVGError(f"{path}: not a readable checkpoint ({e}); resume from another one") from e
    if "skeleton" not in meta:
        raise DCVGError(f"{path}: not a dcvideogen training checkpoint (no state skeleton)")
    return unflatten_state(tensors, json.loads(meta["skeleton"]))


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """--resume auto: the newest checkpoint of the run (None if there is none); else the given file."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir / "checkpoints")
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_file():
        raise DCVGError(f"--resume {resume}: no such checkpoint file (or use --resume auto)")
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
