"""Property test: generated corrupt inputs to `dcvg reconstruct`, `encode`, `decode` and `eval-ae` give
either a result or one error line, exit 0 or 2, and leave no output or temporary file behind on failure
(issue 12)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dcvideogen.cli.main import main

from test_video_io import write_mp4

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif", ".png", ".jpg")


@dataclass
class Case:
    command: str
    input: Path  # the file (or folder) the command reads
    output: Path  # what it writes: a file, or the eval-ae report folder
    extra: tuple[str, ...] = ()

    def argv(self, model: Path) -> list[str]:
        if self.command == "eval-ae":
            return ["eval-ae", "--model", str(model), "--data", str(self.input), "--out", str(self.output),
                    "--frames", "8", "--size", "32", "--samples", "0", *self.extra]  # fmt: skip
        return [self.command, str(self.input), str(self.output), "--model", str(model), *self.extra]


def video_cases(rng: np.random.Generator, root: Path, clip: bytes, real: bytes) -> list[Case]:
    """Truncations at random offsets (of a faststart clip and of a real clip), random bytes with a video or
    image extension, an empty file; each to reconstruct or encode."""
    files = []
    for i, offset in enumerate(rng.integers(1, len(clip), size=10)):
        files.append((f"cut{i}.mp4", clip[:offset]))
    for i, offset in enumerate(rng.integers(1, len(real), size=2)):
        files.append((f"real_cut{i}.mp4", real[:offset]))
    for i, ext in enumerate(rng.choice(VIDEO_EXTENSIONS, size=6, replace=False)):
        files.append((f"random{i}{ext}", rng.bytes(int(rng.integers(1, 3000)))))
    files.append(("empty.mp4", b""))
    cases = []
    for i, (name, data) in enumerate(files):
        folder = root / f"v{i}"
        folder.mkdir()
        (folder / name).write_bytes(data)
        if i % 2:
            cases.append(Case("encode", folder / name, folder / "out.safetensors"))
        else:
            extra = ("--strict",) if i % 4 == 2 else ()
            cases.append(Case("reconstruct", folder / name, folder / "out.mp4", extra))
    return cases


def mutate_latent(rng: np.random.Generator, latent: torch.Tensor, meta: dict[str, str]):
    """A latent with a random dimension changed, dropped or added, or one metadata value replaced."""
    latent, meta = latent.clone(), dict(meta)
    kind = rng.integers(4)
    if kind == 0:  # resize one axis
        axis = int(rng.integers(latent.dim()))
        size = int(rng.integers(0, latent.shape[axis] + 3))
        shape = list(latent.shape)
        shape[axis] = size
        latent = torch.randn(shape)
    elif kind == 1:  # drop or add an axis
        latent = latent[0] if rng.integers(2) else latent[None]
    else:
        key = str(rng.choice(["num_frames", "height", "width", "fps", "config", "format"]))
        values = ["-5", "0", "3", "100000", "2.5", "nan", "", "abc", "{", json.dumps({"x": 1}), "[1]"]
        meta[key] = str(rng.choice(values))
    return latent, meta


def latent_cases(
    rng: np.random.Generator, root: Path, latent: torch.Tensor, meta: dict[str, str]
) -> list[Case]:
    cases = []
    for i in range(8):
        folder = root / f"z{i}"
        folder.mkdir()
        bad, bad_meta = mutate_latent(rng, latent, meta)
        save_file({"latent": bad.contiguous()}, str(folder / "latent.safetensors"), metadata=bad_meta)
        cases.append(Case("decode", folder / "latent.safetensors", folder / "out.mp4"))
    good = (root / "z0" / "latent.safetensors").read_bytes()
    for i, offset in enumerate(rng.integers(0, len(good), size=2)):
        folder = root / f"zcut{i}"
        folder.mkdir()
        (folder / "latent.safetensors").write_bytes(good[:offset])
        cases.append(Case("decode", folder / "latent.safetensors", folder / "out.mp4"))
    return cases


def eval_cases(rng: np.random.Generator, root: Path, clip: bytes) -> list[Case]:
    """Folders of damaged videos (with and without one readable clip) for eval-ae."""
    cases = []
    for i, with_good in enumerate((False, True)):
        folder = root / f"e{i}"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "cut.mp4").write_bytes(clip[: int(rng.integers(1, len(clip)))])
        (folder / "data" / "noise.webm").write_bytes(rng.bytes(2000))
        (folder / "data" / "empty.mkv").write_bytes(b"")
        if with_good:
            (folder / "data" / "good.mp4").write_bytes(clip)
        cases.append(Case("eval-ae", folder / "data", folder / "report"))
    return cases


def check(case: Case, code: int, err: str) -> None:
    where = f"{case.command} {case.input.name}: exit {code}, stderr {err!r}"
    assert code in (0, 2), where
    assert "Traceback" not in err, where
    leftovers = [p.name for p in case.output.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"{where}; temporary files left: {leftovers}"
    if code == 0:
        assert case.output.exists(), where
        return
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"dcvg {case.command}: error: "), where
    assert case.input.name in lines[0] or case.command == "eval-ae", where
    assert not case.output.exists(), f"{where}; output left behind"


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_model_dir, clips):
    """A 12-frame faststart clip, the head of a real clip, and a latent of the clip written by dcvg encode."""
    root = tmp_path_factory.mktemp("fuzz_sources")
    clip = write_mp4(root / "clip.mp4", frames=12, h=32, w=48)
    latent_path = root / "clip.safetensors"
    assert main(["encode", str(clip), str(latent_path), "--model", str(tiny_model_dir)]) == 0
    with safe_open(str(latent_path), framework="pt") as f:
        meta = f.metadata()
    real = (clips / "carphone_pristine.mp4").read_bytes()[:60_000]
    return clip.read_bytes(), real, load_file(str(latent_path))["latent"], meta


def test_corrupt_inputs_give_a_result_or_one_line(capsys, sources, tiny_model_dir, tmp_path):
    clip, real, latent, meta = sources
    rng = np.random.default_rng(12)
    cases = [
        *video_cases(rng, tmp_path, clip, real),
        *latent_cases(rng, tmp_path, latent, meta),
        *eval_cases(rng, tmp_path, clip),
    ]
    assert 30 <= len(cases) <= 40
    codes = []
    for case in cases:
        code = main(case.argv(tiny_model_dir))
        check(case, code, capsys.readouterr().err)
        codes.append(code)
    assert codes.count(0) >= 3 and codes.count(2) >= 10  # both outcomes are exercised
