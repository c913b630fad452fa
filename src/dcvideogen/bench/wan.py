"""Wan transformer configurations for the benches: the released Wan-2.1 T2V sizes, a tiny one for tests,
or any diffusers `WanTransformer3DModel` config file; and the same transformer on another latent layout."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DCVGError
from .cost_model import TEXT_TOKENS, WAN_VAE_LAYOUT, LatentLayout, TransformerDims

# Arguments of WanTransformer3DModel a config file may set besides the typed fields (Wan's defaults otherwise).
_PASSTHROUGH = ("cross_attn_norm", "qk_norm", "eps", "rope_max_seq_len")
# Arguments that make it an image-to-video model, whose image tokens this bench does not model.
_I2V_KEYS = ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")


@dataclass(frozen=True)
class WanConfig:
    """The fields of a `WanTransformer3DModel` that set its cost, named as in diffusers."""

    name: str
    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    ffn_dim: int
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    freq_dim: int = 256
    extra: tuple[tuple[str, Any], ...] = ()  # other WanTransformer3DModel arguments, from a config file

    @property
    def hidden_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def dims(self, text_tokens: int = TEXT_TOKENS) -> TransformerDims:
        return TransformerDims(self.num_layers, self.hidden_dim, self.ffn_dim, text_tokens)

    def diffusers_kwargs(self) -> dict[str, Any]:
        d = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("name", "extra")
        }
        d["patch_size"] = tuple(self.patch_size)
        return {**d, **dict(self.extra)}

    def with_layout(self, layout: LatentLayout) -> WanConfig:
        """The same transformer on another autoencoder's latents: only the patch embedder and the output
        head change (in/out channels and patch size), as AE-Adapt-V does (Sec. 4)."""
        return dataclasses.replace(
            self, in_channels=layout.channels, out_channels=layout.channels, patch_size=layout.patch
        )


# Wan-2.1 T2V (FACTS §3). 1.3B: 30 layers, D 1536 (12 heads x 128), FFN 8960; 14B: 40 layers, D 5120, FFN 13824.
WAN_CONFIGS: dict[str, WanConfig] = {
    "wan-1.3b": WanConfig(
        "wan-1.3b", num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960
    ),
    "wan-14b": WanConfig(
        "wan-14b", num_layers=40, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824
    ),
    # Two narrow layers: the bench's code path on CPU in a second (tests, CI).
    "wan-tiny": WanConfig(
        "wan-tiny",
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=16,
        ffn_dim=64,
        text_dim=32,
        freq_dim=32,
    ),
}


def load_wan_config(spec: str) -> WanConfig:
    """A registry name (wan-1.3b, wan-14b, wan-tiny), a diffusers config.json of a WanTransformer3DModel,
    or a folder holding one (e.g. the `transformer/` folder of a Wan pipeline)."""
    if spec in WAN_CONFIGS:
        return WAN_CONFIGS[spec]
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise DCVGError(
            f"--model {spec}: neither a known model ({', '.join(WAN_CONFIGS)}) nor a config.json / folder "
            "holding one; give one of those"
        )
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DCVGError(f"{path}: not valid JSON ({e})") from e
    cls = raw.get("_class_name", "WanTransformer3DModel")
    if cls != "WanTransformer3DModel":
        raise DCVGError(f"{path}: describes a {cls}; the bench needs a WanTransformer3DModel config")
    i2v = [k for k in _I2V_KEYS if raw.get(k) is not None]
    if i2v:
        raise DCVGError(
            f"{path}: an image-to-video config ({', '.join(i2v)} set); its image tokens are not modelled, "
            "benchmark the text-to-video config of the same size instead"
        )
    defaults = WanConfig("x", 40, 40, 128, 13824)  # diffusers' own defaults for the remaining fields
    try:
        cfg = WanConfig(
            name=path.parent.name or path.stem,
            num_layers=int(raw.get("num_layers", defaults.num_layers)),
            num_attention_heads=int(raw.get("num_attention_heads", defaults.num_attention_heads)),
            attention_head_dim=int(raw.get("attention_head_dim", defaults.attention_head_dim)),
            ffn_dim=int(raw.get("ffn_dim", defaults.ffn_dim)),
            in_channels=int(raw.get("in_channels", defaults.in_channels)),
            out_channels=int(raw.get("out_channels") or raw.get("in_channels", defaults.out_channels)),
            patch_size=tuple(int(p) for p in raw.get("patch_size", defaults.patch_size)),
            text_dim=int(raw.get("text_dim", defaults.text_dim)),
            freq_dim=int(raw.get("freq_dim", defaults.freq_dim)),
            extra=tuple((k, raw[k]) for k in _PASSTHROUGH if k in raw),
        )
    except (TypeError, ValueError) as e:
        raise DCVGError(f"{path}: a field has the wrong type ({e}); fix the config") from e
    check_base_layout(cfg, str(path))
    return cfg


def check_base_layout(cfg: WanConfig, where: str) -> None:
    """The base layout is the Wan 2.1 VAE's: 16 latent channels in and out, patch 1x2x2."""
    base = WAN_VAE_LAYOUT
    if (cfg.in_channels, cfg.out_channels, tuple(cfg.patch_size)) != (
        base.channels,
        base.channels,
        base.patch,
    ):
        raise DCVGError(
            f"{where}: in/out channels {cfg.in_channels}/{cfg.out_channels} and patch {tuple(cfg.patch_size)} "
            f"are not the Wan 2.1 layout ({base.channels}/{base.channels}, {base.patch}) the base bench assumes; "
            "give a Wan-2.1 text-to-video config"
        )
