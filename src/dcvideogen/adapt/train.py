"""AE-Adapt-V training (DC-VideoGen Sec. 3.3, Fig. 7, Table 8): stage 1a -> 1b -> 2 on the shared engine.

    1a align-embedder  Eq. 2 on the cached latents: the exact least-squares solve (default) or AdamW
    1b align-head      embedder + head on the flow-matching loss, DiT blocks frozen; budget or plateau
    2  finetune        LoRA (or full fine-tuning) + embedder + head, end to end
    resolution stages  stage 2 continued on larger buckets (Table 8: 720p, 1080p, 2160p): the same LoRA, and
                       (optimizer: continue) stage 2's AdamW state and EMA, from its raw weights

Every stage trains on its buckets, each batch from one (`data.BucketSampler`).

Each stage starts from the base transformer plus the "adapted state" the previous stage handed over
(`model.py`), so a stage boundary and a resume go through the same path. Checkpoints hold the adapted
state, the optimiser, scheduler, EMA, counters, plateau state, the stage history, every rank's RNG; the
data position is the stage's step, and the noise, sigma and caption dropout of every sample are drawn from
a generator seeded by (seed, stage, sample position), so a resumed run repeats the uninterrupted one bit
for bit and 2 ranks match 1 with the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import torch

from ..errors import DCVGError
from ..parallel.context import context_layout, enable_context_parallel
from ..pipelines.conditioning import first_frames_mask
from ..training.checkpoint import load_checkpoint, resolve_resume
from ..training.data import iter_batches, sample_generator
from ..training.ema import EMA, full_tensor
from ..training.engine import (
    Dist,
    TrainingInterrupted,
    all_sum,
    load_optimizer_state,
    lr_factor,
    optimizer_state,
    restore_rng,
    rewind_log,
    seed_all,
    setup_distributed,
    stop_signals,
    unwrap,
    wrap,
)
from ..training.runlog import plot_metric
from ..utils.atomic import atomic_file
from . import align, flow
from .config import STAGES, AdaptConfig, save_config
from .data import make_cache_loader
from .model import (
    add_lora,
    build_adapted_transformer,
    count_parameters,
    finetune_params,
    frozen_fingerprint,
    head_alignment_params,
    is_adapted,
    is_wan_block,
    load_adapted_state,
    lora_spec_from_config,
    set_trainable,
    xavier_embedder_,
)
from .pairing import TEMPORAL_FACTOR, teacher_latent_slice
from .result import AdaptedResult, write_adapted
from .run import RunContext, check_run, open_caches

logger = logging.getLogger("dcvg.adapt")


# ---- inputs of one batch ------------------------------------------------------------------------------------


def stage_sample_generator(seed: int, stage: int, position: int) -> torch.Generator:
    """The generator of one training sample of a stage: its noise, sigma and caption dropout depend on nothing
    else (not the rank count, not an interruption)."""
    return sample_generator(seed * 31 + stage, position)


def wan_first_frame_mask(b: int, latent_frames: int, h: int, w: int) -> torch.Tensor:
    """Wan-2.1-I2V's mask on a 1 + 4k clip: the first pixel frame (taken 4 times) is given, so latent frame 0
    is 1 on all 4 channels and the rest 0. (B, 4, T', h, w)."""
    mask = torch.zeros(b, 4, latent_frames, h, w)
    mask[:, :, 0] = 1
    return mask


def student_input(batch: dict, x: torch.Tensor, task: str) -> torch.Tensor:
    """The adapted transformer's input: x (B, Z, T', h, w), or for I2V cat(x, mask 4, condition Z) (B, 2Z+4, ...)."""
    if task == "t2v":
        return x
    b, _, t, h, w = x.shape
    mask = first_frames_mask(b, TEMPORAL_FACTOR * t, h, w, device=x.device, dtype=x.dtype)  # (B, 4, T', h, w)
    return torch.cat([x, mask, batch["condition"].to(x)], dim=1)


def teacher_input(batch: dict, task: str) -> torch.Tensor:
    """The base embedder's input on Wan latents (full length; the pairing slice is applied to its tokens)."""
    z = batch["wan_latent"]  # (B, 16, T_wan, H/8, W/8)
    if task == "t2v":
        return z
    b, _, t, h, w = z.shape
    return torch.cat([z, wan_first_frame_mask(b, t, h, w).to(z), batch["wan_condition"].to(z)], dim=1)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---- stage 1a -----------------------------------------------------------------------------------------------


def alignment_pair(batch, base_embedder, student_patch, cfg: AdaptConfig):
    """(student input (B, C, T', h, w), Eq. 2 target (B, D, t, h, w)) of a batch."""
    x = student_input(batch, batch["latent"], cfg.model.task)
    grid = align.token_grid(tuple(x.shape[2:]), student_patch)
    z = teacher_input(batch, cfg.model.task)
    z = z[:, :, teacher_latent_slice(cfg.data.pairing)]  # (B, C_base, T', H/8, W/8): paired in time
    return x, align.pooled_base_tokens(base_embedder, z, grid)


def new_embedder(in_channels: int, dim: int, patch, seed: int) -> torch.nn.Conv3d:
    """The new patch embedder at its random init (the same as in `build_adapted_transformer`)."""
    conv = torch.nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch)
    return xavier_embedder_(conv, torch.Generator().manual_seed(seed))


