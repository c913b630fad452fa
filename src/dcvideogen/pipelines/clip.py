"""The Wan 2.1 CLIP image encoder (`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`) as a
transformers `CLIPVisionModel`.

The Wan checkpoint is a torch state dict of the whole XLM-RoBERTa CLIP (`visual.*`, `textual.*`,
`log_scale`). Its vision tower is a ViT-H/14 (1280 wide, 32 blocks, 16 heads, 224 px, 257 tokens, exact
GELU, LayerNorm eps 1e-5) with a fused qkv projection; Wan's I2V uses the output of all blocks but the
last, before the final norm, which is `hidden_states[-2]` of a `CLIPVisionModel`, the feature diffusers'
`encode_image` reads. The names differ as follows (ours <- Wan's):

    embeddings.patch_embedding.weight      <- patch_embedding.weight        (no bias in either)
    embeddings.class_embedding (D,)        <- cls_embedding (1, 1, D)
    embeddings.position_embedding.weight   <- pos_embedding (1, N + 1, D)
    pre_layrnorm                           <- pre_norm
    encoder.layers.i.layer_norm1 / 2       <- transformer.i.norm1 / norm2
    encoder.layers.i.self_attn.{q,k,v}_proj <- transformer.i.attn.to_qkv, split in 3 along the output
    encoder.layers.i.self_attn.out_proj    <- transformer.i.attn.proj
    encoder.layers.i.mlp.fc1 / fc2         <- transformer.i.mlp.0 / mlp.2
    post_layernorm                         <- post_norm
    (dropped: head, the projection to the joint image-text space, unused by I2V; the text tower)
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from ..models.dcae_v.official import CheckpointError

logger = logging.getLogger(__name__)

WAN_CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
WAN_CLIP_HEAD_DIM = 80  # ViT-H/14: 1280 = 16 heads x 80; the head count is not stored in the weights
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_BLOCK = re.compile(r"^transformer\.(\d+)\.")


def read_wan_clip_visual(path: str | Path) -> dict[str, torch.Tensor]:
    """The vision tower's tensors (`visual.` stripped) of a Wan CLIP `.pth`, memory-mapped when possible."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; put Wan 2.1's {WAN_CLIP_FILE} there")
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in the legacy (non-zip) format cannot be memory-mapped
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files raise many kinds
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(e).__name__}); re-download {WAN_CLIP_FILE}"
        ) from e
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(sd).__name__}")
    visual = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.") and torch.is_tensor(v)}
    if "patch_embedding.weight" not in visual:
        raise CheckpointError(
            f"{path}: no 'visual.patch_embedding.weight'; is this Wan 2.1's {WAN_CLIP_FILE} (open-clip XLM-RoBERTa "
            "ViT-H/14)?"
        )
    return visual


def wan_clip_config(visual: dict[str, torch.Tensor]) -> CLIPVisionConfig:
    """CLIPVisionConfig of a Wan CLIP vision tower, from its tensor shapes."""
    dim, _, patch, _ = visual["patch_embedding.weight"].shape
    positions = visual["pos_embedding"].shape[1]  # patches + 1 class token
    side = round((positions - 1) ** 0.5)
    if side * side != positions - 1:
        raise CheckpointError(f"pos_embedding has {positions} positions, not a square grid + 1 class token")
    layers = 1 + max(int(m.group(1)) for k in visual if (m := _BLOCK.match(k)))
    if dim % WAN_CLIP_HEAD_DIM:
        raise CheckpointError(
            f"vision width {dim} is not a multiple of the head size {WAN_CLIP_HEAD_DIM} of Wan's ViT-H/14; "
            "this is not a Wan CLIP checkpoint"
        )
    return CLIPVisionConfig(
        hidden_size=dim,
        intermediate_size=visual["transformer.0.mlp.0.weight"].shape[0],
        num_hidden_layers=layers,
        num_attention_heads=dim // WAN_CLIP_HEAD_DIM,
        num_channels=3,
        image_size=side * patch,
        patch_size=patch,
        hidden_act="gelu",  # nn.GELU(), not CLIP's quick_gelu
        layer_norm_eps=1e-5,
        projection_dim=visual["head"].shape[1] if "head" in visual else dim,
    )


