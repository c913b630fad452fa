"""AE-Adapt-V end to end on tiny models and real clips: the three stages, what each trains, exact resume
mid-stage and across a stage boundary, 2 gloo processes = 1 process (DDP and FSDP), I2V, the CLI, bad input."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dcvideogen.adapt.cache import build_cache
from dcvideogen.adapt.result import read_adapted
from dcvideogen.adapt.train import train_adapt
from dcvideogen.errors import DCVGError
from dcvideogen.models.dcae_v import AutoencoderDCV

from adapt_parts import make_captioned_clips, make_wan_base, tiny_adapt_config
from conftest import assert_same_training, spawn_two

STEPS = {"align_head.steps": 4, "finetune.steps": 4, "finetune.lora_rank": 4, "finetune.lora_alpha": 8.0}
FAST = {"precision": "fp32", "tensorboard": False, "checkpoint_every": 2, "log_every": 1, "val_every": 100}


def configure(cfg, **values):
    for key, value in values.items():
        if "." in key:
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
        else:
            setattr(cfg, key, value)
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def t2v(tmp_path_factory, clips):
    """A tiny Wan T2V base, 5 captioned real clips and their cache (4 train + 1 held out)."""
    root = tmp_path_factory.mktemp("adapt_t2v")
    base = make_wan_base(root / "base", "t2v")
    source = make_captioned_clips(root / "clips", clips, n=5)
    cfg = configure(tiny_adapt_config(root, base, source), **{"align_head.plateau_patience": 0})
    build_cache(cfg)
    return root, cfg


def cfg_for(t2v, **values):
    root, cfg = t2v
    fresh = tiny_adapt_config(root / "cfg", cfg.model.base, cfg.data.source)
    fresh.model.autoencoder, fresh.data.cache = cfg.model.autoencoder, cfg.data.cache
    return configure(fresh, **{"align_head.plateau_patience": 0, **STEPS, **FAST, **values})


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [(r["step"], v) for r in rows for k, v in r.items() if k.endswith("train/loss")]


@pytest.fixture(scope="module")
def full_run(t2v, tmp_path_factory):
    cfg = cfg_for(t2v, val_every=4)
    run = tmp_path_factory.mktemp("runs") / "full"
    assert train_adapt(cfg, run) == run / "adapted"
    return cfg, run


def test_three_stages_train_what_each_should(full_run):
    _, run = full_run
    history = json.loads((run / "stages.json").read_text())
    assert [h["stage"] for h in history] == ["align-embedder", "align-head", "finetune"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    merged = {k: v for row in log for k, v in row.items()}
    # stage 1a: the exact solve beats the random embedder on the held-out clip
    assert merged["align/heldout_mse_exact"] < merged["align/heldout_mse_random"]
    # frozen weights verified unchanged at the end of 1b and 2; validation loss logged; sample videos written
    assert merged["align-head/frozen_unchanged"] > 0 and merged["finetune/frozen_unchanged"] > 0
    assert "val/loss" in merged and len(list((run / "samples").glob("*.mp4"))) >= 2
    assert (run / "val_loss.png").stat().st_size > 0
    result = read_adapted(run)
    lora = [k for k in result.state if "lora_" in k]
    others = sorted(k for k in result.state if "lora_" not in k)
    assert lora and result.lora.rank == 4 and result.lora.alpha == 8.0
    assert others == [
        "patch_embedding.bias",
        "patch_embedding.weight",
        "proj_out.bias",
        "proj_out.weight",
        "scale_shift_table",
    ]
    assert torch.count_nonzero(result.state["proj_out.weight"]) > 0  # the zero head has learned
    assert any(torch.count_nonzero(result.state[k]) for k in lora if "lora_B" in k)


def test_resume_is_bit_identical_mid_stage_and_across_a_stage_boundary(t2v, full_run, tmp_path):
    cfg, full = full_run
    run = tmp_path / "resumed"
    cfg = cfg_for(t2v, val_every=4)
    # global steps: 1a = 1, 1b = 2..5, 2 = 6..9. Stop mid-1b (3), at the boundary (5), mid-2 (7).
    assert train_adapt(cfg, run, stop_after=3) is None
    assert train_adapt(cfg, run, resume="auto", stop_after=2) is None
    assert json.loads((run / "stages.json").read_text())[-1]["stage"] == "align-head"
    assert train_adapt(cfg, run, resume="auto", stop_after=2) is None
    assert train_adapt(cfg, run, resume="auto") == run / "adapted"
    a, b = read_adapted(full).state, read_adapted(run).state
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert losses(run) == losses(full)


def test_a_resumed_run_with_another_config_is_refused(t2v, full_run, tmp_path):
    _, run = full_run
    other = cfg_for(t2v, **{"model.patch_size": (1, 2, 2)})
    with pytest.raises(DCVGError, match="patch_size"):
        train_adapt(other, run, resume="auto")


def test_skip_switches_start_from_random_embedder_and_zero_head(t2v, tmp_path):
    cfg = cfg_for(t2v, **{"align_embedder.enabled": False, "align_head.enabled": False, "finetune.steps": 2})
    train_adapt(cfg, tmp_path / "ablation")
    history = json.loads((tmp_path / "ablation" / "stages.json").read_text())
    assert [h["stage"] for h in history] == ["finetune"]


def test_adamw_alignment_and_full_finetune(t2v, tmp_path):
    cfg = cfg_for(
        t2v,
        **{
            "align_embedder.method": "adamw",
            "align_embedder.steps": 3,
            "align_embedder.batch_size": 2,
            "align_head.enabled": False,
            "finetune.full_finetune": True,
            "finetune.steps": 1,
        },
    )
    train_adapt(cfg, tmp_path / "full-ft")
    log = {
        k: v
        for line in (tmp_path / "full-ft" / "log.jsonl").read_text().splitlines()
        for k, v in json.loads(line).items()
    }
    assert "align/heldout_mse_adamw" in log and "align/heldout_mse_exact" in log
    result = read_adapted(tmp_path / "full-ft")
    assert result.full_finetune and result.lora is None and any(k.startswith("blocks.") for k in result.state)


# ---- 2 processes ---------------------------------------------------------------------------------------------


def _worker(rank, world, port, cfg_dict, run, parallel):
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from dcvideogen.adapt.config import AdaptConfig
    from dcvideogen.training.config import from_dict

    cfg = from_dict(AdaptConfig, cfg_dict)
    cfg.parallel = parallel
    try:
        train_adapt(cfg, run)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_processes_equal_one_with_the_same_global_batch(t2v, tmp_path, parallel):
    from dcvideogen.adapt.config import to_dict

    steps = {"align_head.steps": 2, "finetune.steps": 2, "val_every": 100}
    one = cfg_for(t2v, **steps, **{"align_head.batch_size": 2, "finetune.batch_size": 2})
    torch.set_num_threads(1)
    train_adapt(one, tmp_path / "one")
    two = cfg_for(t2v, **steps, **{"align_head.batch_size": 1, "finetune.batch_size": 1})
    spawn_two(
        _worker, lambda port: (2, port, to_dict(two), str(tmp_path / "two"), parallel), tmp_path / "two"
    )
    torch.set_num_threads(2)
    a = load_file(tmp_path / "one" / "adapted" / "adapted.safetensors")
    b = load_file(tmp_path / "two" / "adapted" / "adapted.safetensors")
    assert_same_training(a, b, lr=1e-4, steps=4)  # 2 steps of 1b (lr 1e-4) + 2 of stage 2 (5e-5)


# ---- I2V and the command line ----------------------------------------------------------------------------------


def test_i2v_end_to_end_with_68_channel_input(tmp_path, clips):
    """Cache (both condition latents + CLIP features), the three stages with I2V sample videos, fused export,
    and generation from an image with the exported pipeline."""
    from dcvideogen.adapt.export import export_run
    from dcvideogen.pipelines.loading import load_pipeline

    from pipeline_parts import sample_image

    base = make_wan_base(tmp_path / "base", "i2v")
    source = make_captioned_clips(tmp_path / "clips", clips, n=3)
    cfg = tiny_adapt_config(tmp_path, base, source, task="i2v")
    cfg = configure(cfg, **{**STEPS, **FAST, "align_head.steps": 2, "finetune.steps": 2, "val_every": 2})
    build_cache(cfg)
    train_adapt(cfg, tmp_path / "run")
    assert read_adapted(tmp_path / "run").transformer_config["in_channels"] == 68
    assert len(list((tmp_path / "run" / "samples").glob("*.mp4"))) >= 2
    out = export_run(tmp_path / "run", tmp_path / "pipe", fuse=True)
    pipe = load_pipeline(out, dtype=torch.float32)
    video = pipe(
        image=sample_image(), prompt="a red car", num_frames=8, height=64, width=64, num_inference_steps=2
    ).frames[0]
    assert video.shape == (8, 64, 64, 3)


def test_command_line_cache_train_export_generate(t2v, tmp_path, monkeypatch):
    import yaml

    from dcvideogen.adapt.config import to_dict
    from dcvideogen.cli.main import main

    data = to_dict(cfg_for(t2v, **{"align_head.steps": 1, "finetune.steps": 1}))
    data["data"]["cache"] = str(tmp_path / "cache")
    (tmp_path / "adapt.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    assert main(["adapt", "cache", "--config", "adapt.yaml"]) == 0
    assert main(["adapt", "train", "--config", "adapt.yaml", "--out", "run"]) == 0
    assert main(["adapt", "train", "--config", "adapt.yaml", "--out", "run"]) == 2  # has checkpoints
    assert main(["adapt", "export", "run", "pipe", "--fuse"]) == 0
    gen = ["generate", "--model", "pipe", "--prompt", "a red car", "--out", "car.mp4", "--frames", "8"]
    gen += ["--height", "64", "--width", "64", "--steps", "2", "--device", "cpu", "--dtype", "float32"]
    assert main(gen) == 0 and (tmp_path / "car.mp4").stat().st_size > 0


def test_bad_inputs_fail_in_one_line_before_training(t2v, tmp_path):
    i2v_on_t2v = cfg_for(t2v)
    i2v_on_t2v.model.task = "i2v"
    with pytest.raises(DCVGError, match="t2v cache"):
        train_adapt(i2v_on_t2v, tmp_path / "x")
    no_base = cfg_for(t2v)
    no_base.model.base = str(tmp_path)
    with pytest.raises(DCVGError, match="not a Wan model folder"):
        train_adapt(no_base, tmp_path / "y")
    other_frames = cfg_for(t2v, **{"data.num_frames": 16})
    with pytest.raises(DCVGError, match="num_frames"):
        train_adapt(other_frames, tmp_path / "z")
    other_ae = cfg_for(t2v)
    AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny", latent_channels=16).save_pretrained(tmp_path / "ae16")
    other_ae.model.autoencoder = str(tmp_path / "ae16")
    with pytest.raises(DCVGError, match="16 latent channels"):
        train_adapt(other_ae, tmp_path / "w")
    assert not any((tmp_path / n).exists() for n in ("x", "y", "z", "w"))


def test_non_finite_losses_are_skipped_and_counted(t2v, tmp_path, monkeypatch):
    from dcvideogen.adapt import flow

    real, calls = flow.flow_loss, {"n": 0}

    def sometimes_nan(pred, target):
        calls["n"] += 1
        loss = real(pred, target)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(flow, "flow_loss", sometimes_nan)
    cfg = cfg_for(t2v, **{"align_embedder.enabled": False, "finetune.enabled": False, "align_head.steps": 3})
    train_adapt(cfg, tmp_path / "nan")
    rows = [json.loads(line) for line in (tmp_path / "nan" / "log.jsonl").read_text().splitlines()]
    assert max(r.get("align-head/train/bad_steps", 0) for r in rows) == 1
    assert max(r.get("align-head/step", 0) for r in rows) == 3  # the skipped step was not counted


def test_gradient_accumulation_equals_the_larger_batch(t2v, tmp_path):
    steps = {"align_embedder.enabled": False, "finetune.enabled": False, "align_head.steps": 2}
    big = cfg_for(t2v, **steps, **{"align_head.batch_size": 2})
    accum = cfg_for(t2v, **steps, **{"align_head.batch_size": 1, "align_head.grad_accum": 2})
    train_adapt(big, tmp_path / "big")
    train_adapt(accum, tmp_path / "accum")
    a, b = read_adapted(tmp_path / "big").state, read_adapted(tmp_path / "accum").state
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_a_wan_2_2_style_base_adapts_through_the_same_code(tmp_path, clips):
    """Wan 2.2's VAE (2x2 patchify, 16x in space, its own channel count) as the base latent: the cache, the
    stage 1a pooling (base grid = new grid here) and the stages run unchanged."""
    from diffusers import WanPipeline, WanTransformer3DModel

    from pipeline_parts import scheduler, tiny_text_encoder, tiny_tokenizer
    from test_eval_adapters import tiny_wan22

    torch.manual_seed(0)
    z = 6
    vae = tiny_wan22()  # z_dim 6, 2x2 patchify, 16x in space
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=z,
        out_channels=z,
        text_dim=32,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    )
    tokenizer = tiny_tokenizer()
    WanPipeline(
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(len(tokenizer)),
        vae=vae,
        scheduler=scheduler(),
        transformer=transformer,
    ).save_pretrained(tmp_path / "wan22")
    source = make_captioned_clips(tmp_path / "clips", clips, n=3)
    cfg = tiny_adapt_config(tmp_path, tmp_path / "wan22", source)
    cfg = configure(cfg, **{**STEPS, **FAST, "align_head.steps": 1, "finetune.steps": 1})
    build_cache(cfg)
    assert train_adapt(cfg, tmp_path / "run") is not None
    log = {
        k: v
        for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
        for k, v in json.loads(line).items()
    }
    assert log["align/heldout_mse_exact"] < log["align/heldout_mse_random"]


def test_missing_extra_is_named_in_one_line(monkeypatch, capsys, tmp_path):
    import importlib.util

    from dcvideogen.cli.main import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a)
    )
    (tmp_path / "adapt.yaml").write_text("seed: 0\n")
    assert main(["adapt", "train", "--config", str(tmp_path / "adapt.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "peft" in err[0] and "dcvideogen[adapt]" in err[0]
