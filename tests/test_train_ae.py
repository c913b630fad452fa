"""DC-AE-V training: overfitting a real clip, DDP equivalence, data robustness, atomic checkpoints, GAN
schedule, non-finite losses, config handling, what a resume may change. Exact resume at every schedule
boundary: test_resume_boundaries.py."""

import json
import math
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dcvideogen.errors import DCVGError
from dcvideogen.training import checkpoint as ckpt
from dcvideogen.training.config import load_config
from dcvideogen.training.data import ClipDataset, scan_media
from dcvideogen.training.discriminator import VideoDiscriminator
from dcvideogen.training.trainer_ae import TrainingDiverged, train_ae
from dcvideogen.video import read_video

from conftest import assert_same_training, spawn_two

TINY = ["model.preset=dc-ae-v-f32t4c32-tiny", "data.workers=0", "tensorboard=false", "optim.ema_decay=0.9"]


def write_clip(path: Path, frames: torch.Tensor, fps: int = 10, faststart: bool = False) -> Path:
    """Write (3, T, H, W) in [-1, 1] as an mp4 (moov atom first when faststart)."""
    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[-1], frames.shape[-2], "yuv420p"
        s.options = {"crf": "10"}
        arr = ((frames.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()
        for img in arr:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def one_clip(tmp_path_factory, clips) -> Path:
    """A folder holding one real 8-frame 64x64 clip (carphone, resized)."""
    folder = tmp_path_factory.mktemp("one_clip")
    x = read_video(clips / "carphone_pristine.mp4", max_frames=8).frames  # (3, 8, 144, 176)
    x = torch.nn.functional.interpolate(x.transpose(0, 1), size=(64, 64), mode="bilinear", antialias=True)
    write_clip(folder / "carphone64.mp4", x.transpose(0, 1))
    return folder


def cfg_for(*extra, folder=None):
    base = [*TINY, "data.num_frames=8", "data.size=64", "data.hflip=false", "data.max_scale=1.0", *extra]
    return load_config(None, base)


def weights(run: Path) -> dict:
    return load_file(run / "model" / "diffusion_pytorch_model.safetensors")


def test_tiny_model_overfits_one_real_clip(one_clip, tmp_path):
    cfg = cfg_for(
        "steps=60",
        "optim.lr=3e-3",
        "optim.ema_decay=0",
        "log_every=60",
        "checkpoint_every=1000",
        "data.size=32",
        f"data.val_clips=[{one_clip / 'carphone64.mp4'}]",
        "data.val_frames=8",
        "data.val_size=32",
        "val_every=60",
    )
    from dcvideogen.models.dcae_v import AutoencoderDCV
    from dcvideogen.training.trainer_ae import load_val_clips, validate

    torch.manual_seed(cfg.seed)
    before = validate(
        AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").eval(),
        load_val_clips(cfg, 32),
        tmp_path / "v0",
        0,
    )["val/carphone64/psnr"]
    train_ae(cfg, one_clip, tmp_path / "run")
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    after = [r for r in logs if "val/carphone64/psnr" in r][-1]["val/carphone64/psnr"]
    assert after > before + 8.0, (before, after)  # stated margin: +8 dB within 60 steps
    assert (tmp_path / "run" / "val" / "step-00000060-carphone64.mp4").is_file()


def _worker(rank: int, world: int, port: int, folder: str, out: str, parallel: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    try:
        cfg = cfg_for(
            "steps=2", "batch_size=1", "checkpoint_every=100", "optim.lr=1e-3", f"parallel={parallel}"
        )
        train_ae(cfg, folder, out)
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def single_process_run(clips, tmp_path_factory):
    """Data folder and the one-process run (global batch 2) that the 2-process runs must reproduce."""
    root = tmp_path_factory.mktemp("dist")
    (root / "data").mkdir()
    write_clip(
        root / "data" / "bikes64.mp4", read_video(clips / "bikes.mp4", max_frames=24).frames[:, :, :64, :64]
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the thread count changes the order of float sums
    try:
        train_ae(
            cfg_for("steps=2", "batch_size=2", "checkpoint_every=100", "optim.lr=1e-3"),
            root / "data",
            root / "single",
        )
    finally:
        torch.set_num_threads(threads)
    return root


def weights_at_init() -> torch.Tensor:
    from dcvideogen.models.dcae_v import AutoencoderDCV

    torch.manual_seed(0)
    return AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").decoder.conv_out.weight.detach()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_gloo_equals_one_process_with_the_same_global_batch(single_process_run, parallel):
    root = single_process_run
    spawn_two(
        _worker, lambda port: (2, port, str(root / "data"), str(root / parallel), parallel), root / parallel
    )
    torch.set_num_threads(2)
    a, b = weights(root / parallel), weights(root / "single")
    assert_same_training(a, b, lr=1e-3, steps=2)
    assert not torch.equal(a["decoder.conv_out.weight"], weights_at_init())  # it did train


def test_unreadable_and_truncated_files_are_skipped_and_counted(clips, tmp_path, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    x = read_video(clips / "bikes.mp4", max_frames=30).frames[:, :, :64, :64]
    write_clip(folder / "good.mp4", x)
    (folder / "corrupt.mp4").write_bytes(b"\x00" * 4096)
    full = write_clip(tmp_path / "long.mp4", x, faststart=True).read_bytes()
    (folder / "truncated.mp4").write_bytes(full[: len(full) // 3])  # header says 30 frames; data ends early
    cfg = cfg_for("data.num_frames=8", "data.image_ratio=0")
    files, report = scan_media(folder, cfg.data)
    assert report.unreadable == 1 and report.videos == 2
    ds = ClipDataset(files, cfg.data, seed=0)
    skipped = sum(ds[i]["skipped"] for i in range(12))
    assert skipped >= 1
    assert sum("skipping" in r.message and "truncated.mp4" in r.message for r in caplog.records) == 1


def test_data_stream_is_deterministic_and_independent_of_workers(one_clip, clips, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_clip(folder / "bikes.mp4", read_video(clips / "bikes.mp4", max_frames=40).frames)
    cfg = load_config(None, [*TINY, "data.num_frames=8", "data.size=32", "data.image_ratio=0"])
    files, _ = scan_media(folder, cfg.data)
    a, b = ClipDataset(files, cfg.data, 0), ClipDataset(files, cfg.data, 0)
    assert torch.equal(a[5]["video"], b[5]["video"]) and not torch.equal(a[5]["video"], a[6]["video"])
    from dcvideogen.training.data import make_loader

    it0 = iter(make_loader(files, cfg.data, 0, start_step=3, batch=2, accum=1, rank=0, world=1))
    cfg.data.workers = 2
    it2 = iter(make_loader(files, cfg.data, 0, start_step=3, batch=2, accum=1, rank=0, world=1))
    for _ in range(2):
        b0, b2 = next(it0), next(it2)
        assert torch.equal(b0["index"], b2["index"]) and torch.equal(b0["video"], b2["video"])
    assert next(it0)["index"].tolist() == [10, 11]  # step 5 -> samples 10, 11


def test_a_crash_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    ckpt.save_checkpoint(folder, 1, {"w": torch.ones(3), "step": 1})

    def crash(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(folder, 2, {"w": torch.zeros(3), "step": 2})
    assert [p.name for p in folder.iterdir()] == ["step-00000001.safetensors"]
    assert torch.equal(ckpt.load_checkpoint(folder / "step-00000001.safetensors")["w"], torch.ones(3))


def test_discriminator_and_gan_schedule(one_clip, tmp_path):
    disc = VideoDiscriminator(channels=8, max_channels=16)
    for shape in [(2, 3, 8, 64, 64), (1, 3, 1, 48, 80)]:
        assert disc(torch.randn(shape)).shape == (shape[0],)
    cfg = cfg_for(
        "steps=4",
        "loss.gan_weight=0.5",
        "loss.gan_start_step=2",
        "loss.disc_channels=8",
        "loss.disc_max_channels=16",
        "log_every=1",
        "checkpoint_every=2",
    )
    train_ae(cfg, one_clip, tmp_path / "run")
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["train/gan_g"] == 0 for r in logs] == [True, True, False, False]
    assert all(r["train/disc"] > 0 for r in logs[2:]) and all(r["train/gan_w"] > 0 for r in logs[2:])
    d2 = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "run" / "checkpoints", 2))["disc"]
    d4 = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "run" / "checkpoints", 4))["disc"]
    assert any(not torch.equal(d2[k], d4[k]) for k in d2)  # trained only from step 2 on


def test_non_finite_losses_are_skipped_then_stop_the_run(one_clip, tmp_path, monkeypatch):
    from dcvideogen.training import trainer_ae

    calls = {"n": 0}
    real = trainer_ae.reconstruction_loss

    def flaky(x_hat, x, kind):
        calls["n"] += 1
        loss = real(x_hat, x, kind)
        return loss * math.nan if calls["n"] in (2, 4, 5, 6) else loss

    monkeypatch.setattr(trainer_ae, "reconstruction_loss", flaky)
    cfg = cfg_for("steps=10", "max_bad_steps=3", "log_every=1", "checkpoint_every=100")
    with pytest.raises(TrainingDiverged, match="3 non-finite losses in a row"):
        train_ae(cfg, one_clip, tmp_path / "run")
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2] and logs[-1]["train/bad_steps"] == 1


def test_config_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 10\noptim:\n  lr: 1.0e-3\ndata:\n  exclude: [a.mp4]\n")
    cfg = load_config(path, ["optim.lr=5e-4", "data.size=96", "optim.betas=[0.5, 0.9]"])
    assert (cfg.steps, cfg.optim.lr, cfg.data.size, cfg.optim.betas, cfg.data.exclude) == (
        10,
        5e-4,
        96,
        (0.5, 0.9),
        ["a.mp4"],
    )
    for bad, message in [
        (["optim.lrr=1"], "unknown key 'lrr'"),
        (["steps=abc"], "expected a int"),
        (["precision=fp8"], "precision='fp8'"),
        (["loss.lpips_weight=1"], "needs loss.lpips_backbone"),
        (["steps"], "use section.key=value"),
    ]:
        with pytest.raises(DCVGError, match=message):
            load_config(path, bad)
    with pytest.raises(DCVGError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "configs" / "ae").glob("*.yaml"))
)
def test_shipped_configs_load_and_name_real_presets(path):
    from dcvideogen.models.dcae_v import get_preset

    cfg = load_config(path)
    assert get_preset(cfg.model.preset, **cfg.model.arch).num_stages >= 7


def test_lpips_loss_trains_with_a_local_backbone(one_clip, tmp_path):
    from test_eval_lpips import save_backbone

    backbone = save_backbone(tmp_path / "alexnet.pth", "alex", seed=1)
    cfg = cfg_for(
        "steps=2",
        "log_every=1",
        "checkpoint_every=100",
        "loss.lpips_weight=1.0",
        "loss.lpips_net=alex",
        f"loss.lpips_backbone={backbone}",
    )
    train_ae(cfg, one_clip, tmp_path / "run")
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["train/lpips"] > 0 for r in logs)
    assert logs[0]["train/loss"] > logs[0]["train/rec"]  # the perceptual term is in the loss
    assert logs[0]["data/unreadable_files"] == 0 and logs[0]["data/skipped_clips"] == 0


