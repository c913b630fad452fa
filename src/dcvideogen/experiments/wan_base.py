"""The base text-to-video model of experiment (ii), made here: a tiny diffusers Wan 2.1 T2V pipeline folder
and its DiT pre-trained in the base latent space.

- Text: a T5 tokenizer whose vocabulary is the words of the experiment's captions, and a small random
  UMT5 encoder (frozen, as Wan's is); no Wan weights can be downloaded here.
- Base latent space: diffusers' `AutoencoderKLWan` at a tiny config (f8t4c16, random weights), its
  per-channel `latents_mean` / `latents_std` measured on the training clips as Wan's are, so the latent the
  DiT models has zero mean and unit variance per channel. `dcvg adapt cache` encodes the base side with
  the base folder's `AutoencoderKLWan`, so the base space must be one; the project has no trainer for it,
  so its encoder is a fixed random map and its decoder is not used for any number (see adaptation.py).
- Base DiT: a `WanTransformer3DModel` (patch (1, 2, 2)) trained from random weights by the adaptation
  trainer itself: its finetune stage with `full_finetune` on the cache read in the base space
  (`CacheView(base_space=True)`: each clip's Wan latent is the latent to model), i.e. an identity
  adaptation whose "new" embedder and head have the base's shapes. Nothing here is a training loop.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapt.config import AdaptConfig
from ..adapt.data import LatentCache
from ..adapt.model import transformer_folder
from ..adapt.run import RunContext, open_caches
from ..adapt.train import run_diffusion_stage
from ..training.checkpoint import load_checkpoint, resolve_resume
from ..training.engine import (
    TrainingInterrupted,
    restore_rng,
    rewind_log,
    seed_all,
    setup_distributed,
    stop_signals,
)
from ..utils.atomic import atomic_dir

WAN_Z = 16  # Wan 2.1's latent channels
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]


@dataclass(frozen=True)
class BaseDims:
    """Sizes of the tiny base model (text encoder and DiT)."""

    text_dim: int = 32
    heads: int = 4
    head_dim: int = 32
    layers: int = 4
    ffn_dim: int = 512
    vae_dim: int = 8  # AutoencoderKLWan base_dim


# ---- the parts ----------------------------------------------------------------------------------------------


def caption_words(captions: list[str]) -> list[str]:
    """The sorted distinct words of the captions (lower case, split on spaces)."""
    return sorted({w for c in captions for w in c.lower().split()})


def caption_tokenizer(captions: list[str]):
    """A T5 tokenizer built in code whose pieces are the captions' words (FACTS section 3)."""
    from transformers import T5Tokenizer

    vocab = [(t, 0.0) for t in SPECIAL_TOKENS] + [
        (f"▁{w}", -float(i + 1)) for i, w in enumerate(caption_words(captions))
    ]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def text_encoder(vocab_size: int, dims: BaseDims):
    """A small random UMT5 encoder."""
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(
        vocab_size=vocab_size,
        d_model=dims.text_dim,
        d_kv=8,
        d_ff=2 * dims.text_dim,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
    )
    return UMT5EncoderModel(cfg).eval()


def wan_vae(dims: BaseDims, mean: list[float] | None = None, std: list[float] | None = None):
    """AutoencoderKLWan f8t4c16 at a tiny width: 1 + 4k frames -> 1 + k latent frames, x8 in space."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=dims.vae_dim,
        z_dim=WAN_Z,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=mean or [0.0] * WAN_Z,
        latents_std=std or [1.0] * WAN_Z,
    ).eval()


@torch.no_grad()
def latent_statistics(vae, clips: list[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior mode over `clips` (each (3, 1 + 4k, H, W) in [-1, 1])."""
    z = torch.cat(
        [vae.encode(x[None]).latent_dist.mode().double() for x in clips], dim=2
    )  # (1, 16, T', h, w)
    z = z.transpose(0, 1).reshape(WAN_Z, -1)
    return z.mean(1).tolist(), z.std(1).clamp_min(1e-6).tolist()


def transformer(dims: BaseDims):
    """The base DiT on Wan latents: in/out 16 channels, patch (1, 2, 2), random weights."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=dims.heads,
        attention_head_dim=dims.head_dim,
        in_channels=WAN_Z,
        out_channels=WAN_Z,
        text_dim=dims.text_dim,
        freq_dim=64,
        ffn_dim=dims.ffn_dim,
        num_layers=dims.layers,
        rope_max_seq_len=64,
    ).eval()


def scheduler(shift: float):
    """Wan's released sampler: UniPC on flow sigmas."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)


