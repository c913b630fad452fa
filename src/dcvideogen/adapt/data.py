"""AE-Adapt-V data: captioned clips, the latent/text cache `dcvg adapt cache` writes, and its reader.

Adaptation (DC-VideoGen Sec. 3.3) trains on clean latents of both autoencoders and UMT5 text embeddings,
never on pixels, so each clip is encoded once (FACTS section 6: the authors cached per-clip latents; users'
trainers keep per-clip safetensors):

- `find_clips`: a folder of `clip.mp4` + `clip.txt`, or a `.csv` / `.jsonl` manifest (`path`, `caption`,
  optional `image`, the I2V first frame); every user error is raised before a model is loaded.
- `build_cache` (in `cache.py`, the writer; this module is what training reads): for each clip, the Wan-VAE latent of the Wan frames and the DC-AE-V latent of the DC-AE-V
  frames (the temporal pairing of `pairing.py`), the trimmed UMT5 embedding of its caption, and for I2V the
  two condition latents and the CLIP image features. One cache folder per bucket set (`CacheSpec`):
  data.cache for stages 1a, 1b and 2, data.cache/NAME for resolution stage NAME (no Wan latents: only stage
  1a reads them). Layout of a cache folder:

      shard-00000.safetensors   clips [0, shard_size) of the clip list; keys "{j}.latent" (Z, k, H/32, W/32),
      shard-00001.safetensors   "{j}.wan_latent" (16, 1 + k | k, H/8, W/8), "{j}.text" (L_j, D), and for I2V
      ...                       "{j}.condition", "{j}.wan_condition", "{j}.image_embeds"; j counts the clips
                                cached in the shard; metadata "dcvg": JSON with the fingerprint, the sources
                                of the slice, the cached clips' captions and the skipped clips
      extras.safetensors        "null_text" (the empty prompt), "val_text.{i}" (+ I2V "val_image.{i}",
                                "val_image_embeds.{i}")
      index.json                {"version", "fingerprint", "shards": [{"file", "clips"}], "clips", "skipped",
                                 "skipped_files", ...}, written last: a cache without it is incomplete

  With several buckets, each clip goes to one (`assign_bucket`), each shard holds clips of one bucket (bucket
  0's shards first), index.json's shards name their "bucket" and the fingerprint lists the "buckets" in place
  of num_frames / height / width; a one-bucket cache is laid out exactly as before buckets existed.
  Shards are written atomically and kept when present, so a killed run resumes where it stopped; ranks take
  shards s with s % world == rank.
- `LatentCache`, `CacheStream`, `make_cache_loader`: float32 items read lazily, and an endless stream that is
  a pure function of (seed, position), like the autoencoder trainer's (`training/data.py`), so resuming at a
  step continues exactly. With buckets, `BucketSchedule` draws one bucket per global micro-batch (every rank
  the same one) and each bucket has its own `CacheStream`; with one bucket the stream is the same as before.
"""

from __future__ import annotations

import bisect
import csv
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DCVGError
from ..training.data import sample_generator
from ..video import VIDEO_SUFFIXES
from .config import AdaptConfig, Shape
from .pairing import source_frames

logger = logging.getLogger("dcvg.adapt")


CACHE_VERSION = 1
INDEX_FILE = "index.json"
EXTRAS_FILE = "extras.safetensors"
SHARD_RE = re.compile(r"^shard-(\d{5,})\.safetensors$")
META_KEY = "dcvg"
CACHE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
I2V_KEYS = ("condition", "wan_condition", "image_embeds")
WAN_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline")
EXPECTED_BASE = (
    "a diffusers Wan 2.1 folder (model_index.json of a WanPipeline or WanImageToVideoPipeline, or transformer/ "
    "with a WanTransformer3DModel, vae/, text_encoder/, tokenizer/)"
)


def shard_name(s: int) -> str:
    return f"shard-{s:05d}.safetensors"