@torch.no_grad()
def alignment_sums(cache, indices, base_embedder, embedder, cfg, d: Dist) -> align.LeastSquaresSums:
    """G and R of Eq. 2 over `indices` (this rank's share, on its device, then all-reduced)."""
    patch = tuple(embedder.kernel_size)
    sums = align.LeastSquaresSums(embedder.weight[0].numel(), embedder.out_channels, d.device)
    base_embedder = base_embedder.to(d.device)
    for i in indices[d.rank :: d.world]:
        batch = to_device({k: v[None] if torch.is_tensor(v) else v for k, v in cache[i].items()}, d.device)
        x, target = alignment_pair(batch, base_embedder, patch, cfg)
        sums.add(align.patch_rows(x.double(), patch), align.token_rows(target))
    for t in sums.tensors():
        all_sum(t, d)
    return sums


def heldout_mse(sums: align.LeastSquaresSums, embedder: torch.nn.Conv3d) -> float:
    return sums.loss(*align.embedder_weight_rows(embedder))


def run_align_embedder(cfg: AdaptConfig, ctx: RunContext, state: dict | None) -> dict:
    """Stage 1a. Returns the adapted state {patch_embedding.weight, .bias} (None when stopped mid-way)."""
    a, d, dims = cfg.align_embedder, ctx.d, ctx.dims
    base_embedder = ctx.base_embedder()
    random_init = new_embedder(dims["in_channels"], dims["dim"], cfg.model.patch_size, cfg.seed)
    t0 = time.time()
    train_sums = alignment_sums(ctx.cache, ctx.train_idx, base_embedder, random_init, cfg, d)
    exact = new_embedder(dims["in_channels"], dims["dim"], cfg.model.patch_size, cfg.seed)
    align.set_embedder(exact, *train_sums.solve(a.ridge))
    metrics = {
        "align/exact_solve_s": time.time() - t0,
        "align/train_mse_exact": heldout_mse(train_sums, exact),
    }
    held = alignment_sums(ctx.cache, ctx.val_idx, base_embedder, random_init, cfg, d) if ctx.val_idx else None
    if held is not None:
        metrics["align/heldout_mse_random"] = heldout_mse(held, random_init)
        metrics["align/heldout_mse_exact"] = heldout_mse(held, exact)
    embedder = exact
    if a.method == "adamw":
        if state is not None:
            align.set_embedder(
                random_init,
                state["adapted"]["patch_embedding.weight"].flatten(1),
                state["adapted"]["patch_embedding.bias"],
            )
        embedder = run_align_adamw(cfg, ctx, random_init, base_embedder, state)
        if embedder is None:  # stopped mid-stage; checkpointed
            return None
        metrics["align/train_mse_adamw"] = heldout_mse(train_sums, embedder)
        if held is not None:
            metrics["align/heldout_mse_adamw"] = heldout_mse(held, embedder)
    ctx.log_metrics(metrics, f"stage align-embedder ({a.method}): ")
    return embedder_state(embedder)


