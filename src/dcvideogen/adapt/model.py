"""The adapted transformer of AE-Adapt-V (DC-VideoGen Sec. 3.3, Fig. 7): a Wan `WanTransformer3DModel`
whose patch embedder and output head are new, sized for the DC-AE-V latent, and whose every other
weight is the base model's.

It stays diffusers' own class (built from the base config with in/out channels and patch size
changed, the base state dict loaded with the embedder/head keys left out; FACTS section 3), so the
DC-VideoGen pipelines load the result unchanged. What each stage trains is decided here:

- stage 1a: only the new `patch_embedding` (trained outside the transformer, see `align.py`);
- stage 1b: `patch_embedding` + the head (`proj_out`, and `scale_shift_table` when configured), blocks frozen;
- stage 2: LoRA (peft, through diffusers' `add_adapter`) on the block linears, plus embedder and head; or
  every weight with `full_finetune`.

The "adapted state" (`adapted_state`) is what differs from the base model: embedder, head, modulation
table and the LoRA weights (everything under full fine-tuning). Checkpoints, stage hand-over and export
carry only it, so a 14B run never writes the 14B base weights again.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import DCVGError, first_line
from ..pipelines.conditioning import expected_transformer_channels

EMBEDDER = "patch_embedding."
HEAD = "proj_out."
MODULATION = "scale_shift_table"


# ---- the base model --------------------------------------------------------------------------------------


def transformer_folder(base: str | Path) -> Path:
    """The transformer folder of a Wan model: `base/transformer` of a pipeline folder, or `base` itself."""
    base = Path(base)
    for folder in (base / "transformer", base):
        cfg = folder / "config.json"
        if cfg.is_file():
            try:
                name = json.loads(cfg.read_text()).get("_class_name")
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DCVGError(f"{cfg}: not valid JSON ({e})") from e
            if name == "WanTransformer3DModel":
                return folder
            if folder == base / "transformer":
                raise DCVGError(f"{cfg}: a {name}, not a WanTransformer3DModel; give a Wan model folder")
    raise DCVGError(
        f"{base}: not a Wan model folder (no transformer/config.json of a WanTransformer3DModel); give a "
        "diffusers Wan pipeline folder such as Wan2.1-T2V-1.3B-Diffusers"
    )


def load_base_transformer(base: str | Path, dtype: torch.dtype = torch.float32):
    """The base `WanTransformer3DModel` (on the CPU)."""
    from diffusers import WanTransformer3DModel

    folder = transformer_folder(base)
    try:
        return WanTransformer3DModel.from_pretrained(folder, torch_dtype=dtype).eval()
    except (OSError, RuntimeError, ValueError) as e:
        first = first_line(e)
        raise DCVGError(f"{folder}: cannot load the Wan transformer ({first})") from e


def base_task(config: dict) -> str:
    """t2v or i2v from a Wan transformer config: I2V takes 2 latents + a 4-channel mask (16 + 4 + 16 = 36)."""
    out = config.get("out_channels") or config["in_channels"]
    return "i2v" if config["in_channels"] == 2 * out + 4 else "t2v"


# ---- building -------------------------------------------------------------------------------------------


def adapted_config(base_config: dict, latent_channels: int, task: str, patch_size) -> dict:
    """The base config with the DC-AE-V latent's channels (Z, or 2Z + 4 for I2V in) and the new patch size."""
    have = base_task(base_config)
    if have != task:
        raise DCVGError(
            f"the base transformer is a Wan {have.upper()} model (in_channels {base_config['in_channels']}) but "
            f"model.task={task}; use a {task.upper()} base or set model.task={have}"
        )
    cfg = {k: v for k, v in base_config.items() if not k.startswith("_")}
    cfg.update(
        in_channels=expected_transformer_channels(latent_channels, task),
        out_channels=latent_channels,
        patch_size=tuple(int(p) for p in patch_size),
    )
    return cfg


