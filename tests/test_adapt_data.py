"""AE-Adapt-V data layer: the temporal pairing, captioned clips and manifests, the latent cache (shapes,
values, text embeddings as WanPipeline computes them, skipped clips, resume, ranks, I2V) and its stream."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from dcvideogen.adapt import cache as adapt_cache
from dcvideogen.adapt.cache import build_cache
from dcvideogen.adapt.data import (
    CacheStream,
    ClipRecord,
    LatentCache,
    collate,
    find_clips,
    make_cache_loader,
)
from dcvideogen.adapt.pairing import (
    dcae_frame_range,
    paired_spans,
    pixel_span_dcae,
    pixel_span_wan,
    source_frames,
    teacher_latent_slice,
    wan_frame_range,
    wan_latent_frames,
)
from dcvideogen.errors import DCVGError
from dcvideogen.models.dcae_v.loading import load_autoencoder
from dcvideogen.video import read_clip, write_video
from dcvideogen.video.io import to_uint8
from dcvideogen.video.transforms import resize_cover

from adapt_parts import (
    CAPTIONS,
    DCAE_SCALING_FACTOR,
    WAN_LATENTS_MEAN,
    WAN_LATENTS_STD,
    make_captioned_clips,
    make_wan_base,
    tiny_adapt_config,
    write_image,
)

# ---- pairing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", range(1, 21))
def test_exact_pairing_covers_the_same_pixels(k):
    n = 4 * k
    assert source_frames(n, "exact") == 1 + n
    assert wan_frame_range(n, "exact") == range(0, n + 1)  # 1 + 4k frames -> 1 + k latent frames
    assert dcae_frame_range(n, "exact") == range(1, n + 1)
    assert wan_latent_frames(n, "exact") == k + 1
    assert teacher_latent_slice("exact") == slice(1, None)
    spans = paired_spans(n, "exact")
    assert len(spans) == k
    for j, (wan, dcae) in enumerate(spans):
        assert (
            wan == dcae == pixel_span_wan(j + 1) == pixel_span_dcae(j, "exact") == range(4 * j + 1, 4 * j + 5)
        )


@pytest.mark.parametrize("k", range(1, 21))
def test_authors_pairing_is_three_frames_off(k):
    """The authors' 77 Wan frames against 80 DC-AE-V frames: DC-AE-V's span of pair j >= 1 starts 3 frames
    after Wan's (one frame shared); pair 0 is Wan's frame 0 against DC-AE-V's frames 0..3."""
    n = 4 * k
    assert source_frames(n, "authors") == n
    assert len(wan_frame_range(n, "authors")) == n - 3  # 80 -> 77
    assert dcae_frame_range(n, "authors") == range(n)
    assert wan_latent_frames(n, "authors") == k
    assert teacher_latent_slice("authors") == slice(None)
    spans = paired_spans(n, "authors")
    assert spans[0] == (range(0, 1), range(0, 4))
    for j, (wan, dcae) in enumerate(spans[1:], start=1):
        assert dcae.start - wan.start == 3 and dcae.stop - wan.stop == 3
        assert set(wan) & set(dcae) == {4 * j}


def test_pairing_rejects_bad_values():
    with pytest.raises(DCVGError, match="pairing"):
        source_frames(80, "nearest")
    with pytest.raises(DCVGError, match="multiple of 4"):
        wan_frame_range(81, "exact")


# ---- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def wan_t2v(tmp_path_factory) -> Path:
    return make_wan_base(tmp_path_factory.mktemp("wan") / "t2v", "t2v")


@pytest.fixture(scope="session")
def wan_i2v(tmp_path_factory) -> Path:
    return make_wan_base(tmp_path_factory.mktemp("wan") / "i2v", "i2v")


@pytest.fixture(scope="session")
def clean_clips(tmp_path_factory, clips) -> Path:
    """4 good captioned clips (one in a subfolder)."""
    return make_captioned_clips(tmp_path_factory.mktemp("clips") / "clean", clips, n=4)


