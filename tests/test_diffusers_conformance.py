"""Our classes against diffusers' own test mixins (vendored in `diffusers_testing/`, see its README), on the CPU:
`AutoencoderDCV` against `ModelTesterMixin`, `TrainingTesterMixin`, `LayerwiseCastingTesterMixin` and the
autoencoder slicing / tiling mixin; `DCVideoGenPipeline` and `DCVideoGenImageToVideoPipeline` (with CLIP, and
Wan 2.2-style without) against `PipelineTesterMixin`; and a saved pipeline folder loaded back with diffusers'
generic `DiffusionPipeline.from_pretrained`. What is skipped and why: docs/diffusers.md.

The mixins pick their device from DIFFUSERS_TEST_DEVICE (else the accelerator if any); it is set to cpu here
unless given, so the checks are the same on every machine (DIFFUSERS_TEST_DEVICE=cuda runs the
accelerator-only ones too).
"""

import gc
import os
import sys

os.environ.setdefault("DIFFUSERS_TEST_DEVICE", "cpu")  # read when the vendored testing_utils is imported

import diffusers.pipelines
import pytest
import torch
from diffusers import AutoModel, DiffusionPipeline
from diffusers.utils import dynamic_modules_utils
from diffusers.utils.torch_utils import randn_tensor

from dcvideogen.models.dcae_v import AutoencoderDCV
from dcvideogen.pipelines import DCVideoGenImageToVideoPipeline, DCVideoGenPipeline
from dcvideogen.pipelines.base import loader_module
from dcvideogen.pipelines.clip import wan_clip_image_processor
from diffusers_testing.models.autoencoders.testing_utils import AutoencoderTesterMixin
from diffusers_testing.models.testing_utils import (
    BaseModelTesterConfig,
    LayerwiseCastingTesterMixin,
    ModelTesterMixin,
    TrainingTesterMixin,
)
from diffusers_testing.pipelines.testing_utils import BasePipelineTesterConfig, PipelineTesterMixin
from diffusers_testing.testing_utils import backend_empty_cache, torch_device

