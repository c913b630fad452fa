"""Loading the released folder layout and saved pipelines; `convert_released`; missing parts named."""

import json
import os
import shutil

import pytest
import torch

from dcvideogen.errors import DCVGError
from dcvideogen.pipelines import DCVideoGenImageToVideoPipeline, DCVideoGenPipeline
from dcvideogen.pipelines.clip import WAN_CLIP_FILE
from dcvideogen.pipelines.loading import (
    RELEASED_AE_FILE,
    Layout,
    convert_released,
    inspect_model_folder,
    load_pipeline,
)

from pipeline_parts import FRAMES, HEIGHT, WIDTH, make_released_folder, sample_image, tiny_transformer

RUN = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=1, guidance_scale=1.0)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return make_released_folder(tmp_path_factory.mktemp("released") / "DC-VideoGen-Wan2.1-tiny")


def _run(pipe, task):
    kwargs = dict(
        prompt="a corgi jumps", generator=torch.Generator().manual_seed(0), output_type="latent", **RUN
    )
    if task == "i2v":
        kwargs["image"] = sample_image()
    return pipe(**kwargs).frames


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_released_layout_loads_and_converts(task, released, tmp_path):
    folder = inspect_model_folder(released, task)
    assert folder.layout is Layout.RELEASED and folder.transformer_dir.name == f"transformer_{task}"
    cls = DCVideoGenPipeline if task == "t2v" else DCVideoGenImageToVideoPipeline
    pipe = cls.from_pretrained(released, torch_dtype=torch.float32, ae_chunk_size=8)  # = load_pipeline(...)
    assert type(pipe) is cls and pipe.vae.arch.chunk_size == 8 and pipe.vae.arch.name == "f32t4c32"
    if task == "i2v":
        assert pipe.image_encoder.dtype == torch.float32 and pipe.image_processor.crop_size["height"] == 28
    want = _run(pipe, task)

    out = tmp_path / f"converted-{task}"
    converted = convert_released(released, out, task, ae_chunk_size=8, link=(task == "i2v"))
    assert converted.layout is Layout.SAVED and converted.task == task
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == cls.__name__ and index["vae"][1] == "AutoencoderDCV"
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    weights = next((released / f"transformer_{task}").glob("*.safetensors"))
    copied = out / "transformer" / weights.name
    assert copied.read_bytes() == weights.read_bytes()
    assert (os.stat(copied).st_ino == os.stat(weights).st_ino) == (task == "i2v")  # --link hard-links

    back = load_pipeline(out, dtype=torch.float32)
    assert type(back) is cls and back.vae.arch == pipe.vae.arch
    for name in ("transformer", "text_encoder", "vae") + (("image_encoder",) if task == "i2v" else ()):
        a, b = getattr(pipe, name).state_dict(), getattr(back, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    torch.testing.assert_close(_run(back, task), want, rtol=0, atol=1e-4)
    with pytest.raises(DCVGError, match="already a saved pipeline"):
        convert_released(out, tmp_path / "again", task)


def test_missing_released_parts_are_named(released, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(released / RELEASED_AE_FILE, partial)
    shutil.copytree(released / "tokenizer", partial / "tokenizer")
    with pytest.raises(DCVGError) as e:
        inspect_model_folder(partial, "i2v")
    msg = str(e.value)
    assert "the released layout for i2v is incomplete; put these in the folder" in msg
    for part in ("transformer_i2v/", "text_encoder/", "scheduler/", WAN_CLIP_FILE):
        assert part in msg
    assert RELEASED_AE_FILE not in msg.split("folder:")[1] and "tokenizer/" not in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DCVGError, match=r"not a model folder: no model_index\.json"):
        inspect_model_folder(tmp_path / "empty")
    with pytest.raises(DCVGError, match="does not exist"):
        inspect_model_folder(tmp_path / "nowhere")


def test_saved_folder_checks(released, tmp_path):
    out = tmp_path / "t2v"
    convert_released(released, out, "t2v")
    assert (
        inspect_model_folder(out).autoencoder_config().chunk_size == 40
    )  # the release's, not stored in the .pt
    pipe = load_pipeline(out, ae_chunk_size=16)
    assert pipe.vae.arch.chunk_size == 16 and pipe.transformer.dtype == pipe.vae.dtype == torch.bfloat16
    with pytest.raises(DCVGError, match="holds a text-to-video pipeline, not image-to-video; use --task t2v"):
        inspect_model_folder(out, "i2v")
    shutil.rmtree(out / "text_encoder")
    with pytest.raises(DCVGError, match=r"missing: text_encoder/ \(the UMT5EncoderModel\)"):
        inspect_model_folder(out)


def test_channel_mismatch_is_found_before_loading_weights(released, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(released, bad, ignore=shutil.ignore_patterns("transformer_i2v"))
    shutil.rmtree(bad / "transformer_t2v")
    tiny_transformer(in_channels=16, out_channels=16).save_pretrained(bad / "transformer_t2v")
    for weights in (bad / "transformer_t2v").glob("*.safetensors"):
        weights.write_bytes(b"not read")  # the error must come from the config alone
    with pytest.raises(
        DCVGError, match=r"transformer_t2v: the transformer has in_channels 16 / out_channels 16"
    ):
        load_pipeline(bad, "t2v")
