"""`dcvg adapt plan` (adapt/plan.py): the per-block count of what autograd keeps, to the byte, against
saved_tensors_hooks; the whole estimate against the peak the CPU allocator reports to torch.profiler over real
training steps of small Wan models (within 25%, with and without checkpointing); parameter counts against
the recipe's models and the paper; FSDP / context-parallel scaling; FLOPs against the cost model; verdicts,
suggested changes and the CLI."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.utils import logging as diffusers_logging

from dcvideogen.adapt import plan as P
from dcvideogen.adapt.config import STAGES, AdaptConfig, load_adapt_config
from dcvideogen.adapt.model import (
    add_lora,
    build_adapted_transformer,
    finetune_params,
    head_alignment_params,
    lora_spec_from_config,
    set_trainable,
)
from dcvideogen.adapt.train import diffusion_loss
from dcvideogen.bench.cost_model import TransformerDims, forward_flops
from dcvideogen.bench.measure import allocated_peak_bytes
from dcvideogen.cli.main import main
from dcvideogen.errors import DCVGError

REPO = Path(__file__).resolve().parents[1]
LATENT = 32  # DC-AE-V f32t4c32 channels (the adapted transformer's in and out)
MIB = 2**20


def base_wan(d: int, heads: int, ffn: int, layers: int, i2v: bool = False) -> WanTransformer3DModel:
    """A random base Wan (Wan 2.1 layout: 16 latent channels, patch 1x2x2; I2V: 36 in, CLIP features)."""
    torch.manual_seed(0)
    extra = dict(image_dim=24, added_kv_proj_dim=d) if i2v else {}
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=d // heads,
        in_channels=36 if i2v else 16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=ffn,
        num_layers=layers,
        **extra,
    ).eval()


def write_config(model: WanTransformer3DModel, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(model.config)))
    return str(folder / "config.json")


def recipe_model(base, cfg: AdaptConfig, stage: str):
    """The adapted transformer as `run_diffusion_stage` trains it in `stage`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_adapted_transformer(base, LATENT, cfg.model.task, (1, 1, 1))
    if stage == "finetune" and not cfg.finetune.full_finetune:
        add_lora(model, lora_spec_from_config(model, cfg.finetune))
    if stage == "align-head":
        pick = head_alignment_params(cfg.align_head.train_embedder, cfg.align_head.train_modulation)
    else:
        pick = finetune_params(cfg.finetune.full_finetune)
    set_trainable(model, pick)
    return model


@pytest.fixture(autouse=True)
def _quiet():
    diffusers_logging.set_verbosity_error()


# ---- what a block keeps, to the byte ---------------------------------------------------------------------


