"""Export an AE-Adapt-V result (DC-VideoGen Sec. 3.3) for inference: `dcvg adapt export`.

A finished run leaves only what differs from the base Wan model (RUN/adapted/, see `result.py`). Two
exports turn it into something a user loads:

- fused (`export_fused`, `--fuse`): a complete diffusers pipeline folder (`DCVideoGenPipeline` for T2V,
  `DCVideoGenImageToVideoPipeline` for I2V) with the LoRA merged into the base weights, as the authors
  release it (FACTS section 6). It loads with `load_pipeline(OUT)` / `from_pretrained(OUT)` and runs with
  `dcvg generate --model OUT`. The only export for a full fine-tuning result.
- unfused (`export_unfused`): a small adapter folder for the base model, kept beside it::

      pytorch_lora_weights.safetensors  the LoRA, diffusers format, with its rank and alpha as metadata
                                        (without it `load_lora_weights` assumes alpha = rank)
      adapted_modules.safetensors       the new patch embedder, output head and modulation table
                                        (`load_lora_weights` refuses non-LoRA keys, FACTS section 6)
      adapter_config.json               the adapted transformer config, task, base and autoencoder

  `load_adapted_pipeline(base, adapter)` is the one call that turns the base Wan pipeline folder and these
  files into a DC-VideoGen pipeline.

Every output folder is written under a temporary name and renamed into place (`utils.atomic`).
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import DCVGError, first_line
from ..models.dcae_v.loading import load_autoencoder
from ..pipelines import DCVideoGenImageToVideoPipeline, DCVideoGenPipeline
from ..pipelines.loading import PIPELINES
from ..utils.atomic import atomic_dir, check_writable_parent
from .model import (
    LoraSpec,
    adapted_config,
    add_lora,
    base_task,
    build_adapted_transformer,
    check_adapted_fits,
    is_lora,
    load_adapted_state,
    load_base_transformer,
    transformer_folder,
)
from .result import AdaptedResult, read_adapted

if TYPE_CHECKING:
    from diffusers import WanTransformer3DModel

logger = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default name for save/load_lora_weights
MODULES_FILE = "adapted_modules.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = "dcvideogen-adapter"
ADAPTER_VERSION = 1

TEXT_PARTS = ("tokenizer", "text_encoder", "scheduler")
IMAGE_PARTS = ("image_encoder", "image_processor")  # I2V with CLIP image features
FLOAT32_PARTS = ("image_encoder",)  # the CLIP encoder stays float32, as in the release


# ---- checks ---------------------------------------------------------------------------------------------


def _plain(value):
    """Tuples as lists, recursively, so that a config read from JSON compares equal to one built in code."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _full_wan_config(config: dict) -> dict:
    """A Wan transformer config with every argument the file leaves out at its default (as the model has it)."""
    from diffusers import WanTransformer3DModel

    params = inspect.signature(WanTransformer3DModel.__init__).parameters.values()
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return {**defaults, **{k: v for k, v in config.items() if not k.startswith("_")}}