def write_base(
    root: Path, captions: list[str], clips: list[torch.Tensor], dims: BaseDims, shift: float, seed: int = 0
) -> dict:
    """The untrained base: a diffusers WanPipeline folder at `root` (text stack, VAE with the latent statistics
    of `clips`, a random DiT, UniPC). Returns the measured statistics."""
    from diffusers import WanPipeline

    torch.manual_seed(seed)
    tokenizer = caption_tokenizer(captions)
    encoder = text_encoder(len(tokenizer), dims)
    probe = wan_vae(dims)
    mean, std = latent_statistics(probe, clips)
    vae = wan_vae(dims, mean, std)
    vae.load_state_dict(probe.state_dict())
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=encoder,
        vae=vae,
        scheduler=scheduler(shift),
        transformer=transformer(dims),
    )
    with atomic_dir(root, overwrite=True) as tmp:
        pipe.save_pretrained(tmp)
    return {"latents_mean": mean, "latents_std": std, "vocabulary": caption_words(captions)}


# ---- the cache in the base space ----------------------------------------------------------------------------


class CacheView:
    """A `LatentCache` read another way: with `base_space`, each clip's Wan latent (all 1 + k frames) is its
    `latent`; with `null_caption`, every caption is the empty prompt. No sample videos (`val_prompts` is empty);
    everything else is the cache's own."""

    def __init__(self, cache: LatentCache, base_space: bool = False, null_caption: bool = False) -> None:
        self.cache, self.base_space = cache, base_space
        self._null = cache.null_text() if null_caption else None

    def __getattr__(self, name: str):
        return getattr(self.cache, name)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict:
        item = self.cache[i]
        if self.base_space:
            item["latent"] = item["wan_latent"]  # (16, 1 + k, H/8, W/8)
        if self._null is not None:
            item["text"] = self._null.clone()  # (text_tokens, D)
        return item

    def val_prompts(self) -> list[dict]:
        return []


# ---- pre-training -------------------------------------------------------------------------------------------


def pretrain(cfg: AdaptConfig, run_dir: Path) -> dict[str, torch.Tensor]:
    """Train the base DiT in `cfg.model.base` on the base-space view of `cfg.data.cache` with the adaptation
    trainer's finetune stage (`cfg.finetune.full_finetune`, patch (1, 2, 2): an identity adaptation), resuming
    from the newest checkpoint in `run_dir`. Returns every weight of the trained DiT."""
    d = setup_distributed()
    ckpt = resolve_resume("auto", run_dir)
    state = load_checkpoint(ckpt) if ckpt is not None else None
    if state is not None and state["finished"]:
        return state["adapted"]
    run_dir.mkdir(parents=True, exist_ok=True)
    if state is not None:
        rewind_log(run_dir / "log.jsonl", int(state["global_step"]))
    seed_all(cfg.seed)
    if state is not None:
        restore_rng(state["rng"], d)
    config = json.loads((transformer_folder(cfg.model.base) / "config.json").read_text())
    dims = {
        "latent_channels": config["out_channels"],
        "in_channels": config["in_channels"],
        "dim": config["num_attention_heads"] * config["attention_head_dim"],
        "transformer_config": config,
    }
    caches = {k: CacheView(c, base_space=True) for k, c in open_caches(cfg, ["finetune"]).items()}
    with stop_signals() as stop:
        ctx = RunContext(cfg, d, run_dir, caches, dims, stop, None, state)
        try:
            ctx.use("finetune")
            out = run_diffusion_stage("finetune", cfg, ctx, {}, state)
            if out is not None:
                ctx.checkpoint("finetune", True, out)
        finally:
            if ctx.log is not None:
                ctx.log.close()
    if out is None:
        raise TrainingInterrupted(stop.signal, f"pre-training the base at step {ctx.global_step}")
    return out


def write_trained_base(untrained: Path, weights: dict[str, torch.Tensor], out: Path) -> Path:
    """`untrained` with its DiT replaced by `weights`, as a new pipeline folder `out`."""
    from diffusers import WanTransformer3DModel

    config = json.loads((untrained / "transformer" / "config.json").read_text())
    model = WanTransformer3DModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    model.load_state_dict(weights)
    with atomic_dir(out, overwrite=True) as tmp:
        for part in untrained.iterdir():
            if part.name != "transformer":
                (shutil.copytree if part.is_dir() else shutil.copy2)(part, tmp / part.name)
        model.save_pretrained(tmp / "transformer")
    return out
