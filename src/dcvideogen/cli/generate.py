"""Generation sub-commands: `dcvg generate` (text or image to video) and `dcvg convert-pipeline`."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import secrets
import time
from pathlib import Path

from .. import __version__
from ..errors import DCVGError
from .common import DTYPES, check_not_input, positive_fps, require_extra, resolve_device, torch_dtype

logger = logging.getLogger("dcvg")

SCHEDULERS = ("default", "unipc", "euler")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate a video from a prompt (and a first frame) with a DC-VideoGen model",
        description="Generate a video with a DC-VideoGen model; writes the video and, next to it, a JSON file "
        "with the seed, the settings and the timings.",
    )
    p.add_argument(
        "--model",
        "-m",
        required=True,
        help="model folder: saved by save_pretrained / dcvg convert-pipeline, or the released "
        "DC-VideoGen-Wan2.1 folder",
    )
    p.add_argument("--prompt", "-p", required=True, help="what the video shows")
    p.add_argument("--out", "-o", required=True, help="output video (.mp4 or .gif); the JSON goes beside it")
    p.add_argument(
        "--task",
        choices=["auto", "t2v", "i2v"],
        default="auto",
        help="text-to-video or image-to-video; auto: i2v when --image is given (a saved folder knows its own)",
    )
    p.add_argument(
        "--image", default=None, help="first frame for i2v: an image file (or a video: its first frame)"
    )
    p.add_argument("--negative-prompt", default="", help="what to steer away from (classifier-free guidance)")
    p.add_argument("--height", type=int, default=480, help="pixels; a multiple of 32 (else rounded down)")
    p.add_argument("--width", type=int, default=832, help="pixels; a multiple of 32 (else rounded down)")
    p.add_argument(
        "--frames",
        type=int,
        default=80,
        help="frames; a multiple of 4 (else rounded down), at least one chunk (40)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse sizes and frame counts that would be rounded, instead of rounding",
    )
    p.add_argument("--steps", type=int, default=20, help="denoising steps")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument(
        "--seed", type=int, default=None, help="random seed (default: a new one, written to the JSON)"
    )
    p.add_argument(
        "--fps", type=positive_fps, default=16.0, help="frame rate of the written video (Wan 2.1: 16)"
    )
    p.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default="default",
        help="flow-matching sampler: default (the model folder's, UniPC as released), unipc, or euler",
    )
    p.add_argument(
        "--flow-shift",
        type=float,
        default=None,
        help="timestep shift of the sampler (default: the model folder's; Wan: 3 for 480p, 5 for 720p)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    p.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="bfloat16",
        help="weights and compute dtype (CLIP stays float32)",
    )
    p.add_argument(
        "--offload",
        choices=["none", "model", "sequential"],
        default="none",
        help="CPU offload on a GPU: model (one model on the GPU at a time) or sequential (layer by layer; least "
        "memory, slowest)",
    )
    p.add_argument(
        "--context-parallel",
        type=int,
        default=1,
        metavar="N",
        help="split the transformer's tokens over N processes: launch with torchrun --nproc_per_node=N "
        "(docs/parallel.md); rank 0 writes the video",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks (regional)")
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="PX",
        help="decode in PX-pixel tiles (default: automatic by memory)",
    )
    p.add_argument("--tile-overlap", type=int, default=None, metavar="PX", help="tile overlap (default PX/4)")
    p.add_argument(
        "--ae-chunk-size",
        type=int,
        default=None,
        help="frames per autoencoder chunk, for an official .pt (which does not store it; the release uses 40)",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "convert-pipeline",
        help="turn the released DC-VideoGen-Wan2.1 folder into a pipeline folder (from_pretrained)",
        description="Convert the released folder (dc-ae-v-*.pt, transformer_t2v/, transformer_i2v/, text_encoder/, "
        "tokenizer/, scheduler/, Wan CLIP .pth) into a diffusers pipeline folder for one task.",
    )
    p.add_argument("source", help="the released folder")
    p.add_argument("outdir", help="output folder; must not exist or be empty")
    p.add_argument("--task", choices=["t2v", "i2v"], default="t2v", help="which pipeline to write")
    p.add_argument(
        "--link", action="store_true", help="hard-link the unchanged weight files instead of copying them"
    )
    p.add_argument(
        "--ae-chunk-size", type=int, default=None, help="frames per autoencoder chunk to record (default 40)"
    )
    p.set_defaults(func=cmd_convert_pipeline)


# ---- generate -----------------------------------------------------------------------------------------------


def _read_first_frame(path: str):
    """The first frame of an image (or video) as a PIL image; DCVGError when missing or unreadable."""
    from PIL import Image

    from ..video import read_video
    from ..video.io import to_uint8

    frames = read_video(path, max_frames=1).frames  # (3, 1, H, W) in [-1, 1]
    return Image.fromarray(to_uint8(frames)[0])


def _resolve_task(args: argparse.Namespace, folder_task: str | None) -> str:
    task = args.task
    if task == "auto":
        task = folder_task or ("i2v" if args.image else "t2v")
    if task == "i2v" and not args.image:
        raise DCVGError("--task i2v needs --image FIRST_FRAME (an image file)")
    if task == "t2v" and args.image:
        raise DCVGError(
            f"--image {args.image} is given but the task is t2v; use --task i2v with an i2v model"
        )
    return task


def _check_args(args: argparse.Namespace) -> None:
    if not args.prompt.strip():
        raise DCVGError("--prompt is empty; describe the video to generate")
    if args.steps < 1:
        raise DCVGError(f"--steps {args.steps}: must be at least 1")
    if args.context_parallel > 1 and args.offload != "none":
        raise DCVGError(
            f"--context-parallel {args.context_parallel} does not combine with --offload; drop --offload"
        )
    if args.offload == "sequential" and args.compile:
        raise DCVGError(
            "--compile does not work with --offload sequential (weights move inside every layer); use "
            "--offload model"
        )


def _make_scheduler(pipe, name: str, flow_shift: float | None):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    current = pipe.scheduler
    if name == "default" and flow_shift is None:
        return current
    shift = flow_shift
    if shift is None:
        shift = current.config.get("flow_shift", current.config.get("shift", 1.0))
    if name == "euler" or (name == "default" and isinstance(current, FlowMatchEulerDiscreteScheduler)):
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=current.config.num_train_timesteps, shift=shift
        )
    if isinstance(current, UniPCMultistepScheduler):
        return UniPCMultistepScheduler.from_config(current.config, flow_shift=shift)
    return UniPCMultistepScheduler(
        num_train_timesteps=current.config.num_train_timesteps,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    require_extra("pipelines", "video generation", ("transformers", "accelerate"))
    import torch

    from ..parallel.context import check_sequence, context_layout, enable_context_parallel
    from ..pipelines.conditioning import resolve_geometry
    from ..pipelines.loading import Layout, inspect_model_folder, load_pipeline
    from ..training.engine import setup_distributed
    from ..utils.atomic import atomic_file
    from ..video import VideoWriter, check_output_path

    # 1. Everything that can be checked without weights.
    _check_args(args)
    layout = context_layout(args.context_parallel)
    if layout.dp_world != 1:
        raise DCVGError(
            f"--context-parallel {args.context_parallel} with {layout.world} processes: launch exactly "
            f"torchrun --nproc_per_node={args.context_parallel}"
        )
    out = check_output_path(Path(args.out))
    if args.image:
        check_not_input(out, args.image)
    meta_path = out.with_suffix(".json")
    folder = inspect_model_folder(args.model, None if args.task == "auto" else args.task)
    saved_task = folder.task if folder.layout is Layout.SAVED else None
    task = _resolve_task(args, saved_task)
    if task != folder.task:
        folder = inspect_model_folder(args.model, task)
    folder.check(args.ae_chunk_size)
    ae = folder.autoencoder_config(args.ae_chunk_size)
    geometry, notes = resolve_geometry(
        args.frames,
        args.height,
        args.width,
        ae.temporal_compression,
        ae.spatial_compression,
        folder.patch_size(),
        ae.frame_multiple,
        args.strict,
    )
    for note in notes:
        logger.info(f"note: {note}")
    check_sequence(geometry.latent_grid, folder.patch_size(), args.context_parallel)
    image = _read_first_frame(args.image) if task == "i2v" else None
    device = resolve_device(args.device)
    if args.context_parallel > 1:  # one process per device: cuda:LOCAL_RANK (nccl) or the CPU (gloo)
        device = setup_distributed().device
    if args.offload != "none" and device.type == "cpu":
        raise DCVGError(
            f"--offload {args.offload} moves models between the CPU and a GPU; there is no GPU here "
            "(drop --offload)"
        )
    dtype = torch_dtype(args.dtype)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)

    # 2. Load and place the models.
    t0 = time.perf_counter()
    pipe = load_pipeline(folder.path, task, dtype=dtype, ae_chunk_size=args.ae_chunk_size)
    pipe.scheduler = _make_scheduler(pipe, args.scheduler, args.flow_shift)
    if args.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif args.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if args.tile is not None:
        f = pipe.vae.spatial_compression_ratio
        overlap = args.tile_overlap if args.tile_overlap is not None else max(f, args.tile // 4 // f * f)
        try:
            pipe.vae.enable_tiling(args.tile, overlap)
        except ValueError as e:
            raise DCVGError(f"--tile/--tile-overlap: {e}") from e
    enable_context_parallel(pipe.transformer, args.context_parallel)  # no-op for 1
    pipe.set_progress_bar_config(disable=layout.rank != 0)
    if args.compile:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
    load_s = time.perf_counter() - t0
    logger.info(
        f"model {folder.path} ({folder.layout.value} layout, {task}); {geometry.num_frames} frames of "
        f"{geometry.width}x{geometry.height} on {device}, {args.dtype}, seed {seed}"
    )

    # 3. Generate, then decode chunk by chunk straight into the video file.
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    inputs = dict(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        height=geometry.height,
        width=geometry.width,
        num_frames=geometry.num_frames,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="latent",
        strict_size=True,  # already resolved above
    )
    if task == "i2v":
        inputs["image"] = image
    latents = pipe(**inputs).frames
    if layout.rank != 0:  # the other ranks of the context group only helped denoise
        return 0
    t1 = time.perf_counter()
    with VideoWriter(out, args.fps) as writer:
        for piece in pipe.decode_latents(latents, geometry):  # (1, 3, t, H, W) in [-1, 1]
            writer.write(piece[0])
    timings = {k: round(v, 4) for k, v in pipe.timings.items()}
    timings.update(load=round(load_s, 4), decode_and_write=round(time.perf_counter() - t1, 4))
    timings["total"] = round(time.perf_counter() - t0, 4)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    # 4. The record next to the video.
    record = {
        "video": out.name,
        "seed": seed,
        "task": task,
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "image": str(args.image) if args.image else None,
        "requested": {"height": args.height, "width": args.width, "num_frames": args.frames},
        "generated": {
            "height": geometry.height,
            "width": geometry.width,
            "num_frames": geometry.num_frames,
            "latent": [pipe.vae.arch.latent_channels, *geometry.latent_grid],
            "fps": args.fps,
        },
        "settings": {
            "steps": args.steps,
            "guidance": args.guidance,
            "scheduler": type(pipe.scheduler).__name__,
            "flow_shift": pipe.scheduler.config.get("flow_shift", pipe.scheduler.config.get("shift")),
            "dtype": args.dtype,
            "device": str(device),
            "offload": args.offload,
            "compile": args.compile,
            "context_parallel": args.context_parallel,
            "decode_tiling": pipe.vae.last_run_tiled,
        },
        "model": {
            "path": str(folder.path),
            "layout": folder.layout.value,
            "autoencoder": pipe.vae.arch.name,
            "latent_scale": pipe.vae.config.scaling_factor,
            "patch_size": list(pipe.patch_size),
        },
        "timings_s": timings,
        "peak_gpu_memory_gib": round(peak, 3) if peak is not None else None,
        "versions": _versions(),
    }
    with atomic_file(meta_path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    steps = timings.get("seconds_per_step")
    print(
        f"video        {out} ({geometry.num_frames} frames, {geometry.width}x{geometry.height}, {args.fps:g} fps)"
    )
    print(f"seed         {seed}")
    print(f"denoising    {args.steps} steps, {steps:.3f} s/step" if steps is not None else "denoising    -")
    print(f"settings     {meta_path}")
    return 0


def _versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    return {
        "dcvideogen": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


# ---- convert-pipeline -------------------------------------------------------------------------------------


def cmd_convert_pipeline(args: argparse.Namespace) -> int:
    require_extra("pipelines", "video generation", ("transformers", "accelerate"))
    from ..pipelines.loading import convert_released

    folder = convert_released(args.source, args.outdir, args.task, args.ae_chunk_size, args.link)
    ae = folder.autoencoder_config()
    cfg = folder.transformer_config()
    print(f"pipeline     {folder.task} ({'linked' if args.link else 'copied'} transformer and text encoder)")
    print(f"autoencoder  DC-AE-V {ae.name}, chunk {ae.chunk_size} frames, latent scale {ae.scaling_factor:g}")
    print(
        f"transformer  in {cfg['in_channels']} / out {cfg.get('out_channels')} channels, patch {cfg['patch_size']}"
    )
    print(f"wrote        {args.outdir}")
    return 0
