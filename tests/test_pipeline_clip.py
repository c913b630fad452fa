"""Wan 2.1's CLIP checkpoint (official naming) -> transformers CLIPVisionModel, checked against a plain-torch
forward of the official vision tower (wan_blocks/clip.py: fused qkv, exact GELU, all blocks but the last)."""

import pytest
import torch
import torch.nn.functional as F

from dcvideogen.models.dcae_v.official import CheckpointError
from dcvideogen.pipelines.clip import load_wan_clip, wan_clip_config

from pipeline_parts import CLIP_DIM, CLIP_IMAGE, CLIP_LAYERS, CLIP_PATCH, wan_clip_state_dict


def official_penultimate(sd: dict, pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """The features Wan I2V uses: VisionTransformer.forward of the official code, written out."""
    v = {k[len("visual.") :]: t for k, t in sd.items() if k.startswith("visual.")}
    b = pixels.shape[0]
    x = F.conv2d(pixels, v["patch_embedding.weight"], stride=CLIP_PATCH).flatten(2).permute(0, 2, 1)
    x = torch.cat([v["cls_embedding"].expand(b, -1, -1), x], dim=1) + v["pos_embedding"]
    d = x.shape[-1]
    x = F.layer_norm(x, (d,), v["pre_norm.weight"], v["pre_norm.bias"], 1e-5)
    for i in range(CLIP_LAYERS - 1):  # transformer[:-1]
        p = f"transformer.{i}."
        h = F.layer_norm(x, (d,), v[p + "norm1.weight"], v[p + "norm1.bias"], 1e-5)
        s = h.shape[1]
        q, k, val = (
            F.linear(h, v[p + "attn.to_qkv.weight"], v[p + "attn.to_qkv.bias"])
            .view(b, s, 3, heads, -1)
            .unbind(2)
        )
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), val.transpose(1, 2))
        x = x + F.linear(
            a.transpose(1, 2).reshape(b, s, d), v[p + "attn.proj.weight"], v[p + "attn.proj.bias"]
        )
        h = F.layer_norm(x, (d,), v[p + "norm2.weight"], v[p + "norm2.bias"], 1e-5)
        h = F.linear(
            F.gelu(F.linear(h, v[p + "mlp.0.weight"], v[p + "mlp.0.bias"])),
            v[p + "mlp.2.weight"],
            v[p + "mlp.2.bias"],
        )
        x = x + h
    return x


def test_wan_clip_matches_the_official_forward(tmp_path):
    sd = wan_clip_state_dict(seed=3)
    path = tmp_path / "clip.pth"
    torch.save(sd, path)
    model = load_wan_clip(path)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (CLIP_DIM, CLIP_LAYERS, 1)
    assert (cfg.image_size, cfg.patch_size, cfg.hidden_act) == (CLIP_IMAGE, CLIP_PATCH, "gelu")
    pixels = torch.randn(2, 3, CLIP_IMAGE, CLIP_IMAGE)
    with torch.no_grad():
        ours = model(pixel_values=pixels, output_hidden_states=True).hidden_states[
            -2
        ]  # diffusers' encode_image
        ref = official_penultimate(sd, pixels, heads=1)
    assert ours.shape == (2, (CLIP_IMAGE // CLIP_PATCH) ** 2 + 1, CLIP_DIM)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_wan_vit_h_config_is_inferred_from_shapes():
    # The real ViT-H/14 shapes (meta tensors: no memory): 1280 wide, 32 blocks, 16 heads of 80, 224 px.
    with torch.device("meta"):
        v = {
            "patch_embedding.weight": torch.empty(1280, 3, 14, 14),
            "pos_embedding": torch.empty(1, 257, 1280),
            "head": torch.empty(1280, 1024),
            "transformer.0.mlp.0.weight": torch.empty(5120, 1280),
            **{f"transformer.{i}.norm1.weight": torch.empty(1280) for i in range(32)},
        }
    cfg = wan_clip_config(v)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (
        1280,
        5120,
        32,
        16,
    )
    assert (cfg.image_size, cfg.patch_size, cfg.projection_dim) == (224, 14, 1024)


def test_bad_clip_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_wan_clip(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_wan_clip(tmp_path / "junk.pth")
    torch.save({"textual.x": torch.zeros(1)}, tmp_path / "text_only.pth")
    with pytest.raises(CheckpointError, match=r"no 'visual\.patch_embedding\.weight'"):
        load_wan_clip(tmp_path / "text_only.pth")
    sd = wan_clip_state_dict()
    del sd["visual.transformer.1.attn.proj.weight"]
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"lacks 'transformer\.1\.attn\.proj\.weight'"):
        load_wan_clip(tmp_path / "partial.pth")
