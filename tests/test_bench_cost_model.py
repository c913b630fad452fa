"""The cost model against hand-computed token and FLOP counts, the pipelines' frame rules, the paper's
table, clip-size parsing and the Wan configurations; `dcvg bench tokens` end to end."""

import csv
import json
import sys

import pytest

from dcvideogen.bench.cost_model import (
    WAN_VAE_LAYOUT,
    GridRounding,
    TransformerDims,
    compare,
    dcaev_layout,
    forward_flops,
    video_seconds,
)
from dcvideogen.bench.measure import count_parameters
from dcvideogen.bench.paper import TABLE7, paper_latency
from dcvideogen.bench.sizes import ClipSize, parse_clip_sizes
from dcvideogen.bench.transformer import _factory
from dcvideogen.bench.wan import WAN_CONFIGS, load_wan_config
from dcvideogen.cli.main import main
from dcvideogen.errors import DCVGError

WAN_13B = TransformerDims(num_layers=30, hidden_dim=1536, ffn_dim=8960, text_tokens=512)


def test_wan_13b_480p_81_frames_tokens_and_flops():
    # 81 frames -> 21 latent frames; 480x832 / 8 -> 60x104 latent, / 2 patch -> 30x52 tokens.
    assert WAN_VAE_LAYOUT.token_grid(81, 480, 832) == (21, 30, 52)
    n = WAN_VAE_LAYOUT.num_tokens(81, 480, 832)
    assert n == 32_760
    # By hand, per layer (N 32,760, D 1,536, F 8,960, L 512): 12·N·D² = 927,486,443,520;
    # 4·L·D² = 4,831,838,208; 4·N·D·F = 1,803,445,862,400; 4·N²·D = 6,593,848,934,400;
    # 4·N·L·D = 103,054,049,280; sum 9,432,667,127,808; x 30 layers = 282,980,013,834,240.
    flops = forward_flops(WAN_13B, n)
    assert flops.projections == 30 * 927_486_443_520
    assert flops.ffn == 30 * 1_803_445_862_400
    assert flops.self_attention == 30 * 6_593_848_934_400
    assert flops.cross_kv == 30 * 4_831_838_208 and flops.cross_attention == 30 * 103_054_049_280
    assert flops.total == 282_980_013_834_240
    assert round(flops.total / 1e12) == 283  # FACTS §5: ~283 TFLOP per forward


def test_dcaev_f32t4c32_480p_80_frames():
    layout = dcaev_layout("dc-ae-v-f32t4c32")
    assert (layout.spatial, layout.temporal, layout.channels, layout.patch) == (32, 4, 32, (1, 1, 1))
    assert layout.token_grid(80, 480, 832) == (20, 15, 26)
    assert layout.num_tokens(80, 480, 832) == 7_800
    assert forward_flops(WAN_13B, 7_800).total / 1e12 == pytest.approx(31.60, abs=0.01)
    point = compare(WAN_13B, 480, 832, 80, adapted=layout)
    assert (point.base_frames, point.adapted_frames) == (81, 80)
    assert (point.base_tokens, point.adapted_tokens) == (32_760, 7_800)
    assert point.flop_ratio == pytest.approx(8.95, abs=0.01)  # FACTS §5: 8.95x fewer


@pytest.mark.parametrize(
    "frames,wan,dcaev", [(80, 81, 80), (81, 81, 80), (82, 81, 80), (160, 161, 160), (4, 5, 4)]
)
def test_frame_rules_of_the_released_pipelines(frames, wan, dcaev):
    assert WAN_VAE_LAYOUT.pixel_frames(frames) == wan  # WanPipeline: F // 4 * 4 + 1
    assert dcaev_layout().pixel_frames(frames) == dcaev  # DC-VideoGen pipeline: F // 4 * 4
    assert WAN_VAE_LAYOUT.latent_frames(frames) == (wan - 1) // 4 + 1
    assert dcaev_layout().latent_frames(frames) == dcaev // 4


