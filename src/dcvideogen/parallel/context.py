"""Context (sequence) parallelism for diffusers' `WanTransformer3DModel`, in training and generation.

The engine is diffusers' own (`ContextParallelConfig`, the model's `_cp_plan`, `hooks/context_parallel.py`):
every rank of a context group gets the full inputs; the token sequence is split after the patch embedder
(`blocks.0`, with the RoPE tables and per-token timesteps), self-attention runs as Ulysses (all-to-all of
heads) or ring attention (all-gather of K/V, log-sum-exp merge), cross-attention keeps the whole text, and
the output of `proj_out` is all-gathered, so each rank returns the full prediction. docs/parallel.md says
why this engine and not `torch.distributed.tensor.experimental.context_parallel`.

Ranks form a (dp, ring, ulysses) grid: a context group is `degree` consecutive ranks (Ulysses innermost),
and data parallelism runs across groups. Gradients: with the full loss on every rank, a rank's backward
gives its share of the sequence's gradient, and the shares sum to the whole. DDP and FSDP average over
every rank of the world (dp x cp, FSDP sharding over all of them), so the output's gradient is multiplied
by `degree` here: their mean is then the mean over data-parallel groups of whole-sequence gradients.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from ..errors import DCVGError, first_line

if TYPE_CHECKING:
    from diffusers.models._modeling_parallel import ContextParallelConfig

# Backends diffusers lets run context parallel attention but that do not return the log-sum-exp, which ring
# attention needs to merge the blocks: Ulysses only.
BACKENDS_WITHOUT_LSE = frozenset({"native", "_native_npu"})


# ---- where a rank sits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextLayout:
    """This rank's place in the (data, context) grid: world = dp_world x degree, a context group is `degree`
    consecutive ranks, and every rank of a group must be given the same batch."""

    rank: int
    world: int
    degree: int  # context-parallel degree: ranks that share one sequence

    @property
    def dp_rank(self) -> int:  # which batch this rank reads
        return self.rank // self.degree

    @property
    def dp_world(self) -> int:  # how many different batches a step reads
        return self.world // self.degree

    @property
    def cp_rank(self) -> int:  # which piece of the sequence this rank holds
        return self.rank % self.degree


def context_layout(degree: int, rank: int | None = None, world: int | None = None) -> ContextLayout:
    """The layout of `degree`-way context parallelism over the torchrun processes (RANK, WORLD_SIZE when
    `rank` / `world` are not given)."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    if degree < 1:
        raise DCVGError(f"--context-parallel {degree}: must be at least 1")
    if world % degree:
        raise DCVGError(
            f"--context-parallel {degree} needs a multiple of {degree} processes, got {world}; launch with "
            f"torchrun --nproc_per_node=N"
        )
    return ContextLayout(rank, world, degree)


def split_degree(degree: int, heads: int, ring: int | None = None) -> tuple[int, int]:
    """(ring, ulysses) degrees with ring x ulysses = degree. Default: Ulysses as far as the heads divide
    (gcd(degree, heads)), ring for the rest; `ring` forces the ring degree."""
    if ring is None:
        ring = degree // math.gcd(degree, heads)
    if ring < 1 or degree % ring:
        raise DCVGError(f"ring degree {ring} does not divide --context-parallel {degree}")
    ulysses = degree // ring
    if heads % ulysses:
        raise DCVGError(
            f"Ulysses degree {ulysses} does not divide the model's {heads} attention heads; use a ring degree "
            f"of {degree // math.gcd(degree, heads)} or more"
        )
    return ring, ulysses


