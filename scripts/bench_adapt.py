#!/usr/bin/env python
"""Costs of AE-Adapt-V (DC-VideoGen Sec. 3.3, Fig. 7): step time, peak memory and trainable parameters of
stages 1b (align-head) and 2 (finetune, LoRA), the stage 1a exact solve, and the exact solve against the
paper's AdamW loop on the same latents (Eq. 2).

    python scripts/bench_adapt.py --size tiny small --out bench-adapt.json
    python scripts/bench_adapt.py --size small --parts align --align-grid 20x15x26 --adamw-steps 2000
    python scripts/bench_adapt.py --wan-1.3b --out bench-adapt-1.3b.json        # CUDA only

Random weights and random latents / text through the recipe's own functions (`adapt/model.py`,
`adapt/align.py`, `diffusion_loss` of `adapt/train.py`, AdamW, gradient clipping): no cache, no I/O.
Prints markdown tables for docs/benchmarks.md and writes every number to --out as JSON.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from diffusers.utils import logging as diffusers_logging

from dcvideogen.adapt import align
from dcvideogen.adapt.config import STAGES, AdaptConfig, AlignHeadConfig, FinetuneConfig
from dcvideogen.adapt.model import (
    add_lora,
    build_adapted_transformer,
    count_parameters,
    finetune_params,
    head_alignment_params,
    init_new_modules,
    lora_spec_from_config,
    set_trainable,
)
from dcvideogen.adapt.train import diffusion_loss, new_embedder
from dcvideogen.bench.cost_model import dcaev_layout, forward_flops
from dcvideogen.bench.measure import (
    PeakMemory,
    build_random,
    is_out_of_memory,
    machine_info,
    release_memory,
    time_call,
)
from dcvideogen.bench.report import markdown_table, write_json
from dcvideogen.bench.wan import WAN_CONFIGS, WanConfig

MIB = 2**20
WAN_CHANNELS = 16  # Wan 2.1 VAE latent channels (the base embedder's input)
LATENT_CHANNELS = 32  # DC-AE-V f32t4c32 (the adapted embedder's input)
PAPER_LORA_RANK, PAPER_WIDTH = 256, 1536  # Table 8: rank 256 (alpha 512) on Wan-2.1-1.3B (D 1536)


@dataclass(frozen=True)
class BenchSize:
    """A base Wan transformer (the Wan 2.1 layout: 16 channels, patch 1x2x2) and the DC-AE-V latent grid
    (T', h, w) its adapted copy trains on."""

    wan: WanConfig
    grid: tuple[int, int, int]
    label: str  # the clip the grid stands for


SIZES = {
    # The tests' tiny Wan (tests/adapt_parts.py) on the tiny DC-AE-V latent of an 8 x 64 x 64 clip.
    "tiny": BenchSize(
        WanConfig("tiny", 2, 2, 8, 32, text_dim=32, freq_dim=16, extra=(("rope_max_seq_len", 32),)),
        (2, 2, 2),
        "64x64x8",
    ),
    # D 128 (4 heads x 32), FFN 256, 4 layers on 1,024 tokens: 0.3 to 0.6 s per training step on one CPU core.
    "small": BenchSize(
        WanConfig("small", 4, 4, 32, 256, text_dim=64, freq_dim=32), (4, 16, 16), "512x512x16"
    ),
}
# Stage 2 of Wan-2.1-1.3B at the paper's sizes (80 frames; 720 px floor-divides to 22 latent rows, 704 px; 1080 to 33, 1056 px).
WAN_13B_GRIDS = {
    "480x832x80": (20, 15, 26),
    "720x1280x80 (704 high)": (20, 22, 40),
    "1080x1920x80 (1056 high)": (20, 33, 60),
}


# ---- inputs ------------------------------------------------------------------------------------------------


def parse_grid(text: str) -> tuple[int, int, int]:
    """--align-grid: "TxHxW" -> (T', h, w) of the DC-AE-V latent."""
    try:
        t, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid {text!r}: write TxHxW latent sizes, e.g. 20x15x26") from None
    if min(t, h, w) < 1:
        raise argparse.ArgumentTypeError(f"grid {text!r}: every size must be >= 1")
    return t, h, w


def random_batch(grid, text_dim: int, text_tokens: int, batch: int, device: torch.device) -> dict:
    """What the cache loader yields, random: latent (B, 32, T', h, w), text (B, L, D_text), position (B,)."""
    g = torch.Generator().manual_seed(0)
    return {
        "latent": torch.randn(batch, LATENT_CHANNELS, *grid, generator=g).to(device),
        "text": torch.randn(batch, text_tokens, text_dim, generator=g).to(device),
        "position": torch.arange(batch),
    }


def alignment_clips(n: int, grid, noise: float, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` structured "cached" latent pairs (x (1, 32, T', h, w), z (1, 16, T', 4h, 4w)): z is a random
    Wan-like latent; x, the DC-AE-V-like one, is a fixed random linear map of each 4 x 4 patch of z (the
    region one new token pools: 2 x 2 base tokens of 1 x 2 x 2) plus noise, so Eq. 2 has a good but imperfect
    solution."""
    t, h, w = grid
    mix = torch.randn(LATENT_CHANNELS, WAN_CHANNELS * 16, generator=torch.Generator().manual_seed(1234)) / 16
    g = torch.Generator().manual_seed(seed)
    clips = []
    for _ in range(n):
        z = torch.randn(1, WAN_CHANNELS, t, 4 * h, 4 * w, generator=g)
        # (1, t, h, w, 16, 4, 4): the 4 x 4 region of z under each new token
        patches = z.view(1, WAN_CHANNELS, t, h, 4, w, 4).permute(0, 2, 3, 5, 1, 4, 6)
        x = patches.reshape(1, t, h, w, -1) @ mix.T  # (1, t, h, w, 32)
        x = x.permute(0, 4, 1, 2, 3) + noise * torch.randn(1, LATENT_CHANNELS, t, h, w, generator=g)
        clips.append((x.contiguous(), z))
    return clips


# ---- models ------------------------------------------------------------------------------------------------


def adapted_from_base(size: BenchSize, seed: int) -> WanTransformer3DModel:
    """A random base Wan, adapted by the recipe (`build_adapted_transformer`: new embedder and head)."""
    torch.manual_seed(seed)
    base = WanTransformer3DModel(**size.wan.diffusers_kwargs())
    return build_adapted_transformer(base, LATENT_CHANNELS, "t2v", (1, 1, 1), seed)


def adapted_on_device(wan: WanConfig, device: torch.device, dtype: torch.dtype, seed: int):
    """The adapted transformer built with random weights directly on `device` in `dtype` (a 1.3B model never
    passes through host memory), the modules diffusers keeps in float32 (`_keep_in_fp32_modules`: norms, time
    embedder, modulation, RoPE) back in float32 as `from_pretrained(torch_dtype=...)` loads them; the new
    embedder and head initialised as the recipe's."""
    cfg = wan.with_layout(dcaev_layout())
    model = build_random(lambda: WanTransformer3DModel(**cfg.diffusers_kwargs()), device, dtype)
    keep = set(model._keep_in_fp32_modules or ())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and keep & set(name.split(".")):
            t.data = t.data.float()
    init_new_modules(model, torch.Generator().manual_seed(seed))
    return model


def prepare_stage(model, stage: str, lora_rank: int) -> list[torch.nn.Parameter]:
    """What `run_diffusion_stage` trains: 1b the embedder, head and modulation; 2 LoRA (rank r, alpha 2r) on
    the block linears plus those. Trained weights become float32 (master weights); frozen ones keep theirs."""
    if stage == "finetune":
        add_lora(
            model,
            lora_spec_from_config(model, FinetuneConfig(lora_rank=lora_rank, lora_alpha=2.0 * lora_rank)),
        )
        pick = finetune_params(False)
    else:
        s = AlignHeadConfig()
        pick = head_alignment_params(s.train_embedder, s.train_modulation)
    set_trainable(model, pick)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


# ---- one training step, measured ---------------------------------------------------------------------------


def train_step(model, params, stage: str, batch: dict, precision: str, device: torch.device):
    """A closure running one optimiser step of `stage` as the recipe's loop does: flow-matching loss with
    caption dropout (fresh noise and sigma each step), backward, clip, AdamW (the stage's settings)."""
    cfg = AdaptConfig()
    s = cfg.align_head if stage == "align-head" else cfg.finetune
    opt = torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    null_text = torch.zeros_like(batch["text"][0])  # (L, D_text)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    b = batch["latent"].shape[0]
    calls = [0]

    def step() -> float:
        moved = dict(batch, position=batch["position"] + b * calls[0])  # the next samples of the stream
        calls[0] += 1
        with amp:
            loss = diffusion_loss(model, moved, null_text, cfg, STAGES.index(stage))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step, opt


def measure_steps(step, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median seconds per step after `warmup` steps, and peak memory: `train` from before the first step
    (gradients, AdamW states, activations; CUDA also the absolute maximum allocated), `step` over the timed
    steps only (activations and transients). CUDA: the allocator's counters; CPU: the resident set sampled
    every 2 ms (`PeakMemory`, approximate)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(warmup):
            step()
        torch.cuda.synchronize(device)
        warm_peak, at_steps = torch.cuda.max_memory_allocated(device), torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        timing = time_call(step, device, warmup=0, repeats=repeats)
        steps_peak = torch.cuda.max_memory_allocated(device)
        train_peak, step_peak, max_alloc = (
            max(warm_peak, steps_peak) - before,
            steps_peak - at_steps,
            max(warm_peak, steps_peak),
        )
    else:
        with PeakMemory(device) as train_mem:
            for _ in range(warmup):
                step()
            with PeakMemory(device) as step_mem:
                timing = time_call(step, device, warmup=0, repeats=repeats)
        train_peak, step_peak, max_alloc = train_mem.peak_bytes, step_mem.peak_bytes, None
    mib = lambda v: None if v is None else v / MIB  # noqa: E731
    return {
        "step_s": timing.median_s,
        "step_s_min": timing.min_s,
        "step_s_samples": list(timing.samples),
        "train_peak_mib": mib(train_peak),
        "step_peak_mib": mib(step_peak),
        "max_allocated_mib": mib(max_alloc),
    }


def bench_stage(
    model, params, stage, batch, wan: WanConfig, args, checkpointing: bool, precision: str
) -> dict:
    """One row: `stage` with or without gradient checkpointing; model FLOPs = 3 x forward (FACTS §5)."""
    if checkpointing:
        model.enable_gradient_checkpointing()
    else:
        model.disable_gradient_checkpointing()
    model.train()
    b, _, t, h, w = batch["latent"].shape
    row = {
        "stage": stage,
        "grad_ckpt": checkpointing,
        "tokens": t * h * w,
        "batch": b,
        "precision": precision,
    }
    row["trainable_params"] = count_parameters(model)
    row["total_params"] = count_parameters(model, trainable_only=False)
    row["weights_mib"] = sum(p.numel() * p.element_size() for p in model.parameters()) / MIB
    step, opt = train_step(model, params, stage, batch, precision, args.device)
    try:
        row.update(measure_steps(step, args.device, args.warmup, args.repeats))
    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
        if not is_out_of_memory(e):
            raise
        row.update(step_s=None, error="out of memory")
    finally:
        opt.zero_grad(set_to_none=True)
        del step, opt
        release_memory(args.device, collect=True)
    row["model_tflop_per_step"] = 3 * b * forward_flops(wan.dims(args.text_tokens), t * h * w).total / 1e12
    if row["step_s"]:
        row["model_tflops"] = row["model_tflop_per_step"] / row["step_s"]
        row["mfu"] = row["model_tflops"] / args.peak_tflops
    return row


def bench_size(name: str, args) -> list[dict]:
    """Stages 1b and 2 of one --size, each on a freshly adapted model, without and with checkpointing."""
    size = SIZES[name]
    rows = []
    for stage in ("align-head", "finetune"):
        model = adapted_from_base(size, args.seed).to(args.device)
        params = prepare_stage(model, stage, lora_rank(args, size.wan))
        batch = random_batch(size.grid, size.wan.text_dim, args.text_tokens, args.batch_size, args.device)
        for checkpointing in (False, True):
            row = bench_stage(model, params, stage, batch, size.wan, args, checkpointing, args.precision)
            rows.append({"size": name, "clip": size.label, **row})
        del model, params
        release_memory(args.device, collect=True)
    return rows


def warm_up_process(args) -> None:
    """One unmeasured tiny stage 2 step, so that the first row's memory holds no one-time allocations of the
    process (autograd engine, thread pools, kernels' first use)."""
    model = adapted_from_base(SIZES["tiny"], args.seed).to(args.device)
    params = prepare_stage(model, "finetune", 4)
    batch = random_batch(SIZES["tiny"].grid, SIZES["tiny"].wan.text_dim, 8, 1, args.device)
    step, _ = train_step(model, params, "finetune", batch, args.precision, args.device)
    step()
    release_memory(args.device, collect=True)


def bench_wan_on_device(wan: WanConfig, grids: dict, args) -> list[dict]:
    """Stage 2 (LoRA) of `wan` built directly on the device in bf16, batch --batch-size, bf16 autocast, at
    each latent grid, without and with checkpointing. `--wan-1.3b` runs it for Wan-2.1-1.3B on a GPU."""
    model = adapted_on_device(wan, args.device, torch.bfloat16, args.seed)
    params = prepare_stage(model, "finetune", lora_rank(args, wan))
    rows = []
    for label, grid in grids.items():
        batch = random_batch(grid, wan.text_dim, args.text_tokens, args.batch_size, args.device)
        for checkpointing in (False, True):
            row = bench_stage(model, params, "finetune", batch, wan, args, checkpointing, "bf16")
            rows.append({"size": wan.name, "clip": label, "grid": list(grid), **row})
    return rows


def lora_rank(args, wan: WanConfig) -> int:
    """--lora-rank, or the paper's rank-to-width ratio (256 at D 1536), at least 4."""
    return args.lora_rank or max(4, round(PAPER_LORA_RANK * wan.hidden_dim / PAPER_WIDTH))


# ---- stage 1a: the exact solve and the paper's AdamW loop --------------------------------------------------


def base_embedder(dim: int, seed: int) -> torch.nn.Conv3d:
    """A random stand-in for Wan's patch embedder: 16 channels, patch 1 x 2 x 2, D outputs (the teacher)."""
    torch.manual_seed(seed)
    return torch.nn.Conv3d(WAN_CHANNELS, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2)).requires_grad_(False)


def least_squares_sums(clips, teacher, grid) -> align.LeastSquaresSums:
    """G and R of Eq. 2 in one pass over `clips`, one clip at a time as `alignment_sums` reads the cache."""
    sums = align.LeastSquaresSums(LATENT_CHANNELS, teacher.out_channels)
    for x, z in clips:
        target = align.pooled_base_tokens(teacher, z, grid)  # (1, D, T', h, w)
        sums.add(align.patch_rows(x.double(), (1, 1, 1)), align.token_rows(target))
    return sums


def exact_solve(clips, teacher, grid, ridge: float) -> dict:
    """Wall time of the pass and of the solve; the solved (W, b) and the training MSE."""
    t0 = time.perf_counter()
    sums = least_squares_sums(clips, teacher, grid)
    t1 = time.perf_counter()
    weight, bias = sums.solve(ridge)
    t2 = time.perf_counter()
    return {
        "pass_s": t1 - t0,
        "solve_s": t2 - t1,
        "total_s": t2 - t0,
        "pass_s_per_1000_clips": (t1 - t0) / len(clips) * 1000,
        "train_mse": sums.loss(weight, bias),
        "weight": weight,
        "bias": bias,
    }


def adamw_loop(clips, teacher, grid, held: align.LeastSquaresSums, args) -> dict:
    """The paper's loop for Eq. 2 (`run_align_adamw`): AdamW on the new embedder alone, batches of
    --adamw-batch clips, the target recomputed from the base embedder each step. The held-out MSE is taken
    every --eval-every steps from the held-out sums, with the clock stopped."""
    embedder = new_embedder(LATENT_CHANNELS, teacher.out_channels, (1, 1, 1), args.seed)
    opt = torch.optim.AdamW(embedder.parameters(), lr=args.adamw_lr, betas=(0.9, 0.999), weight_decay=0.0)
    order = torch.Generator().manual_seed(args.seed)
    queue: list[int] = []
    curve = [{"step": 0, "wall_s": 0.0, "heldout_mse": held.loss(*align.embedder_weight_rows(embedder))}]
    wall = 0.0
    for step in range(1, args.adamw_steps + 1):
        t0 = time.perf_counter()
        if len(queue) < args.adamw_batch:  # shuffled epochs, as the cache loader's stream
            queue += torch.randperm(len(clips), generator=order).tolist()
        picked, queue = queue[: args.adamw_batch], queue[args.adamw_batch :]
        x = torch.cat([clips[i][0] for i in picked])  # (B, 32, T', h, w)
        z = torch.cat([clips[i][1] for i in picked])  # (B, 16, T', 4h, 4w)
        loss = align.alignment_loss(embedder(x), align.pooled_base_tokens(teacher, z, grid))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        wall += time.perf_counter() - t0
        if step % args.eval_every == 0 or step == args.adamw_steps:
            mse = held.loss(*align.embedder_weight_rows(embedder))
            curve.append({"step": step, "wall_s": wall, "train_loss": loss.item(), "heldout_mse": mse})
    return {"wall_s": wall, "curve": curve, "heldout_mse": curve[-1]["heldout_mse"]}


def time_to_reach(curve: list[dict], target: float, tolerance: float = 0.01) -> float:
    """Wall seconds at the first checkpoint within `tolerance` (relative) of `target` (else the last)."""
    for point in curve:
        if point["heldout_mse"] <= target * (1 + tolerance):
            return point["wall_s"]
    return curve[-1]["wall_s"]


def bench_alignment(args) -> dict:
    """Exact solve against the AdamW loop on the same training clips, scored on separate held-out clips."""
    dim, grid = args.align_dim, args.align_grid
    train = alignment_clips(args.align_clips, grid, args.align_noise, args.seed + 1)
    held_clips = alignment_clips(args.align_heldout, grid, args.align_noise, args.seed + 2)
    teacher = base_embedder(dim, args.seed)
    held = least_squares_sums(held_clips, teacher, grid)
    random_mse = held.loss(
        *align.embedder_weight_rows(new_embedder(LATENT_CHANNELS, dim, (1, 1, 1), args.seed))
    )
    exact = exact_solve(train, teacher, grid, AdaptConfig().align_embedder.ridge)
    exact["heldout_mse"] = held.loss(exact.pop("weight"), exact.pop("bias"))
    adamw = adamw_loop(train, teacher, grid, held, args)
    target = adamw["heldout_mse"]
    exact["time_to_adamw_final_s"] = exact["total_s"] if exact["heldout_mse"] <= target * 1.01 else None
    adamw["time_to_adamw_final_s"] = time_to_reach(adamw["curve"], target)
    ratio = (
        adamw["time_to_adamw_final_s"] / exact["time_to_adamw_final_s"]
        if exact["time_to_adamw_final_s"]
        else None
    )
    settings = {
        "dim": dim,
        "grid": list(grid),
        "tokens_per_clip": grid[0] * grid[1] * grid[2],
        "train_clips": args.align_clips,
        "heldout_clips": args.align_heldout,
        "noise": args.align_noise,
        "adamw": {
            "lr": args.adamw_lr,
            "betas": [0.9, 0.999],
            "batch": args.adamw_batch,
            "steps": args.adamw_steps,
        },
    }
    return {
        "settings": settings,
        "random_heldout_mse": random_mse,
        "exact": exact,
        "adamw": adamw,
        "speedup": ratio,
    }


def bench_solve(name: str, args) -> dict:
    """The 1a exact solve of one --size at its grid, with the base model's own embedder as the teacher."""
    size = SIZES[name]
    torch.manual_seed(args.seed)
    teacher = WanTransformer3DModel(**size.wan.diffusers_kwargs()).patch_embedding.requires_grad_(False)
    clips = alignment_clips(args.solve_clips, size.grid, args.align_noise, args.seed + 1)
    with PeakMemory(torch.device("cpu")) as mem:
        out = exact_solve(clips, teacher, size.grid, AdaptConfig().align_embedder.ridge)
    del out["weight"], out["bias"]
    k = LATENT_CHANNELS + 1
    return {
        "size": name,
        "clips": len(clips),
        "tokens": size.grid[0] * size.grid[1] * size.grid[2],
        "unknowns": k * teacher.out_channels,
        "peak_mib": mem.peak_bytes / MIB,
        **out,
    }


# ---- tables ------------------------------------------------------------------------------------------------


def ms(seconds) -> object:
    return None if seconds is None else seconds * 1000


def sig(value) -> str:
    """Three significant digits (seconds that range from milliseconds to minutes)."""
    return "-" if value is None else f"{value:.3g}"


def gib(mib) -> object:
    return None if mib is None else mib / 1024


def on_off(flag: bool) -> str:
    return "on" if flag else "off"


def percent(row: dict) -> str:
    return "-" if row.get("mfu") is None else f"{100 * row['mfu']:.3g}%"


def table(columns: list[tuple[str, object]], rows: list[dict]) -> str:
    """A markdown table from (header, cell function of a row) pairs."""
    return markdown_table([h for h, _ in columns], [[cell(r) for _, cell in columns] for r in rows])


STEP_COLUMNS = [
    ("size", lambda r: r["size"]),
    ("clip", lambda r: r["clip"]),
    ("stage", lambda r: r["stage"]),
    ("grad ckpt", lambda r: on_off(r["grad_ckpt"])),
    ("tokens x batch", lambda r: f"{r['tokens']:,} x {r['batch']}"),
    ("trainable / total params", lambda r: f"{r['trainable_params']:,} / {r['total_params']:,}"),
    ("ms/step", lambda r: ms(r["step_s"]) if r["step_s"] else r.get("error")),
    ("weights MiB", lambda r: r["weights_mib"]),
    ("train peak MiB", lambda r: r.get("train_peak_mib")),
    ("step peak MiB", lambda r: r.get("step_peak_mib")),
    ("model TFLOP/s", lambda r: r.get("model_tflops")),
]
WAN_COLUMNS = [
    ("model", lambda r: r["size"]),
    ("clip", lambda r: r["clip"]),
    ("latent TxHxW", lambda r: "x".join(map(str, r["grid"]))),
    ("tokens", lambda r: r["tokens"]),
    ("grad ckpt", lambda r: on_off(r["grad_ckpt"])),
    ("trainable params", lambda r: r["trainable_params"]),
    ("s/step", lambda r: r["step_s"] if r["step_s"] else r.get("error")),
    ("max allocated GiB", lambda r: gib(r.get("max_allocated_mib"))),
    ("step peak GiB", lambda r: gib(r.get("step_peak_mib"))),
    ("TFLOP/step (3x fwd)", lambda r: r["model_tflop_per_step"]),
    ("MFU", percent),
]
SOLVE_COLUMNS = [
    ("size", lambda r: r["size"]),
    ("clips", lambda r: r["clips"]),
    ("tokens/clip", lambda r: r["tokens"]),
    ("unknowns (K+1) x D", lambda r: r["unknowns"]),
    ("pass s", lambda r: sig(r["pass_s"])),
    ("solve ms", lambda r: ms(r["solve_s"])),
    ("s per 1,000 clips (pass)", lambda r: sig(r["pass_s_per_1000_clips"])),
    ("peak MiB", lambda r: r["peak_mib"]),
]
ALIGN_COLUMNS = [
    ("method", lambda r: r["method"]),
    ("steps", lambda r: r["steps"]),
    ("wall s", lambda r: sig(r["wall_s"])),
    ("held-out MSE", lambda r: f"{r['heldout_mse']:.5g}"),
    ("s to reach AdamW's final held-out MSE", lambda r: sig(r["time_to_adamw_final_s"])),
]
CURVE_COLUMNS = [
    ("AdamW step", lambda r: r["step"]),
    ("wall s", lambda r: sig(r["wall_s"])),
    ("held-out MSE", lambda r: f"{r['heldout_mse']:.5g}"),
]


def memory_note(device: torch.device) -> str:
    """How the memory columns were measured on `device`."""
    if device.type == "cuda":
        return "memory: torch.cuda.max_memory_allocated after a synchronize (allocator counters)"
    return "memory: growth of the process's resident set, sampled every 2 ms (approximate)"


def alignment_tables(a: dict) -> str:
    """Exact vs AdamW, a sentence with the ratios, and AdamW's held-out curve (at most 12 checkpoints)."""
    e, w = a["exact"], a["adamw"]
    rows = [
        {
            "method": "random init (xavier)",
            "steps": "-",
            "wall_s": None,
            "heldout_mse": a["random_heldout_mse"],
            "time_to_adamw_final_s": None,
        },
        {"method": "exact least squares (1 pass + solve)", "steps": "1 pass", "wall_s": e["total_s"], **e},
        {"method": "AdamW (the paper's loop)", "steps": a["settings"]["adamw"]["steps"], **w},
    ]
    curve = w["curve"]
    keep = curve if len(curve) <= 12 else [curve[round(i * (len(curve) - 1) / 11)] for i in range(12)]
    speedup = "-" if a["speedup"] is None else f"{a['speedup']:,.0f}x"
    gap = w["heldout_mse"] / e["heldout_mse"]
    return "\n".join(
        [
            table(ALIGN_COLUMNS, rows),
            "",
            f"exact pass: {e['pass_s_per_1000_clips']:.3g} s per 1,000 clips; the exact solve reaches "
            f"AdamW's final held-out MSE {speedup} sooner; after {curve[-1]['step']} steps AdamW's held-out "
            f"MSE is {gap:.3g}x the exact solve's",
            "",
            table(CURVE_COLUMNS, keep),
        ]
    )


def header(args, argv: list[str]) -> str:
    """The machine (processor, cores, device), the library versions and the command, above every table."""
    info = machine_info(args.device)
    cpu = f"{platform.processor() or platform.machine()} ({info['cpu']}), {info['cpu_cores']} CPUs"
    return "\n".join(
        [
            f"machine: {cpu}; device {info['device']}; torch {info['torch']} "
            f"({torch.get_num_threads()} threads); diffusers {info['diffusers']}; python {info['python']}",
            f"command: python scripts/bench_adapt.py {shlex.join(argv)}",
        ]
    )


# ---- command line ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--size",
        nargs="+",
        choices=sorted(SIZES),
        default=None,
        help="random Wan sizes for the step and 1a tables (default: tiny small; none with --wan-1.3b)",
    )
    p.add_argument(
        "--parts",
        nargs="+",
        choices=["steps", "align"],
        default=None,
        help="steps: stages 1b / 2 and the 1a solve per size; align: exact solve vs AdamW "
        "(default: both; none with --wan-1.3b)",
    )
    p.add_argument(
        "--wan-1.3b",
        dest="wan13b",
        action="store_true",
        help="CUDA only: stage 2 of a random Wan-2.1-1.3B in bf16 at 480x832x80, 720x1280x80 and 1080x1920x80",
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda, cuda:N (default: cuda when available)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="autocast of the --size steps (auto: bf16 on CUDA, fp32 on CPU); --wan-1.3b is bf16",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="clips per training step (default %(default)s, the recipe's)",
    )
    p.add_argument(
        "--text-tokens", type=int, default=512, help="UMT5 tokens per caption (default %(default)s, as Wan)"
    )
    p.add_argument(
        "--lora-rank",
        type=int,
        default=None,
        help="stage 2 LoRA rank, alpha 2 x rank (default: the paper's 256 at D 1536, scaled with D, >= 4)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed training steps first, >= 1 (AdamW's states; default %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed training steps; the median is reported (default %(default)s)",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="device peak TFLOP/s for MFU (default %(default)s: H100/H200 bf16 dense)",
    )
    p.add_argument(
        "--solve-clips",
        type=int,
        default=16,
        help="clips of the per-size 1a exact solve (default %(default)s)",
    )
    p.add_argument(
        "--align-clips",
        type=int,
        default=64,
        help="training clips of exact solve vs AdamW (default %(default)s)",
    )
    p.add_argument(
        "--align-heldout",
        type=int,
        default=16,
        help="held-out clips scoring both methods (default %(default)s)",
    )
    p.add_argument(
        "--align-grid",
        type=parse_grid,
        default=(4, 8, 8),
        help="DC-AE-V latent T'xhxw per clip (default 4x8x8; 480p x 80 frames: 20x15x26)",
    )
    p.add_argument(
        "--align-dim",
        type=int,
        default=None,
        help="D of the embedders (default: the first --size's hidden size; Wan-1.3B: 1536)",
    )
    p.add_argument(
        "--align-noise",
        type=float,
        default=0.1,
        help="std of the noise in the DC-AE-V-like latents (default %(default)s)",
    )
    p.add_argument(
        "--adamw-steps", type=int, default=2000, help="AdamW steps (default %(default)s; the paper: 20k)"
    )
    p.add_argument(
        "--adamw-lr", type=float, default=1e-4, help="AdamW learning rate (default %(default)s, the paper's)"
    )
    p.add_argument(
        "--adamw-batch", type=int, default=4, help="clips per AdamW step (default %(default)s, the paper's)"
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=100,
        help="AdamW steps between held-out MSE checkpoints (default %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: no oversubscribed shared cores; 0: torch's choice)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of every random weight and latent (default %(default)s)"
    )
    p.add_argument("--out", type=Path, default=None, help="write every measurement here as JSON")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The flags, with the defaults that depend on others resolved; argparse errors for values below 1."""
    p = build_parser()
    args = p.parse_args(argv)
    default_on = not args.wan13b
    args.size = args.size if args.size is not None else (["tiny", "small"] if default_on else [])
    args.parts = args.parts if args.parts is not None else (["steps", "align"] if default_on else [])
    args.device = torch.device(args.device)
    if args.precision == "auto":
        args.precision = "bf16" if args.device.type == "cuda" else "fp32"
    if args.align_dim is None:
        args.align_dim = SIZES[args.size[0]].wan.hidden_dim if args.size else 128
    for flag in (
        "warmup",
        "repeats",
        "batch_size",
        "solve_clips",
        "align_clips",
        "align_heldout",
        "adamw_steps",
        "adamw_batch",
        "eval_every",
        "text_tokens",
        "align_dim",
    ):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    return args


def section(title: str, body: str) -> None:
    print(f"\n### {title}\n\n{body}", flush=True)


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    """Every requested table, printed as it is measured; returns what --out gets."""
    print(header(args, argv), flush=True)
    memory = memory_note(args.device)
    result: dict = {"machine": machine_info(args.device), "command": argv, "memory": memory}
    if "steps" in args.parts and args.size:
        warm_up_process(args)
        result["steps"] = [r for name in args.size for r in bench_size(name, args)]
        title = f"Stages 1b and 2: one training step ({args.precision}, warm-up {args.warmup}, median of "
        section(f"{title}{args.repeats}; {memory})", table(STEP_COLUMNS, result["steps"]))
        result["solve"] = [bench_solve(name, args) for name in args.size]
        section(
            "Stage 1a: the exact least-squares solve (float64, CPU)", table(SOLVE_COLUMNS, result["solve"])
        )
    if args.wan13b:
        wan = WAN_CONFIGS["wan-1.3b"]
        result["wan_1.3b"] = bench_wan_on_device(wan, WAN_13B_GRIDS, args)
        title = (
            f"Stage 2 of Wan-2.1-1.3B (LoRA rank {lora_rank(args, wan)}; bf16 frozen weights, float32 "
            f"trained ones, bf16 autocast; batch {args.batch_size}; MFU = 3 x forward FLOPs (FACTS §5) / "
            f"step time / {args.peak_tflops:g} TFLOP/s; {memory})"
        )
        section(title, table(WAN_COLUMNS, result["wan_1.3b"]))
    if "align" in args.parts:
        a = result["align"] = bench_alignment(args)
        s = a["settings"]
        grid = "x".join(map(str, s["grid"]))
        title = f"Stage 1a: exact solve vs the paper's AdamW loop (D {s['dim']}, latent grid {grid}, "
        section(
            f"{title}{s['train_clips']} training / {s['heldout_clips']} held-out clips)", alignment_tables(a)
        )
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.wan13b and args.device.type != "cuda":
        print(
            f"bench_adapt: --wan-1.3b needs a CUDA GPU (device is {args.device}); run it on a GPU machine",
            file=sys.stderr,
        )
        return 2
    threads, verbosity = torch.get_num_threads(), diffusers_logging.get_verbosity()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    diffusers_logging.set_verbosity_error()  # not the float32-modules notice of every model built here
    try:
        result = run(args, argv)
    finally:  # main() may be called from a test process
        torch.set_num_threads(threads)
        diffusers_logging.set_verbosity(verbosity)
    if args.out is not None:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
