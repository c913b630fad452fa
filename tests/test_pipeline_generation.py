"""DCVideoGenPipeline / DCVideoGenImageToVideoPipeline on tiny components: shapes, seeds, save / load, the
I2V condition, the latent scale, per-token timesteps, offload, and bad input."""

import pytest
import torch

from dcvideogen.errors import DCVGError
from dcvideogen.pipelines import DCVideoGenImageToVideoPipeline, DCVideoGenPipeline

from pipeline_parts import CLIP_DIM, FRAMES, HEIGHT, WIDTH, sample_image, tiny_pipeline, tiny_transformer

RUN = dict(height=HEIGHT, width=WIDTH, num_inference_steps=2)
T2V = dict(max_sequence_length=16, **RUN)  # short texts keep the tiny UMT5 fast
I2V = dict(max_sequence_length=512, **RUN)  # Wan's image cross-attention needs 512 text tokens


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def t2v():
    return tiny_pipeline("t2v")


@pytest.fixture(scope="module")
def i2v():
    return tiny_pipeline("i2v")


def test_t2v_shapes_and_frame_rounding(t2v):
    # 13 frames -> 12 (a multiple of 4, not of the 8-frame chunk) -> 3 latent frames -> decoded to exactly 12.
    out = t2v(prompt="a corgi jumps", num_frames=13, generator=gen(0), **T2V).frames
    assert out.shape == (1, 12, HEIGHT, WIDTH, 3) and out.min() >= 0 and out.max() <= 1
    assert set(t2v.timings) >= {"encode_prompt", "denoise", "decode", "seconds_per_step"}
    pt = t2v(
        prompt=["a corgi", "a red car"],
        num_frames=FRAMES,
        generator=gen(0),
        output_type="pt",
        negative_prompt="blurry",
        **T2V,
    ).frames
    assert pt.shape == (2, FRAMES, 3, HEIGHT, WIDTH)


def test_fixed_seed_reproduces(t2v):
    kwargs = dict(prompt="a corgi", num_frames=FRAMES, output_type="latent", **T2V)
    a = t2v(generator=gen(7), **kwargs).frames
    b = t2v(generator=gen(7), **kwargs).frames
    c = t2v(generator=gen(8), **kwargs).frames
    assert a.shape == (1, 32, 2, HEIGHT // 32, WIDTH // 32)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_save_pretrained_round_trip(task, tmp_path):
    pipe = tiny_pipeline(task)
    pipe.save_pretrained(tmp_path / "pipe")
    cls = DCVideoGenPipeline if task == "t2v" else DCVideoGenImageToVideoPipeline
    back = cls.from_pretrained(tmp_path / "pipe")
    assert type(back.vae).__name__ == "AutoencoderDCV" and back.vae.arch == pipe.vae.arch
    for name in ("transformer", "text_encoder", "vae") + (("image_encoder",) if task == "i2v" else ()):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(back, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    kwargs = dict(
        prompt="a corgi", num_frames=FRAMES, generator=gen(0), guidance_scale=1, output_type="latent"
    )
    kwargs.update(T2V if task == "t2v" else I2V, num_inference_steps=1)
    if task == "i2v":
        kwargs["image"] = sample_image()
    a = pipe(**kwargs).frames
    kwargs["generator"] = gen(0)
    b = back(**kwargs).frames
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=0, atol=1e-4)


def _capture_transformer_calls(pipe):
    calls = []

    def hook(module, args, kwargs):
        calls.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()})

    return calls, pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)