def embedder_state(embedder: torch.nn.Conv3d) -> dict:
    e = unwrap(embedder)
    return {
        "patch_embedding.weight": e.weight.detach().float().cpu().clone(),
        "patch_embedding.bias": e.bias.detach().float().cpu().clone(),
    }


def run_align_adamw(cfg: AdaptConfig, ctx: RunContext, embedder, base_embedder, state):
    """The paper's loop for Eq. 2: AdamW on the new embedder alone, batches from the cache."""
    a, d = cfg.align_embedder, ctx.d
    embedder, base_embedder = embedder.to(d.device), base_embedder.to(d.device)
    train = wrap(embedder, "ddp", d)  # a few thousand weights: DDP even under parallel=fsdp
    opt = torch.optim.AdamW(train.parameters(), lr=a.lr, betas=a.betas, weight_decay=a.weight_decay)
    loop = ctx.loop(
        "align-embedder", a.steps, state, train, opt, None, None, lambda: embedder_state(embedder)
    )
    loader = iter_batches(
        make_cache_loader(
            ctx.cache, ctx.train_idx, cfg.seed, loop.step, a.batch_size, 1, d.rank, d.world, cfg.data.workers
        )
    )
    while loop.running():
        batch = to_device(next(loader), d.device)
        x, target = alignment_pair(batch, base_embedder, tuple(embedder.kernel_size), cfg)
        loop.backward(align.alignment_loss(train(x), target), a.batch_size)
        loop.step_optimizer()
    ctx.last_reason = loop.finish_reason
    return embedder.cpu() if loop.finished else None


# ---- stages 1b and 2 ----------------------------------------------------------------------------------------


def diffusion_loss(model, batch: dict, null_text: torch.Tensor, cfg: AdaptConfig, stage: int) -> torch.Tensor:
    """Flow-matching loss of one micro-batch (FACTS section 3) with caption dropout to the unconditional
    embedding; every random draw comes from the sample's own generator."""
    x0 = batch["latent"]  # (B, Z, T', h, w)
    f = cfg.flow
    sigmas, noises, drops = [], [], []
    for pos in batch["position"].tolist():
        g = stage_sample_generator(cfg.seed, stage, pos)
        sigmas.append(flow.sample_sigma(g, f.sampling, f.logit_mean, f.logit_std, f.shift))
        noises.append(torch.randn(x0.shape[1:], generator=g))
        drops.append(torch.rand((), generator=g) < cfg.data.caption_dropout)
    sigma = torch.stack(sigmas).to(x0.device)  # (B,)
    noise = torch.stack(noises).to(x0)  # (B, Z, T', h, w)
    drop = torch.stack(drops).to(x0.device).view(-1, 1, 1)  # (B, 1, 1)
    text = torch.where(drop, null_text.to(batch["text"]), batch["text"])  # (B, L, D_text)
    return predict_and_score(model, batch, x0, noise, sigma, text, cfg)


def predict_and_score(model, batch, x0, noise, sigma, text, cfg: AdaptConfig) -> torch.Tensor:
    x_t = flow.noisy_latent(x0, noise, sigma)
    extra = {"encoder_hidden_states_image": batch["image_embeds"]} if "image_embeds" in batch else {}
    pred = model(
        hidden_states=student_input(batch, x_t, cfg.model.task),
        timestep=flow.timestep_of(sigma),
        encoder_hidden_states=text,
        return_dict=False,
        **extra,
    )[0]
    return flow.flow_loss(pred, flow.velocity_target(x0, noise))


@torch.no_grad()
def validation_loss(model, cfg: AdaptConfig, ctx: RunContext) -> dict[str, float]:
    """Held-out flow-matching loss on a fixed sigma grid with fixed noise and no dropout: comparable across
    stages and runs. Every rank computes it (forwards are collective under FSDP)."""
    model.eval()
    out = {}
    for k, s in enumerate(cfg.flow.val_sigmas):
        losses = []
        for i in ctx.val_idx:
            batch = to_device(
                {n: v[None] if torch.is_tensor(v) else v for n, v in ctx.cache[i].items()}, ctx.d.device
            )
            g = torch.Generator().manual_seed(cfg.seed * 7_919 + i * 101 + k)
            noise = torch.randn(batch["latent"].shape[1:], generator=g)[None].to(batch["latent"])
            sigma = torch.full((1,), float(s), device=ctx.d.device)
            with ctx.amp:
                loss = predict_and_score(model, batch, batch["latent"], noise, sigma, batch["text"], cfg)
            losses.append(loss.item())
        out[f"val/loss_sigma_{s:g}"] = sum(losses) / len(losses)
    out["val/loss"] = sum(out.values()) / len(out)
    return out