def sequence_length(grid: tuple[int, int, int], patch_size: tuple[int, int, int]) -> int:
    """Tokens of a (T, H, W) latent grid with patch (pt, ph, pw): T/pt * H/ph * W/pw."""
    return math.prod(g // p for g, p in zip(grid, patch_size, strict=True))


def check_sequence(grid: tuple[int, int, int], patch_size: tuple[int, int, int], degree: int) -> None:
    """The tokens of a (T, H, W) latent grid must split evenly over `degree` ranks."""
    n = sequence_length(grid, patch_size)
    if n % degree:
        tokens = "x".join(str(g // p) for g, p in zip(grid, patch_size, strict=True))
        raise DCVGError(
            f"context parallel: the {tokens} = {n} tokens of a {'x'.join(map(str, grid))} latent do not split "
            f"over {degree} ranks; choose frames, height and width whose token count is a multiple of {degree}"
        )


# ---- the transformer -----------------------------------------------------------------------------------


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by `factor` on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def attention_backend_name(transformer: torch.nn.Module) -> str:
    """The attention backend the transformer's processors use (diffusers' active one when not set)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    for module in transformer.modules():
        backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
        if backend is not None:
            return str(getattr(backend, "value", backend))
    name, _ = _AttentionBackendRegistry.get_active_backend()
    return str(getattr(name, "value", name))


def enable_context_parallel(
    transformer: torch.nn.Module,
    degree: int,
    ring_degree: int | None = None,
    attention_backend: str | None = None,
) -> ContextParallelConfig | None:
    """Shard `transformer`'s sequence over context groups of `degree` consecutive ranks, in place. Its forward
    then takes the full inputs on every rank of a group (they must be the same there) and returns the full
    output on each; the output's gradient is scaled for DDP/FSDP over the whole world (module docstring).
    Call after the model is on its device, before DDP/FSDP wrapping; a collective (every rank calls it).

    ring_degree: ring-attention part of `degree` (default: Ulysses as far as the heads divide); ring needs a
    backend that returns the log-sum-exp (flash, _native_flash, _native_cudnn, sage: GPU only).
    attention_backend: a diffusers backend name to set first (`set_attention_backend`, which also makes it
    diffusers' active backend for the process).
    Returns diffusers' `ContextParallelConfig` (its `_flattened_mesh` is the context group), None for 1."""
    if degree == 1:
        return None
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        raise DCVGError(
            f"--context-parallel {degree} needs a process group: launch a multiple of {degree} processes with "
            f"torchrun --nproc_per_node=N"
        )
    layout = context_layout(degree, dist.get_rank(), dist.get_world_size())
    if getattr(transformer, "_cp_plan", None) is None:
        raise DCVGError(f"{type(transformer).__name__} has no context-parallel plan (_cp_plan) in diffusers")
    if getattr(transformer, "_parallel_config", None) is not None:
        raise DCVGError(f"{type(transformer).__name__}: parallelism is already enabled on this model")
    backend = attention_backend or attention_backend_name(transformer)
    if backend not in _AttentionBackendRegistry._supports_context_parallel:
        raise DCVGError(
            f"attention backend {backend!r} has no context-parallel support in diffusers; use one of "
            f"{', '.join(sorted(_AttentionBackendRegistry._supports_context_parallel))}"
        )
    ring, ulysses = split_degree(degree, transformer.config.num_attention_heads, ring_degree)
    if ring > 1 and backend in BACKENDS_WITHOUT_LSE:
        raise DCVGError(
            f"ring attention (degree {ring} of {degree}) needs a backend that returns the log-sum-exp; {backend!r} "
            f"does not: set attention_backend to _native_flash, _native_cudnn or flash (GPU), or a "
            f"--context-parallel that divides the {transformer.config.num_attention_heads} heads (Ulysses)"
        )
    if attention_backend is not None:  # checked above, so a refused name changes nothing
        try:
            transformer.set_attention_backend(attention_backend)
        except (ValueError, RuntimeError, ImportError) as e:
            raise DCVGError(f"attention backend {attention_backend!r}: {first_line(e)}") from e

    device = next(transformer.parameters()).device
    mesh = init_device_mesh(
        device.type, (layout.dp_world, ring, ulysses), mesh_dim_names=("dp", "ring", "ulysses")
    )
    cp = ContextParallelConfig(ring_degree=ring, ulysses_degree=ulysses, mesh=mesh)
    config = ParallelConfig(context_parallel_config=cp)
    config.setup(layout.rank, layout.world, device, mesh=mesh)
    # What `ModelMixin.enable_parallelism` does for context parallelism; called directly because its device
    # lookup divides by the accelerator count, which is 0 on a CPU (gloo) run.
    transformer._parallel_config = config
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = config  # self-attention only: Wan passes None for cross-attention
    apply_context_parallel(transformer, cp, transformer._cp_plan)

    patch = tuple(transformer.config.patch_size)

    def check_input(module, args, kwargs):  # before diffusers' split, which only asserts
        x = kwargs.get("hidden_states", args[0] if args else None)  # (B, C, T, H, W)
        check_sequence(tuple(x.shape[2:]), patch, degree)

    transformer.register_forward_pre_hook(check_input, with_kwargs=True)
    transformer.proj_out.register_forward_hook(lambda m, i, out: _ScaleGradient.apply(out, float(degree)))
    return cp
