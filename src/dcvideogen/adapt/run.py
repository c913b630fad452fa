"""What every stage of one AE-Adapt-V run shares (`RunContext`): config, ranks, the stage's cache and
buckets, logs, the global step and its budget, checkpoints (the adapted state + the interrupted stage's
optimiser state + the stage history + what a resolution stage continues from), sample videos through the
project's pipelines; and `check_run`, the checks that fail before any heavy work (base model, caches,
autoencoder, a resumed run's config).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..errors import DCVGError
from ..models.dcae_v.loading import latent_channels_of
from ..training.config import check_resume_config
from ..training.engine import Dist, TrainLoop, autocast, save_run_state
from ..training.runlog import RunLog
from .config import AdaptConfig, to_dict
from .data import LatentCache, cache_spec, shape_name
from .model import adapted_config, load_base_embedder, load_base_transformer, transformer_folder

logger = logging.getLogger("dcvg.adapt")

# Settings a resumed adaptation run may change: stage budgets and switches, how often it logs, validates and
# checkpoints, the validation prompts and sampler, the hardware layout; the source clips (training reads the
# cache); resolution stages not yet started (added, removed, changed; a started one may change its steps
# only: `check_resolution_stages`). Every other setting shapes the adapted state or the data stream and must
# equal the checkpoint's.
ADAPT_RESUMABLE = (
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "val_every",
    "val_steps",
    "val_guidance",
    "max_bad_steps",
    "tensorboard",
    "precision",
    "parallel",
    "model.gradient_checkpointing",
    "data.source",
    "data.workers",
    "data.val_prompts",
    "data.val_images",
    "flow.val_sigmas",
    "align_embedder.enabled",
    "align_embedder.steps",
    "align_head.enabled",
    "align_head.steps",
    "finetune.enabled",
    "finetune.steps",
    "resolution_stages",
)


class RunContext:
    """What every stage of one run shares: config, ranks, the current stage's cache (`use`), logs, the global
    step and its budget, and the checkpoint writer."""

    def __init__(
        self, cfg: AdaptConfig, d: Dist, run_dir: Path, caches: dict, dims: dict, stop, stop_after, state
    ):
        self.cfg, self.d, self.run_dir, self.dims, self.stop = cfg, d, run_dir, dims, stop
        self.caches = caches  # by folder: data.cache and data.cache/NAME (`open_caches`)
        self.amp = autocast(d, cfg.precision)
        self.log = RunLog(run_dir, cfg.tensorboard) if d.main else None
        self.global_step = int(state["global_step"]) if state else 0
        self.stop_at = None if stop_after is None else self.global_step + stop_after
        self.history: list[dict] = list(state["history"]) if state else []
        self.adapted: dict = dict(state["adapted"]) if state and state["finished"] else {}
        # what the next resolution stage continues from: {"weights" (raw), "opt" (AdamW), "ema"}; stored with the
        # checkpoint of the stage that left it
        self.carry: dict | None = state.get("carry") if state and state["finished"] else None
        if state and not state["finished"]:  # the stages before the interrupted one
            self.adapted = dict(state.get("handed_over", {}))
        self.last_reason = "budget"
        self._pipe = None

    def use(self, stage: str) -> None:
        """Point the context at `stage`'s cache: `cache`, `train_idx`, `val_idx`, `shapes` (its buckets)."""
        self.cache = self.caches[str(cache_spec(self.cfg, stage).folder)]
        self.train_idx, self.val_idx = self.cache.split(self.cfg.data.holdout)
        self.shapes = self.cfg.stage_shapes(stage)
        counts = [len(g) for g in self.cache.bucket_indices(self.train_idx)]
        self.log_text(
            f"stage {stage}: {len(self.train_idx)} training clips in "
            + ", ".join(f"{shape_name(s)} ({n})" for s, n in zip(self.shapes, counts))
            + f", {len(self.val_idx)} held out, from {self.cache.folder}"
        )

    # -- models --
    def base(self):
        return load_base_transformer(self.cfg.model.base)

    def base_embedder(self) -> torch.nn.Conv3d:
        return load_base_embedder(self.cfg.model.base)

    # -- logs --
    def log_metrics(self, metrics: dict, prefix: str = "", step: int | None = None) -> None:
        if self.log is not None:
            self.log.log(self.global_step if step is None else step, metrics)
            logger.info(prefix + " ".join(f"{k.split('/')[-1]} {v:.5g}" for k, v in metrics.items()))

    def log_text(self, message: str) -> None:
        if self.d.main:
            logger.info(message)

    # -- checkpoints --
    def budget_spent(self) -> bool:
        return self.stop_at is not None and self.global_step >= self.stop_at

    def checkpoint(self, stage: str, finished: bool, adapted: dict, phase: dict | None = None) -> None:
        state = {
            "stage": stage,
            "finished": finished,
            "global_step": self.global_step,
            "adapted": adapted,
            "handed_over": self.adapted,
            "history": self.history,
            "config": to_dict(self.cfg),
            **(phase or {"stage_step": 0}),
        }
        if finished and self.carry is not None:
            state["carry"] = self.carry
        save_run_state(
            self.run_dir / "checkpoints", self.global_step, state, self.d, self.cfg.keep_checkpoints
        )

    def loop(self, name, steps, state, train, opt, sched, ema, current) -> TrainLoop:
        def checkpoint(loop: TrainLoop) -> None:
            self.checkpoint(name, False, current(), loop.state())

        def log(step: int, metrics: dict) -> None:
            self.global_step_log(name, step, metrics)

        def on_step() -> None:  # the run's global step moves with the stage's, before its log and checkpoint
            self.global_step += 1

        return TrainLoop(
            name=name,
            steps=steps,
            d=self.d,
            train_model=train,
            opt=opt,
            sched=sched,
            ema=ema,
            stop=self.stop,
            checkpoint=checkpoint,
            log=log,
            log_every=self.cfg.log_every,
            checkpoint_every=self.cfg.checkpoint_every,
            max_bad_steps=self.cfg.max_bad_steps,
            budget=self.budget_spent,
            on_step=on_step,
            state=state,
            where=self.run_dir / "checkpoints",
        )

    def global_step_log(self, name: str, step: int, metrics: dict) -> None:
        if self.log is not None:
            self.log.log(
                self.global_step, {**{f"{name}/{k}": v for k, v in metrics.items()}, f"{name}/step": step}
            )
            logger.info(
                f"{name} step {step} loss {metrics['train/loss']:.5f} lr {metrics['train/lr']:.2e} {metrics['perf/samples_per_s']:.2f} samples/s"
            )

    # -- sample videos --
    @torch.no_grad()
    def samples(self, model, stage: str, step: int) -> None:
        """Videos of the cached validation prompts (fixed seeds) through the project's own pipeline."""
        prompts = self.cache.val_prompts()
        if not prompts:
            return
        from ..video import VideoWriter

        pipe = self._pipeline(model)
        cfg = self.cfg
        num_frames, height, width = self.shapes[0]  # the stage's first bucket
        for i, item in enumerate(prompts):
            call = dict(
                prompt_embeds=item["text"][None].to(self.d.device, model.dtype),
                negative_prompt_embeds=self.cache.null_text()[None].to(self.d.device, model.dtype),
                num_frames=num_frames,
                height=height,
                width=width,
                num_inference_steps=cfg.val_steps,
                guidance_scale=cfg.val_guidance,
                generator=torch.Generator().manual_seed(cfg.seed + i),
                output_type="pt",
            )
            if cfg.model.task == "i2v":  # image (3, H, W) in [-1, 1] and its CLIP features
                image = item["image"][None].add(1).div(2)
                call.update(image=image, image_embeds=item["image_embeds"][None].to(self.d.device))
            with self.amp:
                video = pipe(**call).frames[0]  # (T, 3, H, W) in [0, 1]
            if self.d.main:
                folder = self.run_dir / "samples"
                folder.mkdir(parents=True, exist_ok=True)
                with VideoWriter(folder / f"{stage}-{step:07d}-{i}.mp4", 16.0) as w:
                    w.write(video.permute(1, 0, 2, 3) * 2 - 1)  # (3, T, H, W) in [-1, 1]
                if self.log is not None and self.log.tb is not None:
                    self.log.tb.add_images(
                        f"samples/{i}", video[:: max(1, video.shape[0] // 4)], self.global_step
                    )
        model.train()

    def _pipeline(self, model):
        from diffusers import UniPCMultistepScheduler

        from ..models.dcae_v.loading import load_autoencoder
        from ..pipelines import DCVideoGenImageToVideoPipeline, DCVideoGenPipeline

        if self._pipe is None:
            ae = load_autoencoder(self.cfg.model.autoencoder, device=self.d.device)
            sched = UniPCMultistepScheduler(
                prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=self.cfg.flow.shift
            )
            cls = DCVideoGenPipeline if self.cfg.model.task == "t2v" else DCVideoGenImageToVideoPipeline
            self._pipe = cls(tokenizer=None, text_encoder=None, vae=ae, scheduler=sched, transformer=model)
            self._pipe.set_progress_bar_config(disable=True)
        self._pipe.transformer = model
        return self._pipe


def open_caches(cfg: AdaptConfig, stages: list[str]) -> dict[str, LatentCache]:
    """The caches `stages` read, by folder (data.cache for 1a, 1b, 2; data.cache/NAME per resolution stage)."""
    caches: dict[str, LatentCache] = {}
    for stage in stages:
        folder = str(cache_spec(cfg, stage).folder)
        if folder not in caches:
            caches[folder] = LatentCache(folder)
    return caches


def check_cache(cfg: AdaptConfig, cache: LatentCache, stage: str) -> None:
    """The cache stage `stage` reads must hold its task, buckets and pairing (and Wan latents for stage 1a)."""
    fp = cache.fingerprint
    if fp.get("task") != cfg.model.task:
        raise DCVGError(
            f"{cache.folder}: a {fp.get('task')} cache, but model.task={cfg.model.task}; cache again for {cfg.model.task}"
        )
    want = cfg.stage_shapes(stage)
    if cache.shapes != want:
        r = cfg.resolution_stage(stage)
        if r is None and len(want) == 1 and len(cache.shapes) == 1:  # name the field, as before buckets
            for key, old, new in zip(("num_frames", "height", "width"), cache.shapes[0], want[0]):
                if old != new:
                    raise DCVGError(
                        f"{cache.folder}: cached with data.{key}={old}, config says {new}; run dcvg adapt cache with this config or fix data.{key}"
                    )
        field = f"resolution_stages[{stage}].buckets" if r is not None else "data.buckets"
        raise DCVGError(
            f"{cache.folder}: cached with buckets {', '.join(map(shape_name, cache.shapes))}, {field} says "
            f"{', '.join(map(shape_name, want))}; run dcvg adapt cache with this config"
        )
    if fp.get("pairing") != cfg.data.pairing:
        raise DCVGError(
            f"{cache.folder}: cached with data.pairing={fp.get('pairing')}, config says {cfg.data.pairing}; run dcvg adapt cache with this config or fix data.pairing"
        )
    if stage == "align-embedder" and not cache.has_wan:
        raise DCVGError(
            f"{cache.folder}: holds no Wan latents, which stage 1a needs; cache again with this config"
        )


def check_resolution_stages(saved: dict, cfg: AdaptConfig, state: dict, ckpt: Path) -> None:
    """A resolution stage that the resumed run has started or finished may change its steps only."""
    started = {h["stage"] for h in state["history"]} | {state["stage"]}
    old = {r["name"]: r for r in saved.get("resolution_stages", [])}
    for r in to_dict(cfg)["resolution_stages"]:
        if r["name"] not in started or r["name"] not in old:
            continue
        for key, value in r.items():
            if key != "steps" and old[r["name"]].get(key) != value:
                raise DCVGError(
                    f"{ckpt}: the run was made with resolution stage {r['name']} {key}={old[r['name']].get(key)!r}, "
                    f"this config has {value!r}; a started stage may change its steps only: resume with the run's "
                    "own settings, or give the stage another name"
                )


def check_run(
    cfg: AdaptConfig, caches: dict, stages: list[str], state: dict | None, ckpt: Path | None
) -> dict:
    """Fail before heavy work: the base, the caches of `stages` and a resumed run must fit this config. Returns
    the dims."""

    base_cfg = json.loads((transformer_folder(cfg.model.base) / "config.json").read_text())
    for stage in stages:
        check_cache(cfg, caches[str(cache_spec(cfg, stage).folder)], stage)
    fp = next(iter(caches.values())).fingerprint
    for cache in caches.values():
        if cache.fingerprint.get("latent_channels") != fp.get("latent_channels"):
            raise DCVGError(
                f"{cache.folder}: encoded with a {cache.fingerprint.get('latent_channels')}-channel DC-AE-V, other caches of "
                f"this run with a {fp.get('latent_channels')}-channel one; cache them all with one model.autoencoder"
            )
    z = int(fp["latent_channels"])
    ae_channels = latent_channels_of(cfg.model.autoencoder)
    if ae_channels != z:
        raise DCVGError(
            f"model.autoencoder={cfg.model.autoencoder} has {ae_channels} latent channels but {cfg.data.cache} "
            f"was encoded with a {z}-channel DC-AE-V; cache again with this autoencoder or name the cache's"
        )
    new = adapted_config(base_cfg, z, cfg.model.task, cfg.model.patch_size)  # raises on a T2V/I2V mismatch
    want_base_in = int(fp["wan_channels"]) * (2 if cfg.model.task == "i2v" else 1) + (
        4 if cfg.model.task == "i2v" else 0
    )
    if base_cfg["in_channels"] != want_base_in:
        raise DCVGError(
            f"{cfg.model.base}: the transformer takes {base_cfg['in_channels']} channels but the cache's Wan latents have {fp['wan_channels']}; cache with this base model"
        )
    if state is not None:
        check_resume_config(state.get("config"), cfg, ADAPT_RESUMABLE, ckpt)
        check_resolution_stages(state["config"], cfg, state, ckpt)
    dim = base_cfg["num_attention_heads"] * base_cfg["attention_head_dim"]
    return {"latent_channels": z, "in_channels": new["in_channels"], "dim": dim, "transformer_config": new}