# ---- buckets ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheSpec:
    """One cache folder: the buckets its clips are encoded at, whether it holds the Wan latents (stage 1a's
    teacher input), and how many clips of the source it takes (0: all)."""

    folder: Path
    shapes: tuple[Shape, ...]
    wan: bool = True
    max_clips: int = 0
    stage: str | None = None  # None: the base stages' cache (data.cache); else the resolution stage's name


def cache_spec(cfg: AdaptConfig, stage: str | None = None) -> CacheSpec:
    """The cache stage `stage` reads: data.cache for 1a, 1b, 2 (and None), data.cache/NAME for resolution stage
    NAME."""
    r = cfg.resolution_stage(stage) if stage is not None else None
    if r is None:
        return CacheSpec(Path(cfg.data.cache), tuple(cfg.data.shapes()))
    shapes = tuple(cfg.stage_shapes(r.name))
    return CacheSpec(Path(cfg.data.cache) / r.name, shapes, wan=False, max_clips=r.max_clips, stage=r.name)


def cache_specs(cfg: AdaptConfig) -> list[CacheSpec]:
    """Every cache the config's stages read: the base one, then one per resolution stage."""
    return [cache_spec(cfg)] + [cache_spec(cfg, r.name) for r in cfg.resolution_stages]


def usable_frames(frames: int, stride: int) -> int:
    """Frames read from a clip of `frames` frames with every `stride`-th frame taken."""
    return (frames - 1) // stride + 1 if frames > 0 else 0


def assign_bucket(
    frames: int, height: int, width: int, shapes: Sequence[Shape], pairing: str, stride: int = 1
) -> int | None:
    """The bucket of a clip of `frames` x `height` x `width` pixels: among the buckets whose frame count it has
    (the pairing's source frames, `stride` apart), the closest aspect ratio (|log(w/h) - log(W/H)|), then the
    largest frame count, then the first listed. None when the clip is too short for every bucket. The clip
    is then resized to cover the bucket and center-cropped (smaller clips are scaled up)."""
    have = usable_frames(frames, stride)
    fits = [i for i, (f, _, _) in enumerate(shapes) if have >= source_frames(f, pairing)]
    if not fits or height <= 0 or width <= 0:
        return None
    ratio = math.log(width / height)

    def key(i: int) -> tuple[float, int, int]:
        f, h, w = shapes[i]
        return round(abs(math.log(w / h) - ratio), 9), -f, i

    return min(fits, key=key)


def spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when k is 0 or >= n)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return [i * n // k for i in range(k)]


def shape_name(shape: Sequence[int]) -> str:
    f, h, w = shape
    return f"{f}x{h}x{w}"


# ---- captioned clips ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipRecord:
    path: Path  # the video
    caption: str
    image: Path | None = None  # I2V: the first frame to condition on (default: the clip's own first frame)


def find_clips(source: str | Path) -> list[ClipRecord]:
    """The captioned clips of `source`: a folder (searched recursively; each video with its caption in a `.txt`
    of the same name beside it), a `.csv` manifest (header `path,caption[,image]`) or a `.jsonl` manifest
    (objects with `path`, `caption`, optional `image`); relative manifest paths are resolved against the
    manifest's folder. DCVGError for a video without caption, an empty caption, a manifest row naming a
    missing file, or no clips at all."""
    if not str(source):
        raise DCVGError(
            "data.source is not set; give a folder of clips with captions, or a .csv / .jsonl manifest"
        )
    path = Path(source)
    if not path.exists():
        raise DCVGError(f"data.source={source}: no such folder or manifest file")
    if path.is_dir():
        records = _clips_in_folder(path)
    elif path.suffix.lower() in (".csv", ".jsonl"):
        records = _clips_in_manifest(path)
    else:
        raise DCVGError(f"data.source={source}: not a folder, .csv or .jsonl manifest")
    if not records:
        raise DCVGError(
            f"data.source={source}: no clips found; add videos ({', '.join(VIDEO_SUFFIXES)}) with captions"
        )
    return records


def _read_caption(path: Path) -> str:
    try:
        caption = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise DCVGError(f"{path}: the caption is not UTF-8 text ({e.reason}); save it as UTF-8") from e
    if not caption:
        raise DCVGError(f"{path}: the caption is empty; write the clip's description there")
    return caption


def _clips_in_folder(root: Path) -> list[ClipRecord]:
    videos = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in VIDEO_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)  # hidden and temporary files
    )
    missing = [v for v in videos if not v.with_suffix(".txt").is_file()]
    if missing:
        raise DCVGError(
            f"{missing[0]}: no caption file {missing[0].with_suffix('.txt').name} beside it ({len(missing)} of "
            f"{len(videos)} videos in {root} have none); write one caption .txt per clip, or move the clip out"
        )
    return [ClipRecord(v, _read_caption(v.with_suffix(".txt"))) for v in videos]


