"""Aspect-ratio / frame-count buckets and resolution stages of AE-Adapt-V (issue 14): the bucket rule, the
config, the bucket schedule and sampler (every batch from one bucket, every rank the same bucket, one bucket =
the stream without buckets), the cache of each bucket, training on buckets and a resolution stage that continues
stage 2's LoRA and optimiser, and the toy config's example. Exact resume across a resolution-stage boundary is
in test_resume_boundaries.py."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dcvideogen.adapt import cache as adapt_cache
from dcvideogen.adapt import train as adapt_train
from dcvideogen.adapt.cache import build_cache
from dcvideogen.adapt.config import AdaptConfig, ResolutionStageConfig, load_adapt_config, to_dict
from dcvideogen.adapt.data import (
    BucketSampler,
    BucketSchedule,
    LatentCache,
    assign_bucket,
    make_cache_loader,
    spread,
)
from dcvideogen.adapt.pairing import source_frames
from dcvideogen.adapt.train import train_adapt
from dcvideogen.errors import DCVGError
from dcvideogen.training import checkpoint as ckpt
from dcvideogen.training.data import StreamSampler

from adapt_parts import make_captioned_clips, make_wan_base, tiny_adapt_config

REPO = Path(__file__).resolve().parents[1]
BASE_BUCKETS = [(8, 64, 96), (8, 96, 64), (4, 64, 96)]  # landscape, portrait, a short landscape
HI_BUCKETS = [(8, 96, 128), (8, 128, 96)]
# clip i: (frames, (height, width)) = ([12, 12, 7][i % 3], landscape for even i, portrait for odd i)
CLIP_FRAMES, CLIP_SIZES = [12, 12, 7], [(72, 96), (96, 72)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the models are tiny, and two threads on a busy 2-core machine wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clip_name(cache: LatentCache, i: int) -> str:
    file, j = cache.locate(i)
    with safe_open(file, "pt") as f:
        return Path(json.loads(f.metadata()["dcvg"])["clips"][j]["path"]).stem


def latent_grid(shape) -> tuple[int, int, int]:
    f, h, w = shape
    return f // 4, h // 32, w // 32


# ---- the rule and the config ----------------------------------------------------------------------------------


def test_a_clip_goes_to_the_closest_aspect_it_can_fill_then_its_longest_frame_count():
    shapes = [(80, 480, 832), (80, 832, 480), (40, 480, 832), (40, 480, 480)]
    assert source_frames(80, "exact") == 81 and source_frames(40, "exact") == 41
    assert assign_bucket(200, 1080, 1920, shapes, "exact") == 0  # 16:9 -> 480x832, 80 frames
    assert assign_bucket(60, 1080, 1920, shapes, "exact") == 2  # too short for 80: the 40-frame bucket
    assert assign_bucket(200, 1920, 1080, shapes, "exact") == 1  # portrait
    assert assign_bucket(60, 1920, 1080, shapes, "exact") == 3  # no 40-frame portrait: the closest that fits
    assert assign_bucket(200, 500, 520, shapes, "exact") == 3  # square
    assert assign_bucket(40, 1080, 1920, shapes, "exact") is None  # shorter than every bucket
    assert assign_bucket(40, 1080, 1920, shapes, "authors") == 2  # the authors' pairing reads 4k frames
    assert assign_bucket(161, 1080, 1920, shapes, "exact", stride=2) == 0  # 81 frames 2 apart
    assert assign_bucket(160, 1080, 1920, shapes, "exact", stride=2) == 2
    assert spread(10, 4) == [0, 2, 5, 7] and spread(3, 0) == [0, 1, 2] and spread(3, 5) == [0, 1, 2]


def test_defaults_keep_one_shape_per_stage_and_the_toy_config_has_buckets_and_a_resolution_stage():
    cfg = AdaptConfig()
    assert cfg.data.shapes() == [(80, 480, 832)] and cfg.resolution_stages == []
    assert cfg.training_shapes() == [
        (n, [(80, 480, 832)]) for n in ("align-embedder", "align-head", "finetune")
    ]
    toy = load_adapt_config(REPO / "configs" / "adapt" / "tiny-cpu.yaml")
    base = [(16, 128, 160), (16, 160, 128)]
    hi = [(16, 192, 224), (16, 224, 192)]
    assert toy.training_shapes() == [
        ("align-embedder", base),
        ("align-head", base),
        ("finetune", base),
        ("192p", hi),
    ]
    settings = toy.stage_settings("192p")
    assert settings.steps == toy.resolution_stages[0].steps and settings.lr == toy.finetune.lr
    assert settings.lora_rank == toy.finetune.lora_rank and toy.resolution_stages[0].optimizer == "continue"
    toy.finetune.enabled = False
    assert [name for name, _ in toy.training_shapes()] == ["align-embedder", "align-head", "192p"]
    for name in ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b"):
        paper = load_adapt_config(REPO / "configs" / "adapt" / f"{name}.yaml")
        for _, shapes in paper.training_shapes():
            assert all(f % 4 == 0 and h % 32 == 0 and w % 32 == 0 for f, h, w in shapes)
    paper = load_adapt_config(REPO / "configs" / "adapt" / "wan2.1-t2v-1.3b.yaml")
    assert [(r.name, r.steps, r.buckets) for r in paper.resolution_stages] == [
        ("720p", 1000, [(80, 704, 1280)]),
        ("1080p", 500, [(80, 1056, 1920)]),
    ]


def test_bad_buckets_and_resolution_stages_are_refused_in_one_line():
    def stage(**kw):
        return ResolutionStageConfig(**{"name": "720p", "steps": 10, "buckets": [(80, 704, 1280)], **kw})

    cases = [
        (
            {"data.buckets": [(80, 720, 1280)]},
            [],
            r"data\.buckets: 80x720x1280 is off the latent grid.*720 -> 704",
        ),
        ({"data.buckets": [(82, 480, 832)]}, [], "frames must be a positive multiple of 4"),
        ({"data.buckets": [(80, 480, 832), (80, 960, 1664)]}, [], "same aspect ratio and frame count"),
        ({"model.patch_size": (1, 2, 2), "data.buckets": [(8, 96, 128)]}, [], "height of 64"),
        ({}, [stage(name="720 p")], "name '720 p'"),
        ({}, [stage(name="finetune")], "a base stage's"),
        ({}, [stage(), stage()], "used twice"),
        ({}, [stage(buckets=[])], "no buckets"),
        ({}, [stage(optimizer="keep")], "use continue or reset"),
        ({}, [stage(steps=0)], "steps=0"),
    ]
    for data, stages, message in cases:
        cfg = AdaptConfig()
        for key, value in data.items():
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
        cfg.resolution_stages = stages
        with pytest.raises(DCVGError, match=message) as e:
            cfg.validate()
        assert "\n" not in str(e.value)
    loaded = load_adapt_config(
        None, ["resolution_stages=[{name: 720p, steps: 5, buckets: [[80, 704, 1280]], lr: 1.0e-5}]"]
    )
    assert (
        loaded.resolution_stages[0].buckets == [(80, 704, 1280)] and loaded.stage_settings("720p").lr == 1e-5
    )
    assert to_dict(loaded)["resolution_stages"][0]["buckets"] == [[80, 704, 1280]]


# ---- the schedule and the sampler -------------------------------------------------------------------------


def test_the_bucket_schedule_is_a_function_of_seed_and_micro_batch():
    sizes, group = [5, 0, 3, 1], 2  # ceil(n / 2) = 3, 0, 2, 1 draws per block of 6
    schedule = BucketSchedule(sizes, group, seed=7)
    draws = [schedule(u) for u in range(60)]
    for k in range(10):
        block = [b for b, _ in draws[6 * k : 6 * k + 6]]
        assert sorted(block) == [0, 0, 0, 2, 2, 3]  # each bucket in proportion, the empty one never
    for u, (b, c) in enumerate(draws):
        assert c == sum(1 for x, _ in draws[:u] if x == b)  # c counts the earlier draws of the bucket
    assert [BucketSchedule(sizes, group, seed=7)(u) for u in reversed(range(60))] == draws[::-1]
    assert [BucketSchedule(sizes, group, seed=8)(u) for u in range(60)] != draws
    assert [BucketSchedule([4], 3, seed=7)(u) for u in range(5)] == [(0, u) for u in range(5)]
    with pytest.raises(DCVGError, match="no training clips"):
        BucketSchedule([0, 0], 2, seed=0)


def test_one_bucket_samples_the_stream_of_a_cache_without_buckets():
    schedule = BucketSchedule([7], 6, seed=3)
    for start, batch, accum, rank, world in [(0, 2, 1, 0, 1), (5, 3, 2, 1, 2), (2, 1, 3, 0, 3)]:
        ours = iter(BucketSampler(BucketSchedule([7], batch * world, 3), start, batch, accum, rank, world))
        theirs = iter(StreamSampler(start, batch, accum, rank, world))
        keys = [next(ours) for _ in range(40)]
        assert keys == [(0, p, p) for p in (next(theirs) for _ in range(40))]
    assert schedule(11) == (0, 11)


def test_ranks_read_the_same_bucket_and_together_the_one_rank_batch():
    sizes = [6, 2, 3]
    one = iter(BucketSampler(BucketSchedule(sizes, 4, 5), 3, 4))
    ranks = [iter(BucketSampler(BucketSchedule(sizes, 4, 5), 3, 2, 1, r, 2)) for r in (0, 1)]
    for _ in range(20):  # micro-batches
        whole = [next(one) for _ in range(4)]
        split = [next(ranks[0]) for _ in range(2)] + [next(ranks[1]) for _ in range(2)]
        assert whole == split and len({b for b, _, _ in whole}) == 1


# ---- the cache --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket_cfg(tmp_path_factory, clips):
    """6 clips (landscape / portrait, 12 or 7 frames), 3 base buckets, resolution stage `hi` with 2 buckets."""
    root = tmp_path_factory.mktemp("buckets")
    base = make_wan_base(root / "base", "t2v")
    source = make_captioned_clips(root / "clips", clips, n=6, frames=CLIP_FRAMES, size=CLIP_SIZES)
    cfg = tiny_adapt_config(root, base, source, **{"data.buckets": BASE_BUCKETS})
    cfg.resolution_stages = [ResolutionStageConfig(name="hi", steps=3, buckets=HI_BUCKETS, lr=1e-3)]
    cfg.align_head.steps, cfg.finetune.steps, cfg.finetune.warmup_steps = 2, 3, 1
    cfg.finetune.lora_rank, cfg.finetune.lora_alpha, cfg.finetune.ema_decay = 4, 8.0, 0.9
    cfg.precision, cfg.tensorboard, cfg.log_every, cfg.val_every, cfg.checkpoint_every = (
        "fp32",
        False,
        1,
        100,
        2,
    )
    cfg.keep_checkpoints, cfg.val_steps = 100, 1
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def bucket_cache(bucket_cfg):
    return build_cache(bucket_cfg)


def test_the_cache_writes_each_bucket_in_shards_of_one_bucket(bucket_cfg, bucket_cache, caplog):
    report = bucket_cache
    assert report.complete and report.bucket_clips == [2, 2, 2] and report.skipped == 0
    hi = report.stages["hi"]
    assert hi.complete and hi.folder == Path(bucket_cfg.data.cache) / "hi"
    assert hi.bucket_clips == [2, 2] and hi.skipped == 2  # the two 7-frame clips fit no 8-frame bucket
    index = json.loads((Path(bucket_cfg.data.cache) / "index.json").read_text())
    assert index["fingerprint"]["buckets"] == [list(s) for s in BASE_BUCKETS]
    assert "num_frames" not in index["fingerprint"] and "wan_latents" not in index["fingerprint"]
    assert [(s["clips"], s["bucket"]) for s in index["shards"]] == [(2, 0), (2, 1), (2, 2)]
    hi_index = json.loads((hi.folder / "index.json").read_text())
    assert hi_index["fingerprint"]["wan_latents"] is False and len(hi_index["skipped_files"]) == 2
    for folder, shapes, wan in (
        (Path(bucket_cfg.data.cache), BASE_BUCKETS, True),
        (hi.folder, HI_BUCKETS, False),
    ):
        cache = LatentCache(folder)
        assert cache.shapes == shapes and cache.has_wan == wan
        for i in range(len(cache)):
            f, h, w = shapes[cache.bucket_of(i)]
            item = cache[i]
            assert item["latent"].shape == (32, *latent_grid((f, h, w))) and item[
                "bucket"
            ] == cache.bucket_of(i)
            if wan:
                assert item["wan_latent"].shape == (16, 1 + f // 4, h // 8, w // 8)
            else:
                assert "wan_latent" not in item
            with safe_open(cache.locate(i)[0], "pt") as file:
                assert json.loads(file.metadata()["dcvg"])["bucket"] == cache.bucket_of(i)
    # the clip's aspect ratio and length decide its bucket: landscape 12-frame clips 0 and 4 in bucket 0,
    # portrait ones (1, 3) in 1, the 7-frame clips in the 4-frame bucket (5 is portrait, but no other fits)
    base = LatentCache(bucket_cfg.data.cache)
    assert [[clip_name(base, i) for i in g] for g in base.bucket_indices(range(6))] == [
        ["clip00", "clip04"],
        ["clip01", "clip03"],
        ["clip02", "clip05"],
    ]
    assert base.split(4) == ([2, 4], [0, 1, 3, 5])  # the last clip of each bucket, then the one before
    assert LatentCache(hi.folder).split(1) == ([0, 2, 3], [1])


def test_a_rerun_does_nothing_and_other_buckets_are_refused(bucket_cfg, bucket_cache, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was about to be loaded")

    monkeypatch.setattr(adapt_cache, "Encoders", refuse)
    report = build_cache(bucket_cfg)
    assert report.shards_written == [] and report.stages["hi"].shards_written == []
    other = copy.deepcopy(bucket_cfg)
    other.resolution_stages[0].buckets = [(8, 96, 128)]
    with pytest.raises(
        DCVGError, match=r"hi/index\.json: written with other settings \(num_frames None there, 8 now\)"
    ):
        build_cache(other)


def test_a_resolution_stage_caches_a_spread_of_max_clips(bucket_cfg, tmp_path):
    cfg = copy.deepcopy(bucket_cfg)
    cfg.data.cache = str(tmp_path / "cache")
    # the clip list is clip00, clip01, clip03, clip04, more/clip02, more/clip05: entries 0, 2, 4 are taken,
    # clip00 (landscape), clip03 (portrait), clip02 (7 frames: too short)
    cfg.resolution_stages[0].max_clips = 3
    build_cache(cfg)
    index = json.loads((tmp_path / "cache" / "hi" / "index.json").read_text())
    assert (
        index["sources"] == 3 and index["bucket_clips"] == [1, 1] and index["fingerprint"]["max_clips"] == 3
    )
    assert [Path(p).name for p in index["skipped_files"]] == ["clip02.mp4"]


def test_every_batch_comes_from_one_bucket_on_its_latent_grid(bucket_cfg, bucket_cache):
    cache = LatentCache(bucket_cfg.data.cache)
    train, _ = cache.split(1)

    def batches(start, steps, rank=0, world=1, batch=2, workers=0):
        it = iter(make_cache_loader(cache, train, 3, start, batch, 1, rank, world, workers))
        return [next(it) for _ in range(steps)]

    full = batches(0, 12)
    seen = set()
    for b in full:
        bucket = int(b["bucket"][0])
        assert b["bucket"].tolist() == [bucket] * 2 and b["latent"].shape == (
            2,
            32,
            *latent_grid(BASE_BUCKETS[bucket]),
        )
        seen.add(bucket)
    assert seen == {0, 1, 2}
    for a, b in zip(full[7:], batches(7, 5, workers=1)):  # resumed mid-stream, with a worker
        assert a["position"].tolist() == b["position"].tolist() and torch.equal(a["latent"], b["latent"])
    ranks = [batches(0, 12, rank=r, world=2, batch=1) for r in (0, 1)]
    for whole, r0, r1 in zip(full, *ranks):  # 2 ranks of batch 1 read the 1-rank batch of 2
        assert torch.equal(torch.cat([r0["latent"], r1["latent"]]), whole["latent"])
        assert torch.cat([r0["position"], r1["position"]]).tolist() == whole["position"].tolist()


def test_stage_1a_accumulates_the_tokens_of_every_bucket(bucket_cfg, bucket_cache):
    from dcvideogen.adapt.model import load_base_embedder
    from dcvideogen.training.engine import Dist

    cache = LatentCache(bucket_cfg.data.cache)
    train, _ = cache.split(1)
    embedder = adapt_train.new_embedder(32, 16, (1, 1, 1), 0)
    sums = adapt_train.alignment_sums(
        cache, train, load_base_embedder(bucket_cfg.model.base), embedder, bucket_cfg, Dist()
    )
    tokens = sum(math.prod(latent_grid(BASE_BUCKETS[cache.bucket_of(i)])) for i in train)
    assert int(sums.rows) == tokens and len({cache.bucket_of(i) for i in train}) == 3


# ---- training -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket_run(bucket_cfg, bucket_cache, tmp_path_factory):
    """The whole run (1a, 1b, 2, hi), recording the stage, buckets and latent shape of every training batch."""
    seen, real = [], adapt_train.diffusion_loss

    def recording(model, batch, null_text, cfg, stage):
        seen.append((cfg.stage_names()[stage], batch["bucket"].tolist(), tuple(batch["latent"].shape)))
        return real(model, batch, null_text, cfg, stage)

    adapt_train.diffusion_loss = recording
    try:
        run = tmp_path_factory.mktemp("runs") / "buckets"
        assert train_adapt(bucket_cfg, run) == run / "adapted"
    finally:
        adapt_train.diffusion_loss = real
    return run, seen


def test_training_batches_each_come_from_one_bucket_of_the_stage(bucket_cfg, bucket_run):
    run, seen = bucket_run
    assert [s for s, _, _ in seen] == ["align-head"] * 2 + ["finetune"] * 3 + ["hi"] * 3
    for stage, buckets, shape in seen:
        shapes = bucket_cfg.stage_shapes(stage)
        assert len(set(buckets)) == 1 and shape == (1, 32, *latent_grid(shapes[buckets[0]]))
    history = json.loads((run / "stages.json").read_text())
    assert [h["stage"] for h in history] == ["align-embedder", "align-head", "finetune", "hi"]
    assert history[-1]["buckets"] == [list(s) for s in HI_BUCKETS] and history[0]["buckets"][2] == [4, 64, 96]
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "hi/train/loss" in r] == [7, 8, 9]
    assert [r["hi/train/lr"] for r in rows if "hi/train/lr" in r] == [1e-3] * 3  # its own lr, no warm-up
    assert len(list((run / "samples").glob("hi-*.mp4"))) == 2  # sample videos at the stage's first bucket


def test_a_resolution_stage_continues_stage_2s_lora_optimiser_and_ema(bucket_cfg, bucket_run):
    from dcvideogen.adapt.result import read_adapted

    run, _ = bucket_run
    end_of_2 = ckpt.load_checkpoint(ckpt.checkpoint_path(run / "checkpoints", 6))
    assert end_of_2["stage"] == "finetune" and end_of_2["finished"]
    carry = end_of_2["carry"]
    assert {float(s["step"]) for s in carry["opt"]["state"].values()} == {3.0}
    assert carry["ema"].keys() <= carry["weights"].keys() and any("lora_B" in k for k in carry["ema"])
    for k, v in carry["weights"].items():  # the raw weights, the EMA exported
        if k in carry["ema"] and "lora_B" in k:
            assert not torch.equal(v, end_of_2["adapted"][k])
    mid = ckpt.load_checkpoint(ckpt.checkpoint_path(run / "checkpoints", 8))
    assert (mid["stage"], mid["stage_step"]) == ("hi", 2)
    assert {float(s["step"]) for s in mid["opt"]["state"].values()} == {5.0}  # 3 of stage 2 + 2 here
    assert [g["lr"] for g in mid["opt"]["param_groups"]] == [1e-3] and "carry" not in mid
    last = ckpt.load_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1])
    assert last["stage"] == "hi" and "carry" not in last  # no stage after it
    result = read_adapted(run)
    lora = [k for k in result.state if "lora_" in k]
    assert (
        lora
        and result.lora.rank == 4
        and any(not torch.equal(result.state[k], end_of_2["adapted"][k]) for k in lora)
    )


def test_optimizer_reset_starts_a_fresh_adamw(bucket_cfg, bucket_cache, tmp_path):
    cfg = copy.deepcopy(bucket_cfg)
    cfg.resolution_stages[0].optimizer = "reset"
    cfg.resolution_stages[0].warmup_steps = 2
    cfg.align_embedder.enabled = cfg.align_head.enabled = False
    cfg.finetune.steps = 1
    assert train_adapt(cfg, tmp_path / "run") is not None
    mid = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "run" / "checkpoints", 3))
    assert (mid["stage"], mid["stage_step"]) == ("hi", 2)
    assert {float(s["step"]) for s in mid["opt"]["state"].values()} == {2.0}
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["hi/train/lr"] for r in rows if "hi/train/lr" in r] == [5e-4, 1e-3, 1e-3]


def test_the_command_line_runs_a_resolution_stage_by_name(
    bucket_cfg, bucket_cache, tmp_path, monkeypatch, capsys
):
    import yaml

    from dcvideogen.cli.main import main

    (tmp_path / "a.yaml").write_text(yaml.safe_dump(to_dict(bucket_cfg)))
    monkeypatch.chdir(tmp_path)
    assert main(["adapt", "cache", "--config", "a.yaml"]) == 0
    out = capsys.readouterr().out
    assert "buckets      2, 2, 2 clips" in out and "/hi" in out
    assert main(["adapt", "train", "--config", "a.yaml", "--out", "run", "--stage", "hi"]) == 0
    assert [h["stage"] for h in json.loads((tmp_path / "run" / "stages.json").read_text())] == ["hi"]
    assert main(["adapt", "train", "--config", "a.yaml", "--out", "new", "--stage", "4k"]) == 2
    assert "--stage 4k: use one of align-embedder, align-head, finetune, hi" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_missing_or_other_resolution_cache_is_named_before_training(bucket_cfg, bucket_cache, tmp_path):
    cfg = copy.deepcopy(bucket_cfg)
    cfg.resolution_stages.append(ResolutionStageConfig(name="higher", steps=1, buckets=[(8, 128, 128)]))
    with pytest.raises(DCVGError, match=r"higher: no index\.json; run dcvg adapt cache first"):
        train_adapt(cfg, tmp_path / "run")
    cfg = copy.deepcopy(bucket_cfg)
    cfg.resolution_stages[0].buckets = [(8, 96, 128)]
    with pytest.raises(DCVGError, match=r"cached with buckets 8x96x128, 8x128x96, resolution_stages\[hi\]"):
        train_adapt(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resolution_stages_may_be_added_to_a_finished_run_but_a_started_one_keeps_its_settings(
    bucket_cfg, bucket_run, tmp_path
):
    import shutil

    run, _ = bucket_run
    shutil.copytree(run, tmp_path / "run")
    other = copy.deepcopy(bucket_cfg)
    other.resolution_stages[0].lr = 1e-2
    with pytest.raises(DCVGError, match=r"resolution stage hi lr=0\.001"):
        train_adapt(other, tmp_path / "run", resume="auto")
    longer = copy.deepcopy(bucket_cfg)
    longer.resolution_stages[0].steps = 4  # a started stage may change its budget
    longer.resolution_stages.append(ResolutionStageConfig(name="again", steps=1, buckets=HI_BUCKETS))
    build_cache(longer)
    assert train_adapt(longer, tmp_path / "run", resume="auto") is not None
    assert [h["stage"] for h in json.loads((tmp_path / "run" / "stages.json").read_text())][-1] == "again"


def test_the_toy_config_example_runs_on_cpu(tmp_path, clips):
    """configs/adapt/tiny-cpu.yaml's two buckets and resolution stage, on the tests' tiny models and clips."""
    from adapt_parts import tiny_dcae_folder

    base = make_wan_base(tmp_path / "base", "t2v")
    source = make_captioned_clips(tmp_path / "clips", clips, n=3, frames=17, size=[(144, 176), (176, 144)])
    cfg = load_adapt_config(
        REPO / "configs" / "adapt" / "tiny-cpu.yaml",
        [
            f"model.base={base}",
            f"model.autoencoder={tiny_dcae_folder(tmp_path / 'ae')}",
            f"data.source={source}",
            f"data.cache={tmp_path / 'cache'}",
            "data.val_prompts=[]",
            "align_head.steps=1",
            "finetune.steps=1",
            "tensorboard=false",
            "log_every=1",
        ],
    )
    report = build_cache(cfg)
    assert report.bucket_clips == [2, 1] and report.stages["192p"].bucket_clips == [2, 1]
    assert train_adapt(cfg, tmp_path / "run", stop_after=4) is None  # 1a, 1b, 2 and the first 192p step
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "192p/train/loss" in r] == [4]