@pytest.fixture(scope="session")
def mixed_clips(tmp_path_factory, clean_clips) -> Path:
    """The clean clips plus a corrupt one and a too-short one (5 frames, a clip needs 9), both captioned; in
    the sorted list they fall in the same shard, which ends up with no clips."""
    root = tmp_path_factory.mktemp("clips") / "mixed"
    shutil.copytree(clean_clips, root)
    (root / "clip015_broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (root / "clip015_broken.txt").write_text("a log\n")
    write_video(root / "clip016_short.mp4", read_clip(root / "clip00.mp4", 0, 5), fps=24)
    (root / "clip016_short.txt").write_text("a corgi\n")
    return root


@pytest.fixture(scope="session")
def t2v_cfg(tmp_path_factory, wan_t2v, mixed_clips):
    return tiny_adapt_config(tmp_path_factory.mktemp("t2v"), wan_t2v, mixed_clips)


@pytest.fixture(scope="session")
def t2v_cache(t2v_cfg) -> Path:
    report = build_cache(t2v_cfg)
    assert report.complete and report.shards_written == [0, 1, 2]
    return Path(t2v_cfg.data.cache)


@pytest.fixture(scope="session")
def i2v_cfg(tmp_path_factory, wan_i2v, clean_clips):
    """I2V from a JSONL manifest of the clean clips; the second row gives its own first frame (image)."""
    tmp = tmp_path_factory.mktemp("i2v")
    rows = [{"path": str(r.path), "caption": r.caption} for r in find_clips(clean_clips)]
    rows[1]["image"] = write_image(tmp / "given.png", seed=7).name
    (tmp / "clips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tiny_adapt_config(tmp, wan_i2v, tmp / "clips.jsonl", task="i2v")


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if build_cache gets as far as creating its model loader."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was about to be loaded")

    monkeypatch.setattr(adapt_cache, "Encoders", refuse)


# ---- captioned clips ------------------------------------------------------------------------------------


def test_find_clips_in_a_folder(clean_clips):
    records = find_clips(clean_clips)
    assert [r.path.relative_to(clean_clips).as_posix() for r in records] == [
        "clip00.mp4",
        "clip01.mp4",
        "clip03.mp4",
        "more/clip02.mp4",
    ]
    assert [r.caption for r in records] == [CAPTIONS[i] for i in (0, 1, 3, 2)]
    assert all(r.image is None for r in records)


def test_find_clips_in_csv_and_jsonl_manifests(tmp_path, clean_clips):
    (tmp_path / "frame.png").write_bytes(b"png")
    clip = clean_clips / "clip00.mp4"
    (tmp_path / "list.csv").write_text(
        f'path,caption,image\n{clip},"a red car, at night",frame.png\n{clean_clips / "more" / "clip02.mp4"},a log,\n'
    )
    records = find_clips(tmp_path / "list.csv")
    assert records == [
        ClipRecord(clip, "a red car, at night", tmp_path / "frame.png"),
        ClipRecord(clean_clips / "more" / "clip02.mp4", "a log", None),
    ]
    shutil.copy(clip, tmp_path / "local.mp4")
    lines = [
        {"path": "local.mp4", "caption": " a corgi "},
        {"path": str(clip), "caption": "a log", "image": "frame.png"},
    ]
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert find_clips(tmp_path / "list.jsonl") == [
        ClipRecord(tmp_path / "local.mp4", "a corgi"),
        ClipRecord(clip, "a log", tmp_path / "frame.png"),
    ]


def test_bad_sources_fail_before_any_model(tmp_path, wan_t2v, clean_clips, no_models):
    clip = clean_clips / "clip00.mp4"
    csv = tmp_path / "list.csv"
    csv.write_text(f"path,caption\n{clip},a log\n{tmp_path / 'gone.mp4'},a corgi\n")
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text(json.dumps({"path": "nope.mp4", "caption": "a log"}) + "\n")
    empty_caption = tmp_path / "empty_caption"
    empty_caption.mkdir()
    shutil.copy(clip, empty_caption / "a.mp4")
    (empty_caption / "a.txt").write_text("  \n")
    no_caption = tmp_path / "no_caption"
    no_caption.mkdir()
    shutil.copy(clip, no_caption / "a.mp4")
    (tmp_path / "nothing").mkdir()
    cases = [
        (csv, r"list\.csv line 3: path .*gone\.mp4 does not exist"),
        (jsonl, r"list\.jsonl line 1: path .*nope\.mp4 does not exist"),
        (empty_caption, r"a\.txt: the caption is empty"),
        (no_caption, r"a\.mp4: no caption file a\.txt"),
        (tmp_path / "nothing", "no clips found"),
        (tmp_path / "missing", "no such folder"),
    ]
    for source, message in cases:
        cfg = tiny_adapt_config(tmp_path, wan_t2v, source)
        with pytest.raises(DCVGError, match=message):
            build_cache(cfg)
    bad_csv = tmp_path / "cols.csv"
    bad_csv.write_text("file,text\na.mp4,a log\n")
    with pytest.raises(DCVGError, match="path,caption"):
        find_clips(bad_csv)


def test_bad_base_folders_fail_before_any_model(tmp_path, wan_t2v, wan_i2v, clean_clips, no_models):
    other = tmp_path / "sd"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    cases = [
        (other, "t2v", "holds a StableDiffusionPipeline, not a Wan pipeline"),
        (tmp_path / "empty", "t2v", "neither model_index.json nor a WanTransformer3DModel"),
        (tmp_path / "gone", "t2v", "no such folder"),
        (wan_t2v, "i2v", r"model.task=i2v but .* holds a Wan T2V model \(transformer in_channels 16"),
        (wan_i2v, "t2v", r"model.task=t2v but .* holds a Wan I2V model \(transformer in_channels 36"),
    ]
    (tmp_path / "empty").mkdir()
    for base, task, message in cases:
        cfg = tiny_adapt_config(tmp_path, base, clean_clips, task=task)
        with pytest.raises(DCVGError, match=message):
            build_cache(cfg)


# ---- the cache ------------------------------------------------------------------------------------------


def test_cache_layout_and_shapes(t2v_cache, mixed_clips):
    index = json.loads((t2v_cache / "index.json").read_text())
    assert index["fingerprint"] == {
        "task": "t2v",
        "base": index["fingerprint"]["base"],
        "autoencoder": index["fingerprint"]["autoencoder"],
        "num_frames": 8,
        "height": 64,
        "width": 64,
        "pairing": "exact",
        "frame_stride": 1,
        "text_tokens": 512,
        "latent_channels": 32,
        "wan_channels": 16,
        "text_dim": 32,
        "scaling_factor": DCAE_SCALING_FACTOR,
    }
    files = sorted(p.name for p in t2v_cache.iterdir())
    assert files == ["extras.safetensors", "index.json"] + [f"shard-0000{s}.safetensors" for s in range(3)]
    # The corrupt and the too-short clip share shard 1 (no clips left in it) and are counted.
    assert [s["clips"] for s in index["shards"]] == [2, 0, 2]
    assert (index["clips"], index["skipped"], index["sources"]) == (4, 2, 6)
    assert [Path(p).name for p in index["skipped_files"]] == ["clip015_broken.mp4", "clip016_short.mp4"]
    with safe_open(t2v_cache / "shard-00001.safetensors", framework="pt") as f:
        meta = json.loads(f.metadata()["dcvg"])
    assert "fewer than 9 frames" in meta["skipped"][1]["reason"]

    cache = LatentCache(t2v_cache)
    assert len(cache) == 4
    captions = [cache[i]["caption"] for i in range(4)]
    assert captions == [CAPTIONS[0], CAPTIONS[1], CAPTIONS[3], CAPTIONS[2]]
    item = cache[2]
    assert item["latent"].shape == (32, 2, 2, 2)  # (Z, k, H/32, W/32)
    assert item["wan_latent"].shape == (16, 3, 8, 8)  # (16, 1 + k, H/8, W/8)
    assert item["text"].shape == (512, 32) and item["text"].dtype == torch.float32
    n = int(item["text_len"])
    assert 1 < n < 20 and item["text"][n:].abs().sum() == 0 and item["text"][n - 1].abs().sum() > 0
    assert cache.null_text().shape == (512, 32)
    assert [v["prompt"] for v in cache.val_prompts()] == ["a red car drives at night", "a corgi"]
    assert cache.split(1) == ([0, 1, 2], [3])
    with pytest.raises(DCVGError, match=r"data\.holdout=4 leaves no training clips"):
        cache.split(4)
    with pytest.raises(IndexError):
        cache[4]


def test_cache_values_are_the_two_encodings_of_the_paired_frames(t2v_cfg, t2v_cache, wan_t2v):
    """Wan: normalised posterior mode of source frames 0..8; DC-AE-V: latent x scaling factor of frames 1..8."""
    from diffusers import AutoencoderKLWan

    record = find_clips(t2v_cfg.data.source)[0]
    frames = resize_cover(read_clip(record.path, 0, 9), 64, 64)[None]  # (1, 3, 9, 64, 64)
    vae = AutoencoderKLWan.from_pretrained(wan_t2v / "vae")
    mean = torch.tensor(WAN_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN_LATENTS_STD).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        wan = (vae.encode(frames).latent_dist.mode() - mean) / std
        ae = load_autoencoder(t2v_cfg.model.autoencoder)
        dcae = ae.encode(frames[:, :, 1:9]).latent * DCAE_SCALING_FACTOR
    item = LatentCache(t2v_cache)[0]
    torch.testing.assert_close(item["wan_latent"], wan[0])
    torch.testing.assert_close(item["latent"], dcae[0])


def test_text_is_what_wan_pipeline_computes(t2v_cache, wan_t2v):
    pipe = WanPipeline.from_pretrained(wan_t2v)
    cache = LatentCache(t2v_cache)
    with torch.no_grad():
        for i in (0, 3):
            item = cache[i]
            ref = pipe._get_t5_prompt_embeds(item["caption"], max_sequence_length=512, device="cpu")[0]
            torch.testing.assert_close(item["text"], ref)
        torch.testing.assert_close(cache.null_text(), pipe._get_t5_prompt_embeds("", 1, 512, "cpu")[0])
        val = cache.val_prompts()[1]
        torch.testing.assert_close(val["text"], pipe._get_t5_prompt_embeds(val["prompt"], 1, 512, "cpu")[0])


def test_rerun_does_nothing_and_other_settings_are_refused(t2v_cfg, t2v_cache, no_models, caplog):
    before = {p.name: p.stat().st_mtime_ns for p in t2v_cache.iterdir()}
    with caplog.at_level("INFO", logger="dcvg.adapt"):
        report = build_cache(t2v_cfg)
    assert report.complete and report.shards_written == [] and report.clips == 4 and report.skipped == 2
    assert "nothing to do" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in t2v_cache.iterdir()} == before
    other = copy.deepcopy(t2v_cfg)
    other.data.pairing = "authors"
    with pytest.raises(
        DCVGError, match=r"other settings \(pairing 'exact' there, 'authors' now\); use another"
    ):
        build_cache(other)
    other = copy.deepcopy(t2v_cfg)
    other.data.shard_size = 3
    with pytest.raises(DCVGError, match="shard_size changed"):
        build_cache(other)


