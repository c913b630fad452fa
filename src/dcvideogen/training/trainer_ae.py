"""DC-AE-V training loop (the official release has none): reconstruction + LPIPS + adversarial losses,
EMA, mixed precision, gradient clipping, warm-up and decay, DDP / FSDP, atomic checkpoints with exact
resume, validation reconstructions. Launch with one process, or with `torchrun` / `accelerate launch`.

Read top to bottom: setup -> state -> resume -> loop (generator step, discriminator step, EMA, logs,
validation, checkpoint) -> export.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from ..errors import DCVGError, first_line
from ..metrics import psnr_per_frame, ssim_per_frame
from ..models.dcae_v import AutoencoderDCV, DCAEVConfig, get_preset
from ..models.dcae_v.loading import load_autoencoder
from ..utils.atomic import atomic_dir
from ..video import VideoWriter, read_video
from .checkpoint import load_checkpoint, resolve_resume
from .config import AE_RESUMABLE, TrainConfig, check_resume_config, save_config, to_dict
from .data import ClipDataset, iter_batches, make_loader, scan_media
from .discriminator import VideoDiscriminator
from .ema import EMA
from .engine import (
    FULL,
    NonFiniteGuard,
    TrainingDiverged,
    TrainingInterrupted,
    all_mean,
    autocast,
    load_optimizer_state,
    lr_factor,
    optimizer_state,
    peak_memory_gib,
    restore_rng,
    rewind_log,
    save_run_state,
    seed_all,
    setup_distributed,
    stop_signals,
    wrap,
)
from .losses import (
    adaptive_weight,
    discriminator_loss,
    generator_adversarial_loss,
    perceptual_loss,
    reconstruction_loss,
)
from .pca_init import blocks_of, fit_lapped_decoder, fit_patch_shortcut
from .runlog import RunLog

logger = logging.getLogger("dcvg.train")

__all__ = ["TrainingDiverged", "TrainingInterrupted", "load_val_clips", "train_ae", "validate"]


# ---- small helpers --------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig) -> AutoencoderDCV:
    try:
        arch = get_preset(cfg.model.preset, **cfg.model.arch)
    except (TypeError, ValueError) as e:  # an unknown or invalid model.arch field: one line, nothing written
        raise DCVGError(
            f"model.arch {dict(cfg.model.arch)}: {e}; fix it in the config or the override"
        ) from None
    if cfg.model.init_from:
        model = load_autoencoder(cfg.model.init_from).float()
        if not carries_over(model.arch, arch):
            raise DCVGError(
                f"model.init_from={cfg.model.init_from} is a {model.arch.name} with widths "
                f"{list(model.arch.block_out_channels)}, not the configured {arch.name}; fix model.preset/arch"
            )
        if model.arch.luma_filter_width == arch.luma_filter_width:
            return model
        grown = AutoencoderDCV.from_arch(arch.replace(scaling_factor=model.arch.scaling_factor))
        grown.load_state_dict(model.state_dict(), strict=False)  # all but the new filter (zero output)
        return grown
    return AutoencoderDCV.from_arch(arch)


def carries_over(loaded: DCAEVConfig, configured: DCAEVConfig) -> bool:
    """Whether the weights of a `loaded` model start one of `configured`: the same architecture (the scaling
    factor aside), or one that only adds the luma filter (the identity until trained)."""
    a, b = loaded.replace(scaling_factor=1.0), configured.replace(scaling_factor=1.0)
    if not loaded.luma_filter_width:
        b = b.replace(luma_filter_width=0, luma_filter_blocks=loaded.luma_filter_blocks)
    return a == b


def decoder_last_layer(model: AutoencoderDCV) -> torch.Tensor:
    """The weight of the decoder's last trained layer (the adaptive GAN weight's reference, VQGAN): the luma
    filter's output conv when it has one and trains, else the decoder's output conv."""
    f = model.decoder.luma_filter
    if f is not None and f.conv_out.weight.requires_grad:
        return f.conv_out.weight
    return model.decoder.conv_out.weight


def freeze_all_but(model: AutoencoderDCV, prefixes: list[str]) -> int:
    """Freeze every parameter whose name starts with none of `prefixes` (empty: freeze nothing); the number
    of parameters left to train. A prefix that names no parameter is refused."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            raise DCVGError(
                f"model.trainable: {prefix!r} names no parameter of this model (its parts: "
                f"{sorted({n.rsplit('.', 2)[0] for n in names})[:6]} ...); fix the prefix"
            )
    for n, p in model.named_parameters():
        p.requires_grad_(not prefixes or any(n.startswith(q) for q in prefixes))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fit_pca(model: AutoencoderDCV, files: list, cfg: TrainConfig, main: bool) -> None:
    """The patch shortcut fitted to `cfg.model.pca_clips` clips of the data stream (seed + 1: other clips
    than the first training steps'), before step 0."""
    if not model.arch.patch_shortcut:
        raise DCVGError(
            f"model.pca_clips={cfg.model.pca_clips} fits the patch shortcut, which this model lacks; "
            "set model.arch.patch_shortcut: true or model.pca_clips: 0"
        )
    t0 = time.time()
    data = ClipDataset(files, cfg.data, cfg.seed + 1)
    f, t = model.spatial_compression_ratio, model.temporal_compression_ratio
    clips = [data[i]["video"][None] for i in range(cfg.model.pca_clips)]
    rows = torch.cat([blocks_of(clip, f, t) for clip in clips])
    if rows.shape[0] <= model.arch.latent_channels:
        raise DCVGError(
            f"model.pca_clips={cfg.model.pca_clips}: {rows.shape[0]} pixel blocks of {t}x{f}x{f} for "
            f"{model.arch.latent_channels} components; raise model.pca_clips (or data.size / data.num_frames)"
        )
    fit_patch_shortcut(model, rows)
    blocks, k = rows.shape[0], model.arch.patch_shortcut_kernel
    del rows
    if k > 1:  # the decoder reads the neighbours' latents too: refit it by least squares
        fit_lapped_decoder(model, clips)
    if main:
        lapped = f", decoder from {k}x{k} neighbourhoods" if k > 1 else ""
        logger.info(
            f"patch shortcut: PCA of {blocks} blocks of {cfg.model.pca_clips} clips{lapped} ({time.time() - t0:.0f} s)"
        )