def check_output_folder(out: str | Path) -> Path:
    """`out` as a Path; DCVGError when it is a file, a folder with files in it, or cannot be created."""
    out = Path(out)
    check_writable_parent(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DCVGError(
            f"{out}: exists and is not an empty folder; remove it or choose another output folder"
        )
    return out


def _resolve_base(base: str | Path | None, recorded: str) -> Path:
    """The base Wan folder: `base` when given, else the one the run was trained with."""
    path = Path(base if base is not None else recorded)
    if not path.is_dir():
        how = "given" if base is not None else "recorded in the run"
        raise DCVGError(
            f"base model {path} ({how}) is not a folder; pass --base with the Wan pipeline folder the run was "
            "trained on"
        )
    return path


def _resolve_autoencoder(autoencoder: str | Path | None, recorded: str) -> str:
    """The DC-AE-V: `autoencoder` when given, else the one the run was trained with (which must still exist)."""
    if autoencoder is not None:
        return str(autoencoder)
    if recorded != "default" and not Path(recorded).exists():
        raise DCVGError(
            f"the autoencoder recorded in the run ({recorded}) does not exist; pass --autoencoder with the DC-AE-V "
            "the run was trained with"
        )
    return recorded


def checked_adapted_config(base: Path, transformer_config: dict, task: str) -> dict:
    """The adapted config rebuilt from the base folder's transformer config (no weights read); DCVGError when it
    differs from the one the run (or adapter) recorded, i.e. the base is not the model it was trained on."""
    from diffusers import WanTransformer3DModel

    folder = transformer_folder(base)
    recorded = _full_wan_config(transformer_config)
    base_config = dict(WanTransformer3DModel.load_config(folder))
    if base_task(base_config) != task:
        raise DCVGError(
            f"{folder}: a Wan {base_task(base_config).upper()} transformer, but the adaptation is {task.upper()}; "
            "pass the Wan model it was trained on as the base"
        )
    rebuilt = _full_wan_config(
        adapted_config(base_config, recorded["out_channels"], task, recorded["patch_size"])
    )
    diff = [k for k in sorted(recorded) if _plain(rebuilt.get(k)) != _plain(recorded[k])]
    if diff:
        shown = ", ".join(f"{k} {_plain(rebuilt.get(k))} vs {_plain(recorded[k])}" for k in diff[:3])
        raise DCVGError(
            f"{folder}: this base transformer does not match the one the adaptation was trained on ({shown}; "
            "base vs recorded); pass the Wan model it was trained on as the base"
        )
    return rebuilt


def _read_model_index(base: Path) -> dict:
    index = base / "model_index.json"
    try:
        return json.loads(index.read_text())
    except FileNotFoundError:
        raise DCVGError(
            f"{base}: no model_index.json; give the base Wan pipeline folder (with tokenizer/, text_encoder/, "
            "scheduler/), such as Wan2.1-T2V-1.3B-Diffusers"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DCVGError(f"{index}: not valid JSON ({e}); re-download the base Wan model") from e


def base_part_names(base: Path, config: dict) -> list[str]:
    """The parts the DC-VideoGen pipeline takes from the base Wan pipeline folder; DCVGError naming every
    missing one."""
    index = _read_model_index(base)
    names = list(TEXT_PARTS) + (list(IMAGE_PARTS) if config.get("image_dim") is not None else [])
    missing = [n for n in names if not isinstance(index.get(n), list) or not (base / n).is_dir()]
    if missing:
        raise DCVGError(
            f"{base}: the base Wan pipeline folder lacks {', '.join(m + '/' for m in missing)}; give the full "
            "diffusers Wan pipeline folder (as saved by save_pretrained) as the base"
        )
    return names


# ---- assembling a pipeline ----------------------------------------------------------------------------


def _load_base_part(base: Path, name: str, index: dict, dtype: torch.dtype):
    """One component of the base Wan pipeline folder, with the class model_index.json names for it."""
    library, class_name = index[name][:2]
    cls = getattr(importlib.import_module(str(library)), str(class_name), None)
    if cls is None:
        raise DCVGError(f"{base / 'model_index.json'}: unknown class {library}.{class_name} for {name}/")
    kwargs = {}
    if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
        kwargs["dtype"] = torch.float32 if name in FLOAT32_PARTS else dtype
    try:
        part = cls.from_pretrained(base / name, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        first = first_line(e)
        raise DCVGError(f"{base / name}: cannot load the {class_name} ({first}); re-download the base") from e
    return part.eval() if isinstance(part, torch.nn.Module) else part


def assemble_pipeline(
    transformer: WanTransformer3DModel, base: Path, autoencoder: str, task: str, dtype: torch.dtype
) -> DCVideoGenPipeline | DCVideoGenImageToVideoPipeline:
    """The DC-VideoGen pipeline of `task` from an adapted transformer, a DC-AE-V and the base's text stack,
    scheduler (and CLIP for I2V)."""
    names = base_part_names(base, dict(transformer.config))
    index = _read_model_index(base)
    parts = {name: _load_base_part(base, name, index, dtype) for name in names}
    vae = load_autoencoder(autoencoder, dtype=dtype)
    pipe = PIPELINES[task](transformer=transformer, vae=vae, **parts)
    pipe.check_components()
    return pipe


# ---- the transformer -------------------------------------------------------------------------------------


def rebuild_transformer(
    result: AdaptedResult, base: str | Path | None = None, dtype: torch.dtype = torch.float32
) -> WanTransformer3DModel:
    """The adapted `WanTransformer3DModel` of a run: base weights, new embedder/head, LoRA layers (peft, active)
    when the run used LoRA, and the run's adapted state. `base` overrides the base recorded in the run."""
    base_path = _resolve_base(base, result.base)
    config = checked_adapted_config(base_path, result.transformer_config, result.task)
    base_model = load_base_transformer(base_path, dtype)
    model = build_adapted_transformer(base_model, config["out_channels"], result.task, config["patch_size"])
    del base_model
    if result.lora is not None:
        add_lora(model, result.lora)
    load_adapted_state(model, result.state)
    return model.eval()


def merge_lora(transformer: WanTransformer3DModel) -> None:
    """Merge the LoRA into the base weights in place (diffusers `fuse_lora`, then `unload_lora` drops the peft
    layers); afterwards the model is a plain `WanTransformer3DModel` with the base key names."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    transformer.fuse_lora(lora_scale=1.0)
    transformer.unload_lora()
    left = [n for n, m in transformer.named_modules() if isinstance(m, BaseTunerLayer)]
    keys = [k for k in transformer.state_dict() if is_lora(k) or ".base_layer." in k]
    if left or keys:
        raise RuntimeError(f"LoRA still present after merging: modules {left[:3]}, keys {keys[:3]}")


def lora_metadata(spec: LoraSpec) -> dict:
    """The peft `LoraConfig` arguments saved with the LoRA file; `load_lora_weights` builds its config from them,
    so the scale alpha / rank survives (FACTS section 3). Full module names, as `add_lora` used them."""
    return {
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "target_modules": sorted(spec.target_modules),
        "lora_dropout": 0.0,
        "bias": "none",
        "init_lora_weights": True,
        "use_dora": False,
        "use_rslora": False,
    }


def split_adapted_state(
    result: AdaptedResult, config: dict
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A LoRA result's state as (LoRA weights in diffusers/peft naming without the adapter name, e.g.
    `blocks.0.attn1.to_q.lora_A.weight`; the other adapted weights under the model's own names). The shapes are
    checked against the adapted model built on the meta device (no base weights read)."""
    from diffusers import WanTransformer3DModel
    from peft.utils import get_peft_model_state_dict

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    add_lora(model, result.lora)
    check_adapted_fits(model.state_dict(), result.state)
    lora = {k: v for k, v in result.state.items() if is_lora(k)}
    modules = {k: v.contiguous() for k, v in result.state.items() if not is_lora(k)}
    if any(".base_layer." in k for k in modules):
        raise DCVGError("the run trained a LoRA-wrapped module fully; export it with --fuse")
    lora = get_peft_model_state_dict(model, state_dict=lora, adapter_name="default")
    return {k: v.contiguous() for k, v in lora.items()}, modules


# ---- exports -----------------------------------------------------------------------------------------------


def export_fused(
    run: str | Path,
    out: str | Path,
    base: str | Path | None = None,
    autoencoder: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a complete DC-VideoGen pipeline folder `out` from the run `run`, LoRA merged into the base
    weights; text stack, scheduler (and CLIP) from the base Wan folder, DC-AE-V from the run (or
    `autoencoder`). Loads with `load_pipeline(out)` and `dcvg generate --model out`."""
    result = read_adapted(run)
    out = check_output_folder(out)
    base_path = _resolve_base(base, result.base)
    ae = _resolve_autoencoder(autoencoder, result.autoencoder)
    base_part_names(base_path, result.transformer_config)  # fail before reading any weights
    transformer = rebuild_transformer(result, base_path, dtype)
    if result.lora is not None:
        merge_lora(transformer)
    pipe = assemble_pipeline(transformer, base_path, ae, result.task, dtype)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    logger.debug(f"wrote the fused {result.task} pipeline to {out}")
    return out


def export_unfused(
    run: str | Path, out: str | Path, base: str | Path | None = None, autoencoder: str | Path | None = None
) -> Path:
    """Write the adapter folder `out` (LoRA file, adapted modules, adapter_config.json) of a LoRA run, for
    `load_adapted_pipeline(base, out)`. `base` / `autoencoder` override (and are recorded instead of) the run's."""
    result = read_adapted(run)
    if result.lora is None:
        raise DCVGError(
            f"{run}: a full fine-tuning result has no LoRA to keep apart from the base weights; use --fuse"
        )
    out = check_output_folder(out)
    base_path = _resolve_base(base, result.base)
    config = checked_adapted_config(base_path, result.transformer_config, result.task)
    lora, modules = split_adapted_state(result, config)
    meta = {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_VERSION,
        "task": result.task,
        "transformer_config": {k: _plain(v) for k, v in config.items()},
        "lora": result.lora.to_dict(),
        "base": str(base_path),
        "autoencoder": str(autoencoder) if autoencoder is not None else result.autoencoder,
        "lora_file": LORA_FILE,
        "modules_file": MODULES_FILE,
        "stages": result.stages,
    }
    with atomic_dir(out) as tmp:
        PIPELINES[result.task].save_lora_weights(
            tmp,
            transformer_lora_layers=lora,
            weight_name=LORA_FILE,
            transformer_lora_adapter_metadata=lora_metadata(result.lora),
        )
        save_file(modules, str(tmp / MODULES_FILE), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    logger.debug(f"wrote the {result.task} adapter (LoRA rank {result.lora.rank}) to {out}")
    return out


def export_run(
    run: str | Path,
    out: str | Path,
    fuse: bool,
    base: str | Path | None = None,
    autoencoder: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """`dcvg adapt export`: the fused pipeline folder (`fuse`) or the adapter folder of the run `run`."""
    if fuse:
        return export_fused(run, out, base, autoencoder, dtype)
    return export_unfused(run, out, base, autoencoder)


# ---- loading an adapter -------------------------------------------------------------------------------------


def read_adapter_config(adapter: str | Path) -> dict:
    """adapter_config.json of an adapter folder written by `export_unfused`, its files checked."""
    adapter = Path(adapter)
    path = adapter / ADAPTER_CONFIG
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DCVGError(
            f"{adapter}: no {ADAPTER_CONFIG}; give a folder written by `dcvg adapt export` (without --fuse)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DCVGError(f"{path}: not valid JSON ({e}); export the adapter again") from e
    if meta.get("format") != ADAPTER_FORMAT:
        raise DCVGError(f"{path}: not a DC-VideoGen adapter (format {meta.get('format')!r}); export it again")
    for name in (meta.get("lora_file", LORA_FILE), meta.get("modules_file", MODULES_FILE)):
        if not (adapter / name).is_file():
            raise DCVGError(f"{adapter / name}: missing; export the adapter again")
    return meta


def load_adapted_pipeline(
    base: str | Path,
    adapter: str | Path,
    autoencoder: str | Path | None = None,
    dtype: torch.dtype = torch.bfloat16,
    *,
    fuse: bool = False,
) -> DCVideoGenPipeline | DCVideoGenImageToVideoPipeline:
    """A DC-VideoGen pipeline (on the CPU) from the base Wan pipeline folder `base` and an adapter folder from
    `export_unfused`: the adapted transformer (base weights, the adapter's embedder/head/modulation), the
    DC-AE-V (`autoencoder`, default the one recorded in the adapter), the base's text stack and scheduler (and
    CLIP for I2V), then the LoRA through `pipe.load_lora_weights(adapter)`; merged into the weights with `fuse`.

        pipe = load_adapted_pipeline("Wan2.1-T2V-1.3B-Diffusers", "my-adapter").to("cuda")
    """
    adapter = Path(adapter)
    meta = read_adapter_config(adapter)
    base_path = _resolve_base(base, meta["base"])
    task = meta["task"]
    config = checked_adapted_config(base_path, meta["transformer_config"], task)
    base_part_names(base_path, config)
    ae = _resolve_autoencoder(autoencoder, meta["autoencoder"])
    modules_file = adapter / meta.get("modules_file", MODULES_FILE)
    try:
        modules = load_file(str(modules_file))
    except (OSError, SafetensorError) as e:
        raise DCVGError(f"{modules_file}: unreadable ({e}); export the adapter again") from e

    base_model = load_base_transformer(base_path, dtype)
    transformer = build_adapted_transformer(base_model, config["out_channels"], task, config["patch_size"])
    del base_model
    load_adapted_state(transformer, modules)
    pipe = assemble_pipeline(transformer, base_path, ae, task, dtype)
    pipe.load_lora_weights(adapter, weight_name=meta.get("lora_file", LORA_FILE))
    if fuse:
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    return pipe
