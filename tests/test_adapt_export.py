"""`dcvg adapt export` on tiny parts: a fake finished AE-Adapt-V run (tiny Wan base folder, adapted transformer
with a rank-4 / alpha-8 LoRA and random adapted weights) exported fused (a pipeline folder) and unfused (LoRA +
adapted modules), and loaded back: fused = unfused = the in-memory model with LoRA active, for T2V and I2V;
the fused folder generates through the pipeline and `dcvg generate`; bad inputs give one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors import safe_open

from dcvideogen.adapt.export import (
    ADAPTER_CONFIG,
    LORA_FILE,
    MODULES_FILE,
    export_fused,
    export_run,
    export_unfused,
    load_adapted_pipeline,
)
from dcvideogen.adapt.model import (
    LoraSpec,
    adapted_state,
    add_lora,
    build_adapted_transformer,
    load_base_transformer,
    lora_target_modules,
)
from dcvideogen.adapt.result import AdaptedResult, write_adapted
from dcvideogen.errors import DCVGError
from dcvideogen.models.dcae_v import AutoencoderDCV
from dcvideogen.pipelines.loading import load_pipeline

from adapt_parts import make_wan_base
from pipeline_parts import (
    CLIP_DIM,
    TEXT_DIM,
)

LATENT = 32  # dc-ae-v-f32t4c32-tiny
RANK, ALPHA = 4, 8.0  # scale 2: loading with alpha = rank would halve the LoRA
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
I2V_TARGETS = [*TARGETS, "add_k_proj", "add_v_proj"]
TEXT_TOKENS = 512  # Wan's image cross-attention splits the context assuming 512 text tokens
F32 = torch.float32


# ---- tiny parts ----------------------------------------------------------------------------------------


def tiny_wan_base(root: Path, task: str) -> Path:
    """A diffusers Wan pipeline folder (T2V: in 16; I2V: in 36 + CLIP features) of tiny parts."""
    return make_wan_base(root, task, seed=1)


def fake_run(root: Path, base: Path, autoencoder: Path, task: str, lora: bool = True):
    """A finished run folder (RUN/adapted/) and the in-memory adapted model it holds (LoRA active)."""
    root.mkdir(parents=True)
    model = build_adapted_transformer(load_base_transformer(base), LATENT, task)
    spec = None
    if lora:
        spec = LoraSpec(
            RANK, ALPHA, tuple(lora_target_modules(model, I2V_TARGETS if task == "i2v" else TARGETS))
        )
        add_lora(model, spec)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith(("patch_embedding", "proj_out", "scale_shift_table")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif not lora:  # full fine-tuning changes every weight
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
    result = AdaptedResult(
        transformer_config=dict(model.config),
        state=adapted_state(model, full=not lora),
        lora=spec,
        full_finetune=not lora,
        task=task,
        base=str(base),
        autoencoder=str(autoencoder),
    )
    write_adapted(root / "adapted", result)
    return root, model.eval()


def transformer_inputs(task: str) -> dict:
    g = torch.Generator().manual_seed(3)
    channels = 2 * LATENT + 4 if task == "i2v" else LATENT
    inputs = dict(
        hidden_states=torch.randn(1, channels, 2, 2, 2, generator=g),  # (B, C, T', h, w)
        timestep=torch.tensor([400.0]),
        encoder_hidden_states=torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=g),  # (B, L, text_dim)
        return_dict=False,
    )
    if task == "i2v":
        inputs["encoder_hidden_states_image"] = torch.randn(1, 5, CLIP_DIM, generator=g)  # (B, N, image_dim)
    return inputs


@torch.no_grad()
def run_transformer(transformer, task: str) -> torch.Tensor:
    return transformer.eval()(**transformer_inputs(task))[0]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    ae = root / "dcae"
    AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny", scaling_factor=0.7241).save_pretrained(ae)
    return root, ae


@pytest.fixture(scope="module")
def t2v(parts):
    root, ae = parts
    base = tiny_wan_base(root / "wan-t2v", "t2v")
    run, model = fake_run(root / "run-t2v", base, ae, "t2v")
    fused = export_run(run, root / "t2v-fused", fuse=True)
    adapter = export_run(run, root / "t2v-adapter", fuse=False)
    return dict(base=base, run=run, model=model, fused=fused, adapter=adapter, root=root)


@pytest.fixture(scope="module")
def i2v_base(parts):
    root, _ = parts
    return tiny_wan_base(root / "wan-i2v", "i2v")


# ---- T2V ----------------------------------------------------------------------------------------------


def test_t2v_fused_equals_unfused_equals_lora_model(t2v):
    reference = run_transformer(t2v["model"], "t2v")
    model = t2v["model"]
    model.disable_adapters()
    without_lora = run_transformer(model, "t2v")
    model.enable_adapters()
    assert (reference - without_lora).abs().max() > 1e-2  # the LoRA matters, so alpha / rank is tested

    fused = load_pipeline(t2v["fused"], dtype=F32)
    unfused = load_adapted_pipeline(t2v["base"], t2v["adapter"], dtype=F32)
    torch.testing.assert_close(run_transformer(fused.transformer, "t2v"), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run_transformer(unfused.transformer, "t2v"), reference, rtol=1e-5, atol=1e-5)
    config = next(iter(unfused.transformer.peft_config.values()))
    assert (config.r, config.lora_alpha) == (RANK, ALPHA)

    merged = load_adapted_pipeline(t2v["base"], t2v["adapter"], dtype=F32, fuse=True)
    assert not any("lora" in k for k in merged.transformer.state_dict())
    torch.testing.assert_close(run_transformer(merged.transformer, "t2v"), reference, rtol=1e-5, atol=1e-5)


def test_t2v_export_files(t2v):
    # Fused: plain WanTransformer3DModel keys, exactly those of the adapted model without LoRA.
    with safe_open(str(t2v["fused"] / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        fused_keys = set(f.keys())
    plain = {k.replace(".base_layer", "") for k in t2v["model"].state_dict() if "lora_" not in k}
    assert fused_keys == plain
    index = json.loads((t2v["fused"] / "model_index.json").read_text())
    assert index["_class_name"] == "DCVideoGenPipeline"

    # Unfused: diffusers LoRA keys with the alpha in the metadata; the new modules in their own file.
    with safe_open(str(t2v["adapter"] / LORA_FILE), "pt") as f:
        lora_keys, metadata = set(f.keys()), f.metadata()
    assert lora_keys and all(k.startswith("transformer.blocks.") for k in lora_keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in lora_keys)
    n_lora = sum("lora_" in k for k in t2v["model"].state_dict())
    assert len(lora_keys) == n_lora == 2 * 2 * 10  # A and B of 10 Linears in each of 2 blocks
    saved = json.loads(metadata["lora_adapter_metadata"])
    assert saved["transformer.r"] == RANK and saved["transformer.lora_alpha"] == ALPHA
    with safe_open(str(t2v["adapter"] / MODULES_FILE), "pt") as f:
        assert set(f.keys()) == {
            "patch_embedding.weight",
            "patch_embedding.bias",
            "proj_out.weight",
            "proj_out.bias",
            "scale_shift_table",
        }
    meta = json.loads((t2v["adapter"] / ADAPTER_CONFIG).read_text())
    assert meta["task"] == "t2v" and meta["transformer_config"]["in_channels"] == LATENT
    assert meta["transformer_config"]["patch_size"] == [1, 1, 1]
    assert meta["base"] == str(t2v["base"]) and meta["lora"]["alpha"] == ALPHA


def test_fused_folder_generates(t2v, tmp_path):
    from dcvideogen.cli.main import main

    pipe = load_pipeline(t2v["fused"], dtype=F32)
    frames = pipe(
        prompt="a red car",
        num_frames=8,
        height=64,
        width=64,
        num_inference_steps=2,
        max_sequence_length=16,
        generator=torch.Generator().manual_seed(0),
    ).frames
    assert frames.shape == (1, 8, 64, 64, 3)

    video = tmp_path / "x.mp4"
    argv = ["generate", "--model", str(t2v["fused"]), "--prompt", "a red car", "--out", str(video)]
    argv += ["--frames", "8", "--height", "64", "--width", "64", "--steps", "2", "--device", "cpu"]
    assert main([*argv, "--dtype", "float32", "--seed", "0"]) == 0
    assert video.is_file() and video.stat().st_size > 0


# ---- I2V -----------------------------------------------------------------------------------------------


def test_i2v_fused_equals_unfused(parts, i2v_base):
    root, ae = parts
    base = i2v_base
    run, model = fake_run(root / "run-i2v", base, ae, "i2v")
    reference = run_transformer(model, "i2v")
    fused = load_pipeline(export_fused(run, root / "i2v-fused"), dtype=F32)
    unfused = load_adapted_pipeline(base, export_unfused(run, root / "i2v-adapter"), dtype=F32)
    assert fused.transformer.config.in_channels == 2 * LATENT + 4 and fused.image_encoder is not None
    assert unfused.image_encoder is not None and unfused.image_encoder.dtype == F32
    torch.testing.assert_close(run_transformer(fused.transformer, "i2v"), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run_transformer(unfused.transformer, "i2v"), reference, rtol=1e-5, atol=1e-5)


# ---- full fine-tuning and bad input ----------------------------------------------------------------------


def test_full_finetune_exports_fused_only(t2v):
    root = t2v["root"]
    run, model = fake_run(root / "run-full", t2v["base"], root / "dcae", "t2v", lora=False)
    with pytest.raises(DCVGError, match="--fuse"):
        export_run(run, root / "full-adapter", fuse=False)
    assert not (root / "full-adapter").exists()
    fused = load_pipeline(export_run(run, root / "full-fused", fuse=True), dtype=F32)
    torch.testing.assert_close(
        run_transformer(fused.transformer, "t2v"), run_transformer(model, "t2v"), rtol=1e-5, atol=1e-5
    )


def test_bad_inputs(t2v, i2v_base, tmp_path):
    run, base = t2v["run"], t2v["base"]
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(DCVGError, match=re.escape("no adapted.json")):
        export_run(tmp_path / "empty-run", tmp_path / "a", fuse=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    for fuse in (True, False):
        with pytest.raises(DCVGError, match="not an empty folder"):
            export_run(run, tmp_path / "full", fuse=fuse)

    # A base folder with the transformer only: the text stack is missing.
    only = tmp_path / "transformer-only"
    WanTransformer3DModel.from_pretrained(base / "transformer").save_pretrained(only / "transformer")
    with pytest.raises(DCVGError, match=re.escape("no model_index.json")):
        export_fused(run, tmp_path / "b", base=only)
    assert not (tmp_path / "b").exists()

    # Another base transformer (wider FFN) than the run was trained on.
    other = tiny_wan_base(tmp_path / "other", "t2v")
    cfg = json.loads((other / "transformer" / "config.json").read_text())
    cfg["ffn_dim"] = 48
    (other / "transformer" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DCVGError, match="ffn_dim 48 vs 32"):
        export_unfused(run, tmp_path / "c", base=other)
    with pytest.raises(DCVGError, match="ffn_dim 48 vs 32"):
        load_adapted_pipeline(other, t2v["adapter"], dtype=F32)

    with pytest.raises(DCVGError, match="a Wan I2V transformer, but the adaptation is T2V"):
        export_fused(run, tmp_path / "e", base=i2v_base)

    with pytest.raises(DCVGError, match=re.escape(f"no {ADAPTER_CONFIG}")):
        load_adapted_pipeline(base, tmp_path / "empty-run", dtype=F32)
    with pytest.raises(DCVGError, match=re.escape("missing (given) is not a folder")):
        export_fused(run, tmp_path / "d", base=tmp_path / "missing")