def saved_bytes_per_block(model, inputs: dict, precision: str, block: int = 1) -> int:
    """Bytes of the distinct storages autograd saves inside `model.blocks[block]` during a forward, parameters
    left out (they are there anyway), each storage counted once however many ops save it."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    where, seen, total = ["outside"], set(), [0]
    hooks = [
        model.blocks[block].register_forward_pre_hook(lambda *a: where.__setitem__(0, "inside")),
        model.blocks[block].register_forward_hook(lambda *a: where.__setitem__(0, "outside")),
    ]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen and ptr not in params and where[0] == "inside":
            total[0] += storage.nbytes()
        seen.add(ptr)
        return t

    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(**inputs, timestep=torch.tensor([500.0]), return_dict=False)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


CASES = [
    ("align-head", "fp32", {}),
    ("align-head", "bf16", {}),
    ("finetune", "fp32", {}),
    ("finetune", "bf16", {}),
    ("finetune", "fp32", {"lora_cross_attention": False}),
    ("finetune", "bf16", {"lora_cross_attention": False}),
    ("finetune", "fp32", {"lora_targets": ["to_q", "to_v", "to_out.0", "ffn.net.2"]}),
    ("finetune", "bf16", {"lora_targets": ["to_q", "to_v", "to_out.0", "ffn.net.2"]}),
    ("finetune", "fp32", {"full_finetune": True}),
    ("finetune", "bf16", {"full_finetune": True}),
]


@pytest.mark.parametrize(("stage", "precision", "finetune"), CASES)
def test_block_count_is_what_autograd_saves(tmp_path, stage, precision, finetune):
    d, heads, ffn, text = 64, 2, 256, 96
    base = base_wan(d, heads, ffn, 2)
    cfg = AdaptConfig()
    cfg.precision, cfg.data.text_tokens, cfg.finetune.lora_rank = precision, text, 4
    for key, value in finetune.items():
        setattr(cfg.finetune, key, value)
    inputs = P.plan_inputs(cfg, write_config(base, tmp_path / "base"))
    work = inputs.works[stage]
    model = recipe_model(base, cfg, stage)
    assert work.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    for frames in (2, 3):  # two lengths: the per-token and the fixed parts are both right
        x = {
            "hidden_states": torch.randn(1, LATENT, frames, 8, 8),
            "encoder_hidden_states": torch.randn(1, text, 32),
        }
        want = P.block_saved(inputs.shape, work, precision).at(frames * 64, text)
        want += P.block_weight_copies(inputs.shape, work, precision)
        assert saved_bytes_per_block(model, x, precision) == want


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("stage", ["align-head", "finetune"])
def test_block_count_for_i2v(tmp_path, stage, precision):
    """I2V: image tokens in the cross-attention (Wan reads exactly 512 text tokens before them), LoRA on the
    image k / v projections too (configs/adapt/wan2.1-i2v-14b.yaml)."""
    base = base_wan(64, 2, 256, 2, i2v=True)
    cfg = AdaptConfig()
    cfg.model.task, cfg.precision, cfg.finetune.lora_rank = "i2v", precision, 4
    cfg.finetune.lora_targets = [*cfg.finetune.lora_targets, "add_k_proj", "add_v_proj"]
    inputs = P.plan_inputs(cfg, write_config(base, tmp_path / "base"))
    work = inputs.works[stage]
    model = recipe_model(base, cfg, stage)
    assert inputs.shape.image_tokens == P.IMAGE_TOKENS
    x = {
        "hidden_states": torch.randn(1, 2 * LATENT + 4, 2, 8, 8),
        "encoder_hidden_states": torch.randn(1, 512, 32),
        "encoder_hidden_states_image": torch.randn(1, P.IMAGE_TOKENS, 24),
    }
    want = P.block_saved(inputs.shape, work, precision).at(128, 512, P.IMAGE_TOKENS)
    want += P.block_weight_copies(inputs.shape, work, precision)
    assert saved_bytes_per_block(model, x, precision) == want


# ---- the whole estimate against the allocator's peak --------------------------------------------------------


def step_peak_bytes(step) -> int:
    """The allocator's exact peak during `step()` (bench.measure.allocated_peak_bytes)."""
    return allocated_peak_bytes(step)[1]


def storage_bytes(tensors) -> int:
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


@pytest.fixture(scope="module")
def small_wan():
    return base_wan(64, 2, 256, 2)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize(
    ("stage", "precision"), [("finetune", "fp32"), ("align-head", "fp32"), ("finetune", "bf16")]
)
def test_estimate_within_25_percent_of_measured_peak(tmp_path, small_wan, stage, precision, checkpointing):
    """Two training steps of the recipe (diffusion_loss, clip, AdamW) on a 2-layer Wan (D 64, FFN 256) over a
    2 x 16 x 16 latent (512 tokens), 32 text tokens: the second is measured. Measured = the persistent tensors
    (weights, buffers, AdamW states, the batch) + the step's allocation peak (`step_peak_bytes`)."""
    cfg = AdaptConfig()
    cfg.precision, cfg.data.text_tokens, cfg.finetune.lora_rank = precision, 32, 16
    cfg.model.gradient_checkpointing = checkpointing
    cfg.data.num_frames, cfg.data.height, cfg.data.width = 8, 512, 512
    cfg.finetune.batch_size = cfg.align_head.batch_size = 1
    inputs = P.plan_inputs(cfg, write_config(small_wan, tmp_path / "base"))
    bucket = inputs.buckets[stage]
    assert bucket.tokens == 2 * 16 * 16
    model = recipe_model(small_wan, cfg, stage)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = {
        "latent": torch.randn(1, LATENT, 2, 16, 16, generator=g),
        "text": torch.randn(1, 32, 32, generator=g),
        "position": torch.arange(1),
    }
    null_text = torch.zeros(32, 32)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with amp:
            loss = diffusion_loss(model, batch, null_text, cfg, STAGES.index(stage))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # AdamW's states exist from the first step on
    states = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    persistent = storage_bytes([*model.parameters(), *model.buffers(), *states, *batch.values(), null_text])
    measured = persistent + step_peak_bytes(step)
    layout = P.Layout(1, "ddp", 1, precision, checkpointing)
    estimate = P.stage_memory(inputs.shape, inputs.works[stage], layout, bucket.tokens)
    ratio = estimate.total / measured
    print(
        f"{stage} {precision} ckpt={checkpointing}: plan {estimate.total / MIB:.2f} MiB, measured {measured / MIB:.2f}"
    )
    assert 0.75 <= ratio <= 1.25, (estimate, measured)
    assert estimate.activations > estimate.persistent  # the sizes test the activation count, not the weights