from pipeline_parts import (
    CLIP_DIM,
    CLIP_IMAGE,
    FRAMES,
    HEIGHT,
    WIDTH,
    sample_image,
    scheduler,
    tiny_clip,
    tiny_pipeline,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_transformer,
    tiny_vae,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one thread is faster than two threads fighting over a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class AcceleratorHousekeeping:
    """diffusers' pipeline and training mixins run gc.collect() and empty the accelerator's cache before and after
    every test, to free accelerator memory. On the CPU that frees nothing and costs about a second a test on a
    shared machine (a collection of the ~470k objects torch and transformers hold), so it runs on accelerators
    only. Listed first in a test class so that it replaces the mixins' `cleanup` fixture and methods."""

    @staticmethod
    def _free_accelerator_memory() -> None:
        if torch_device != "cpu":
            torch.compiler.reset()
            gc.collect()
            backend_empty_cache(torch_device)

    @pytest.fixture(autouse=True)
    def cleanup(self):
        self._free_accelerator_memory()
        yield
        self._free_accelerator_memory()

    def setup_method(self):
        self._free_accelerator_memory()

    def teardown_method(self):
        self._free_accelerator_memory()


# ---- AutoencoderDCV ----------------------------------------------------------------------------------------


class AutoencoderDCVTesterConfig(BaseModelTesterConfig):
    """A DC-AE-V wired as the release (empty first stage, space then time resampling) at f4t4c8 with 4-frame
    chunks, on 2 clips of 9 frames of 18 x 20 pixels: padded to 3 stream pieces and 20 x 20, cropped back."""

    model_class = AutoencoderDCV
    main_input_name = "sample"
    output_shape = (3, 9, 18, 20)

    def get_init_dict(self) -> dict:
        return {
            "latent_channels": 8,
            "block_out_channels": (8, 16, 32, 32),
            "layers_per_block": (0, 1, 1, 1),
            "chunk_size": 4,
        }

    def get_dummy_inputs(self) -> dict:
        generator = torch.Generator("cpu").manual_seed(0)
        return {"sample": randn_tensor((2, *self.output_shape), generator=generator, device=torch_device)}


class TestAutoencoderDCV(AutoencoderDCVTesterConfig, ModelTesterMixin):
    pass


class TestAutoencoderDCVTraining(AcceleratorHousekeeping, AutoencoderDCVTesterConfig, TrainingTesterMixin):
    def test_gradient_checkpointing_is_applied(self):
        super().test_gradient_checkpointing_is_applied(expected_set={"Encoder", "Decoder"})


class TestAutoencoderDCVLayerwiseCasting(AutoencoderDCVTesterConfig, LayerwiseCastingTesterMixin):
    pass


class TestAutoencoderDCVSlicingTiling(AutoencoderDCVTesterConfig, AutoencoderTesterMixin):
    pass


# ---- pipelines ---------------------------------------------------------------------------------------------


class FindableByNameMixin:
    """diffusers' `ReturnNameVisitor` (used by `test_encode_prompt_works_in_isolation` to read the names
    `encode_prompt` returns) looks the pipeline class up by name in `diffusers.pipelines`, where only diffusers'
    own pipelines live; ours is put there for that test."""

    def test_encode_prompt_works_in_isolation(self, monkeypatch):
        monkeypatch.setattr(
            diffusers.pipelines, self.pipeline_class.__name__, self.pipeline_class, raising=False
        )
        super().test_encode_prompt_works_in_isolation()


class DCVideoGenPipelineTesterConfig(BasePipelineTesterConfig):
    """Text-to-video on the tiny parts of pipeline_parts: 8 frames of 32 x 64 pixels, one autoencoder chunk."""

    pipeline_class = DCVideoGenPipeline
    required_input_params_in_call_signature = frozenset(
        [
            "prompt",
            "negative_prompt",
            "height",
            "width",
            "guidance_scale",
            "prompt_embeds",
            "negative_prompt_embeds",
        ]
    )
    batch_input_params = frozenset(["prompt"])
    output_shape = (FRAMES, 3, HEIGHT, WIDTH)
    # A video pipeline, as Wan's: `num_videos_per_prompt`, not `num_images_per_prompt`.
    optional_input_params = frozenset(
        ["num_inference_steps", "num_videos_per_prompt", "generator", "latents", "output_type", "return_dict"]
    )

    def get_dummy_components(self) -> dict:
        torch.manual_seed(0)
        tokenizer = tiny_tokenizer()
        return {
            "tokenizer": tokenizer,
            "text_encoder": tiny_text_encoder(len(tokenizer)),
            "vae": tiny_vae(),
            "scheduler": scheduler(),
            "transformer": tiny_transformer(),
        }

    def get_dummy_inputs(self) -> dict:
        return {
            "prompt": "a corgi jumps",
            "negative_prompt": "the log",
            "generator": self.get_generator(0),
            "num_inference_steps": 2,
            "guidance_scale": 6.0,
            "height": HEIGHT,
            "width": WIDTH,
            "num_frames": FRAMES,
            "max_sequence_length": 16,
            "output_type": "pt",
        }


class TestDCVideoGenPipeline(
    AcceleratorHousekeeping, DCVideoGenPipelineTesterConfig, FindableByNameMixin, PipelineTesterMixin
):
    pass


class DCVideoGenImageToVideoPipelineTesterConfig(DCVideoGenPipelineTesterConfig):
    """Image-to-video as released: 68-channel transformer with CLIP image cross-attention."""

    pipeline_class = DCVideoGenImageToVideoPipeline
    required_input_params_in_call_signature = frozenset(
        ["image", "prompt", "negative_prompt", "guidance_scale", "prompt_embeds", "negative_prompt_embeds"]
    )

    def get_dummy_components(self) -> dict:
        components = super().get_dummy_components()
        components.update(
            transformer=tiny_transformer(in_channels=68, image_dim=CLIP_DIM),
            image_encoder=tiny_clip(),
            image_processor=wan_clip_image_processor(CLIP_IMAGE),
        )
        return components

    def get_dummy_inputs(self) -> dict:
        # Wan's image cross-attention splits the context at 512 text tokens.
        return {**super().get_dummy_inputs(), "image": sample_image(), "max_sequence_length": 512}


class TestDCVideoGenImageToVideoPipeline(
    AcceleratorHousekeeping,
    DCVideoGenImageToVideoPipelineTesterConfig,
    FindableByNameMixin,
    PipelineTesterMixin,
):
    @pytest.mark.skip(
        reason="this transformer has CLIP image cross-attention, so image_encoder / image_processor are required "
        "here; they are optional for transformers without it, checked by TestDCVideoGenImageToVideoExpandTimesteps"
    )
    def test_save_load_optional_components(self):
        pass


class DCVideoGenImageToVideoExpandTimestepsTesterConfig(DCVideoGenImageToVideoPipelineTesterConfig):
    """Image-to-video Wan 2.2-style: no CLIP, the image's latent is the first latent frame (timestep 0)."""

    def get_dummy_components(self) -> dict:
        components = DCVideoGenPipelineTesterConfig.get_dummy_components(self)
        return {**components, "image_encoder": None, "image_processor": None, "expand_timesteps": True}

    def get_dummy_inputs(self) -> dict:
        return {**super().get_dummy_inputs(), "max_sequence_length": 16}


class TestDCVideoGenImageToVideoExpandTimesteps(
    AcceleratorHousekeeping,
    DCVideoGenImageToVideoExpandTimestepsTesterConfig,
    FindableByNameMixin,
    PipelineTesterMixin,
):
    @pytest.mark.skip(
        reason="as in diffusers' own Wan 2.2 image-to-video test: the first latent frame is the image's latent, "
        "written after the last step, so latents zeroed by the callback do not give an all-zero output"
    )
    def test_callback_inputs(self):
        pass


# ---- a saved folder through diffusers' generic loader ----------------------------------------------------------


def test_diffusion_pipeline_loads_saved_folders(tmp_path, monkeypatch):
    """`DiffusionPipeline.from_pretrained` finds our class through the module file the folder carries (with
    `custom_pipeline` and `trust_remote_code`), the autoencoder through model_index.json; the loaded pipeline
    is ours and generates the same video. T2V then I2V in one process: their module files do not collide."""
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # not ~/.cache
    monkeypatch.setattr(sys, "path", list(sys.path))  # diffusers appends its module cache to sys.path
    run = {
        "prompt": "a corgi",
        "num_frames": FRAMES,
        "height": HEIGHT,
        "width": WIDTH,
        "num_inference_steps": 1,
    }
    for task, cls in (("t2v", DCVideoGenPipeline), ("i2v", DCVideoGenImageToVideoPipeline)):
        folder = tmp_path / task
        tiny_pipeline(task).save_pretrained(folder)
        # Without the module file diffusers looks "DCVideoGenPipeline" up in its own namespace and fails.
        with pytest.raises(AttributeError, match=cls.__name__):
            DiffusionPipeline.from_pretrained(folder)
        pipe = DiffusionPipeline.from_pretrained(
            folder, custom_pipeline=loader_module(task), trust_remote_code=True
        )
        assert type(pipe) is cls and type(pipe.vae) is AutoencoderDCV
        # str: AutoModel (diffusers 0.42.1) joins the path into its load id and fails on a Path
        assert type(AutoModel.from_pretrained(str(folder), subfolder="vae")) is AutoencoderDCV
        ours = cls.from_pretrained(folder)
        kwargs = dict(run, max_sequence_length=16 if task == "t2v" else 512, output_type="latent")
        if task == "i2v":
            kwargs["image"] = sample_image()
        a = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames
        b = ours(generator=torch.Generator().manual_seed(0), **kwargs).frames
        assert torch.equal(a, b)


def test_pipeline_decodes_a_sliced_batch_video_by_video(monkeypatch):
    """After `pipe.vae.enable_slicing()` a batch is decoded one video at a time, as diffusers' pipelines do;
    the videos are those of the batched decode."""
    pipe = tiny_pipeline("t2v")
    kwargs = dict(
        prompt=["a corgi", "a red car"],
        num_frames=FRAMES,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=1,
        max_sequence_length=16,
        output_type="pt",
    )
    batched = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames  # (2, T, 3, H, W)
    decode_stream, batch_sizes = pipe.vae.decode_stream, []

    def recording_decode_stream(latents, **crop):
        batch_sizes.append(latents.shape[0])
        return decode_stream(latents, **crop)

    monkeypatch.setattr(pipe.vae, "decode_stream", recording_decode_stream)
    pipe.vae.enable_slicing()
    sliced = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert batch_sizes == [1, 1]
    torch.testing.assert_close(sliced, batched, rtol=0, atol=1e-5)
