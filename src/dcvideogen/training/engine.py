"""The training engine every recipe shares (the autoencoder trainer, the AE-Adapt-V stages).

What is here, once: the distributed set-up (torchrun / accelerate environment, gloo on CPU, nccl on GPU),
DDP / FSDP2 wrapping, the learning-rate schedule, RNG state capture for exact resume, the run state
written as one atomic safetensors checkpoint (model, optimiser, scheduler, EMA, counters, step, data
position, every rank's RNG), stop signals (finish the step, checkpoint, exit), the non-finite-loss guard
and peak memory. A recipe is the loop that uses them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from ..errors import DCVGError
from ..utils.atomic import atomic_file
from .checkpoint import save_checkpoint

logger = logging.getLogger("dcvg.train")

# Whole (unsharded) state dicts on the CPU, for checkpoints and export, under DDP and FSDP alike.
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class TrainingDiverged(DCVGError):
    """Too many non-finite losses in a row."""


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by a recipe after a stop signal once its state is checkpointed: the command exits 130 and says how
    to resume."""

    def __init__(self, signum: int, where: str) -> None:
        self.signum, self.where = signum, where
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")


# ---- distributed ---------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed() -> Dist:
    """Process group from torchrun / accelerate environment variables (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, device)


def all_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Mean of `x` over ranks (a collective: every rank calls it)."""
    if d.world > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= d.world
    return x