def is_res_block(m: torch.nn.Module) -> bool:
    return type(m).__name__ == "ResBlock3d"


def read_resume(resume: str | None, run_dir: Path, cfg: TrainConfig) -> tuple[Path | None, dict | None]:
    """The checkpoint to resume from and its state, after checking that its config fits `cfg`."""
    path = resolve_resume(resume, run_dir)
    if path is None:
        return None, None
    state = load_checkpoint(path)
    check_resume_config(state.get("config"), cfg, AE_RESUMABLE, path)
    return path, state


@contextlib.contextmanager
def state_of(path: Path):
    """A checkpoint's state that does not fit the model ends in one line, not a state-dict traceback."""
    try:
        yield
    except DCVGError:
        raise
    except (RuntimeError, KeyError, ValueError) as e:
        raise DCVGError(
            f"{path}: does not fit this model and optimiser ({first_line(e)}); resume with the run's own config "
            "or start a new --out"
        ) from e


# ---- validation -----------------------------------------------------------------------------------------


def load_val_clips(cfg: TrainConfig, f: int) -> list[tuple[str, torch.Tensor, float]]:
    clips = []
    for path in cfg.data.val_clips:
        v = read_video(path, max_frames=cfg.data.val_frames)
        x = v.frames  # (3, T, H, W)
        if cfg.data.val_size:
            from .data import random_crop_resize

            x = random_crop_resize(x, cfg.data.val_size, 1.0, 0.5, 0.5)
        h, w = x.shape[-2] // f * f or f, x.shape[-1] // f * f or f
        clips.append((Path(path).stem, x[:, :, :h, :w].contiguous(), v.fps))
    return clips