def test_resume_refuses_other_settings_in_one_line_and_writes_nothing(one_clip, tmp_path, capsys):
    """Settings that shape the trained state must equal the checkpoint's (checked before anything is written);
    the run's length, intervals and workers may change."""
    from dcvideogen.cli.main import main

    run = tmp_path / "run"
    train_ae(cfg_for("steps=1", "data.size=32", "checkpoint_every=100"), one_clip, run)
    saved = {p: p.read_bytes() for p in (run / "config.yaml", run / "log.jsonl")}
    base = ["train-ae", "--data", str(one_clip), "--out", str(run), "--resume", "auto", *TINY]
    base += ["data.num_frames=8", "data.size=64", "data.hflip=false", "data.max_scale=1.0", "data.size=32"]
    for override, key in [
        ("model.preset=dc-ae-v-f64t4c128-tiny", "model.preset"),
        ("model.arch={chunk_size: 4}", "model.arch.chunk_size"),
        ("optim.lr=1.0", "optim.lr"),
        ("loss.gan_weight=0.5", "loss.gan_weight"),
        ("seed=3", "seed"),
    ]:
        assert main([*base, "steps=1", override]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"the run was made with {key}=" in err, err
        assert "Traceback" not in err and "--out" in err
        assert {p: p.read_bytes() for p in saved} == saved
    assert main([*base, "steps=2", "log_every=1", "checkpoint_every=7", "data.workers=1"]) == 0
    assert ckpt.list_checkpoints(run / "checkpoints")[-1].name == "step-00000002.safetensors"
    assert "checkpoint_every: 7" in (run / "config.yaml").read_text()


def test_an_empty_data_folder_fails_before_anything_is_written(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DCVGError, match="no usable videos or images"):
        train_ae(cfg_for("steps=1"), tmp_path / "empty", tmp_path / "run")
    assert not (tmp_path / "run").exists()
