"""`dcvg adapt synth` (adapt/synth.py) with a tiny random Wan T2V base: the output folder is a data.source,
seeds are a pure function of (seed, index); a failure and a SIGKILL in the middle of a clip, then a rerun,
give every prompt exactly once with the same seeds and frames as an uninterrupted run (the generated frames
bit for bit, by their hash in the sidecar; the mp4s within h264's run-to-run noise: libx264 here does not
give the same bytes twice for the same frames); ranks split the prompts; other prompts or settings are
refused; the CLI writes the adaptation cache of the clips."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from dcvideogen.adapt import synth as S
from dcvideogen.adapt.config import save_config
from dcvideogen.adapt.data import LatentCache, find_clips
from dcvideogen.cli.main import main
from dcvideogen.errors import DCVGError
from dcvideogen.video import io as video_io
from dcvideogen.video import read_clip

from adapt_parts import CAPTIONS, make_wan_base, tiny_adapt_config

PROMPTS = CAPTIONS[:4]
SEED = 7
# 5 frames (1 + 4: one DC-AE-V latent frame) of 32 x 32, 2 steps with guidance: seconds on a CPU
SIZE = dict(frames=5, height=32, width=32, steps=2, guidance=2.0)


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    return make_wan_base(tmp_path_factory.mktemp("wan") / "t2v").resolve()


@pytest.fixture(scope="session")
def settings(base) -> S.SynthSettings:
    return S.SynthSettings(base=str(base), **SIZE)


@pytest.fixture(scope="session")
def reference(tmp_path_factory, base, settings) -> Path:
    """The uninterrupted run of the 4 prompts."""
    out = tmp_path_factory.mktemp("synth") / "reference"
    report = S.synthesize(base, PROMPTS, out, settings, seed=SEED)
    assert report.generated == [0, 1, 2, 3] and report.done_before == 0
    return out


def clips_of(folder: Path) -> dict[str, tuple]:
    """name -> (caption, sidecar, decoded frames) of every finished clip; asserts nothing else is there."""
    names = sorted(p.stem for p in folder.glob("*.mp4"))
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary files left"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{n}{s}" for n in names for s in (".mp4", ".txt", ".json")
    )
    return {
        n: (
            (folder / f"{n}.txt").read_text(),
            json.loads((folder / f"{n}.json").read_text()),
            read_clip(folder / f"{n}.mp4", 0, SIZE["frames"]),
        )
        for n in names
    }


def assert_same_clips(folder: Path, reference: Path) -> None:
    got, want = clips_of(folder), clips_of(reference)
    assert list(got) == list(want) == [f"{i:06d}" for i in range(len(PROMPTS))]
    for name in want:  # caption, and sidecar with seed, settings and the generated frames' hash: equal
        assert got[name][0] == want[name][0] and got[name][1] == want[name][1]
        diff = (got[name][2] - want[name][2]).abs()  # the decoded mp4s: h264 noise only
        assert diff.mean() < 2 / 255 and diff.max() < 0.25, f"{name}: other frames than the uninterrupted run"


def test_folder_is_a_data_source_with_seeds_and_captions(reference, settings):
    clips = clips_of(reference)
    for i, (caption, meta, frames) in enumerate(clips.values()):
        assert caption == PROMPTS[i] + "\n"
        assert meta == {
            "version": S.SIDECAR_VERSION,
            "index": i,
            "prompt": PROMPTS[i],
            "seed": S.clip_seed(SEED, i),
            "settings": asdict(settings),
            "frames_sha256": meta["frames_sha256"],
        }
        assert (frames - read_clip(reference / f"{i:06d}.mp4", 0, 5)).abs().max() == 0  # the decode is exact
        assert frames.shape == (3, 5, 32, 32) and frames.std() > 0
    records = find_clips(reference)  # what dcvg adapt cache reads
    assert [r.path.stem for r in records] == list(clips) and [r.caption for r in records] == PROMPTS
    seeds = [S.clip_seed(SEED, i) for i in range(4)]
    assert len(set(seeds)) == 4 and seeds == [S.clip_seed(SEED, i) for i in range(4)]
    assert S.clip_seed(SEED + 1, 0) != seeds[0]
    assert not torch.equal(clips["000000"][2], clips["000001"][2])
    assert len({meta["frames_sha256"] for _, meta, _ in clips.values()}) == 4


def test_failure_mid_clip_then_rerun(tmp_path, base, settings, reference, monkeypatch):
    """An error while the second clip's mp4 is being written: nothing of it counts; the rerun makes it and
    the rest, each once, as the uninterrupted run did."""
    out = tmp_path / "out"
    original, calls = video_io.VideoWriter._encode, []

    def failing(self, arr):
        calls.append(self.path.name)
        if len(calls) == 2:
            original(self, arr[:2])  # half the clip in the temporary file
            raise OSError(28, "No space left on device")
        original(self, arr)

    monkeypatch.setattr(video_io.VideoWriter, "_encode", failing)
    with pytest.raises(OSError):
        S.synthesize(base, PROMPTS, out, settings, seed=SEED)
    assert [r.path.name for r in find_clips(out)] == ["000000.mp4"]
    monkeypatch.setattr(video_io.VideoWriter, "_encode", original)
    report = S.synthesize(base, PROMPTS, out, settings, seed=SEED)
    assert report.done_before == 1 and report.generated == [1, 2, 3]
    assert_same_clips(out, reference)
    again = S.synthesize(base, PROMPTS, out, settings, seed=SEED)
    assert again.generated == [] and again.done_before == 4


KILLER = """
import json, os, signal, sys
from pathlib import Path
from dcvideogen.adapt import synth as S
from dcvideogen.video import io as video_io