def xavier_embedder_(conv: nn.Conv3d, generator: torch.Generator | None = None) -> nn.Conv3d:
    """A new patch embedder's init, in place: xavier-uniform weight (as the authors' stage 1a), bias 0."""
    with torch.no_grad():
        w = conv.weight  # (D, C, pt, ph, pw)
        bound = math.sqrt(6.0 / (w[0].numel() + w.shape[0]))
        w.copy_(torch.rand(w.shape, generator=generator) * 2 * bound - bound)
        conv.bias.zero_()
    return conv


def init_new_modules(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """The new embedder xavier-uniform, the new output Linear zero, so the adapted model starts by
    predicting 0 (the authors' assembly, FACTS section 6)."""
    xavier_embedder_(model.patch_embedding, generator)
    with torch.no_grad():
        model.proj_out.weight.zero_()
        model.proj_out.bias.zero_()


def build_adapted_transformer(base, latent_channels: int, task: str, patch_size=(1, 1, 1), seed: int = 0):
    """A `WanTransformer3DModel` for the DC-AE-V latent: base weights everywhere but the new embedder (random,
    xavier) and output Linear (zero). `base` is the loaded base model (or its state dict + config pair)."""
    from diffusers import WanTransformer3DModel

    cfg = adapted_config(dict(base.config), latent_channels, task, patch_size)
    model = WanTransformer3DModel.from_config(cfg).to(base.dtype)
    state = {k: v for k, v in base.state_dict().items() if not k.startswith((EMBEDDER, HEAD))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    new = {k for k in model.state_dict() if k.startswith((EMBEDDER, HEAD))}
    assert set(missing) == new and not unexpected, (missing, unexpected)
    init_new_modules(model, torch.Generator().manual_seed(seed))
    return model.eval()


# ---- what trains ----------------------------------------------------------------------------------------


def is_lora(name: str) -> bool:
    return "lora_" in name


def is_adapted(name: str, full: bool = False) -> bool:
    """Parameters that differ from the base model after adaptation (all of them under full fine-tuning)."""
    return full or name.startswith((EMBEDDER, HEAD, MODULATION)) or is_lora(name)


def set_trainable(model: nn.Module, names) -> list[str]:
    """requires_grad on exactly the parameters `names` selects (a predicate on the name); returns them."""
    chosen = []
    for n, p in model.named_parameters():
        p.requires_grad_(bool(names(n)))
        if p.requires_grad:
            chosen.append(n)
    return chosen


def head_alignment_params(train_embedder: bool, train_modulation: bool):
    """Stage 1b: the head (proj_out, and scale_shift_table if configured) and the embedder (if configured)."""

    def pick(n: str) -> bool:
        return (
            n.startswith(HEAD)
            or (train_modulation and n == MODULATION)
            or (train_embedder and n.startswith(EMBEDDER))
        )

    return pick


def finetune_params(full: bool):
    """Stage 2: LoRA + embedder + head + modulation, or everything."""
    return lambda n: is_adapted(n, full)


def adapted_state(model: nn.Module, full: bool = False, state: dict | None = None) -> dict[str, torch.Tensor]:
    """The adapted parameters (float32 copies on the CPU), from the model or from its full `state` dict."""
    state = model.state_dict() if state is None else state
    return {k: v.detach().float().cpu().clone() for k, v in state.items() if is_adapted(k, full)}


def check_adapted_fits(own: dict, adapted: dict) -> None:
    """DCVGError unless every adapted weight exists in the model's state `own` with the same shape."""
    bad = [k for k in adapted if k not in own or own[k].shape != adapted[k].shape]
    if bad:
        k = bad[0]
        have = tuple(own[k].shape) if k in own else "missing"
        raise DCVGError(
            f"adapted weight {k!r} {tuple(adapted[k].shape)} does not fit the model ({have}); the run was made "
            "with another base model, autoencoder or LoRA setting"
        )


def load_adapted_state(model: nn.Module, adapted: dict[str, torch.Tensor]) -> None:
    """Copy an adapted state into a model built by `build_adapted_transformer` (+ `add_lora` when it has LoRA
    weights); every key must exist with the same shape."""
    own = model.state_dict()
    check_adapted_fits(own, adapted)
    with torch.no_grad():
        for k, v in adapted.items():
            own[k].copy_(v)


# ---- LoRA ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]  # full module names

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "target_modules": list(self.target_modules)}

    @classmethod
    def from_dict(cls, d: dict) -> LoraSpec:
        return cls(int(d["rank"]), float(d["alpha"]), tuple(d["target_modules"]))


def lora_target_modules(model: nn.Module, targets: list[str], cross_attention: bool = True) -> list[str]:
    """Full names of the block Linears whose name ends with one of `targets` (".attn2." left out unless
    `cross_attention`). Only inside `blocks`: the condition embedders and the head are not LoRA targets."""
    names = []
    for name, module in model.named_modules():
        if not name.startswith("blocks.") or not isinstance(module, nn.Linear):
            continue
        if not cross_attention and ".attn2." in name:
            continue
        if any(name == t or name.endswith("." + t) for t in targets):
            names.append(name)
    if not names:
        raise DCVGError(f"finetune.lora_targets={targets}: no Linear in the transformer blocks matches")
    return names


def lora_parameter_count(model: nn.Module, target_modules, rank: int) -> int:
    """rank x (in + out) per targeted Linear: the LoRA parameters `add_lora` adds."""
    modules = dict(model.named_modules())
    return sum(rank * (modules[n].in_features + modules[n].out_features) for n in target_modules)


def add_lora(model, spec: LoraSpec, adapter_name: str = "default") -> None:
    """Inject LoRA (peft) into `model` in place with diffusers' `add_adapter`; B starts at zero, so the model's
    output is unchanged."""
    from peft import LoraConfig

    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        target_modules=list(spec.target_modules),
        init_lora_weights=True,
    )
    model.add_adapter(config, adapter_name=adapter_name)