# ---- parameters, sharding, FLOPs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wan13():
    """The 1.3B plan inputs of configs/adapt/wan2.1-t2v-1.3b.yaml, from the bench registry's sizes."""
    cfg = load_adapt_config(REPO / "configs/adapt/wan2.1-t2v-1.3b.yaml")
    return cfg, P.plan_inputs(cfg, "wan-1.3b")


def test_lora_count_is_the_papers(wan13):
    """FACTS section 6: rank 256 on all ten linears of Wan-1.3B's 30 blocks = 349.96M (+0.10M embedder and
    head = the paper's 350.37M to 0.1%)."""
    _, inputs = wan13
    work = inputs.works["finetune"]
    assert work.kind == "lora" and work.lora_block_params * 30 == pytest.approx(349.96e6, rel=1e-4)
    assert work.trainable_params == pytest.approx(350.37e6, rel=2e-3)
    assert inputs.latent.channels == 32 and inputs.buckets["finetune"].tokens == 20 * 15 * 26


def test_fsdp_shards_and_context_parallel_splits(wan13):
    _, inputs = wan13
    shape, work, tokens = inputs.shape, inputs.works["finetune"], inputs.buckets["finetune"].tokens
    one = P.stage_memory(shape, work, P.Layout(1, "ddp", 1, "bf16", True), tokens)
    ddp = P.stage_memory(shape, work, P.Layout(8, "ddp", 1, "bf16", True), tokens)
    fsdp = P.stage_memory(shape, work, P.Layout(8, "fsdp", 1, "bf16", True), tokens)
    cp = P.stage_memory(shape, work, P.Layout(8, "fsdp", 4, "bf16", True), tokens)
    for field in ("frozen_weights", "trained_weights", "optimizer", "gradients"):
        assert getattr(ddp, field) == getattr(one, field) == pytest.approx(8 * getattr(fsdp, field))
    assert ddp.parallel_buffers == pytest.approx(ddp.gradients) and one.parallel_buffers == 0
    assert fsdp.parallel_buffers > 0
    per_token = P.block_saved(shape, work, "bf16").per_token  # the recomputed block, split over 4
    assert fsdp.activations - cp.activations == pytest.approx(
        work.batch_size
        * (tokens - tokens / 4)
        * (per_token + 30 * 2 * shape.hidden_dim + model_per_token(inputs, work))
    )
    assert one.optimizer == 2 * one.gradients == 2 * 4 * work.trainable_params


def model_per_token(inputs, work) -> float:
    return P.model_saved(inputs.shape, work, "bf16").per_token


def test_step_flops_follow_the_cost_model(wan13):
    """Forward = FACTS section 5 (31.6 TFLOP at 480x832x80 for Wan-1.3B on f32t4c32); stage 1b's backward
    = linears 1x + attention 2.5x; checkpointing adds one forward; LoRA adds 2 N r (in + out) per Linear."""
    _, inputs = wan13
    shape, tokens = inputs.shape, 7800
    fwd = forward_flops(TransformerDims(30, 1536, 8960, 512), tokens)
    assert fwd.total == pytest.approx(31.6e12, rel=0.01)
    head = replace(inputs.works["align-head"], batch_size=1)
    off = P.step_flops(shape, head, P.Layout(1, "ddp", 1, "bf16", False), tokens)
    on = P.step_flops(shape, head, P.Layout(1, "ddp", 1, "bf16", True), tokens)
    linears = fwd.projections + fwd.cross_kv + fwd.ffn
    attention = fwd.self_attention + fwd.cross_attention
    assert off == pytest.approx(2 * linears + 3.5 * attention)
    assert on == pytest.approx(off + fwd.total)
    assert P.step_flops(shape, head, P.Layout(4, "fsdp", 4, "bf16", True), tokens) == pytest.approx(on / 4)
    lora = replace(inputs.works["finetune"], batch_size=1)
    video_lora = 6 * (1536 + 1536) + 2 * (1536 + 8960)  # attn1 q, k, v, out; attn2 q, out; the FFN's two
    lora_fwd = 2 * 256 * 30 * (tokens * video_lora + 512 * 2 * (1536 + 1536))  # + attn2 k, v on the text
    assert P.step_flops(shape, lora, P.Layout(1, "ddp", 1, "bf16", False), tokens) == pytest.approx(
        off + 3 * lora_fwd
    )


# ---- verdicts and changes ---------------------------------------------------------------------------------