def _manifest_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a .csv (header line 1) or .jsonl manifest."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "path" not in columns or "caption" not in columns:
                raise DCVGError(
                    f"{path}: the header has columns {columns}; a manifest needs path,caption[,image]"
                )
            for row in reader:
                yield reader.line_num, row
        return
    with open(path, encoding="utf-8") as f:
        for line_num, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DCVGError(f"{path} line {line_num}: not a JSON object ({e.msg})") from e
            if not isinstance(row, dict):
                raise DCVGError(f"{path} line {line_num}: not a JSON object with path and caption")
            yield line_num, row


def _clips_in_manifest(path: Path) -> list[ClipRecord]:
    records = []
    for line_num, row in _manifest_rows(path):
        where = f"{path} line {line_num}"
        if not row.get("path"):
            raise DCVGError(f"{where}: no path; every row needs path and caption")
        caption = str(row.get("caption") or "").strip()
        if not caption:
            raise DCVGError(
                f"{where}: the caption of {row['path']} is empty; write the clip's description there"
            )
        files = []
        for key in ("path", "image"):
            value = row.get(key)
            if not value:
                files.append(None)
                continue
            file = Path(value) if Path(value).is_absolute() else path.parent / value
            if not file.exists():
                raise DCVGError(f"{where}: {key} {file} does not exist; fix the row or remove it")
            files.append(file)
        records.append(ClipRecord(files[0], caption, files[1]))
    return records


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DCVGError(f"{path}: not readable JSON ({e}); is the model folder complete?") from e
    if not isinstance(data, dict):
        raise DCVGError(f"{path}: not a JSON object; is the model folder complete?")
    return data


# ---- text ----------------------------------------------------------------------------------------------------


def pad_text(text: torch.Tensor, text_tokens: int) -> torch.Tensor:
    """(L, D) -> (text_tokens, D) with zero rows after the L real ones, as the Wan pipelines pad."""
    return torch.cat([text, text.new_zeros(text_tokens - text.shape[0], text.shape[1])])


# ---- the reader -------------------------------------------------------------------------------------------