def test_new_val_prompts_rewrite_only_the_extras(t2v_cfg, t2v_cache, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    shutil.copytree(t2v_cache, folder)
    shards = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*")}

    def refuse(*args, **kwargs):
        raise AssertionError("an autoencoder was loaded")

    monkeypatch.setattr(adapt_cache, "load_autoencoder", refuse)
    monkeypatch.setattr(adapt_cache.AutoencoderKLWan, "from_pretrained", refuse)
    cfg = copy.deepcopy(t2v_cfg)
    cfg.data.cache, cfg.data.val_prompts = str(folder), ["the log at night"]
    assert build_cache(cfg).shards_written == []
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*")} == shards
    assert [v["prompt"] for v in LatentCache(folder).val_prompts()] == ["the log at night"]


def test_missing_index_is_an_error(tmp_path):
    with pytest.raises(DCVGError, match="run dcvg adapt cache first"):
        LatentCache(tmp_path)


def test_resume_rewrites_only_the_missing_shard(t2v_cfg, t2v_cache, tmp_path):
    folder = tmp_path / "cache"
    shutil.copytree(t2v_cache, folder)  # copy2: modification times kept
    (folder / "shard-00002.safetensors").unlink()  # killed while writing shard 2
    (folder / "index.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*")}
    cfg = copy.deepcopy(t2v_cfg)
    cfg.data.cache = str(folder)
    report = build_cache(cfg)
    assert report.shards_written == [2] and report.shards_kept == [0, 1] and report.complete
    assert {p: (folder / p).stat().st_mtime_ns for p in kept} == kept
    _assert_same_cache(folder, t2v_cache)


