"""The pipeline benchmark (seconds per step, peak memory) runs end to end at toy size on the CPU."""

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from dcvideogen.bench.pipeline import TRANSFORMERS, PipelineBenchConfig, build_random_pipeline
from dcvideogen.errors import DCVGError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_pipeline.py"


def test_bench_script_at_toy_size(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    argv = ["--transformer", "tiny", "--sizes", "32x64", "--frames", "8", "--steps", "3", "--device", "cpu"]
    argv += ["--dtype", "float32", "--tiny", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert e.value.code == 0
    (r,) = json.loads(out.read_text())
    assert r["tokens"] == 2 * 1 * 2 and r["seconds_per_step"] > 0 and r["peak_total_gib"] is None
    assert {"encode_prompt", "denoise", "decode"} <= set(r["timings_s"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| transformer |") and table[2].startswith("| tiny | 32x64x8 | 4 |")


def test_random_pipeline_is_built_in_the_compute_dtype():
    cfg = PipelineBenchConfig(transformer="tiny", text_encoder="tiny", autoencoder="tiny", device="cpu")
    pipe = build_random_pipeline(cfg)
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == pipe.vae.dtype == torch.bfloat16
    assert pipe.transformer.config.in_channels == pipe.transformer.config.out_channels == 32
    assert tuple(pipe.transformer.config.patch_size) == (1, 1, 1)
    assert TRANSFORMERS["wan-14b"]["num_attention_heads"] * 128 == 5120
    with pytest.raises(DCVGError, match="transformer 'wan-7b': choose one of"):
        build_random_pipeline(PipelineBenchConfig(transformer="wan-7b", device="cpu"))