class LatentCache:
    """Read-only view of a cache folder written by `build_cache`. Items are read lazily from the shards with
    safetensors' `safe_open` (one handle per shard and process, so DataLoader workers open their own)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index_file = self.folder / INDEX_FILE
        if not index_file.is_file():
            raise DCVGError(
                f"{self.folder}: no {INDEX_FILE}; run dcvg adapt cache first (data.cache={self.folder}), or let it "
                "finish"
            )
        self.index = _read_json(index_file)
        if self.index.get("version") != CACHE_VERSION:
            raise DCVGError(
                f"{index_file}: cache version {self.index.get('version')}, this dcvideogen reads {CACHE_VERSION}; "
                "rebuild the cache in another data.cache folder"
            )
        self.files = [self.folder / s["file"] for s in self.index["shards"]]
        counts = [int(s["clips"]) for s in self.index["shards"]]
        self._starts = [0]
        for n in counts:
            self._starts.append(self._starts[-1] + n)
        self._shard_bucket = [int(s.get("bucket", 0)) for s in self.index["shards"]]
        self._handles: dict[Path, object] = {}
        self._meta: dict[Path, dict] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:  # handles are not picklable; each process opens its own
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    @property
    def fingerprint(self) -> dict:
        return self.index["fingerprint"]

    @property
    def task(self) -> str:
        return self.fingerprint["task"]

    @property
    def text_tokens(self) -> int:
        return int(self.fingerprint["text_tokens"])

    @property
    def shapes(self) -> list[Shape]:
        """The buckets, (pixel frames, height, width) each; one for a cache written without buckets."""
        fp = self.fingerprint
        if "buckets" in fp:
            return [tuple(b) for b in fp["buckets"]]
        return [(int(fp["num_frames"]), int(fp["height"]), int(fp["width"]))]

    @property
    def has_wan(self) -> bool:
        """Whether the Wan latents are cached (stage 1a's teacher input; a resolution stage's cache has none)."""
        return bool(self.fingerprint.get("wan_latents", True))

    def bucket_of(self, i: int) -> int:
        return self._shard_bucket[self._position(i)[0]]

    def bucket_indices(self, indices: Sequence[int]) -> list[list[int]]:
        """`indices` split by bucket: one list per bucket (possibly empty), in the order given."""
        out: list[list[int]] = [[] for _ in self.shapes]
        for i in indices:
            out[self.bucket_of(i)].append(i)
        return out

    def __len__(self) -> int:
        return self._starts[-1]

    def _position(self, i: int) -> tuple[int, int]:
        """(shard number, position in the shard) of clip i."""
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} of a cache of {len(self)}")
        s = bisect.bisect_right(self._starts, i) - 1
        return s, i - self._starts[s]

    def locate(self, i: int) -> tuple[Path, int]:
        """(shard file, position in the shard) of clip i."""
        s, j = self._position(i)
        return self.files[s], j

    def _open(self, file: Path):
        if self._pid != os.getpid():  # a forked worker: the parent's handles are not ours
            self._handles, self._pid = {}, os.getpid()
        if file not in self._handles:
            if not file.is_file():
                raise DCVGError(f"{file}: missing from the cache; rerun dcvg adapt cache to rewrite it")
            self._handles[file] = safe_open(file, framework="pt")
        return self._handles[file]

    def _metadata(self, file: Path) -> dict:
        if file not in self._meta:
            self._meta[file] = json.loads(self._open(file).metadata()[META_KEY])
        return self._meta[file]

    def caption(self, i: int) -> str:
        file, j = self.locate(i)
        return self._metadata(file)["clips"][j]["caption"]

    def __getitem__(self, i: int) -> dict:
        """Clip i: float32 `latent` (Z, k, h, w), `wan_latent` (16, 1 + k | k, H/8, W/8), `text` (text_tokens, D)
        zero-padded, `text_len`, for I2V `condition`, `wan_condition`, `image_embeds`; `caption`, `index`,
        `bucket`. A cache without Wan latents has no `wan_latent` / `wan_condition`."""
        file, j = self.locate(i)
        f = self._open(file)
        keys = ("latent", "wan_latent", "text") + (I2V_KEYS if self.task == "i2v" else ())
        keys = keys if self.has_wan else tuple(k for k in keys if not k.startswith("wan_"))
        item = {key: f.get_tensor(f"{j}.{key}").float() for key in keys}
        item["text_len"] = torch.tensor(item["text"].shape[0])
        item["text"] = pad_text(item["text"], self.text_tokens)  # (text_tokens, D)
        item["caption"] = self._metadata(file)["clips"][j]["caption"]
        item["index"] = i if i >= 0 else i + len(self)
        item["bucket"] = self.bucket_of(i)
        return item

    def _extras(self) -> dict[str, torch.Tensor]:
        path = self.folder / self.index.get("extras", EXTRAS_FILE)
        if not path.is_file():
            raise DCVGError(f"{path}: missing from the cache; rerun dcvg adapt cache to rewrite it")
        with safe_open(path, framework="pt") as f:
            meta = json.loads(f.metadata()[META_KEY])
            tensors = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118 (a safe_open handle is not a dict)
        tensors["_prompts"] = meta["val_prompts"]
        return tensors

    def null_text(self) -> torch.Tensor:
        """(text_tokens, D): the embedding of the empty prompt, the pipelines' unconditional branch."""
        return pad_text(self._extras()["null_text"], self.text_tokens)

    def val_prompts(self) -> list[dict]:
        """One dict per data.val_prompts: `prompt`, `text` (text_tokens, D); I2V adds `image` (3, H, W) in
        [-1, 1] and its CLIP features `image_embeds` (N, D_img)."""
        ex = self._extras()
        out = []
        for i, prompt in enumerate(ex["_prompts"]):
            entry = {"prompt": prompt, "text": pad_text(ex[f"val_text.{i}"], self.text_tokens)}
            if self.task == "i2v":
                entry.update(image=ex[f"val_image.{i}"], image_embeds=ex[f"val_image_embeds.{i}"])
            out.append(entry)
        return out

    def split(self, holdout: int) -> tuple[list[int], list[int]]:
        """(training indices, held-out indices), both sorted: the last `holdout` clips are held out, taken from
        the ends of the buckets in turn (bucket 0's last clip, bucket 1's last, ..., then the ones before)."""
        n = len(self)
        if holdout < 0 or holdout >= n:
            raise DCVGError(
                f"data.holdout={holdout} leaves no training clips of the {n} cached in {self.folder}; lower it "
                "or cache more clips"
            )
        groups = [g[::-1] for g in self.bucket_indices(range(n))]  # each bucket's clips, last first
        held: list[int] = []
        for depth in range(max(map(len, groups))):
            held += [g[depth] for g in groups if depth < len(g)]
        held = sorted(held[:holdout])
        return sorted(set(range(n)) - set(held)), held