args = json.loads(sys.argv[1])
original, calls = video_io.VideoWriter._encode, []

def killed(self, arr):
    calls.append(1)
    if len(calls) == 2:
        original(self, arr[:2])  # the second clip's first 2 frames, flushed into its temporary file: a
        self._mux(None)  # playable but short mp4, the worst leftover
        self.container.close()
        os.kill(os.getpid(), signal.SIGKILL)
    original(self, arr)

video_io.VideoWriter._encode = killed
S.synthesize(args["base"], args["prompts"], args["out"], S.SynthSettings(**args["settings"]), seed=args["seed"])
"""


def test_sigkill_mid_clip_then_rerun(tmp_path, base, settings, reference):
    """A process killed (SIGKILL) while writing the second clip leaves that clip's half mp4 under a hidden
    temporary name, which `find_clips` and a rerun do not count; the rerun removes it and makes the rest."""
    out = tmp_path / "out"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    args = {
        "base": str(base),
        "prompts": PROMPTS,
        "out": str(out),
        "settings": asdict(settings),
        "seed": SEED,
    }
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(args)], env=env, capture_output=True, timeout=300
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    partial = [p for p in out.iterdir() if p.name.startswith(".000001.mp4")]
    assert len(partial) == 1 and read_clip(partial[0], 0, 2).shape[1] == 2  # the half clip, readable
    assert [r.path.name for r in find_clips(out)] == ["000000.mp4"]
    assert (out / "000001.json").is_file() and not (out / "000001.mp4").exists()
    report = S.synthesize(base, PROMPTS, out, settings, seed=SEED)
    assert report.done_before == 1 and report.generated == [1, 2, 3]
    assert_same_clips(out, reference)


def test_ranks_split_the_prompts(tmp_path, base, settings, reference):
    out = tmp_path / "out"
    r1 = S.synthesize(base, PROMPTS, out, settings, seed=SEED, rank=1, world=2)
    r0 = S.synthesize(base, PROMPTS, out, settings, seed=SEED, rank=0, world=2)
    assert r1.generated == [1, 3] and r0.generated == [0, 2]
    assert_same_clips(out, reference)


def test_other_prompts_seed_or_settings_are_refused(tmp_path, base, settings, reference, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    monkeypatch.setattr(S, "load_base_pipeline", lambda *a: pytest.fail("no model may load"))
    with pytest.raises(DCVGError, match=r"000000\.json: generated with steps=2, this run asks 3"):
        S.synthesize(base, PROMPTS, out, replace(settings, steps=3), seed=SEED)
    with pytest.raises(DCVGError, match=r"000000\.json: made for prompt"):
        S.synthesize(base, PROMPTS[::-1], out, settings, seed=SEED)
    with pytest.raises(DCVGError, match=r"made for seed .* --seed changed"):
        S.synthesize(base, PROMPTS, out, settings, seed=SEED + 1)
    assert S.synthesize(base, PROMPTS[:2], out, settings, seed=SEED).done_before == 2  # a prefix: all done


def test_bad_inputs_fail_before_any_model(tmp_path, base, settings, monkeypatch):
    monkeypatch.setattr(S, "load_base_pipeline", lambda *a: pytest.fail("no model may load"))
    with pytest.raises(DCVGError, match="no such file"):
        S.read_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DCVGError, match="no prompts"):
        S.read_prompts(tmp_path / "empty.txt")
    (tmp_path / "p.txt").write_text("a car\n\n  a corgi  \n")
    assert S.read_prompts(tmp_path / "p.txt") == ["a car", "a corgi"]
    for bad, match in (
        (dict(frames=8), "1 \\+ 4k"),
        (dict(height=40), "multiples of 16"),
        (dict(steps=0), "--steps 0"),
        (dict(guidance=0.5), "--guidance 0.5"),
    ):
        with pytest.raises(DCVGError, match=match):
            S.synthesize(base, PROMPTS, tmp_path / "o", replace(settings, **bad))
    with pytest.raises(DCVGError, match=r"--base: .*no such folder"):
        S.synthesize(tmp_path / "nowhere", PROMPTS, tmp_path / "o", settings)
    i2v = make_wan_base(tmp_path / "i2v", "i2v")
    with pytest.raises(DCVGError, match=r"I2V.*text-to-video base"):
        S.synthesize(i2v, PROMPTS, tmp_path / "o", settings)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DCVGError, match="is a file"):
        S.synthesize(base, PROMPTS, tmp_path / "file", settings)


def test_cli_writes_the_adaptation_cache(tmp_path, base, reference, capsys):
    """`dcvg adapt synth ... --config C --cache DIR`: the clip size defaults to the config's (data.num_frames
    + 1 frames, data.height x data.width), the finished clips are kept, and the cache of the folder is
    written with `build_cache`."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    cfg = tiny_adapt_config(tmp_path, base, out, data__num_frames=4, data__height=32, data__width=32)
    cfg.data.val_prompts = []
    save_config(cfg, tmp_path / "adapt.yaml")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    argv = [
        "adapt",
        "synth",
        "--base",
        str(base),
        "--prompts",
        str(tmp_path / "prompts.txt"),
        "--out",
        str(out),
    ]
    argv += ["--seed", str(SEED), "--steps", "2", "--guidance", "2", "--config", str(tmp_path / "adapt.yaml")]
    assert main([*argv, "--cache", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "0 now, 4 found done" in printed and "cached       4 clips, 0 skipped" in printed
    cache = LatentCache(tmp_path / "cache")
    assert len(cache) == 4 and [cache.caption(i) for i in range(4)] == PROMPTS
    item = cache[0]
    assert item["latent"].shape == (32, 1, 1, 1) and item["wan_latent"].shape == (16, 2, 4, 4)
    assert main([*argv[:-2], "--cache", str(tmp_path / "c2")]) == 2  # --cache without --config
    assert "need --config" in capsys.readouterr().err


def test_cache_takes_the_generated_wan_latents_without_encoding_again(tmp_path, base, monkeypatch, capsys):
    """With --cache, each clip's generated Wan latent is kept beside it and cached as it is: the Wan VAE never
    encodes the clips (the DC-AE-V latent is still encoded from the written frames)."""
    from dcvideogen.adapt.cache import Encoders

    cfg = tiny_adapt_config(
        tmp_path, base, tmp_path / "out", data__num_frames=4, data__height=32, data__width=32
    )
    cfg.data.val_prompts = []
    save_config(cfg, tmp_path / "adapt.yaml")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[:2]) + "\n")

    def no_wan_encode(self, x):
        raise AssertionError("the Wan VAE encoded a clip whose generated latent was kept")

    monkeypatch.setattr(Encoders, "wan_latent", no_wan_encode)
    argv = ["adapt", "synth", "--base", str(base), "--prompts", str(tmp_path / "prompts.txt")]
    argv += ["--out", str(tmp_path / "out"), "--seed", str(SEED), "--steps", "2", "--guidance", "2"]
    argv += ["--config", str(tmp_path / "adapt.yaml"), "--cache", str(tmp_path / "cache")]
    assert main(argv) == 0, capsys.readouterr().err
    cache = LatentCache(tmp_path / "cache")
    assert len(cache) == 2
    for i in range(2):
        kept = S.generated_latent(type("R", (), {"path": tmp_path / "out" / f"{i:06d}.mp4"})())
        assert kept is not None and kept.shape == (16, 2, 4, 4)
        cached = cache[i]["wan_latent"].float()
        torch.testing.assert_close(cached, kept.to(cached.dtype), atol=1e-2, rtol=1e-2)  # bf16 cache rounding


def test_a_kept_latent_is_used_only_when_it_covers_the_frames_wan_reads():
    from dcvideogen.adapt.cache import precomputed_fits

    x = torch.zeros(1, 3, 9, 64, 96)  # 1 + 4k frames, k = 2
    assert precomputed_fits(torch.zeros(16, 3, 8, 12), x, loaded=9)  # Wan 2.1: 8x
    assert precomputed_fits(torch.zeros(48, 3, 4, 6), x, loaded=9)  # Wan 2.2: 16x
    assert not precomputed_fits(torch.zeros(16, 2, 8, 12), x, loaded=9)  # other frames
    assert not precomputed_fits(torch.zeros(16, 3, 8, 12), x, loaded=12)  # Wan reads part of the clip
    assert not precomputed_fits(torch.zeros(16, 3, 4, 12), x, loaded=9)  # another size