def test_two_ranks_make_the_same_cache(t2v_cfg, t2v_cache, tmp_path):
    cfg = copy.deepcopy(t2v_cfg)
    cfg.data.cache = str(tmp_path / "cache")
    first = build_cache(cfg, rank=0, world=2)
    assert first.shards_written == [0, 2] and not first.complete
    assert not (tmp_path / "cache" / "index.json").exists()
    second = build_cache(cfg, rank=1, world=2)
    assert second.shards_written == [1] and second.complete
    _assert_same_cache(tmp_path / "cache", t2v_cache)


def _assert_same_cache(a: Path, b: Path) -> None:
    assert json.loads((a / "index.json").read_text()) == json.loads((b / "index.json").read_text())
    for name in [p.name for p in b.glob("*.safetensors")]:
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys()
        for key in tb:
            assert torch.equal(ta[key], tb[key]), (name, key)
        with safe_open(a / name, "pt") as fa, safe_open(b / name, "pt") as fb:
            assert fa.metadata() == fb.metadata()


def test_authors_pairing_cache(t2v_cfg, tmp_path):
    cfg = copy.deepcopy(t2v_cfg)
    cfg.data.pairing, cfg.data.cache, cfg.data.shard_size = "authors", str(tmp_path / "cache"), 8
    build_cache(cfg)
    item = LatentCache(tmp_path / "cache")[0]
    assert item["wan_latent"].shape == (16, 2, 8, 8)  # 4k - 3 = 5 frames -> k = 2 latent frames
    assert item["latent"].shape == (32, 2, 2, 2)