def all_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum of `x` over ranks, in place (a collective)."""
    if d.world > 1:
        dist.all_reduce(x)
    return x


def wrap(
    module: torch.nn.Module, parallel: str, d: Dist, is_block: Callable[[torch.nn.Module], bool] | None = None
) -> torch.nn.Module:
    """DDP for models that fit on each GPU; FSDP2 (`fully_shard`) on each block where `is_block` says so and
    at the top for ones that do not. One process: the module itself."""
    if d.world == 1:
        return module
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        if is_block is not None:
            for m in module.modules():
                if m is not module and is_block(m):
                    fully_shard(m)
        return fully_shard(module)
    ids = [d.device.index] if d.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


# ---- schedule ------------------------------------------------------------------------------------------


def lr_factor(
    step: int, warmup_steps: int, total_steps: int, decay: str = "constant", min_ratio: float = 0.0
) -> float:
    """Linear warm-up over `warmup_steps`, then constant, cosine or linear decay to `min_ratio` at
    `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * shape


# ---- RNG -----------------------------------------------------------------------------------------------


def seed_all(seed: int) -> None:
    """Seed torch (every device), Python and NumPy: a run starts from the same RNG state in any process, so its
    checkpoints (which hold that state) match whichever process wrote them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator a training step may draw from (torch, Python, NumPy, CUDA), as checkpointable values."""
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
    }
    state["numpy"] = torch.from_numpy(np.random.get_state()[1].astype(np.int64))
    state["numpy_pos"] = int(np.random.get_state()[2])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states(d: Dist) -> list[dict]:
    """Every rank's RNG state, in rank order (a collective)."""
    if d.world == 1:
        return [rng_state()]
    states = [None] * d.world
    dist.all_gather_object(states, rng_state())
    return states


def restore_rng(states: list[dict], d: Dist) -> None:
    """This rank's RNG from a checkpoint's list (rank 0's when the run had fewer ranks)."""
    set_rng_state(states[d.rank] if d.rank < len(states) else states[0])


# ---- optimiser state ---------------------------------------------------------------------------------------


def _hyperparameters(group: dict) -> dict:
    return {k: v for k, v in group.items() if k != "params"}


def optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimiser's whole (unsharded) state for a checkpoint; every rank calls it. An optimiser that has not
    stepped yet (the discriminator's before the GAN starts) is saved as its hyper-parameters:
    `get_optimizer_state_dict` would create its state with a zero-gradient step, which Adam counts."""
    if not opt.state:
        return {"state": {}, "param_groups": [_hyperparameters(g) for g in opt.param_groups]}
    return get_optimizer_state_dict(model, opt, options=FULL)


def load_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, saved: dict) -> None:
    """Restore `optimizer_state`'s output exactly: no state where the checkpoint has none.

    `set_optimizer_state_dict` first takes a zero-gradient step to create a state for every trainable
    parameter and keeps it where the checkpoint has none; those entries would count one extra Adam step."""
    if not saved["state"]:
        for group, hyper in zip(opt.param_groups, saved["param_groups"], strict=True):
            group.update(_hyperparameters(hyper))
        return
    set_optimizer_state_dict(model, opt, saved, options=FULL)
    for name, p in unwrap(model).named_parameters():
        if name not in saved["state"]:
            opt.state.pop(p, None)


# ---- run state -----------------------------------------------------------------------------------------


def save_run_state(folder: Path, step: int, state: dict, d: Dist, keep: int = 2) -> Path | None:
    """Write `state` plus every rank's RNG as checkpoint `step` (atomic, on rank 0); every rank calls it.
    Returns the file on rank 0."""
    state = {**state, "step": step, "rng": gather_rng_states(d)}
    path = None
    if d.main:
        path = save_checkpoint(folder, step, state, keep=keep)
        logger.info(f"checkpoint {path}")
    d.barrier()
    return path


def _logged_step(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:  # a row cut short by a kill
        return math.inf


def rewind_log(path: Path, step: int) -> None:
    """Drop the rows of a run's log.jsonl logged after `step`: a run killed between checkpoints logs those steps
    again when it resumes from `step`."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = [line for line in lines if _logged_step(line) <= step]
    if len(keep) != len(lines):
        with atomic_file(path) as tmp:
            tmp.write_text("".join(keep))


# ---- signals, non-finite losses, memory ------------------------------------------------------------------


@dataclass
class StopFlag:
    """Set by SIGINT / SIGTERM: the loop finishes its step, checkpoints and returns. A second signal aborts."""

    signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_signals() -> Iterator[StopFlag]:
    flag = StopFlag()

    def on_signal(signum, frame):
        if flag.signal is not None:
            raise KeyboardInterrupt
        flag.signal = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class NonFiniteGuard:
    """Counts steps whose loss was not finite on any rank; raises after `max_in_row` in a row."""

    def __init__(self, max_in_row: int, counters: dict) -> None:
        self.max_in_row = max_in_row
        self.counters = counters
        counters.setdefault("bad_steps", 0)
        counters.setdefault("bad_in_row", 0)

    def all_finite(self, finite: torch.Tensor, d: Dist) -> bool:
        """`finite` (0-dim, 1 or 0) agreed over ranks (MIN), so every rank skips the same steps."""
        if d.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def skipped(self, step: int, where: Path, d: Dist) -> None:
        self.counters["bad_steps"] += 1
        self.counters["bad_in_row"] += 1
        if d.main:
            logger.warning(
                f"step {step}: non-finite loss, step skipped ({self.counters['bad_in_row']} in a row)"
            )
        if self.counters["bad_in_row"] >= self.max_in_row:
            raise TrainingDiverged(
                f"{self.counters['bad_in_row']} non-finite losses in a row at step {step}; lower the learning "
                f"rate, use precision=fp32, or resume from an earlier checkpoint in {where}"
            )

    def ok(self) -> None:
        self.counters["bad_in_row"] = 0


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated accelerator memory, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def autocast(d: Dist, precision: str):
    """bf16 autocast on the run's device when `precision` is bf16 (master weights stay float32)."""
    return torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ---- the step bookkeeping of one training phase ---------------------------------------------------------


class TrainLoop:
    """Counts the steps of one phase (a recipe's stage) and does everything around the optimiser step:
    the non-finite guard agreed over ranks, gradient clipping, scheduler and EMA, logging every
    `log_every`, a checkpoint every `checkpoint_every`, and stopping on a signal or a step budget (with a
    checkpoint, so nothing is lost). The recipe writes the forward and the loss:

        loop = TrainLoop(...)
        while loop.running():
            loop.backward(loss_of(next(batches)))
            loop.step_optimizer(grad_clip)

    `checkpoint(loop)` and `log(step, metrics)` are the recipe's callbacks (rank 0 logs; every rank
    checkpoints, which is a collective); `on_step()` runs after each optimiser step, before its log and
    checkpoint (the recipe's global step). A due checkpoint is written by the next `running()`, so that it holds
    what the recipe did after the step (validation, the plateau rule). `state` restores a phase interrupted
    mid-way: step, optimiser, scheduler, EMA, counters, RNG.
    """

    def __init__(
        self,
        *,
        name: str,
        steps: int,
        d: Dist,
        train_model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        sched=None,
        ema=None,
        stop: StopFlag,
        checkpoint: Callable[[TrainLoop], None],
        log: Callable[[int, dict], None],
        log_every: int,
        checkpoint_every: int,
        max_bad_steps: int,
        budget: Callable[[], bool] = lambda: False,
        on_step: Callable[[], None] = lambda: None,
        state: dict | None = None,
        where: Path = Path("."),
    ) -> None:
        self.name, self.steps, self.d = name, steps, d
        self.train_model, self.opt, self.sched, self.ema = train_model, opt, sched, ema
        self.stop, self.budget, self.on_step, self.where = stop, budget, on_step, where
        self._checkpoint, self._log = checkpoint, log
        self.log_every, self.checkpoint_every = log_every, checkpoint_every
        self.step = 0
        self.counters: dict = {"samples": 0}
        self.guard = NonFiniteGuard(max_bad_steps, self.counters)
        self.finish_reason = "budget"
        if state is not None:
            self.step = int(state["stage_step"])
            load_optimizer_state(train_model, opt, state["opt"])
            if sched is not None:
                sched.load_state_dict(state["sched"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            self.counters.update(state["counters"])
            restore_rng(state["rng"], d)
        self.finished = self.step >= steps
        self._finite = torch.ones((), device=d.device)
        self._loss_sum, self.last_loss = 0.0, float("nan")
        self._t0, self._samples0 = time.time(), self.counters["samples"]
        self._stopped = self._checkpoint_due = False

    def running(self) -> bool:
        """False when the phase is done, or a signal or the step budget says stop (then checkpoint once).
        Writes the checkpoint due after the last step."""
        if self.finished:
            return False
        if self.stop.requested or self.budget():
            if not self._stopped:
                self._stopped = True
                self._checkpoint(self)
            return False
        if self._checkpoint_due:
            self._checkpoint_due = False
            self._checkpoint(self)
        return True

    def backward(self, loss: torch.Tensor, batch_size: int = 1) -> None:
        if not torch.isfinite(loss.detach()):
            self._finite.zero_()
        loss.backward()
        self._loss_sum += loss.item()
        self.counters["samples"] += batch_size * self.d.world

    def step_optimizer(self, grad_clip: float = 0.0) -> bool:
        """Clip, step, schedule, EMA; False (nothing stepped) when a rank saw a non-finite loss."""
        finite = self.guard.all_finite(self._finite, self.d)
        self._finite.fill_(1)
        self.last_loss, self._loss_sum = self._loss_sum, 0.0
        if not finite:
            self.opt.zero_grad(set_to_none=True)
            self.guard.skipped(self.step, self.where, self.d)
            return False
        self.guard.ok()
        params = [p for p in self.train_model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        lr = self.opt.param_groups[0]["lr"]  # this step's (the scheduler moves it on below)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.sched is not None:
            self.sched.step()
        if self.ema is not None:
            self.ema.update(unwrap(self.train_model))
        self.step += 1
        self.finished = self.step >= self.steps
        self.on_step()
        if self.step % self.log_every == 0 or self.finished:
            now = time.time()
            rate = (self.counters["samples"] - self._samples0) / max(now - self._t0, 1e-9)
            self._t0, self._samples0 = now, self.counters["samples"]
            self._log(
                self.step,
                {
                    "train/loss": self.last_loss,
                    "train/lr": lr,
                    "train/grad_norm": float(grad_norm),
                    "train/bad_steps": self.counters["bad_steps"],
                    "perf/samples_per_s": rate,
                    "perf/peak_mem_gib": peak_memory_gib(self.d.device),
                },
            )
        self._checkpoint_due = self.step % self.checkpoint_every == 0 and not self.finished
        return True

    def finish_early(self, reason: str) -> None:
        self.finished, self.finish_reason = True, reason

    def state(self) -> dict:
        """The phase's part of a checkpoint (every rank calls it: gathering sharded states is collective)."""
        return {
            "stage_step": self.step,
            "opt": optimizer_state(self.train_model, self.opt),
            "sched": self.sched.state_dict() if self.sched is not None else {},
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "counters": dict(self.counters),
        }