def lora_spec_from_config(model: nn.Module, cfg) -> LoraSpec:
    """The LoRA of a `FinetuneConfig` on this model."""
    targets = lora_target_modules(model, cfg.lora_targets, cfg.lora_cross_attention)
    return LoraSpec(cfg.lora_rank, float(cfg.lora_alpha), tuple(targets))


def is_wan_block(module: nn.Module) -> bool:
    """FSDP unit: one Wan transformer block."""
    return type(module).__name__ == "WanTransformerBlock"


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def load_base_embedder(base: str | Path) -> nn.Conv3d:
    """The base model's patch embedder alone (the stage 1a teacher), read from its safetensors files
    without loading the transformer."""
    from safetensors import safe_open

    folder = transformer_folder(base)
    cfg = json.loads((folder / "config.json").read_text())
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    patch = tuple(cfg["patch_size"])
    conv = nn.Conv3d(cfg["in_channels"], dim, kernel_size=patch, stride=patch)
    found = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in ("patch_embedding.weight", "patch_embedding.bias"):
                if key in f.keys():  # noqa: SIM118 - safe_open has no __contains__
                    found[key.split(".")[-1]] = f.get_tensor(key).float()
    if len(found) != 2:
        raise DCVGError(
            f"{folder}: no patch_embedding weights in its safetensors files; is it a Wan transformer?"
        )
    conv.load_state_dict(found)
    return conv.requires_grad_(False).eval()


def lora_spec_for_config(transformer_config: dict, finetune_cfg) -> LoraSpec:
    """The LoRA a `FinetuneConfig` puts on a transformer of this config (built on the meta device)."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(transformer_config)
    return lora_spec_from_config(model, finetune_cfg)


@torch.no_grad()
def frozen_fingerprint(model: nn.Module) -> dict[str, tuple[float, float]]:
    """(sum, sum of squares) in float64 of every frozen parameter (gathered whole under FSDP, a collective):
    taken at the start and the end of a stage, they show the frozen weights were not touched."""
    from ..training.ema import full_tensor

    out = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            t = full_tensor(p.detach()).double()
            out[n] = (t.sum().item(), t.square().sum().item())
    return out