def test_i2v_condition_mask_scale_and_decode(monkeypatch):
    scale = 0.7241
    pipe = tiny_pipeline("i2v", scaling_factor=scale)
    image = sample_image()
    calls, handle = _capture_transformer_calls(pipe)
    decoded = []
    original = pipe.vae.decode_stream

    def spy(z, **kw):
        decoded.append(z.detach().clone())
        return original(z, **kw)

    monkeypatch.setattr(pipe.vae, "decode_stream", spy)
    final = []
    out = pipe(
        image=image,
        prompt="a corgi",
        num_frames=12,
        generator=gen(0),
        guidance_scale=1.0,
        callback_on_step_end=lambda p, i, t, kw: final.append(kw["latents"].clone()) or {},
        callback_on_step_end_tensor_inputs=["latents"],
        **I2V,
    ).frames
    handle.remove()
    assert out.shape == (1, 12, HEIGHT, WIDTH, 3) and len(calls) == 2  # 2 steps, no CFG
    assert {"encode_prompt", "encode_image", "encode_condition", "denoise", "decode"} <= set(pipe.timings)

    x = calls[0]["hidden_states"]
    h, w = HEIGHT // 32, WIDTH // 32
    assert x.shape == (1, 68, 3, h, w)
    # Channels 32:36: the first-frames mask, 1 on pixel frames 0-3 = every channel of latent frame 0.
    mask = x[:, 32:36]
    assert (mask[:, :, 0] == 1).all() and (mask[:, :, 1:] == 0).all()
    # Channels 36:68: encode(image x4 + 8 black frames) x 0.7241, built here by hand.
    pixels = pipe.video_processor.preprocess(image, height=HEIGHT, width=WIDTH)  # (1, 3, H, W) in [-1, 1]
    clip = torch.cat([pixels.unsqueeze(2)] * 4 + [torch.zeros(1, 3, 8, HEIGHT, WIDTH)], dim=2)
    with torch.no_grad():
        raw = pipe.vae.encode(clip).latent[:, :, :3]  # the padded 16-frame clip has 4 latent frames
    torch.testing.assert_close(x[:, 36:], raw * scale, rtol=1e-5, atol=1e-5)
    # The noisy latent comes first; the CLIP features are the penultimate hidden states.
    assert x[:, :32].std() > 0.5
    with torch.no_grad():
        feats = pipe.image_encoder(
            **pipe.image_processor(images=image, return_tensors="pt"), output_hidden_states=True
        )
    torch.testing.assert_close(calls[0]["encoder_hidden_states_image"], feats.hidden_states[-2])
    assert calls[0]["encoder_hidden_states_image"].shape[-1] == CLIP_DIM
    # Decoding divides by the latent scale.
    torch.testing.assert_close(decoded[0], final[-1] / scale)


