"""`dcvg bench ae` end to end on CPU with tiny autoencoders; the modes really switch the models."""

import csv
import json

import pytest
import torch

import dcvideogen.bench.autoencoder as bench_ae
from dcvideogen.bench.autoencoder import AEMode, configure, estimated_bytes, load_bench_autoencoder
from dcvideogen.cli.main import main

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the machine running the tests is shared, and tiny ops gain nothing from more."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def read_csv(path):
    return list(csv.DictReader(path.read_text().splitlines()))


def test_bench_ae_end_to_end(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "ae"
    argv = ["bench", "ae", "--ae", "dc-ae-v-f32t4c32-tiny", "--ae", "wan-tiny", "--ae", str(tiny_model_dir)]
    argv += ["--sizes", "64x64x8", "--tile", "32", "--tile-overlap", "0", "--warmup", "0", "--repeats", "1"]
    code = main([*argv, "--threads", "1", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0 and "encode ms" in stdout and "torch" in stdout
    rows = read_csv(out / "ae.csv")
    by = {(r["autoencoder"], r["mode"]): r for r in rows}
    assert len(rows) == 9  # 3 autoencoders x 3 modes
    for mode in ("one-shot", "streaming", "tiled"):
        r = by[("dc-ae-v-f32t4c32-tiny", mode)]
        assert r["status"] == "ok" and r["latent_shape"] == "32x2x2x2" and r["frames_run"] == "8"
        assert float(r["encode_median_ms"]) > 0 and float(r["decode_median_ms"]) > 0
        assert r["encode_peak_mib"] != "" and float(r["encode_frames_per_s"]) > 0
    assert by[("dc-ae-v-f32t4c32-tiny", "tiled")]["how"] == "8-frame pieces, 32 px tiles, overlap 0"
    assert by[("tiny", "streaming")]["status"] == "ok"  # loaded from a model folder with its weights
    assert by[("wan-tiny", "one-shot")]["status"].startswith("n/a")
    wan = by[("wan-tiny", "streaming")]
    assert wan["status"] == "ok" and wan["frames_run"] == "9" and wan["latent_shape"] == "4x3x8x8"
    assert by[("wan-tiny", "tiled")]["how"].startswith("32 px tiles")
    payload = json.loads((out / "ae.json").read_text())
    assert payload["settings"]["modes"] == "one-shot,streaming,tiled" and len(payload["rows"]) == 9
    assert (out / "ae.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_modes_configure_the_models():
    dcae = load_bench_autoencoder("dc-ae-v-f32t4c32-tiny", CPU, torch.float32)
    model = dcae.model
    assert configure(dcae, AEMode.ONE_SHOT, 64, 32) == "whole clip at once"
    assert not model.use_streaming and not model.use_tiling
    configure(dcae, AEMode.STREAMING, 64, 32)
    assert model.use_streaming and not model.use_tiling
    configure(dcae, AEMode.TILED, 64, 32)
    assert model.use_streaming and model.use_tiling and (model.tile_size, model.tile_overlap) == (64, 32)
    with torch.inference_mode():
        dcae.encode(torch.zeros(1, 3, 8, 64, 128))  # two 64 px tiles
    assert model.last_run_tiled
    # Streaming holds one chunk at a time: a smaller estimate than one-shot for a long clip.
    assert estimated_bytes(dcae, AEMode.STREAMING, 64, 64, 64) < estimated_bytes(
        dcae, AEMode.ONE_SHOT, 64, 64, 64
    )

    wan = load_bench_autoencoder("wan-tiny", CPU, torch.float32)
    assert configure(wan, AEMode.ONE_SHOT, 64, 16) is None
    configure(wan, AEMode.TILED, 64, 16)
    assert wan.model.use_tiling and wan.model.tile_sample_stride_height == 48
    configure(wan, AEMode.STREAMING, 64, 16)
    assert not wan.model.use_tiling
    assert estimated_bytes(wan, AEMode.STREAMING, 8, 64, 64) is None


def test_clip_that_does_not_fit_is_skipped(capsys, tmp_path, monkeypatch):
    # 64 MiB "free": the tiny weights (12 MiB) fit; one-shot and streaming 1024x1024 activations do not.
    monkeypatch.setattr(bench_ae, "free_memory", lambda device: 64 * 2**20)
    argv = [
        "bench",
        "ae",
        "--ae",
        "dc-ae-v-f32t4c32-tiny",
        "--sizes",
        "1024x1024x8",
        "--modes",
        "one-shot,streaming",
    ]
    assert main([*argv, "--out", str(tmp_path / "ae")]) == 0
    rows = read_csv(tmp_path / "ae" / "ae.csv")
    assert [r["status"].split(":")[0] for r in rows] == ["skipped", "skipped"]
    assert "GiB free" in rows[0]["status"] and "skipped: needs" in capsys.readouterr().out


def test_bad_ae_input(capsys, tmp_path):
    assert main(["bench", "ae", "--ae", "no-such-ae", "--out", str(tmp_path / "a")]) == 2
    assert "not a known autoencoder" in capsys.readouterr().err
    assert main(["bench", "ae", "--ae", "wan-tiny", "--modes", "fast", "--out", str(tmp_path / "b")]) == 2
    assert "--modes 'fast'" in capsys.readouterr().err
    argv = [
        "bench",
        "ae",
        "--ae",
        "dc-ae-v-f32t4c32-tiny",
        "--sizes",
        "64x64x8",
        "--modes",
        "tiled",
        "--tile",
        "48",
    ]
    assert main([*argv, "--tile-overlap", "16", "--out", str(tmp_path / "c")]) == 2
    assert "--tile 48" in capsys.readouterr().err