@torch.no_grad()
def validate(model: AutoencoderDCV, clips, out_dir: Path, step: int) -> dict[str, float]:
    """Reconstruct each validation clip; write input | reconstruction mp4s; PSNR/SSIM per clip."""
    metrics: dict[str, float] = {}
    model.eval()
    for name, x, fps in clips:
        xb = x[None].to(model.device, model.dtype)
        y = model(xb).sample.float().clamp(-1, 1).cpu()[0]
        metrics[f"val/{name}/psnr"] = psnr_per_frame(y, x).mean().item()
        if min(x.shape[-2:]) >= 11:
            metrics[f"val/{name}/ssim"] = ssim_per_frame(y, x).mean().item()
        out_dir.mkdir(parents=True, exist_ok=True)
        with VideoWriter(out_dir / f"step-{step:08d}-{name}.mp4", fps) as w:
            w.write(torch.cat([x, y], dim=-1))
    return metrics


# ---- the loop -------------------------------------------------------------------------------------------


def train_ae(
    cfg: TrainConfig,
    data_dir: str | Path,
    run_dir: str | Path,
    resume: str | None = None,
    stop_after: int | None = None,
) -> Path:
    """Train to cfg.steps (or for at most `stop_after` steps in this call, then checkpoint and return);
    returns the exported model folder (EMA weights when EMA is on). Nothing is written before the inputs are
    checked (data, the checkpoint and its config, the models). A stop signal (SIGINT, SIGTERM) finishes the
    step, checkpoints and raises `TrainingInterrupted`. The EMA, when on, starts at step 0."""
    d = setup_distributed()
    run_dir = Path(run_dir)
    files, report = scan_media(data_dir, cfg.data)
    ckpt_path, state = read_resume(resume, run_dir, cfg)
    seed_all(cfg.seed)  # the same initial weights on every rank
    if d.main:
        logger.info(
            f"data {data_dir}: {report.videos} videos, {report.images} images; skipped {report.unreadable} "
            f"unreadable, {report.too_short} too short, {report.excluded} excluded"
        )

    model = build_model(cfg)
    if state is None and not cfg.model.init_from and cfg.model.pca_clips > 0:
        fit_pca(model, files, cfg, d.main)  # the same on every rank: a pure function of the data and seed
    trained = freeze_all_but(model, cfg.model.trainable)
    if (
        cfg.loss.gan_weight > 0
        and cfg.loss.adaptive_gan_weight
        and not decoder_last_layer(model).requires_grad
    ):
        raise DCVGError(
            f"model.trainable={cfg.model.trainable} freezes the decoder's last layer, which loss.adaptive_gan_weight "
            "weighs the GAN loss at; train it too (decoder.conv_out.) or set loss.adaptive_gan_weight: false"
        )
    if d.main and cfg.model.trainable:
        logger.info(f"training {trained:,} parameters ({', '.join(cfg.model.trainable)}); the rest is frozen")
    model = model.to(d.device)
    if cfg.model.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    arch = model.arch
    eval_model = AutoencoderDCV.from_arch(arch).to(d.device) if (d.main and cfg.data.val_clips) else None
    lpips = None
    if cfg.loss.lpips_weight > 0:
        from ..metrics.lpips import LPIPS

        lpips = (
            LPIPS(
                net=cfg.loss.lpips_net,
                backbone_weights=cfg.loss.lpips_backbone,
                linear_weights=cfg.loss.lpips_linear,
            )
            .to(d.device)
            .eval()
        )
    use_gan = cfg.loss.gan_weight > 0
    disc = (
        VideoDiscriminator(cfg.loss.disc_channels, cfg.loss.disc_max_channels).to(d.device)
        if use_gan
        else None
    )

    train_model = wrap(model, cfg.parallel, d, is_res_block)
    ema = (
        EMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    )  # after wrapping: same sharding
    opt = torch.optim.AdamW(
        [p for p in train_model.parameters() if p.requires_grad],
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        weight_decay=cfg.optim.weight_decay,
    )
    o = cfg.optim
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, o.warmup_steps, cfg.steps, o.decay, o.min_lr_ratio)
    )
    if use_gan:
        train_disc = wrap(disc, cfg.parallel, d)
        opt_d = torch.optim.AdamW(train_disc.parameters(), lr=cfg.loss.disc_lr, betas=cfg.optim.betas)
    counters = {"bad_steps": 0, "bad_in_row": 0, "skipped_clips": 0, "samples": 0}

    # ---- resume -------------------------------------------------------------------------------------------
    step = 0
    if state is not None:
        with state_of(ckpt_path):
            step = int(state["step"])
            set_model_state_dict(train_model, state["model"], options=FULL)
            load_optimizer_state(train_model, opt, state["opt"])
            sched.load_state_dict(state["sched"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            if use_gan:
                set_model_state_dict(train_disc, state["disc"], options=FULL)
                load_optimizer_state(train_disc, opt_d, state["opt_d"])
            counters.update({k: int(v) for k, v in state["counters"].items()})
        restore_rng(state["rng"], d)
    val_clips = load_val_clips(cfg, arch.spatial_compression) if eval_model is not None else []

    # ---- the run folder: written only now that every input is checked --------------------------------------
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if state is not None:
            rewind_log(run_dir / "log.jsonl", step)  # a kill after the checkpoint logged later steps
            logger.info(f"resumed from {ckpt_path} at step {step}")

    def checkpoint() -> Path | None:
        state = {
            "model": get_model_state_dict(train_model, options=FULL),
            "opt": optimizer_state(train_model, opt),
            "sched": sched.state_dict(),
            "ema": ema.state_dict() if ema is not None else {},
            "counters": dict(counters),
            "config": to_dict(cfg),
        }
        if use_gan:
            state["disc"] = get_model_state_dict(train_disc, options=FULL)
            state["opt_d"] = optimizer_state(train_disc, opt_d)
        return save_run_state(run_dir / "checkpoints", step, state, d, keep=cfg.keep_checkpoints)

    def full_weights() -> dict[str, torch.Tensor]:
        """Unsharded weights to validate and export: the EMA when on. Call on every rank."""
        return ema.state_dict() if ema is not None else get_model_state_dict(train_model, options=FULL)

    log = RunLog(run_dir, cfg.tensorboard) if d.main else None
    loader = iter_batches(
        make_loader(files, cfg.data, cfg.seed, step, cfg.batch_size, cfg.grad_accum, d.rank, d.world)
    )
    amp = autocast(d, cfg.precision)
    guard = NonFiniteGuard(cfg.max_bad_steps, counters)
    last_layer = decoder_last_layer(model)
    t_last, samples_last = time.time(), counters["samples"]
    last_step = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    last_checkpoint = ckpt_path

    signals = contextlib.ExitStack()
    stop = signals.enter_context(stop_signals())
    try:
        while step < last_step and not stop.requested:
            train_model.train()
            gan_on = use_gan and step >= cfg.loss.gan_start_step
            sums = {"loss": 0.0, "rec": 0.0, "lpips": 0.0, "gan_g": 0.0, "gan_w": 0.0, "disc": 0.0}
            finite = torch.ones((), device=d.device)
            batches = []
            # -- generator (autoencoder) step, with gradient accumulation --
            if use_gan:
                disc.requires_grad_(
                    False
                )  # the generator's adversarial loss must not train the discriminator
            for micro in range(cfg.grad_accum):
                batch = next(loader)
                counters["skipped_clips"] += int(batch["skipped"])
                x = batch["video"].to(d.device, non_blocking=True)  # (B, 3, T, S, S)
                last_micro = micro == cfg.grad_accum - 1
                no_sync = (
                    train_model.no_sync() if (not last_micro and hasattr(train_model, "no_sync")) else None
                )
                with no_sync or contextlib.nullcontext():
                    with amp:
                        x_hat = train_model(x).sample
                        rec = reconstruction_loss(x_hat, x, cfg.loss.reconstruction)
                        loss = cfg.loss.reconstruction_weight * rec
                        if lpips is not None:
                            lp = perceptual_loss(lpips, x_hat, x)
                            loss = loss + cfg.loss.lpips_weight * lp
                            sums["lpips"] += lp.item() / cfg.grad_accum
                        if gan_on:
                            g_adv = generator_adversarial_loss(disc(x_hat), cfg.loss.gan_loss)
                            w = torch.ones((), device=d.device)
                            if cfg.loss.adaptive_gan_weight and cfg.parallel != "fsdp":
                                w = all_mean(adaptive_weight(loss, g_adv, last_layer), d)
                            loss = loss + cfg.loss.gan_weight * w * g_adv
                            sums["gan_g"] += g_adv.item() / cfg.grad_accum
                            sums["gan_w"] += w.item() / cfg.grad_accum
                    if not torch.isfinite(loss):
                        finite.zero_()
                    (loss / cfg.grad_accum).backward()
                sums["loss"] += loss.item() / cfg.grad_accum
                sums["rec"] += rec.item() / cfg.grad_accum
                batches.append((x, x_hat.detach()))
            if not guard.all_finite(finite, d):  # skip the whole step on every rank
                opt.zero_grad(set_to_none=True)
                guard.skipped(step, run_dir / "checkpoints", d)
                continue
            guard.ok()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                train_model.parameters(), cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
            )
            lr = opt.param_groups[0]["lr"]  # this step's (the scheduler moves it on below)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if ema is not None:
                ema.update(model)

            # -- discriminator step on the same clips --
            if gan_on:
                disc.requires_grad_(True)
                for x, x_hat in batches:
                    with amp:
                        d_loss = discriminator_loss(train_disc(x), train_disc(x_hat), cfg.loss.gan_loss)
                    (d_loss / len(batches)).backward()
                    sums["disc"] += d_loss.item() / len(batches)
                torch.nn.utils.clip_grad_norm_(train_disc.parameters(), 10.0)
                opt_d.step()
                opt_d.zero_grad(set_to_none=True)

            step += 1
            counters["samples"] += cfg.batch_size * cfg.grad_accum * d.world

            # -- logs, validation, checkpoints --
            log_now = step % cfg.log_every == 0 or step == cfg.steps
            if log_now:  # clips skipped at run time, summed over ranks (a collective: every rank joins)
                skipped = int(
                    all_mean(torch.tensor(float(counters["skipped_clips"]), device=d.device), d) * d.world
                )
            if d.main and log_now:
                now = time.time()
                clips_per_s = (counters["samples"] - samples_last) / max(now - t_last, 1e-9)
                t_last, samples_last = now, counters["samples"]
                metrics = {f"train/{k}": v for k, v in sums.items()}
                metrics.update(
                    {
                        "train/lr": lr,
                        "train/grad_norm": float(grad_norm),
                        "perf/clips_per_s": clips_per_s,
                        "perf/peak_mem_gib": peak_memory_gib(d.device),
                        "data/skipped_clips": skipped,
                        "data/unreadable_files": report.unreadable,
                        "data/too_short_files": report.too_short,
                        "train/bad_steps": counters["bad_steps"],
                    }
                )
                log.log(step, metrics)
                logger.info(
                    f"step {step}/{cfg.steps} loss {sums['loss']:.4f} rec {sums['rec']:.4f} "
                    f"lr {metrics['train/lr']:.2e} {clips_per_s:.2f} clips/s"
                )
            if cfg.data.val_clips and (step % cfg.val_every == 0 or step == cfg.steps):
                weights = full_weights()  # every rank joins: gathering shards is collective under FSDP
                if d.main:
                    eval_model.load_state_dict(weights)
                    log.log(step, validate(eval_model, val_clips, run_dir / "val", step))
            if step % cfg.checkpoint_every == 0:
                last_checkpoint = checkpoint()
        if step % cfg.checkpoint_every != 0:
            last_checkpoint = checkpoint()  # at exit: the end of the run, or a stop signal
    finally:
        signals.close()
        if log is not None:
            log.close()
    if stop.requested and step < cfg.steps:
        d.barrier()
        raise TrainingInterrupted(stop.signal, f"at step {step} of {cfg.steps}, checkpoint {last_checkpoint}")

    # ---- export ---------------------------------------------------------------------------------------------
    out = run_dir / "model"
    weights = full_weights()
    if d.main:
        final = AutoencoderDCV.from_arch(arch)
        final.load_state_dict(weights)
        with atomic_dir(out, overwrite=True) as tmp:
            final.save_pretrained(tmp)
        logger.info(f"model written to {out}" + (" (EMA weights)" if ema is not None else ""))
    d.barrier()
    return out