def test_t2v_decodes_latent_over_scale(monkeypatch):
    pipe = tiny_pipeline("t2v", scaling_factor=0.5)
    latent = pipe(
        prompt="a corgi", num_frames=FRAMES, generator=gen(0), output_type="latent", guidance_scale=1, **T2V
    ).frames
    seen = []
    original = pipe.vae.decode_stream
    monkeypatch.setattr(
        pipe.vae, "decode_stream", lambda z, **kw: seen.append(z.clone()) or original(z, **kw)
    )
    from dcvideogen.pipelines.conditioning import resolve_geometry

    geometry, _ = resolve_geometry(FRAMES, HEIGHT, WIDTH, 4, 32, (1, 1, 1), 8)
    pieces = list(pipe.decode_latents(latent, geometry))
    torch.testing.assert_close(seen[0], latent * 2)
    assert torch.cat(pieces, dim=2).shape == (1, 3, FRAMES, HEIGHT, WIDTH)


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_expand_timesteps_are_per_token_with_patch_1(task):
    pipe = tiny_pipeline(task, expand_timesteps=True)
    calls, handle = _capture_transformer_calls(pipe)
    kwargs = dict(
        prompt="a corgi", num_frames=12, generator=gen(0), output_type="latent", guidance_scale=1.0, **RUN
    )
    if task == "i2v":
        kwargs["image"] = sample_image()
    latent = pipe(**kwargs).frames
    handle.remove()
    h, w = HEIGHT // 32, WIDTH // 32
    ts = calls[0]["timestep"]
    assert ts.shape == (1, 3 * h * w)  # one timestep per token: patch (1, 1, 1), not Wan's 2 x 2 stride
    assert calls[0]["hidden_states"].shape == (1, 32, 3, h, w)
    if task == "t2v":
        assert (ts == ts[0, 0]).all() and ts[0, 0] > 0
    else:  # the first latent frame is the image's latent, at timestep 0
        assert (ts[0, : h * w] == 0).all() and (ts[0, h * w :] > 0).all()
        pixels = pipe.video_processor.preprocess(sample_image(), height=HEIGHT, width=WIDTH)
        with torch.no_grad():
            cond = pipe.vae.encode(pixels.unsqueeze(2).expand(-1, -1, 4, -1, -1)).latent[:, :, :1]
        torch.testing.assert_close(latent[:, :, :1], cond, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(calls[1]["hidden_states"][:, :, :1], cond, rtol=1e-5, atol=1e-5)


OFFLOAD_RUN = dict(
    image=sample_image(),
    prompt="a corgi",
    num_frames=FRAMES,
    guidance_scale=1,
    **{**I2V, "num_inference_steps": 1},
)


@pytest.fixture(scope="module")
def i2v_reference(i2v):
    return i2v(generator=gen(0), **OFFLOAD_RUN).frames


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_cpu_offload_hooks_give_the_same_video(mode, i2v_reference):
    # The offload machinery with the CPU as the "accelerator": the hooks run, the autoencoder is on-loaded for
    # encode / decode_stream (model offload) or runs with its weights on the meta device (sequential).
    pipe = tiny_pipeline("i2v")
    if mode == "model":
        pipe.enable_model_cpu_offload(device="cpu")
    else:
        # What enable_sequential_cpu_offload does, with device "cpu": diffusers always passes "cpu:0", for
        # which accelerate's CPU-to-CPU no-op copies break its own bookkeeping (on a GPU that path is not taken).
        from accelerate import cpu_offload

        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                cpu_offload(module, torch.device("cpu"), offload_buffers=len(module._parameters) > 0)
        assert pipe.vae.device.type == "meta" and pipe._execution_device == torch.device("cpu")
    got = pipe(generator=gen(0), **OFFLOAD_RUN).frames
    torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(i2v_reference), rtol=0, atol=1e-5)


def test_transformer_blocks_compile_without_graph_breaks(i2v_reference):
    # --compile uses regional compilation with fullgraph=True; the eager backend checks the tracing (no graph
    # breaks with DC-AE-V's latent grid and the I2V inputs) without the C++ compile time of inductor.
    pipe = tiny_pipeline("i2v")
    pipe.transformer.compile_repeated_blocks(backend="eager", fullgraph=True)
    got = pipe(generator=gen(0), **OFFLOAD_RUN).frames
    torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(i2v_reference), rtol=0, atol=1e-5)


def test_bad_inputs(t2v, i2v):
    base = dict(num_frames=FRAMES, **T2V)
    with pytest.raises(DCVGError, match="the prompt is empty"):
        t2v(prompt="  ", **base)
    with pytest.raises(DCVGError, match="no prompt given"):
        t2v(**base)
    with pytest.raises(DCVGError, match=r"num_frames 4 is below one chunk of the autoencoder \(8 frames\)"):
        t2v(prompt="a corgi", **{**base, "num_frames": 4})
    with pytest.raises(DCVGError, match="height 70 is not a multiple of 32; use 64 or drop --strict"):
        t2v(prompt="a corgi", strict_size=True, **{**base, "height": 70})
    with pytest.raises(DCVGError, match="no image given"):
        i2v(prompt="a corgi", **{**base, "max_sequence_length": 512})
    with pytest.raises(DCVGError, match="Wan's image cross-attention needs exactly 512"):
        i2v(image=sample_image(), prompt="a corgi", **base)
    bad = tiny_pipeline("t2v")
    bad.transformer = tiny_transformer(in_channels=16, out_channels=16)
    with pytest.raises(
        DCVGError, match="in_channels 16 / out_channels 16 but the autoencoder's latent has 32"
    ):
        bad(prompt="a corgi", **base)
    no_clip = tiny_pipeline("i2v")
    no_clip.image_encoder = None
    with pytest.raises(DCVGError, match="has no image_encoder/image_processor"):
        no_clip(image=sample_image(), prompt="a corgi", **{**base, "max_sequence_length": 512})
