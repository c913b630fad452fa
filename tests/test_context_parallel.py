"""Context parallelism (`dcvideogen.parallel.context`, diffusers' engine): the layout arithmetic, and on 2 gloo
processes a tiny Wan transformer whose sequence is split over both gives the output, flow-matching loss and
gradients of one process, under DDP and FSDP2, for Ulysses (the native SDPA backend) and for ring attention
(the native backend's ops replaced by an exact reference that returns the log-sum-exp, as the GPU backends do:
no CPU backend does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dcvideogen.adapt.flow import flow_loss
from dcvideogen.errors import DCVGError
from dcvideogen.parallel.context import (
    ContextLayout,
    check_sequence,
    context_layout,
    enable_context_parallel,
    sequence_length,
    split_degree,
)

from adapt_parts import WAN_Z, tiny_wan_transformer
from conftest import spawn_two
from pipeline_parts import CLIP_DIM, TEXT_DIM

# Each run: (task, DDP or FSDP, ring degree, gradient checkpointing, per-token timesteps).
RUNS = {
    "ulysses-ddp": ("t2v", "ddp", 1, False, False),
    "ulysses-fsdp-checkpointing": ("t2v", "fsdp", 1, True, False),
    "ring-ddp": ("t2v", "ddp", 2, False, False),
    "i2v-per-token-timesteps": ("i2v", "ddp", 1, False, True),
}
FRAMES, HEIGHT, WIDTH = 2, 4, 4  # latent (2, 4, 4), patch (1, 2, 2): 8 tokens, 4 per rank


# ---- layout arithmetic -------------------------------------------------------------------------------------


def test_layout_groups_consecutive_ranks_and_reads_one_batch_per_group():
    got = [context_layout(2, rank=r, world=6) for r in range(6)]
    assert [(x.dp_rank, x.cp_rank) for x in got] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert {x.dp_world for x in got} == {3}
    assert context_layout(1, rank=3, world=4) == ContextLayout(3, 4, 1)
    assert context_layout(1, rank=3, world=4).dp_rank == 3  # no context parallelism: plain data parallel


def test_layout_reads_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    x = context_layout(4)
    assert (x.dp_rank, x.dp_world, x.cp_rank) == (1, 2, 1)


def test_layout_rejects_a_degree_that_does_not_divide_the_processes():
    with pytest.raises(DCVGError, match="--context-parallel 3 needs a multiple of 3 processes, got 4"):
        context_layout(3, rank=0, world=4)
    with pytest.raises(DCVGError, match="at least 1"):
        context_layout(0, rank=0, world=4)


def test_split_degree_prefers_ulysses_as_far_as_the_heads_divide():
    assert split_degree(8, heads=40) == (1, 8)  # Wan-14B: 40 heads
    assert split_degree(8, heads=12) == (2, 4)  # Wan-1.3B: 12 heads; Ulysses 4 x ring 2
    assert split_degree(4, heads=12, ring=4) == (4, 1)
    with pytest.raises(DCVGError, match="ring degree 3 does not divide"):
        split_degree(4, heads=12, ring=3)
    with pytest.raises(DCVGError, match="Ulysses degree 8 does not divide the model's 12"):
        split_degree(8, heads=12, ring=1)


def test_sequence_length_and_its_divisibility():
    # 2160 x 3840 x 80 frames on f32t4c32 (rounded to 2144 rows), patch 1: 20 x 67 x 120 tokens
    assert sequence_length((20, 67, 120), (1, 1, 1)) == 160_800
    check_sequence((20, 67, 120), (1, 1, 1), 16)
    assert sequence_length((21, 60, 104), (1, 2, 2)) == 32_760  # Wan-1.3B at 480 x 832
    with pytest.raises(DCVGError, match=r"the 1x3x1 = 3 tokens of a 1x6x2 latent do not split over 2 ranks"):
        check_sequence((1, 6, 2), (1, 2, 2), 2)


def test_degree_one_is_a_no_op_and_more_needs_a_process_group():
    model = tiny_wan_transformer()
    assert enable_context_parallel(model, 1) is None and model._parallel_config is None
    with pytest.raises(DCVGError, match="torchrun --nproc_per_node"):
        enable_context_parallel(model, 2)


# ---- the same numbers on 2 processes -------------------------------------------------------------------------


def make_inputs(task: str, per_token: bool) -> dict:
    """The transformer's inputs and a velocity target, batch 2, from a fixed seed."""
    g = torch.Generator().manual_seed(1)
    b, tokens = 2, FRAMES * (HEIGHT // 2) * (WIDTH // 2)
    channels = WAN_Z if task == "t2v" else 2 * WAN_Z + 4
    timestep = torch.tensor([250.0, 800.0])
    if per_token:  # the first latent frame given (timestep 0), as the Wan 2.2 expand mode does
        timestep = timestep[:, None].repeat(1, tokens)
        timestep[:, : tokens // FRAMES] = 0
    x = dict(
        hidden_states=torch.randn(b, channels, FRAMES, HEIGHT, WIDTH, generator=g),
        timestep=timestep,
        # Wan I2V attention takes all but the last 512 context tokens as the image's
        encoder_hidden_states=torch.randn(b, 6 if task == "t2v" else 512, TEXT_DIM, generator=g),
    )
    if task == "i2v":
        x["encoder_hidden_states_image"] = torch.randn(b, 5, CLIP_DIM, generator=g)
    return x, torch.randn(b, WAN_Z, FRAMES, HEIGHT, WIDTH, generator=g)


def tiny_model(task: str, checkpointing: bool) -> torch.nn.Module:
    torch.manual_seed(3)
    model = tiny_wan_transformer(task).train()
    torch.nn.init.normal_(
        model.proj_out.weight, std=0.2
    )  # random, not zero, like an adapted head mid-training
    if checkpointing:
        model.enable_gradient_checkpointing()
    return model


def forward_backward(model, task: str, per_token: bool) -> dict:
    """Output, flow-matching loss and every parameter's gradient (gathered when FSDP-sharded)."""
    from dcvideogen.training.ema import full_tensor

    inputs, target = make_inputs(task, per_token)
    out = model(**inputs, return_dict=False)[0]  # (B, Z, T', h, w)
    loss = flow_loss(out, target)
    loss.backward()
    inner = model.module if hasattr(model, "module") else model
    grads = {n: full_tensor(p.grad).detach().clone() for n, p in inner.named_parameters()}
    return {"out": out.detach(), "loss": loss.detach(), "grads": grads}


@pytest.fixture(scope="session")
def one_process() -> dict:
    torch.set_num_threads(1)  # as the workers
    try:
        return {name: forward_backward(tiny_model(t, ck), t, pt) for name, (t, _, _, ck, pt) in RUNS.items()}
    finally:
        torch.set_num_threads(2)


def reference_attention_forward(
    ctx,
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    return_lse=False,
    _save_ctx=True,
    _parallel_config=None,
):
    """Exact attention on (B, S, H, D) that also returns the log-sum-exp (B, S, H), as diffusers' flash/cuDNN ops
    do; saves what `reference_attention_backward` needs, in their layout."""
    assert attn_mask is None and not is_causal and dropout_p == 0.0
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    q, k, v = (x.transpose(1, 2).double() for x in (query, key, value))  # (B, H, S, D)
    scores = q @ k.transpose(-1, -2) * scale  # (B, H, Sq, Sk)
    lse = scores.logsumexp(-1)  # (B, H, Sq)
    out = ((scores - lse[..., None]).exp() @ v).transpose(1, 2).to(query.dtype)  # (B, Sq, H, D)
    lse = lse.transpose(1, 2).float()  # (B, Sq, H)
    if _save_ctx:
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.scale = scale
    return (out, lse) if return_lse else out


def reference_attention_backward(
    ctx, grad_out, *args, query=None, key=None, value=None, out=None, lse=None, **kw
):
    """Gradients of `reference_attention_forward` for (query, key, value), given the output and log-sum-exp of the
    whole attention (ring attention passes one key/value block at a time with the merged out/lse)."""
    saved = ctx.saved_tensors
    query, key, value, out, lse = (
        s if x is None else x for x, s in zip((query, key, value, out, lse), saved)
    )
    q, k, v, o, do = (x.transpose(1, 2).double() for x in (query, key, value, out, grad_out))  # (B, H, S, D)
    p = (
        q @ k.transpose(-1, -2) * ctx.scale - lse.transpose(1, 2).double()[..., None]
    ).exp()  # (B, H, Sq, Sk)
    dv = p.transpose(-1, -2) @ do
    ds = p * (do @ v.transpose(-1, -2) - (do * o).sum(-1, keepdim=True))
    dq, dk = ds @ k * ctx.scale, ds.transpose(-1, -2) @ q * ctx.scale
    return tuple(x.transpose(1, 2).to(query.dtype) for x in (dq, dk, dv))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    import diffusers.models.attention_dispatch as dispatch
    import torch.distributed as dist

    from dcvideogen.adapt.model import is_wan_block
    from dcvideogen.parallel import context
    from dcvideogen.training.engine import Dist, setup_distributed, wrap

    d = setup_distributed()
    assert d == Dist(rank, 2, rank, torch.device("cpu"))
    results, errors = {}, {}
    try:
        # Refusals first, on both ranks alike (no rank may be left waiting in a collective).
        model = tiny_model("t2v", False)
        for name, call in {
            "ring_on_native": lambda: enable_context_parallel(model, 2, ring_degree=2),
            "backend_without_cp": lambda: enable_context_parallel(model, 2, attention_backend="_native_math"),
        }.items():
            try:
                call()
            except DCVGError as e:
                errors[name] = str(e)
        model = tiny_model("t2v", False)
        enable_context_parallel(model, 2)
        try:
            enable_context_parallel(model, 2)
        except DCVGError as e:
            errors["twice"] = str(e)
        try:
            model(
                hidden_states=torch.zeros(1, WAN_Z, 1, 6, 2),
                timestep=torch.ones(1),
                encoder_hidden_states=torch.zeros(1, 6, TEXT_DIM),
            )
        except DCVGError as e:
            errors["indivisible"] = str(e)

        for name, (task, parallel, ring, checkpointing, per_token) in RUNS.items():
            if ring > 1:  # ring attention through diffusers' templated ring with an exact lse-returning op
                dispatch._native_attention_forward_op = reference_attention_forward
                dispatch._native_attention_backward_op = reference_attention_backward
                context.BACKENDS_WITHOUT_LSE = frozenset()
            model = tiny_model(task, checkpointing)
            cp = enable_context_parallel(model, 2, ring_degree=ring)
            seen = []  # tokens that block 1 is given on this rank
            model.blocks[1].register_forward_pre_hook(
                lambda m, args, seen=seen: seen.append(args[0].shape[1])
            )
            results[name] = forward_backward(wrap(model, parallel, d, is_wan_block), task, per_token)
            results[name].update(degrees=(cp.ring_degree, cp.ulysses_degree), block_tokens=seen[0])
        torch.save({"results": results, "errors": errors}, Path(out) / f"rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="session")
def two_processes(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("context-parallel")
    spawn_two(_worker, lambda port: (port, str(out)), out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("name", list(RUNS))
def test_two_processes_give_the_output_loss_and_gradients_of_one(one_process, two_processes, name):
    ref = one_process[name]
    want_degrees = (2, 1) if RUNS[name][2] == 2 else (1, 2)
    for rank, run in enumerate(two_processes):
        got = run["results"][name]
        assert got["degrees"] == want_degrees
        assert got["block_tokens"] == FRAMES * (HEIGHT // 2) * (WIDTH // 2) // 2  # each rank holds half
        torch.testing.assert_close(got["out"], ref["out"], rtol=1e-4, atol=1e-5, msg=f"rank {rank} output")
        torch.testing.assert_close(got["loss"], ref["loss"], rtol=1e-5, atol=1e-7, msg=f"rank {rank} loss")
        assert got["grads"].keys() == ref["grads"].keys()
        for k, g in ref["grads"].items():
            assert g.abs().max() > 0, k  # every weight is trained by the loss, so a missing share shows
            torch.testing.assert_close(got["grads"][k], g, rtol=1e-4, atol=1e-6, msg=f"rank {rank} grad {k}")


def test_refusals_are_one_line_errors_on_every_rank(two_processes):
    for run in two_processes:
        e = run["errors"]
        assert (
            "ring attention (degree 2 of 2) needs a backend that returns the log-sum-exp"
            in e["ring_on_native"]
        )
        assert "'_native_math' has no context-parallel support" in e["backend_without_cp"]
        assert "already enabled" in e["twice"]
        assert "1x3x1 = 3 tokens" in e["indivisible"] and "do not split over 2 ranks" in e["indivisible"]
        assert all("\n" not in m for m in e.values())