def test_verdicts_and_changes_that_fit(wan13):
    _, inputs = wan13
    shape, work = inputs.shape, inputs.works["finetune"]
    hw = P.Hardware(80)
    bucket = inputs.buckets["finetune"]
    off = P.plan_stage(shape, work, bucket, P.Layout(8, "ddp", 1, "bf16", False), hw)
    assert not off.fits and off.memory_off.total > hw.usable_bytes >= off.memory_on.total
    assert off.changes == (off.changes[0],) and off.changes[0].startswith("model.gradient_checkpointing=true")
    on = P.plan_stage(shape, work, bucket, P.Layout(8, "ddp", 1, "bf16", True), hw)
    assert on.fits and on.changes == ()
    # 2160p (20 x 67 x 120 = 160,800 tokens) on one 80 GiB GPU per replica of 14B does not fit
    cfg14 = load_adapt_config(REPO / "configs/adapt/wan2.1-t2v-14b.yaml")
    in14 = P.plan_inputs(cfg14, "wan-14b")
    big = P.Bucket(80, 2144, 3840, in14.latent.num_tokens(80, 2144, 3840))
    assert big.tokens == 160_800
    layout = P.Layout(16, "fsdp", 1, "bf16", True)
    plan = P.plan_stage(in14.shape, in14.works["finetune"], big, layout, hw)
    assert not plan.fits and plan.changes[0].startswith("--context-parallel ")
    k = int(plan.changes[0].split()[1])
    assert 16 % k == 0 and k > 1
    assert (
        P.stage_memory(
            in14.shape, in14.works["finetune"], replace(layout, context_parallel=k), big.tokens
        ).total
        <= hw.usable_bytes
    )
    if k > 2:  # the smallest degree that fits is named
        assert (
            P.stage_memory(
                in14.shape, in14.works["finetune"], replace(layout, context_parallel=k // 2), big.tokens
            ).total
            > hw.usable_bytes
        )
    most = P.max_tokens(in14.shape, in14.works["finetune"], layout, hw)
    assert 0 < most < big.tokens and f"{most:,} tokens" in "".join(plan.changes)
    fits = lambda t: P.stage_memory(in14.shape, in14.works["finetune"], layout, t).total <= hw.usable_bytes  # noqa: E731
    assert fits(most) and not fits(most + 1)


def test_autoencoder_layout_is_read_cheaply(tmp_path):
    from adapt_parts import tiny_dcae_folder

    folder = tiny_dcae_folder(tmp_path / "ae")
    assert (
        P.autoencoder_layout(str(folder), (1, 1, 1)).spatial,
        P.autoencoder_layout(str(folder), (1, 1, 1)).channels,
    ) == (32, 32)
    missing = P.autoencoder_layout("models/dc-ae-v-f64t4c128-1.0-bf16.pt", (1, 2, 2))  # not on this machine
    assert (missing.spatial, missing.temporal, missing.channels, missing.patch) == (64, 4, 128, (1, 2, 2))
    assert P.autoencoder_layout("default", (1, 1, 1)).spatial == 32
    with pytest.raises(DCVGError, match="no fXtYcZ"):
        P.autoencoder_layout(str(tmp_path / "nothing"), (1, 1, 1))


# ---- CLI --------------------------------------------------------------------------------------------------


def test_cli_table_json_and_exit_status(capsys):
    config = str(REPO / "configs/adapt/wan2.1-t2v-1.3b.yaml")
    base = ["adapt", "plan", "--config", config, "--gpus", "8", "--gpu-memory", "80", "--model", "wan-1.3b"]
    assert main([*base, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    cfg = load_adapt_config(config)
    assert [s["stage"] for s in result["stages"]] == [name for name, _ in cfg.training_shapes()]
    assert all(s["fits"] and s["memory_gib"]["total"] <= s["usable_gib"] for s in result["stages"])
    assert (
        main([*base, "model.gradient_checkpointing=false"]) == 1
    )  # the table, and exit 1: a stage does not fit
    out = capsys.readouterr().out
    assert (
        "| finetune" in out and "does NOT fit" in out and "change: model.gradient_checkpointing=true" in out
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gpus", "0"], "--gpus 0"),
        (["--gpus", "8", "--context-parallel", "3"], "--context-parallel 3"),
        (["--gpus", "8", "--gpu-memory", "0"], "--gpu-memory 0"),
        (["--gpus", "8", "--model", "no/such/config.json"], "no/such"),
    ],
)
def test_cli_bad_input_is_one_line(capsys, flags, message):
    config = str(REPO / "configs/adapt/wan2.1-t2v-1.3b.yaml")
    argv = ["adapt", "plan", "--config", config, "--gpu-memory", "80", "--model", "wan-1.3b", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
