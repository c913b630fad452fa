"""`dcvg bench transformer` end to end on CPU with a tiny Wan config; the measuring helpers it stands on."""

import csv
import json
import time

import pytest
import torch

import dcvideogen.bench.transformer as bench_transformer
from dcvideogen.bench.cost_model import WAN_VAE_LAYOUT, dcaev_layout, forward_flops
from dcvideogen.bench.measure import PeakMemory, build_random, lookup_peak, time_call
from dcvideogen.bench.transformer import _factory
from dcvideogen.bench.wan import WAN_CONFIGS
from dcvideogen.cli.main import main

TINY = ["--model", "wan-tiny", "--ae", "dc-ae-v-f32t4c32-tiny", "--threads", "1"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the machine running the tests is shared, and tiny ops gain nothing from more."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def read_csv(path):
    return list(csv.DictReader(path.read_text().splitlines()))


def test_bench_transformer_end_to_end(capsys, tmp_path):
    out = tmp_path / "tr"
    argv = ["bench", "transformer", *TINY, "--sizes", "32x64x8,64x64x8", "--warmup", "1", "--repeats", "2"]
    code = main(
        [*argv, "--attention", "math", "--cfg", "--steps", "10", "--peak-tflops", "1", "--out", str(out)]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    assert "speedup" in stdout and "torch" in stdout and "diffusers" in stdout and "SDPA (math)" in stdout
    rows = read_csv(out / "transformer.csv")
    assert [(r["height"], r["width"], r["frames"]) for r in rows] == [("32", "64", "8"), ("64", "64", "8")]
    dims = WAN_CONFIGS["wan-tiny"].dims()
    for r in rows:
        h, w, f = int(r["height"]), int(r["width"]), int(r["frames"])
        base, ours = WAN_VAE_LAYOUT.num_tokens(f, h, w), dcaev_layout().num_tokens(f, h, w)
        assert (int(r["base_tokens"]), int(r["adapted_tokens"])) == (base, ours)
        assert float(r["base_tflop"]) == pytest.approx(forward_flops(dims, base).total / 1e12)
        assert r["base_status"] == r["adapted_status"] == "ok"
        b, a = float(r["base_median_ms"]), float(r["adapted_median_ms"])
        assert b > 0 and a > 0 and float(r["speedup"]) == pytest.approx(b / a)
        assert int(r["base_repeats"]) == 2
        # 10 steps x 2 forwards (CFG) at the median latency.
        assert float(r["base_minutes_per_video"]) == pytest.approx(b / 1e3 * 20 / 60)
        achieved = float(r["base_tflop"]) / (b / 1e3)
        assert float(r["base_tflops_per_s"]) == pytest.approx(achieved)
        assert float(r["base_bound_fraction"]) == pytest.approx(achieved / 1.0)
    payload = json.loads((out / "transformer.json").read_text())
    assert payload["settings"]["cfg"] is True and payload["settings"]["peak_tflops"] == 1.0
    assert payload["machine"]["torch_threads"] == 1 and len(payload["rows"]) == 2
    assert (out / "transformer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_size_that_does_not_fit_is_skipped_not_fatal(capsys, tmp_path, monkeypatch):
    # 2 MiB "free": the tiny weights fit, the 1024x1024 clip's activations (~10 MiB estimated) do not.
    monkeypatch.setattr(bench_transformer, "free_memory", lambda device: 2 * 2**20)
    out = tmp_path / "tr"
    argv = [
        "bench",
        "transformer",
        *TINY,
        "--sizes",
        "32x64x8,1024x1024x8",
        "--warmup",
        "0",
        "--repeats",
        "1",
    ]
    assert main([*argv, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    rows = read_csv(out / "transformer.csv")
    assert rows[0]["base_status"] == "ok" and rows[0]["adapted_status"] == "ok"
    assert rows[1]["base_status"].startswith("skipped: needs ~") and rows[1]["base_median_ms"] == ""
    assert "base 1024x1024x8: skipped" in stdout


def test_out_of_memory_marks_the_size_and_the_run_goes_on(tmp_path, monkeypatch):
    real, calls = bench_transformer.time_call, []

    def flaky(fn, device, warmup, repeats, budget_s):
        calls.append(1)
        if len(calls) == 1:  # the base layout's first clip
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return real(fn, device, warmup, repeats, budget_s)

    monkeypatch.setattr(bench_transformer, "time_call", flaky)
    argv = ["bench", "transformer", *TINY, "--sizes", "32x64x8,32x32x8", "--warmup", "0", "--repeats", "1"]
    assert main([*argv, "--out", str(tmp_path / "tr")]) == 0
    rows = read_csv(tmp_path / "tr" / "transformer.csv")
    assert rows[0]["base_status"] == "out of memory" and rows[0]["speedup"] == ""
    assert rows[1]["base_status"] == "ok" and rows[0]["adapted_status"] == "ok" and len(calls) == 4


def test_time_call_warmup_repeats_and_budget():
    calls = []
    timing = time_call(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5 and len(timing.samples) == 3 and timing.warmup == 2
    assert timing.min_s <= timing.median_s <= timing.max_s
    # A ~50 ms call against a 40 ms budget: the warm-up stops after one call, and one timed repeat is made.
    slow = lambda: (calls.append(1), time.sleep(0.05))  # noqa: E731
    calls.clear()
    timing = time_call(slow, torch.device("cpu"), warmup=3, repeats=10, budget_s=0.04)
    assert timing.warmup == 1 and len(timing.samples) == 1 and len(calls) == 2
    assert timing.median_s >= 0.05 and timing.first_call_s >= 0.05
    # Against a 120 ms budget: the full warm-up, and at most two ~50 ms repeats instead of ten.
    calls.clear()
    timing = time_call(slow, torch.device("cpu"), warmup=2, repeats=10, budget_s=0.12)
    assert timing.warmup == 2 and 1 <= len(timing.samples) <= 2


def test_peak_memory_on_cpu_sees_a_large_allocation():
    with PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(64, 2**20)  # 256 MiB, touched
        time.sleep(0.02)
        del x
    assert mem.peak_bytes is not None and mem.peak_bytes > 200 * 2**20


def test_build_random_in_bf16_keeps_correct_rope_tables():
    cfg = WAN_CONFIGS["wan-tiny"]
    model = build_random(_factory(cfg), torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    reference = _factory(cfg)()  # built the ordinary way, in float32
    torch.testing.assert_close(model.rope.freqs_cos, reference.rope.freqs_cos.to(torch.bfloat16))
    torch.testing.assert_close(model.rope.freqs_sin, reference.rope.freqs_sin.to(torch.bfloat16))


def test_device_peak_table():
    assert lookup_peak("NVIDIA H100 80GB HBM3").tflops == 800.0
    assert lookup_peak("NVIDIA H100 PCIe").tflops == 756.0
    assert lookup_peak("NVIDIA H200").tflops == 800.0
    assert lookup_peak("NVIDIA A100-SXM4-80GB").tflops == 312.0
    assert lookup_peak("Some Future GPU") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_transformer_on_gpu_bf16(tmp_path):
    """The GPU path: bf16, CUDA events, peak allocation, the device table's bound."""
    argv = [
        "bench",
        "transformer",
        "--model",
        "wan-tiny",
        "--ae",
        "dc-ae-v-f32t4c32-tiny",
        "--device",
        "cuda",
    ]
    argv += ["--sizes", "64x128x8", "--warmup", "1", "--repeats", "3", "--out", str(tmp_path / "tr")]
    assert main(argv) == 0
    payload = json.loads((tmp_path / "tr" / "transformer.json").read_text())
    row = payload["rows"][0]
    assert payload["settings"]["dtype"] == "bfloat16" and payload["machine"]["cuda"]
    assert row["base_status"] == "ok" and row["base_median_ms"] > 0 and row["base_peak_mib"] > 0