def convert_wan_clip_state_dict(visual: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Wan vision-tower names -> CLIPVisionModel names (without the `vision_model.` prefix)."""
    out = {
        "embeddings.patch_embedding.weight": visual["patch_embedding.weight"],
        "embeddings.class_embedding": visual["cls_embedding"].reshape(-1),  # (1, 1, D) -> (D,)
        "embeddings.position_embedding.weight": visual["pos_embedding"][0],  # (1, N + 1, D) -> (N + 1, D)
    }
    for ours, theirs in (("pre_layrnorm", "pre_norm"), ("post_layernorm", "post_norm")):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = visual[f"{theirs}.{p}"]
    for i in range(num_layers):
        src, dst = f"transformer.{i}", f"encoder.layers.{i}"
        for p in ("weight", "bias"):
            q, k, v = visual[f"{src}.attn.to_qkv.{p}"].chunk(3, dim=0)  # rows ordered [q | k | v]
            out[f"{dst}.self_attn.q_proj.{p}"] = q
            out[f"{dst}.self_attn.k_proj.{p}"] = k
            out[f"{dst}.self_attn.v_proj.{p}"] = v
            out[f"{dst}.self_attn.out_proj.{p}"] = visual[f"{src}.attn.proj.{p}"]
            out[f"{dst}.layer_norm1.{p}"] = visual[f"{src}.norm1.{p}"]
            out[f"{dst}.layer_norm2.{p}"] = visual[f"{src}.norm2.{p}"]
            out[f"{dst}.mlp.fc1.{p}"] = visual[f"{src}.mlp.0.{p}"]
            out[f"{dst}.mlp.fc2.{p}"] = visual[f"{src}.mlp.2.{p}"]
    return out


def load_wan_clip(path: str | Path, dtype: torch.dtype | None = torch.float32) -> CLIPVisionModel:
    """CLIPVisionModel with the vision weights of Wan 2.1's CLIP checkpoint (every weight checked), in
    `dtype` (None: the file's own)."""
    visual = read_wan_clip_visual(path)
    config = wan_clip_config(visual)
    try:
        ours = convert_wan_clip_state_dict(visual, config.num_hidden_layers)
    except KeyError as e:
        raise CheckpointError(
            f"{path}: the vision tower lacks {e.args[0]!r}; re-download {WAN_CLIP_FILE}"
        ) from e
    with torch.device("meta"):
        model = CLIPVisionModel(config)
    expected = model.state_dict()
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in expected) else ""
    ours = {prefix + k: v for k, v in ours.items()}
    for k, v in ours.items():
        if k not in expected or tuple(expected[k].shape) != tuple(v.shape):
            want = tuple(expected[k].shape) if k in expected else "absent"
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)} but the model expects {want}")
    missing = [k for k in expected if k not in ours and not k.endswith("position_ids")]
    if missing:
        raise CheckpointError(f"{path}: no weights for {missing[0]} (and {len(missing) - 1} more)")
    if dtype is not None:
        ours = {k: v.to(dtype) for k, v in ours.items()}
    model.load_state_dict(ours, strict=False, assign=True)
    _rebuild_buffers(model)
    logger.debug("loaded Wan CLIP vision tower from %s: %s", path, config)
    return model.eval()


def _rebuild_buffers(model: CLIPVisionModel) -> None:
    """Non-persistent buffers were created on the meta device; give them real values."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                if name != "position_ids":
                    raise AssertionError(f"unexpected meta buffer {name}")  # internal invariant
                module.register_buffer(name, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)


def wan_clip_image_processor(image_size: int = 224) -> CLIPImageProcessor:
    """The preprocessing of the released I2V pipeline: bicubic resize of the short side, center crop,
    OpenAI CLIP mean / std."""
    return CLIPImageProcessor(
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        resample=3,  # bicubic
    )