def test_bad_frames_and_sizes_name_the_value():
    with pytest.raises(DCVGError, match="frames 3"):
        dcaev_layout().pixel_frames(3)
    with pytest.raises(DCVGError, match="frames 0"):
        WAN_VAE_LAYOUT.pixel_frames(0)
    with pytest.raises(DCVGError, match="size 16x16"):
        dcaev_layout().token_grid(80, 16, 16, GridRounding.FLOOR)


def test_grid_rounding_off_grid_sizes():
    adapted = dcaev_layout()
    # 720 px is 22.5 latent rows at f32: padded up to 23, or floored to 22 as the released pipeline does.
    assert adapted.token_grid(80, 720, 1280, GridRounding.PAD) == (20, 23, 40)
    assert adapted.token_grid(80, 720, 1280, GridRounding.FLOOR) == (20, 22, 40)
    assert WAN_VAE_LAYOUT.token_grid(80, 720, 1280, GridRounding.FLOOR) == (21, 45, 80)
    # 1080 px is off Wan's 16 px token grid too: padded to 1088.
    assert WAN_VAE_LAYOUT.token_grid(80, 1080, 1920) == (21, 68, 120)
    assert adapted.token_grid(80, 1080, 1920) == (20, 34, 60)


def test_flop_terms_scale_as_the_formula_says():
    one, two = forward_flops(WAN_13B, 1000), forward_flops(WAN_13B, 2000)
    assert two.self_attention == 4 * one.self_attention  # N²
    assert two.ffn == 2 * one.ffn and two.projections == 2 * one.projections  # N
    assert two.cross_kv == one.cross_kv  # independent of N
    assert 0 < one.attention_share < two.attention_share < 1


def test_ratio_grows_with_resolution_and_length():
    ratios = [
        compare(WAN_13B, h, w, 80).flop_ratio
        for h, w in [(480, 832), (720, 1280), (1080, 1920), (2160, 3840)]
    ]
    assert ratios == sorted(ratios) and ratios[-1] == pytest.approx(16.33, abs=0.01)
    lengths = [compare(WAN_13B, 720, 1280, f).flop_ratio for f in (80, 160, 320, 640)]
    assert lengths == sorted(lengths)


def test_paper_table7():
    speedups = [round(r.speedup, 1) for r in TABLE7[:4]]
    assert speedups == [6.2, 8.2, 11.2, 14.8]  # as printed in the paper
    assert paper_latency("wan-1.3b", 480, 832, 81) is TABLE7[0]  # Wan's 81 frames count as the paper's 80
    assert paper_latency("wan-14b", 720, 1280, 80).base_minutes == 27.52
    assert paper_latency("wan-1.3b", 480, 832, 160) is None
    assert (
        video_seconds(2.0, steps=50, cfg=True) == 200.0 and video_seconds(2.0, steps=50, cfg=False) == 100.0
    )


def test_parse_clip_sizes():
    clips = parse_clip_sizes("480x832, 720x1280x160,480x832", "80,160")
    assert clips == [ClipSize(480, 832, 80), ClipSize(480, 832, 160), ClipSize(720, 1280, 160)]
    for sizes, frames, match in [
        ("480", "80", "HEIGHTxWIDTH"),
        ("0x832", "80", "must be at least 1"),
        ("axb", "80", "not a whole number"),
        ("480x832", "", "frame counts"),
    ]:
        with pytest.raises(DCVGError, match=match):
            parse_clip_sizes(sizes, frames)


def test_wan_configs_have_the_released_sizes():
    # Parameter counts on the meta device (no memory): Wan2.1-T2V-1.3B and -14B.
    assert count_parameters(_factory(WAN_CONFIGS["wan-1.3b"])) == pytest.approx(1.419e9, rel=1e-3)
    assert count_parameters(_factory(WAN_CONFIGS["wan-14b"])) == pytest.approx(14.288e9, rel=1e-3)
    adapted = WAN_CONFIGS["wan-1.3b"].with_layout(dcaev_layout())
    assert (adapted.in_channels, adapted.out_channels, adapted.patch_size) == (32, 32, (1, 1, 1))
    assert adapted.num_layers == 30 and adapted.hidden_dim == 1536