class CacheStream(Dataset):
    """Map-style dataset over an infinite index space: position p is clip indices[perm_e[p % n]] of epoch
    e = p // n, with a fresh permutation per epoch seeded by (seed, e). A pure function of (seed, p), so any
    number of workers or ranks reads the same stream and resuming at a step continues exactly."""

    def __init__(self, cache: LatentCache, indices: Sequence[int], seed: int) -> None:
        if not len(indices):
            raise DCVGError(f"{cache.folder}: no clips to read (an empty index list); check data.holdout")
        self.cache, self.indices, self.seed = cache, list(indices), seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:  # the stream is infinite; samplers provide the positions
        return 2**62

    def clip_index(self, position: int) -> int:
        epoch, slot = divmod(position, len(self.indices))
        if epoch != self._epoch:
            self._perm = torch.randperm(len(self.indices), generator=sample_generator(self.seed, epoch))
            self._epoch = epoch
        return self.indices[int(self._perm[slot])]

    def __getitem__(self, position: int) -> dict:
        item = self.cache[self.clip_index(position)]
        item["position"] = position
        return item


def collate(items: list[dict]) -> dict:
    """Tensors stacked ((B, Z, k, h, w), (B, text_tokens, D), ...), numbers as tensors, captions as a list."""
    out = {}
    for key, first in items[0].items():
        values = [it[key] for it in items]
        if torch.is_tensor(first):
            out[key] = torch.stack(values)
        elif isinstance(first, int):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


# Seeds of the bucket schedule and of bucket b's stream (b >= 1; bucket 0 reads with the stage's seed itself,
# so a one-bucket stream is the stream of a cache without buckets).
SCHEDULE_SALT = 1_000_033
BUCKET_SALT = 7_919


