"""Seconds per denoising step and peak memory of the DC-VideoGen T2V pipeline, with random weights.

Weights do not change the time, so the transformer (Wan-1.3B or Wan-14B layout adapted to DC-AE-V:
32 channels in and out, patch 1), the UMT5-XXL text encoder and the DC-AE-V f32t4c32 are created with
random weights directly on the device in the compute dtype. The whole pipeline runs (text encoding,
`steps` denoising steps with classifier-free guidance, streaming decode); the first step is a warm-up
and is left out of the per-step time. `tiny` sizes run on the CPU for tests.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ..errors import DCVGError
from ..models.dcae_v import AutoencoderDCV
from ..pipelines.conditioning import resolve_geometry
from ..pipelines.t2v import DCVideoGenPipeline
from .measure import default_dtype

# FACTS section 3 (diffusers' Wan configs), with DC-AE-V f32t4c32's latent: in = out = 32, patch (1, 1, 1).
TRANSFORMERS = {
    "wan-1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "wan-14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
    "tiny": dict(
        num_attention_heads=2, attention_head_dim=8, ffn_dim=32, num_layers=2, text_dim=32, freq_dim=16
    ),
}
TEXT_ENCODERS = {  # google/umt5-xxl's encoder, and a tiny one for tests
    "umt5-xxl": dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=256384),
    "tiny": dict(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=64),
}
AUTOENCODERS = {"dc-ae-v-f32t4c32": "dc-ae-v-f32t4c32", "tiny": "dc-ae-v-f32t4c32-tiny"}


@dataclass(frozen=True)
class PipelineBenchConfig:
    transformer: str = "wan-1.3b"
    text_encoder: str = "umt5-xxl"
    autoencoder: str = "dc-ae-v-f32t4c32"
    height: int = 480
    width: int = 832
    num_frames: int = 80
    steps: int = 4  # the first is a warm-up
    guidance_scale: float = 5.0
    device: str = "cuda"
    dtype: str = "bfloat16"
    offload: str = "none"  # none | model | sequential
    compile: bool = False


def _tokenizer(vocab_size: int):
    from transformers import T5Tokenizer

    words = ["a", "corgi", "jumps", "over", "the", "log"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [
        (f"▁{w}", -1.0 - i) for i, w in enumerate(words)
    ]
    assert len(vocab) <= vocab_size
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_random_pipeline(cfg: PipelineBenchConfig) -> DCVideoGenPipeline:
    """The T2V pipeline with random weights, created on `cfg.device` in `cfg.dtype` (no float32 copy)."""
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    for name, table in (
        ("transformer", TRANSFORMERS),
        ("text_encoder", TEXT_ENCODERS),
        ("autoencoder", AUTOENCODERS),
    ):
        if getattr(cfg, name) not in table:
            raise DCVGError(f"{name} {getattr(cfg, name)!r}: choose one of {', '.join(table)}")
    dtype = getattr(torch, cfg.dtype)
    build_on = "cpu" if cfg.offload != "none" else cfg.device
    text = TEXT_ENCODERS[cfg.text_encoder]
    with torch.device(build_on), default_dtype(dtype):
        transformer = WanTransformer3DModel(
            patch_size=(1, 1, 1),
            in_channels=32,
            out_channels=32,
            **{"text_dim": text["d_model"], **TRANSFORMERS[cfg.transformer]},
        )
        text_encoder = UMT5EncoderModel(UMT5Config(**text, feed_forward_proj="gated-gelu"))
        vae = AutoencoderDCV.from_preset(AUTOENCODERS[cfg.autoencoder])
    pipe = DCVideoGenPipeline(
        tokenizer=_tokenizer(text["vocab_size"]),
        text_encoder=text_encoder.eval(),
        vae=vae.eval(),
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
        transformer=transformer.eval(),
    )
    if cfg.offload == "model":
        pipe.enable_model_cpu_offload(device=cfg.device)
    elif cfg.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=cfg.device)
    if cfg.compile:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_pipeline(cfg: PipelineBenchConfig, pipe: DCVideoGenPipeline | None = None) -> dict:
    """Run the pipeline once; returns the configuration, seconds per step (median after the warm-up step),
    phase timings and peak memory (GiB; None on the CPU)."""
    if cfg.steps < 2:
        raise DCVGError(f"steps {cfg.steps}: need at least 2 (the first is a warm-up)")
    pipe = pipe or build_random_pipeline(cfg)
    device = torch.device(cfg.device)
    cuda = device.type == "cuda"
    geometry, _ = resolve_geometry(
        cfg.num_frames,
        cfg.height,
        cfg.width,
        pipe.vae_scale_factor_temporal,
        pipe.vae_scale_factor_spatial,
        pipe.patch_size,
        pipe.min_frames,
        strict=True,
    )
    stamps: list[float] = []
    peaks: list[float] = []

    def on_step(p, i, t, kwargs):
        if cuda:
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) / 2**30)
        stamps.append(time.perf_counter())
        return {}

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    pipe(
        prompt="a corgi jumps over the log",
        height=geometry.height,
        width=geometry.width,
        num_frames=geometry.num_frames,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="pt",
        callback_on_step_end=on_step,
    )
    steps = [b - a for a, b in itertools.pairwise(stamps)]  # step ends; the first step is the warm-up
    t, h, w = geometry.latent_grid
    return {
        **asdict(cfg),
        "tokens": t * h * w,
        "seconds_per_step": statistics.median(steps),
        "timings_s": dict(pipe.timings),
        "total_s": time.perf_counter() - start,
        "peak_denoise_gib": max(peaks) if peaks else None,
        "peak_total_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
    }


def markdown_row(r: dict) -> str:
    def gib(x):
        return "-" if x is None else f"{x:.1f}"

    return (
        f"| {r['transformer']} | {r['height']}x{r['width']}x{r['num_frames']} | {r['tokens']} | "
        f"{r['seconds_per_step']:.3f} | {r['timings_s'].get('decode', 0):.1f} | {gib(r['peak_denoise_gib'])} | "
        f"{gib(r['peak_total_gib'])} | {r['offload']} | {r['device_name']} |"
    )


MARKDOWN_HEADER = (
    "| transformer | size (HxWxT) | tokens | s / step (CFG) | decode s | peak GiB denoise | peak GiB total | "
    "offload | device |\n|---|---|---|---|---|---|---|---|---|"
)