def plateau_update(
    p: dict, loss: float, step: int, smoothing: float, tolerance: float, patience: int
) -> bool:
    """Stage 1b's stop rule on the EMA-smoothed loss; `p` (smoothed, best, best_step) is updated in place.
    True when the smoothed loss has not improved by `tolerance` (relative) for `patience` steps."""
    p["smoothed"] = loss if p.get("smoothed") is None else smoothing * p["smoothed"] + (1 - smoothing) * loss
    if p.get("best") is None or p["smoothed"] < p["best"] * (1 - tolerance):
        p["best"], p["best_step"] = p["smoothed"], step
    return patience > 0 and step - p["best_step"] >= patience


def continue_optimizer(train, opt: torch.optim.Optimizer, saved: dict) -> None:
    """Load an earlier stage's AdamW state (moments and step counts) into `opt`, which keeps its own
    hyper-parameters (lr, betas, weight decay, its scheduler's initial_lr)."""
    own = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    load_optimizer_state(train, opt, saved)
    for group, hyper in zip(opt.param_groups, own, strict=True):
        for key in [k for k in group if k != "params"]:
            del group[key]
        group.update(hyper)


def run_diffusion_stage(
    name: str, cfg: AdaptConfig, ctx: RunContext, adapted: dict, state: dict | None
) -> dict:
    """Stage 1b (align-head), 2 (finetune) or a resolution stage. Returns the adapted state at its end (None when
    stopped). A resolution stage starts from `ctx.carry` when the stage before left one (raw weights, AdamW state
    and EMA), else from `adapted` with a fresh optimiser; a stage followed by a resolution stage leaves one."""
    d, stage = ctx.d, cfg.stage_index(name)
    s = cfg.stage_settings(name)
    resolution = cfg.resolution_stage(name)
    full = name != "align-head" and s.full_finetune
    model = build_adapted_transformer(
        ctx.base(), ctx.dims["latent_channels"], cfg.model.task, cfg.model.patch_size, cfg.seed
    )
    if name != "align-head" and not full:
        with torch.random.fork_rng(devices=[]):  # LoRA A's init: the same on every rank, run and resume
            torch.manual_seed(cfg.seed + stage)
            add_lora(model, lora_spec_from_config(model, s))
    carry = ctx.carry if resolution is not None and state is None else None
    if resolution is not None and state is None and carry is None:
        ctx.log_text(
            f"stage {name}: nothing to continue from (the stage before left no optimiser state); fresh AdamW"
        )
    load_adapted_state(
        model, state["adapted"] if state is not None else carry["weights"] if carry else adapted
    )
    pick = (
        head_alignment_params(s.train_embedder, s.train_modulation)
        if name == "align-head"
        else finetune_params(full)
    )
    set_trainable(model, pick)
    ctx.log_text(
        f"stage {name}: {count_parameters(model) / 1e6:.3f}M trainable of {count_parameters(model, False) / 1e6:.3f}M parameters"
    )
    if cfg.model.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.to(d.device)
    enable_context_parallel(model, cfg.context_parallel)  # no-op for 1
    train = wrap(model, cfg.parallel, d, is_wan_block)
    frozen = frozen_fingerprint(unwrap(train))
    opt = torch.optim.AdamW(
        [p for p in train.parameters() if p.requires_grad],
        lr=s.lr,
        betas=s.betas,
        weight_decay=s.weight_decay,
    )
    warmup = getattr(s, "warmup_steps", 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, warmup, s.steps))
    if carry is not None and resolution.optimizer == "continue":
        continue_optimizer(train, opt, carry["opt"])
    ema = EMA(model, s.ema_decay, trainable_only=True) if getattr(s, "ema_decay", 0) > 0 else None
    if ema is not None and carry is not None and carry.get("ema"):
        ema.load_state_dict(carry["ema"])
    ctx.carry = None  # consumed: the optimiser may now change its tensors in place

    def current() -> dict:  # on every rank (gathering FSDP shards is collective), adapted weights only
        sd = unwrap(train).state_dict()
        return {k: full_tensor(v).float().cpu().clone() for k, v in sd.items() if is_adapted(k, full)}

    loop = ctx.loop(name, s.steps, state, train, opt, sched, ema, current)
    null_text = ctx.cache.null_text().to(d.device)
    dp = context_layout(cfg.context_parallel, d.rank, d.world)
    loader = iter_batches(
        make_cache_loader(
            ctx.cache,
            ctx.train_idx,
            cfg.seed + stage,
            loop.step,
            s.batch_size,
            s.grad_accum,
            dp.dp_rank,  # the ranks of a context group read the same batches
            dp.dp_world,
            cfg.data.workers,
        )
    )
    while loop.running():
        train.train()
        for micro in range(s.grad_accum):
            batch = to_device(next(loader), d.device)
            last = micro == s.grad_accum - 1
            with (
                train.no_sync() if (not last and hasattr(train, "no_sync")) else contextlib.nullcontext(),
                ctx.amp,
            ):
                loss = diffusion_loss(train, batch, null_text, cfg, stage)
            loop.backward(loss / s.grad_accum, s.batch_size)
        stepped = loop.step_optimizer(s.grad_clip)
        p = loop.counters.setdefault("plateau", {})
        if (
            stepped
            and name == "align-head"
            and plateau_update(
                p, loop.last_loss, loop.step, s.plateau_smoothing, s.plateau_tolerance, s.plateau_patience
            )
        ):
            ctx.log_text(
                f"stage align-head: the smoothed loss {p['smoothed']:.4f} has not improved by {s.plateau_tolerance:.0%} in {s.plateau_patience} steps; stopping at step {loop.step}"
            )
            loop.finish_early("plateau")
        if ctx.val_idx and stepped and (loop.step % cfg.val_every == 0 or loop.finished):
            ctx.log_metrics(
                validation_loss(unwrap(train), cfg, ctx), f"{name} step {loop.step}: ", ctx.global_step
            )
            ctx.samples(unwrap(train), name, loop.step)
            if d.main:  # held-out loss across the run's stages, by global step
                plot_metric(
                    ctx.run_dir, "val/loss", ctx.run_dir / "val_loss.png", "held-out flow-matching loss"
                )
    ctx.last_reason = loop.finish_reason
    if not loop.finished:
        return None
    changed = [n for n, v in frozen_fingerprint(unwrap(train)).items() if frozen.get(n) != v]
    assert not changed, f"frozen weights changed in stage {name}: {changed[:3]}"
    ctx.log_metrics({f"{name}/frozen_unchanged": float(len(frozen))}, f"stage {name}: ", ctx.global_step)
    raw = current()
    if name != "align-head" and any(cfg.resolution_stage(n) for n in cfg.stage_names()[stage + 1 :]):
        ema_state = {k: v.clone() for k, v in ema.state_dict().items()} if ema is not None else {}
        ctx.carry = {"weights": raw, "opt": optimizer_state(train, opt), "ema": ema_state}
    out = dict(raw)
    if ema is not None:
        out.update({k: v for k, v in ema.state_dict().items() if k in out})
    return out


