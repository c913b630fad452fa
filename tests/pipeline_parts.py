"""Tiny, offline components for the pipeline tests: a tokenizer built in code, UMT5, Wan transformer,
DC-AE-V, CLIP vision tower, and writers for the released folder layout (official DC-AE-V .pt, Wan CLIP
.pth in the official naming)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UniPCMultistepScheduler, WanTransformer3DModel
from transformers import CLIPVisionConfig, CLIPVisionModel, T5Tokenizer, UMT5Config, UMT5EncoderModel

from dcvideogen.models.dcae_v import AutoencoderDCV
from dcvideogen.models.dcae_v.official import official_key_map
from dcvideogen.pipelines import DCVideoGenImageToVideoPipeline, DCVideoGenPipeline
from dcvideogen.pipelines.clip import wan_clip_image_processor

WORDS = ["a", "corgi", "jumps", "over", "the", "log", "red", "car", "drives", "at", "night"]
TEXT_DIM = 32
CLIP_DIM = 80  # one head of Wan's head size 80
CLIP_IMAGE = 28
CLIP_PATCH = 14
CLIP_LAYERS = 3
# Small and fast: 8-frame chunks, 32 x 64 pixels -> latent (32, 2, 1, 2).
FRAMES, HEIGHT, WIDTH = 8, 32, 64


def tiny_tokenizer() -> T5Tokenizer:
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"▁{w}", -float(i + 1)) for i, w in enumerate(WORDS)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_text_encoder(vocab_size: int) -> UMT5EncoderModel:
    cfg = UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
    )
    return UMT5EncoderModel(cfg).eval()


def tiny_transformer(
    in_channels: int = 32, out_channels: int = 32, patch_size=(1, 1, 1), image_dim: int | None = None
) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=tuple(patch_size),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=TEXT_DIM,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
        image_dim=image_dim,
        added_kv_proj_dim=16 if image_dim is not None else None,
    ).eval()


def tiny_vae(scaling_factor: float = 1.0) -> AutoencoderDCV:
    return AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny", scaling_factor=scaling_factor).eval()


def tiny_clip() -> CLIPVisionModel:
    cfg = CLIPVisionConfig(
        hidden_size=CLIP_DIM,
        intermediate_size=2 * CLIP_DIM,
        num_hidden_layers=CLIP_LAYERS,
        num_attention_heads=1,
        image_size=CLIP_IMAGE,
        patch_size=CLIP_PATCH,
        hidden_act="gelu",
    )
    return CLIPVisionModel(cfg).eval()


def scheduler() -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


def tiny_pipeline(
    task: str = "t2v", seed: int = 0, scaling_factor: float = 1.0, expand_timesteps: bool = False
):
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    parts = dict(
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(len(tokenizer)),
        vae=tiny_vae(scaling_factor),
        scheduler=scheduler(),
        expand_timesteps=expand_timesteps,
    )
    if task == "t2v":
        return DCVideoGenPipeline(transformer=tiny_transformer(), **parts)
    if expand_timesteps:
        return DCVideoGenImageToVideoPipeline(transformer=tiny_transformer(), **parts)
    return DCVideoGenImageToVideoPipeline(
        transformer=tiny_transformer(in_channels=68, image_dim=CLIP_DIM),
        image_encoder=tiny_clip(),
        image_processor=wan_clip_image_processor(CLIP_IMAGE),
        **parts,
    )


def sample_image(height: int = 50, width: int = 70, seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---- the released layout ---------------------------------------------------------------------------------


def wan_clip_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random Wan CLIP checkpoint in the official naming (vision tower + a stand-in text tower)."""
    g = torch.Generator().manual_seed(seed)
    d, n = CLIP_DIM, (CLIP_IMAGE // CLIP_PATCH) ** 2 + 1

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "visual.patch_embedding.weight": r(d, 3, CLIP_PATCH, CLIP_PATCH, scale=0.05),
        "visual.cls_embedding": r(1, 1, d),
        "visual.pos_embedding": r(1, n, d),
        "visual.pre_norm.weight": 1 + r(d, scale=0.1),
        "visual.pre_norm.bias": r(d, scale=0.1),
        "visual.post_norm.weight": 1 + r(d, scale=0.1),
        "visual.post_norm.bias": r(d, scale=0.1),
        "visual.head": r(d, 16),
        "textual.token_embedding.weight": r(10, 8),
        "log_scale": torch.tensor(2.6),
    }
    for i in range(CLIP_LAYERS):
        p = f"visual.transformer.{i}"
        sd.update(
            {
                f"{p}.norm1.weight": 1 + r(d, scale=0.1),
                f"{p}.norm1.bias": r(d, scale=0.1),
                f"{p}.attn.to_qkv.weight": r(3 * d, d),
                f"{p}.attn.to_qkv.bias": r(3 * d, scale=0.1),
                f"{p}.attn.proj.weight": r(d, d),
                f"{p}.attn.proj.bias": r(d, scale=0.1),
                f"{p}.norm2.weight": 1 + r(d, scale=0.1),
                f"{p}.norm2.bias": r(d, scale=0.1),
                f"{p}.mlp.0.weight": r(2 * d, d),
                f"{p}.mlp.0.bias": r(2 * d, scale=0.1),
                f"{p}.mlp.2.weight": r(d, 2 * d),
                f"{p}.mlp.2.bias": r(d, scale=0.1),
            }
        )
    return sd


def write_official_autoencoder(model: AutoencoderDCV, path: Path) -> None:
    """Save a DC-AE-V in the official release's .pt format (EMA dict, official parameter names)."""
    ours = model.state_dict()
    official = {off: ours[our].clone() for off, our in official_key_map(model.arch).items()}
    torch.save({"ema_model_state_dict": {"ema": official}}, path)


def make_released_folder(root: Path, seed: int = 0) -> Path:
    """A folder in the released layout, made of tiny parts: both transformers, text stack, scheduler, the
    official-format DC-AE-V and the Wan CLIP .pth."""
    from dcvideogen.pipelines.clip import WAN_CLIP_FILE
    from dcvideogen.pipelines.loading import RELEASED_AE_FILE

    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(root / "tokenizer")
    tiny_text_encoder(len(tokenizer)).save_pretrained(root / "text_encoder")
    scheduler().save_pretrained(root / "scheduler")
    tiny_transformer().save_pretrained(root / "transformer_t2v")
    tiny_transformer(in_channels=68, image_dim=CLIP_DIM).save_pretrained(root / "transformer_i2v")
    write_official_autoencoder(tiny_vae(), root / RELEASED_AE_FILE)
    torch.save(wan_clip_state_dict(seed), root / WAN_CLIP_FILE)
    return root
