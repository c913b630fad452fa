"""Exact resume at every schedule boundary, for both trainers.

One uninterrupted reference run per trainer (module fixtures), then runs stopped at boundary - 1, boundary and
boundary + 1 of every boundary and resumed: the final weights, the EMA, every optimiser's whole state (step
counts included), the schedulers, counters, RNG and every checkpoint both runs wrote must be equal, and so must
the logged losses. Stops come from `stop_after`, a real SIGINT (a `dcvg train-ae` subprocess, and in-process for
`dcvg adapt train`) and kill -9 between checkpoints.

Steps count completed optimiser steps; "stop at k" checkpoints after step k and resumes with step k + 1.
Autoencoder (steps 1..7): warm-up over steps 1-2; checkpoints after 3 and 6; the GAN (and the discriminator's
optimiser) from step 5 on (gan_start_step=4); validation after 5 and 7. The EMA starts at step 0, so its
boundary is the start of the run (stop at 1 is its boundary + 1).
Adaptation (global steps): 1a (exact solve) = 1, 1b = 2..4, 2 = 5..8. Stage boundaries after 1 and 4;
checkpoints after 3 and 6 (plus the stage ends 1, 4, 8); stage 2's warm-up ends after 6; validation after 4, 7
and 8.
"""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dcvideogen.training import checkpoint as ckpt
from dcvideogen.training.config import load_config, to_dict
from dcvideogen.training.trainer_ae import train_ae

from adapt_parts import make_captioned_clips, make_wan_base, tiny_adapt_config


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread (and so in the subprocesses): the models are tiny, and two threads on a busy 2-core
    machine spend their time waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- comparisons ------------------------------------------------------------------------------------------