# ---- the run ------------------------------------------------------------------------------------------------


def train_adapt(
    cfg: AdaptConfig,
    run_dir: str | Path,
    resume: str | None = None,
    stage: str | None = None,
    stop_after: int | None = None,
) -> Path | None:
    """Run the enabled stages (or only `stage`) to the end, or for `stop_after` steps; returns RUN/adapted when
    every stage is done (None when stopped early, after a checkpoint). Nothing is written before the inputs are
    checked (`check_run`). A stop signal (SIGINT, SIGTERM) checkpoints and raises `TrainingInterrupted`."""
    d = setup_distributed()
    context_layout(cfg.context_parallel, d.rank, d.world)  # a degree that does not divide fails here
    run_dir = Path(run_dir)
    cfg.require("model.base", "data.cache")
    if stage is not None and stage not in cfg.stage_names():
        raise DCVGError(f"--stage {stage}: use one of {', '.join(cfg.stage_names())}")
    stages = [stage] if stage is not None else cfg.enabled_stages()
    ckpt = resolve_resume(resume, run_dir)
    state = load_checkpoint(ckpt) if ckpt is not None else None
    done = {h["stage"] for h in state["history"]} if state is not None else set()
    # the stages left to run read these caches (with none left, the base one gives the dims)
    todo = [name for name in stages if name not in done] or stages[-1:] or [STAGES[-1]]
    caches = open_caches(cfg, todo)
    dims = check_run(cfg, caches, todo, state, ckpt)
    if d.main:  # written only now that every input is checked
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if state is not None:
            # a run killed after its last checkpoint logged steps that it now trains again
            rewind_log(run_dir / "log.jsonl", int(state["global_step"]))
            logger.info(
                f"resumed from {ckpt}: stage {state['stage']} step {state['stage_step']} ({'done' if state['finished'] else 'in progress'})"
            )
    seed_all(cfg.seed)
    if state is not None:  # the RNG as the checkpoint left it, also when the next stage starts afresh
        restore_rng(state["rng"], d)
    with stop_signals() as stop:
        ctx = RunContext(cfg, d, run_dir, caches, dims, stop, stop_after, state)
        try:
            for name in stages:
                if any(h["stage"] == name for h in ctx.history):
                    continue  # done in this run folder (a new --out runs it again)
                if stop.requested or ctx.budget_spent():
                    break
                resuming = (
                    state if state is not None and not state["finished"] and state["stage"] == name else None
                )
                # the stage's first global step - 1, also when it resumes mid-way
                start = ctx.global_step - (int(resuming["stage_step"]) if resuming is not None else 0)
                t0 = time.time()
                ctx.use(name)
                if name == "align-embedder":
                    out = run_align_embedder(cfg, ctx, resuming)
                    if out and cfg.align_embedder.method == "exact":
                        ctx.global_step += 1
                    out = {**ctx.adapted, **out} if out is not None else None
                    ctx.carry = None
                else:
                    out = run_diffusion_stage(name, cfg, ctx, ctx.adapted, resuming)
                if out is None:  # stopped by a signal or --stop-after, after a checkpoint
                    break
                ctx.adapted = out
                ctx.history.append(
                    {
                        "stage": name,
                        "reason": ctx.last_reason
                        if name != "align-embedder" or cfg.align_embedder.method == "adamw"
                        else "solved",
                        "end_global_step": ctx.global_step,
                        "seconds_this_session": round(time.time() - t0, 2),
                        "start_global_step": start,
                        "buckets": [list(shape) for shape in cfg.stage_shapes(name)],
                    }
                )
                ctx.checkpoint(name, True, ctx.adapted)
                if d.main:
                    with atomic_file(run_dir / "stages.json") as tmp:
                        tmp.write_text(json.dumps(ctx.history, indent=2))
        finally:
            if ctx.log is not None:
                ctx.log.close()
    done = {h["stage"] for h in ctx.history}
    if not set(stages) <= done:
        if stop.requested:
            d.barrier()
            raise TrainingInterrupted(stop.signal, f"at global step {ctx.global_step}, after a checkpoint")
        if d.main:
            logger.info(f"stopped at global step {ctx.global_step}; continue with --resume auto")
        return None
    out = run_dir / "adapted"
    if d.main:
        lora = None
        if any(k for k in ctx.adapted if "lora_" in k):
            from .model import lora_spec_for_config

            lora = lora_spec_for_config(dims["transformer_config"], cfg.finetune)
        write_adapted(
            out,
            AdaptedResult(
                transformer_config=dims["transformer_config"],
                state=ctx.adapted,
                lora=lora,
                full_finetune=cfg.finetune.full_finetune
                and any(n == "finetune" or cfg.resolution_stage(n) for n in done),
                task=cfg.model.task,
                base=str(Path(cfg.model.base).resolve()),
                autoencoder=cfg.model.autoencoder,
                stages=ctx.history,
            ),
        )
        logger.info(
            f"adapted model written to {out}; export it with: dcvg adapt export {run_dir} OUT [--fuse]"
        )
    d.barrier()
    return out