def test_load_wan_config_file(tmp_path):
    from diffusers import WanTransformer3DModel

    kwargs = WAN_CONFIGS["wan-tiny"].diffusers_kwargs()
    WanTransformer3DModel(**kwargs).save_config(tmp_path / "transformer")
    cfg = load_wan_config(str(tmp_path / "transformer"))
    assert cfg.name == "transformer"
    assert cfg.dims() == WAN_CONFIGS["wan-tiny"].dims()
    raw = json.loads((tmp_path / "transformer" / "config.json").read_text())
    (tmp_path / "i2v.json").write_text(json.dumps({**raw, "image_dim": 1280}))
    with pytest.raises(DCVGError, match="image-to-video"):
        load_wan_config(str(tmp_path / "i2v.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DCVGError, match="not valid JSON"):
        load_wan_config(str(tmp_path / "bad.json"))
    with pytest.raises(DCVGError, match="neither a known model"):
        load_wan_config(str(tmp_path / "missing"))


def test_bench_tokens_cli(capsys, tmp_path):
    out = tmp_path / "tok"
    code = main(["bench", "tokens", "--out", str(out), "--peak-tflops", "800", "--cfg"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "32,760" in stdout and "7,800" in stdout and "8.95x" in stdout and "torch" in stdout
    rows = list(csv.DictReader((out / "tokens.csv").read_text().splitlines()))
    assert len(rows) == 7  # the paper's sweep
    first = rows[0]
    assert (first["height"], first["frames"], first["base_tokens"], first["adapted_tokens"]) == (
        "480",
        "80",
        "32760",
        "7800",
    )
    # FLOP bound at 800 TFLOP/s: 283 TFLOP x 50 steps x 2 (CFG) / 800 / 60 s.
    assert float(first["base_bound_minutes"]) == pytest.approx(282.98 * 100 / 800 / 60, rel=1e-4)
    # The rate the paper's 1.49 minutes imply with two forwards a step: 283 TFLOP x 100 / 89.4 s.
    assert float(first["paper_base_tflops_per_s"]) == pytest.approx(282.98 * 100 / (1.49 * 60), rel=1e-4)
    payload = json.loads((out / "tokens.json").read_text())
    assert payload["settings"]["model"] == "wan-1.3b" and payload["machine"]["torch"]
    assert (out / "tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_tokens_without_matplotlib(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out = tmp_path / "tok"
    code = main(["bench", "tokens", "--out", str(out), "--sizes", "480x832", "--frames", "80"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "32,760" in stdout and "7,800" in stdout and "8.95x" in stdout  # the table
    skipped = [line for line in stdout.splitlines() if "PNG skipped" in line]
    assert len(skipped) == 1 and "dcvideogen[eval]" in skipped[0]
    assert len(list(csv.DictReader((out / "tokens.csv").read_text().splitlines()))) == 1
    assert json.loads((out / "tokens.json").read_text())["rows"][0]["adapted_tokens"] == 7_800
    assert sorted(p.name for p in out.iterdir()) == ["tokens.csv", "tokens.json"]  # no PNG
    assert "tokens.png" not in stdout


def test_bench_cli_errors(capsys, tmp_path):
    assert main(["bench", "tokens", "--sizes", "480", "--out", str(tmp_path / "a")]) == 2
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
    assert main(["bench", "tokens", "--ae", "f32t4c99", "--out", str(tmp_path / "b")]) == 2
    assert "unknown DC-AE-V preset" in capsys.readouterr().err
    assert main(["bench", "tokens", "--out", str(tmp_path / "no" / "such")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_every_bench_flag_has_help():
    import argparse

    from dcvideogen.cli.main import build_parser

    parser = build_parser()
    bench = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["bench"]
    kinds = next(a for a in bench._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(kinds) == {"tokens", "transformer", "ae"}
    for name, sub in kinds.items():
        for action in sub._actions:
            assert action.help, f"dcvg bench {name} {action.option_strings} has no help"