class BucketSchedule:
    """Which bucket global micro-batch u draws from, and how many earlier micro-batches drew from it. Runs in
    blocks of M = sum_b ceil(n_b / G) micro-batches (n_b training clips in bucket b, G = world x batch samples
    per global micro-batch): in block k bucket b comes ceil(n_b / G) times, in an order shuffled by (seed, k),
    so a block reads about one epoch of every bucket and a bucket is drawn in proportion to its clips. A pure
    function of (seed, u); with one bucket, (0, u)."""

    def __init__(self, sizes: Sequence[int], group: int, seed: int) -> None:
        if not any(sizes):
            raise DCVGError("no training clips in any bucket; check data.holdout and the cache")
        self.per_block = [-(-n // group) for n in sizes]  # ceil(n_b / G) draws of bucket b per block
        self.block = sum(self.per_block)
        self.seed = seed
        self._k, self._order, self._before = -1, [], []

    def _block(self, k: int) -> tuple[list[int], list[int]]:
        """(bucket of each slot of block k, draws of that bucket earlier in the block)."""
        if k != self._k:
            order = [b for b, m in enumerate(self.per_block) for _ in range(m)]
            if sum(1 for m in self.per_block if m) > 1:
                perm = torch.randperm(len(order), generator=sample_generator(self.seed + SCHEDULE_SALT, k))
                order = [order[int(p)] for p in perm]
            seen = [0] * len(self.per_block)
            before = []
            for b in order:
                before.append(seen[b])
                seen[b] += 1
            self._k, self._order, self._before = k, order, before
        return self._order, self._before

    def __call__(self, u: int) -> tuple[int, int]:
        """(bucket, number of micro-batches before u that drew it)."""
        k, slot = divmod(u, self.block)
        order, before = self._block(k)
        b = order[slot]
        return b, k * self.per_block[b] + before[slot]


class BucketStream(Dataset):
    """Map-style dataset over (bucket, position in the bucket's stream, sample position): bucket b reads its
    training clips as a `CacheStream`; the item's `position` (its noise, sigma and dropout draws) is the
    sample's place in the stage's whole stream."""

    def __init__(self, cache: LatentCache, groups: Sequence[Sequence[int]], seed: int) -> None:
        self.streams = {
            b: CacheStream(cache, g, seed if b == 0 else seed + BUCKET_SALT * b)
            for b, g in enumerate(groups)
            if g
        }

    def __len__(self) -> int:  # the stream is infinite; the sampler provides the keys
        return 2**62

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        bucket, in_bucket, position = key
        stream = self.streams[bucket]
        item = stream.cache[stream.clip_index(in_bucket)]
        item["position"] = position
        return item


class BucketSampler(Sampler[tuple[int, int, int]]):
    """This rank's keys from step `start_step` on: step s, micro-batch m (u = s * accum + m), rank r, slot j
    read bucket b(u) at position (c(u) * world + r) * batch + j of its stream (c(u): earlier draws of b(u)),
    as sample (u * world + r) * batch + j of the stage. Every rank reads the same bucket in a micro-batch.
    With one bucket this is `training.data.StreamSampler`'s sequence. Infinite."""

    def __init__(
        self,
        schedule: BucketSchedule,
        start_step: int,
        batch: int,
        accum: int = 1,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.schedule, self.start_step = schedule, start_step
        self.batch, self.accum, self.rank, self.world = batch, accum, rank, world

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        u = self.start_step * self.accum
        while True:
            b, c = self.schedule(u)
            first, sample = (
                (c * self.world + self.rank) * self.batch,
                (u * self.world + self.rank) * self.batch,
            )
            yield from ((b, first + j, sample + j) for j in range(self.batch))
            u += 1

    def __len__(self) -> int:
        return 2**62


def make_cache_loader(
    cache: LatentCache,
    indices: Sequence[int],
    seed: int,
    start_step: int,
    batch: int,
    accum: int = 1,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
) -> DataLoader:
    """Endless loader of this rank's batches from step `start_step` on, each batch from one bucket
    (`BucketSampler` keys over the clips `indices`)."""
    groups = cache.bucket_indices(indices)
    if not indices:
        raise DCVGError(f"{cache.folder}: no clips to read (an empty index list); check data.holdout")
    return DataLoader(
        BucketStream(cache, groups, seed),
        batch_size=batch,
        sampler=BucketSampler(
            BucketSchedule([len(g) for g in groups], world * batch, seed),
            start_step,
            batch,
            accum,
            rank,
            world,
        ),
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        # Spawned, not forked, as the AE trainer's loader: a forked worker inherits locks other threads of the
        # parent may hold (a decoder's, torch's intra-op pool) and can hang in its first read.
        multiprocessing_context="spawn" if workers > 0 else None,
    )
