"""`dcvg demo`: a local web page (Gradio, the `demo` extra) to reconstruct videos and generate new ones.

Gradio, torch and the models are imported inside the command, so that `dcvg --help` stays instant.
"""

from __future__ import annotations

import argparse
import logging

from ..errors import DCVGError
from .common import add_device_args, logger, require_extra, resolve_device, resolve_dtype

DEFAULT_PORT = 7860


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="open a local web page: reconstruct a video next to the naive codec, or generate one",
        description="Serve a Gradio page (pip install 'dcvideogen[demo]'): upload a video or pick a sample clip, "
        "reconstruct it with an autoencoder and see input | reconstruction | naive codec side by side with "
        "PSNR/SSIM and a per-frame PSNR plot; with --pipeline, generate a video from a prompt (and a first "
        "frame for image-to-video). Nothing is sent over the network: Gradio's analytics are off and no "
        "public link is made unless --share.",
    )
    p.add_argument(
        "--model",
        "-m",
        action="append",
        default=None,
        help="autoencoder to offer: a model folder (save_pretrained / dcvg convert), an official .pt "
        "checkpoint, a diffusers video VAE folder, or 'default' (the bundled model); repeat to offer several "
        "(default: default)",
    )
    p.add_argument(
        "--pipeline",
        default=None,
        metavar="DIR",
        help="DC-VideoGen pipeline folder (saved, or the released layout) for the Generate tab",
    )
    p.add_argument(
        "--task",
        choices=["t2v", "i2v"],
        default=None,
        help="which pipeline of a released folder to load (default: a saved folder's own task, else t2v)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to serve on")
    p.add_argument(
        "--frames",
        type=int,
        default=24,
        help="use at most this many frames of an input video (keeps a CPU responsive)",
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=256,
        metavar="PX",
        help="scale input frames down to fit PX pixels on their longer side; 0 keeps the full size",
    )
    p.add_argument(
        "--share",
        action="store_true",
        help="also make a public gradio.live link (reaches the network; off by default)",
    )
    add_device_args(p)
    p.set_defaults(func=cmd_demo)


def _check_args(args: argparse.Namespace) -> None:
    if args.frames < 1:
        raise DCVGError(f"--frames {args.frames}: must be at least 1")
    if args.max_side < 0:
        raise DCVGError(f"--max-side {args.max_side}: give pixels, or 0 to keep the full size")
    if not 0 < args.port < 65536:
        raise DCVGError(f"--port {args.port}: must be in 1..65535")


def _check_port_free(host: str, port: int) -> None:
    """DCVGError when host:port cannot be served on (taken, or not an address of this machine)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            s.bind((host, port))
    except OSError as e:
        raise DCVGError(
            f"--host {host} --port {port}: cannot serve there ({e.strerror}); choose a free --port and an "
            "address of this machine for --host"
        ) from None


def cmd_demo(args: argparse.Namespace) -> int:
    _check_args(args)
    _check_port_free(args.host, args.port)
    require_extra("demo", "dcvg demo", ("gradio",))
    if args.pipeline is not None:
        require_extra("pipelines", "the Generate tab (--pipeline)", ("transformers", "accelerate"))
    from ..demo import app as demo_app
    from ..evaluation.adapters import load_video_autoencoder

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    models = {}
    for spec in args.model or ["default"]:
        models[spec] = load_video_autoencoder(spec, device=device, dtype=dtype)
        logger.info(f"autoencoder {spec}: {models[spec].name} ({models[spec].notation})")
    pipe = None
    if args.pipeline is not None:
        from ..pipelines.loading import load_pipeline

        pipe = load_pipeline(args.pipeline, args.task, dtype=dtype).to(device)
        logger.info(f"pipeline {args.pipeline}: {pipe.task} on {device}")
    settings = demo_app.DemoSettings(max_frames=args.frames, max_side=args.max_side or None)
    app = demo_app.build_app(models, pipe, settings, demo_app.OutputFolder())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to the local server
    logger.info(f"serving on http://{args.host}:{args.port} (Ctrl-C stops)")
    demo_app.launch(app, args.host, args.port, share=args.share)
    return 0
