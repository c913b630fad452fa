"""scripts/bench_adapt.py (AE-Adapt-V costs) end to end at the tiniest settings on the CPU: the step, solve
and exact-vs-AdamW tables, the JSON, the Wan-1.3B code path at tiny size, --wan-1.3b refused on a CPU."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_adapt.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_adapt", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_adapt"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_adapt", None)


def test_tables_and_json_at_tiny_size(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--size", "tiny", "--warmup", "1", "--repeats", "1", "--solve-clips", "2", "--align-clips", "4"]
    argv += ["--align-heldout", "2", "--align-grid", "1x2x2", "--adamw-steps", "20", "--eval-every", "10"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("machine: ") and "torch" in lines[0] and lines[1].startswith("command: ")
    for stage in ("align-head", "finetune"):
        for ckpt in ("off", "on"):
            assert any(line.startswith(f"| tiny | 64x64x8 | {stage:<10} | {ckpt:<9} |") for line in lines)
    assert any(line.startswith("| tiny | 2     |") for line in lines)  # the 1a solve of the tiny size
    for method in ("random init", "exact least squares", "AdamW (the paper's loop)"):
        assert any(line.startswith(f"| {method}") for line in lines)

    result = json.loads(out.read_text())
    steps = result["steps"]
    assert len(steps) == 4 and all(r["step_s"] > 0 and r["train_peak_mib"] is not None for r in steps)
    head, lora = steps[0], steps[2]
    assert 0 < head["trainable_params"] < lora["trainable_params"] < lora["total_params"]
    assert result["solve"][0]["clips"] == 2 and result["solve"][0]["solve_s"] > 0
    align = result["align"]
    exact, adamw = align["exact"], align["adamw"]
    assert exact["heldout_mse"] <= adamw["heldout_mse"] * 1.001
    assert exact["heldout_mse"] < align["random_heldout_mse"]
    assert [p["step"] for p in adamw["curve"]] == [0, 10, 20]
    assert exact["time_to_adamw_final_s"] == exact["total_s"] and align["speedup"] > 0


def test_wan_on_device_code_path_at_tiny_size(bench):
    """What --wan-1.3b runs (weights built in bf16 on the device, stage 2 in bf16 autocast), at tiny size."""
    args = bench.parse_args(["--size", "tiny", "--warmup", "1", "--repeats", "1", "--device", "cpu"])
    wan = bench.SIZES["tiny"].wan
    rows = bench.bench_wan_on_device(wan, {"64x64x8": (2, 2, 2)}, args)
    assert [(r["grad_ckpt"], r["precision"]) for r in rows] == [(False, "bf16"), (True, "bf16")]
    assert all(r["step_s"] > 0 and r["mfu"] > 0 for r in rows)
    flops = 3 * bench.forward_flops(wan.dims(512), 8).total / 1e12
    assert rows[0]["model_tflop_per_step"] == pytest.approx(flops)
    assert bench.table(bench.WAN_COLUMNS, rows).splitlines()[2].startswith("| tiny  | 64x64x8 | 2x2x2 ")
    model = bench.adapted_on_device(wan, torch.device("cpu"), torch.bfloat16, 0)
    trained = bench.prepare_stage(model, "finetune", 4)
    assert {p.dtype for p in trained} == {torch.float32}
    assert model.blocks[0].attn1.to_q.base_layer.weight.dtype == torch.bfloat16


def test_wan_13b_refuses_the_cpu_in_one_line(bench, capsys):
    assert bench.main(["--wan-1.3b", "--device", "cpu"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--wan-1.3b needs a CUDA GPU" in err[0]


def test_every_flag_has_help(bench):
    actions = [a for a in bench.build_parser()._actions if a.dest != "help"]
    assert actions and all(a.help for a in actions)