def assert_same(a, b, where: str = "") -> None:
    """Nested checkpoint states equal bit for bit (tensors, numbers, strings)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (where, sorted(a.keys() ^ b.keys()))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def without_timings(state):
    """A state or log row without wall-clock values (seconds, throughput, memory)."""
    if isinstance(state, dict):
        return {
            k: without_timings(v)
            for k, v in state.items()
            if not (k.startswith("perf/") or "/perf/" in k or k.endswith("_s") or k.startswith("seconds"))
        }
    if isinstance(state, list):
        return [without_timings(v) for v in state]
    return state


def logged(run: Path) -> list[dict]:
    return [without_timings(json.loads(line)) for line in (run / "log.jsonl").read_text().splitlines()]


def assert_same_run(run: Path, ref: Path, last_step: int) -> None:
    """Every checkpoint both runs wrote (the last one included), the logs, the exported weights."""
    names = {p.name for p in ckpt.list_checkpoints(ref / "checkpoints")}
    common = sorted(names & {p.name for p in ckpt.list_checkpoints(run / "checkpoints")})
    assert ckpt.checkpoint_path(Path(), last_step).name in common
    for name in common:
        a = ckpt.load_checkpoint(run / "checkpoints" / name)
        b = ckpt.load_checkpoint(ref / "checkpoints" / name)
        assert_same(without_timings(a), without_timings(b), name)
    assert logged(run) == logged(ref)


def step_counts(opt_state: dict) -> set[float]:
    return {float(s["step"]) for s in opt_state["state"].values()}


# ---- the autoencoder trainer --------------------------------------------------------------------------------

AE_STEPS = 7
AE_BOUNDARIES = {"warm-up end": 2, "checkpoint": 3, "GAN start": 4, "validation": 5}
AE_STOPS = sorted({b + o for b in AE_BOUNDARIES.values() for o in (-1, 0, 1)})  # 1 .. 6


@pytest.fixture(scope="module")
def ae_setup(tmp_path_factory, clips):
    """(config, data folder, the uninterrupted reference run)."""
    from dcvideogen.video import read_video
    from test_train_ae import write_clip

    root = tmp_path_factory.mktemp("resume_ae")
    (root / "data").mkdir()
    x = read_video(clips / "bikes.mp4", max_frames=10).frames[:, :, :32, :32]  # (3, 10, 32, 32)
    clip = write_clip(root / "data" / "bikes32.mp4", x)
    cfg = load_config(
        None,
        [
            "model.preset=dc-ae-v-f32t4c32-tiny",
            "model.arch={block_out_channels: [8, 8, 8, 8, 8, 8, 8], layers_per_block: [0, 1, 1, 1, 1, 1, 1]}",
            "data.workers=0",
            "tensorboard=false",
            "data.num_frames=8",
            "data.size=32",
            "data.max_scale=1.2",
            f"steps={AE_STEPS}",
            "log_every=1",
            "keep_checkpoints=100",
            "optim.warmup_steps=2",
            "optim.decay=cosine",
            "optim.ema_decay=0.9",
            "checkpoint_every=3",
            "loss.gan_weight=0.1",
            "loss.gan_start_step=4",
            "loss.disc_channels=4",
            "loss.disc_max_channels=8",
            "val_every=5",
            f"data.val_clips=[{clip}]",
            "data.val_frames=8",
        ],
    )
    train_ae(cfg, root / "data", root / "reference")
    return cfg, root / "data", root / "reference"


def test_the_reference_run_crosses_every_boundary(ae_setup):
    cfg, _, ref = ae_setup
    rows = logged(ref)
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(1, AE_STEPS + 1))
    lrs = [r["train/lr"] for r in train]
    assert lrs[0] < lrs[1] == lrs[2] == cfg.optim.lr > lrs[3] > lrs[4]  # warm-up over steps 1-2, then cosine
    assert [r["train/disc"] > 0 for r in train] == [False] * 4 + [True] * 3  # the GAN from step 5 on
    assert [r["step"] for r in rows if "val/bikes32/psnr" in r] == [5, 7]
    assert [p.name for p in ckpt.list_checkpoints(ref / "checkpoints")] == [
        "step-00000003.safetensors",
        "step-00000006.safetensors",
        "step-00000007.safetensors",
    ]
    last = ckpt.load_checkpoint(ref / "checkpoints" / "step-00000007.safetensors")
    assert step_counts(last["opt"]) == {7.0} and step_counts(last["opt_d"]) == {3.0}
    before_gan = ckpt.load_checkpoint(ref / "checkpoints" / "step-00000003.safetensors")
    assert before_gan["opt_d"]["state"] == {}  # saved as never stepped, not with an invented step


@pytest.mark.parametrize("stop", AE_STOPS)
def test_autoencoder_stopped_at_a_boundary_resumes_bit_for_bit(ae_setup, tmp_path, stop):
    cfg, data, ref = ae_setup
    run = tmp_path / "run"
    train_ae(cfg, data, run, stop_after=stop)
    assert ckpt.list_checkpoints(run / "checkpoints")[-1].name == ckpt.checkpoint_path(run, stop).name
    train_ae(cfg, data, run, resume="auto")
    assert_same_run(run, ref, AE_STEPS)


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    log = run / "log.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.stderr.read()
        rows = log.read_text().splitlines() if log.is_file() else []
        if any(json.loads(r).get("step", 0) >= step for r in rows if r.endswith("}")):
            return
        time.sleep(0.005)
    raise AssertionError(f"no step {step} logged in {timeout} s")


def _dcvg(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the reference's threads
    return subprocess.Popen(
        [sys.executable, "-m", "dcvideogen.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_autoencoder_ctrl_c_and_kill_9_then_resume_bit_for_bit(ae_setup, tmp_path):
    """`dcvg train-ae` stopped by SIGINT exits 130 after a checkpoint and says how to resume; the resumed
    command is killed with -9 between checkpoints; resuming from the last checkpoint ends as the reference."""
    cfg, data, ref = ae_setup
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    run = tmp_path / "run"
    command = ["train-ae", "--config", str(tmp_path / "c.yaml"), "--data", str(data), "--out", str(run)]
    proc = _dcvg(*command)
    _wait_for_step(run, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped by SIGINT at step" in err and "--resume auto" in err
    stopped_at = int(ckpt.list_checkpoints(run / "checkpoints")[-1].name[5:13])
    assert 1 <= stopped_at < AE_STEPS and not (run / "model").exists()

    proc = _dcvg(*command, "--resume", "auto")
    _wait_for_step(run, max(4, stopped_at + 1), proc)  # past the checkpoint of step 3 (6 if it runs on)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    train_ae(cfg, data, run, resume="auto")  # the rows logged after the checkpoint are logged again, once
    assert_same_run(run, ref, AE_STEPS)


def test_a_kill_between_checkpoints_leaves_a_resumable_run_even_mid_log_row(ae_setup, tmp_path):
    """A copy of the reference as a kill -9 after step 4 leaves it (checkpoint 3, a half-written log row)."""
    cfg, data, ref = ae_setup
    run = tmp_path / "run"
    shutil.copytree(ref, run, ignore=shutil.ignore_patterns("model"))
    for p in ckpt.list_checkpoints(run / "checkpoints")[1:]:
        p.unlink()
    rows = (run / "log.jsonl").read_text().splitlines(keepends=True)
    (run / "log.jsonl").write_text("".join(r for r in rows if json.loads(r)["step"] <= 4) + rows[-1][:20])
    train_ae(cfg, data, run, resume="auto")
    assert_same_run(run, ref, AE_STEPS)


# ---- the adaptation trainer ---------------------------------------------------------------------------------

ADAPT_STEPS = 8  # global steps: 1a = 1, 1b = 2..4, 2 = 5..8
ADAPT_BOUNDARIES = {
    "stage 1a/1b": 1,
    "checkpoint": 3,
    "stage 1b/2": 4,
    "stage 2 warm-up end": 6,
    "validation": 7,
}
ADAPT_STOPS = sorted({b + o for b in ADAPT_BOUNDARIES.values() for o in (-1, 0, 1)} & set(range(1, 8)))
ADAPT = {
    "align_head.steps": 3,
    "finetune.steps": 4,
    "finetune.warmup_steps": 2,
    "finetune.lora_rank": 4,
    "finetune.lora_alpha": 8.0,
    "finetune.ema_decay": 0.9,
    "precision": "fp32",
    "tensorboard": False,
    "checkpoint_every": 2,
    "val_every": 3,
    "val_steps": 1,
    "log_every": 1,
    "keep_checkpoints": 100,
}


def changed(cfg, **values):
    """A copy of `cfg` with `section__name=value` changes, validated."""
    cfg = copy.deepcopy(cfg)
    for key, value in values.items():
        section, _, name = key.rpartition("__")
        setattr(getattr(cfg, section) if section else cfg, name, value)
    cfg.validate()
    return cfg


def adapt_config(root: Path, base: Path, source: Path):
    return changed(
        tiny_adapt_config(root, base, source), **{k.replace(".", "__"): v for k, v in ADAPT.items()}
    )


@pytest.fixture(scope="module")
def adapt_setup(tmp_path_factory, clips):
    """(config, the uninterrupted reference run) on a tiny Wan T2V base and 4 cached clips (1 held out)."""
    from dcvideogen.adapt.cache import build_cache
    from dcvideogen.adapt.train import train_adapt

    root = tmp_path_factory.mktemp("resume_adapt")
    cfg = adapt_config(
        root, make_wan_base(root / "base", "t2v"), make_captioned_clips(root / "clips", clips, n=4)
    )
    build_cache(cfg)
    assert train_adapt(cfg, root / "reference") is not None
    return cfg, root / "reference"


def assert_same_adapted(run: Path, ref: Path) -> None:
    from dcvideogen.adapt.result import read_adapted

    assert_same_run(run, ref, ADAPT_STEPS)
    a, b = read_adapted(run), read_adapted(ref)
    assert_same(a.state, b.state, "adapted")
    assert without_timings(a.stages) == without_timings(b.stages)


def test_the_adaptation_reference_crosses_every_boundary(adapt_setup):
    cfg, ref = adapt_setup
    rows = logged(ref)
    steps = lambda key: [r["step"] for r in rows if key in r]  # noqa: E731
    assert steps("align-head/train/loss") == [2, 3, 4] and steps("finetune/train/loss") == [5, 6, 7, 8]
    assert steps("val/loss") == [4, 7, 8]  # stage ends, and stage 2's step 3
    lrs = [r["finetune/train/lr"] for r in rows if "finetune/train/lr" in r]
    assert lrs[0] < lrs[1] == lrs[2]  # warm-up over stage 2's first 2 steps
    names = [int(p.name[5:13]) for p in ckpt.list_checkpoints(ref / "checkpoints")]
    assert names == [1, 3, 4, 6, 8]  # the stage ends, and each stage's step 2
    mid = ckpt.load_checkpoint(ckpt.checkpoint_path(ref / "checkpoints", 3))
    assert (mid["stage"], mid["stage_step"]) == ("align-head", 2)
    a = cfg.align_head.plateau_smoothing
    first, second = [r["align-head/train/loss"] for r in rows if "align-head/train/loss" in r][:2]
    assert mid["counters"]["plateau"]["smoothed"] == a * first + (1 - a) * second  # step 2's update is in
    mid = ckpt.load_checkpoint(ckpt.checkpoint_path(ref / "checkpoints", 6))
    assert (mid["stage"], mid["stage_step"]) == ("finetune", 2) and step_counts(mid["opt"]) == {2.0}
    assert mid["ema"] and mid["counters"]["samples"] == 2


@pytest.mark.parametrize("stop", ADAPT_STOPS)
def test_adaptation_stopped_at_a_boundary_resumes_bit_for_bit(adapt_setup, tmp_path, stop):
    from dcvideogen.adapt.train import train_adapt

    cfg, ref = adapt_setup
    run = tmp_path / "run"
    assert train_adapt(cfg, run, stop_after=stop) is None
    assert int(ckpt.list_checkpoints(run / "checkpoints")[-1].name[5:13]) == stop
    assert train_adapt(cfg, run, resume="auto") == run / "adapted"
    assert_same_adapted(run, ref)


def test_adapt_train_stopped_by_sigint_exits_130_and_resumes_bit_for_bit(
    adapt_setup, tmp_path, monkeypatch, capsys
):
    """SIGINT during stage 1b's second step: the step and its validation finish, the run checkpoints, the command
    exits 130 and says how to resume; `--resume auto` ends as the reference."""
    from dcvideogen.adapt import flow
    from dcvideogen.adapt.config import to_dict as adapt_dict
    from dcvideogen.cli.main import main

    cfg, ref = adapt_setup
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(adapt_dict(cfg)))
    real, calls = flow.flow_loss, {"n": 0}

    def loss_then_sigint(pred, target):
        calls["n"] += 1
        if calls["n"] == 2:  # stage 1b, step 2 (global step 3)
            os.kill(os.getpid(), signal.SIGINT)
        return real(pred, target)

    monkeypatch.setattr(flow, "flow_loss", loss_then_sigint)
    command = ["adapt", "train", "--config", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "run")]
    assert main(command) == 130
    err = capsys.readouterr().err
    assert "stopped by SIGINT at global step 3" in err and "--resume auto" in err
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")][
        -1
    ] == "step-00000003.safetensors"
    monkeypatch.setattr(flow, "flow_loss", real)
    assert main([*command, "--resume", "auto"]) == 0
    assert_same_adapted(tmp_path / "run", ref)


@pytest.mark.parametrize("killed_after", [3, 6])
def test_adaptation_killed_between_checkpoints_resumes_bit_for_bit(adapt_setup, tmp_path, killed_after):
    """The reference as a kill -9 two steps after its mid-stage checkpoint 3 (stage 1b: the plateau state) or 6
    (stage 2: EMA, warm-up end) leaves it: later checkpoints, the result and log rows gone, a half-written row."""
    from dcvideogen.adapt.train import train_adapt

    cfg, ref = adapt_setup
    run = tmp_path / "run"
    shutil.copytree(ref, run, ignore=shutil.ignore_patterns("adapted"))
    for p in ckpt.list_checkpoints(run / "checkpoints"):
        if int(p.name[5:13]) > killed_after:
            p.unlink()
    rows = (run / "log.jsonl").read_text().splitlines(keepends=True)
    kept = "".join(r for r in rows if json.loads(r)["step"] <= killed_after + 2)
    (run / "log.jsonl").write_text(kept + rows[-1][:20])
    assert train_adapt(cfg, run, resume="auto") == run / "adapted"
    assert_same_adapted(run, ref)


def test_adaptation_refuses_other_settings_and_empty_caches_before_writing(adapt_setup, tmp_path):
    from dcvideogen.adapt.train import train_adapt
    from dcvideogen.errors import DCVGError

    cfg, ref = adapt_setup
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for key, value in [("model.patch_size", (1, 2, 2)), ("finetune.lora_rank", 8), ("seed", 1)]:
        with pytest.raises(DCVGError, match=f"the run was made with {key}="):
            train_adapt(changed(cfg, **{key.replace(".", "__"): value}), run, resume="auto")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    (tmp_path / "empty").mkdir()
    with pytest.raises(DCVGError, match="run dcvg adapt cache first"):
        train_adapt(changed(cfg, data__cache=str(tmp_path / "empty")), tmp_path / "new")
    assert not (tmp_path / "new").exists()


# ---- the adaptation trainer across a resolution stage (issue 14) ---------------------------------------------

# Global steps: 1a = 1, 1b = 2, 2 = 3..4, resolution stage "hi" = 5..7 (2 buckets each, EMA on: the stage
# continues stage 2's raw weights, AdamW state and EMA from the carry in the checkpoint after step 4).
# Checkpoints after 1, 2, 4 (stage ends), 6 (hi's step 2) and 7; validation after 2, 4, 6, 7.
RES_STEPS = 7
RES_STOPS = [3, 4, 5, 6]
RES = {
    **ADAPT,
    "align_head.steps": 1,
    "finetune.steps": 2,
    "finetune.warmup_steps": 1,
    "val_every": 2,
    "data.buckets": [(8, 64, 96), (8, 96, 64)],
}


@pytest.fixture(scope="module")
def resolution_setup(tmp_path_factory, clips):
    """(config, the uninterrupted reference run) with base buckets and a two-bucket resolution stage."""
    from dcvideogen.adapt.cache import build_cache
    from dcvideogen.adapt.config import ResolutionStageConfig
    from dcvideogen.adapt.train import train_adapt

    root = tmp_path_factory.mktemp("resume_resolution")
    source = make_captioned_clips(root / "clips", clips, n=5, frames=9, size=[(72, 96), (96, 72)])
    cfg = tiny_adapt_config(root, make_wan_base(root / "base", "t2v"), source)
    cfg = changed(cfg, **{k.replace(".", "__"): v for k, v in RES.items()})
    hi = ResolutionStageConfig(
        name="hi", steps=3, buckets=[(8, 96, 128), (8, 128, 96)], lr=1e-3, warmup_steps=2
    )
    cfg = changed(cfg, resolution_stages=[hi])
    build_cache(cfg)
    assert train_adapt(cfg, root / "reference") is not None
    return cfg, root / "reference"


def test_the_resolution_reference_continues_stage_2(resolution_setup):
    _, ref = resolution_setup
    rows = logged(ref)
    assert [r["step"] for r in rows if "hi/train/loss" in r] == [5, 6, 7]
    assert [int(p.name[5:13]) for p in ckpt.list_checkpoints(ref / "checkpoints")] == [1, 2, 4, 6, 7]
    boundary = ckpt.load_checkpoint(ckpt.checkpoint_path(ref / "checkpoints", 4))
    assert (boundary["stage"], boundary["finished"]) == ("finetune", True)
    assert step_counts(boundary["carry"]["opt"]) == {2.0} and boundary["carry"]["ema"]
    mid = ckpt.load_checkpoint(ckpt.checkpoint_path(ref / "checkpoints", 6))
    assert (mid["stage"], mid["stage_step"]) == ("hi", 2) and step_counts(mid["opt"]) == {4.0}


@pytest.mark.parametrize("stop", RES_STOPS)
def test_a_run_stopped_around_a_resolution_stage_boundary_resumes_bit_for_bit(
    resolution_setup, tmp_path, stop
):
    from dcvideogen.adapt.result import read_adapted
    from dcvideogen.adapt.train import train_adapt

    cfg, ref = resolution_setup
    run = tmp_path / "run"
    assert train_adapt(cfg, run, stop_after=stop) is None
    assert int(ckpt.list_checkpoints(run / "checkpoints")[-1].name[5:13]) == stop
    assert train_adapt(cfg, run, resume="auto") == run / "adapted"
    assert_same_run(run, ref, RES_STEPS)
    a, b = read_adapted(run), read_adapted(ref)
    assert_same(a.state, b.state, "adapted")
    assert without_timings(a.stages) == without_timings(b.stages)