def test_i2v_cache(i2v_cfg, wan_i2v):
    report = build_cache(i2v_cfg)
    assert report.complete and report.clips == 4
    cache = LatentCache(i2v_cfg.data.cache)
    item = cache[1]
    assert item["condition"].shape == (32, 2, 2, 2)  # DC-AE-V latent of image x4 + zeros
    assert item["wan_condition"].shape == (16, 3, 8, 8)  # Wan latent of image + zeros, 1 + 4k frames
    assert item["image_embeds"].shape == (5, 80)  # CLIP penultimate layer: (28/14)^2 + 1 tokens
    val = cache.val_prompts()
    assert len(val) == 2 and val[0]["image"].shape == (3, 64, 64) and val[0]["image_embeds"].shape == (5, 80)
    assert val[0]["image"].min() >= -1 and val[0]["image"].max() <= 1
    # image_embeds as WanImageToVideoPipeline.encode_image computes them: from the DC-AE-V clip's first frame
    # (source frame 1), or from the manifest's image.
    pipe = WanImageToVideoPipeline.from_pretrained(wan_i2v)
    records = find_clips(i2v_cfg.data.source)
    first = resize_cover(read_clip(records[0].path, 0, 2), 64, 64)[:, 1:2]  # (3, 1, H, W)
    given = resize_cover(read_clip(records[1].image, 0, 1), 64, 64)
    with torch.no_grad():
        for i, frame in ((0, first), (1, given)):
            ref = pipe.encode_image(Image.fromarray(to_uint8(frame)[0]), device="cpu")[0]
            torch.testing.assert_close(cache[i]["image_embeds"], ref)
    assert not torch.allclose(cache[0]["wan_condition"], cache[1]["wan_condition"])
    batch = collate([cache[0], cache[1]])
    assert batch["wan_condition"].shape == (2, 16, 3, 8, 8) and batch["caption"] == [
        cache.caption(0),
        item["caption"],
    ]


# ---- the stream -----------------------------------------------------------------------------------------


def test_stream_is_a_function_of_seed_and_position(t2v_cache):
    cache = LatentCache(t2v_cache)
    train, _ = cache.split(1)
    stream = CacheStream(cache, train, seed=3)
    order = [stream.clip_index(p) for p in range(12)]
    for epoch in range(4):  # every epoch is a permutation of the training clips
        assert sorted(order[3 * epoch : 3 * epoch + 3]) == train
    assert [CacheStream(cache, train, seed=3).clip_index(p) for p in reversed(range(12))] == order[::-1]
    assert [CacheStream(cache, train, seed=4).clip_index(p) for p in range(12)] != order

    def batches(start_step, steps, workers=0, rank=0, world=1):
        loader = make_cache_loader(cache, train, 3, start_step, 2, 1, rank, world, workers)
        it = iter(loader)
        return [next(it) for _ in range(steps)]

    full = batches(0, 5)
    resumed = batches(3, 2, workers=1)
    for a, b in zip(full[3:], resumed):
        assert a["position"].tolist() == b["position"].tolist() and a["caption"] == b["caption"]
        assert torch.equal(a["latent"], b["latent"]) and torch.equal(a["text"], b["text"])
    assert full[0]["latent"].shape == (2, 32, 2, 2, 2) and full[0]["text"].shape == (2, 512, 32)
    ranks = [batches(0, 2, rank=r, world=2) for r in (0, 1)]
    assert [b["position"].tolist() for b in ranks[0]] == [[0, 1], [4, 5]]
    assert [b["position"].tolist() for b in ranks[1]] == [[2, 3], [6, 7]]
    assert ranks[1][0]["index"].tolist() == [stream.clip_index(p) for p in (2, 3)]
