"""Memory and step time of an AE-Adapt-V run per GPU, before it is launched (`dcvg adapt plan`).

For each enabled training stage (`AdaptConfig.training_shapes()`) and its largest bucket (most tokens), per
GPU: the weights as the trainer holds them (float32: `load_base_transformer` loads the base in float32 and
bf16 runs under autocast, so there are no separate master copies), AdamW's two float32 moments and the
gradients of what the stage trains, the tensors autograd keeps for backward (with and without gradient
checkpointing), FSDP's sharding over the N GPUs, context parallelism's split of the sequence over K; and
the step time as model FLOPs (`bench.cost_model`, FACTS section 5) over an assumed sustained throughput.
Then a verdict per stage and, when it does not fit, the changes that make it fit.

What a Wan block keeps for backward is counted tensor by tensor from diffusers' `WanTransformerBlock`
(`block_saved`), and checked two ways in tests/test_adapt_plan.py: byte for byte against what autograd
really saves (`torch.autograd.graph.saved_tensors_hooks`), and the whole estimate against the peak the
CPU allocator reports to `torch.profiler` over real training steps of small Wan models.

Everything here is arithmetic on dataclasses except `plan_inputs`, which reads the configs (the base's
transformer config.json, the autoencoder's factors) and counts parameters on the meta device.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, astuple, dataclass, field, replace
from pathlib import Path

from ..bench.cost_model import FrameRule, GridRounding, LatentLayout, TransformerDims, forward_flops
from ..errors import DCVGError
from .config import AdaptConfig

GIB = 2**30
F32 = 4  # bytes of a float32
WEIGHT_BYTES = F32  # the trainer keeps every weight in float32 (bf16 = autocast), see the module docstring
# Sustained bf16 TFLOP/s per GPU assumed for the step time: ~40% of an H100's dense peak (989).
DEFAULT_TFLOPS = 400.0
DEFAULT_HEADROOM = 0.10  # share of GPU memory kept free: CUDA context, cuBLAS / NCCL buffers, fragmentation
ATTENTION_BACKWARD = 2.5  # backward / forward FLOPs of attention (dQ, dK, dV and the recomputed scores)
IMAGE_TOKENS = 257  # Wan I2V: CLIP ViT-H image tokens in the cross-attention


# ---- inputs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockLinear:
    """One nn.Linear of a Wan block: `name` inside the block, features, and which tokens it reads."""

    name: str  # e.g. "attn1.to_q", "ffn.net.2"
    in_features: int
    out_features: int
    side: str  # video | text | image

    @property
    def weights(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class TransformerShape:
    """The adapted transformer's sizes and parameter counts (LoRA not included)."""

    num_layers: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    in_channels: int  # the DC-AE-V latent (x 2 + 4 for I2V)
    out_channels: int
    text_tokens: int  # L: UMT5 tokens the cross-attention reads (data.text_tokens)
    image_tokens: int  # I2V: CLIP tokens the cross-attention reads, else 0
    total_params: int
    block_params: int  # one block
    linears: tuple[BlockLinear, ...]  # one block's Linears

    @property
    def hidden_dim(self) -> int:
        return self.num_heads * self.head_dim


@dataclass(frozen=True)
class StageWork:
    """What one training stage does to the transformer."""

    name: str
    kind: str  # embedder (1a: no transformer) | frozen (1b: blocks frozen) | lora | full (stage 2)
    batch_size: int  # clips per GPU per micro-step
    trainable_params: int  # what AdamW updates (LoRA included)
    trainable_block_params: int  # of which in one block
    lora_rank: int = 0
    lora_linears: tuple[str, ...] = ()  # names inside a block carrying LoRA
    lora_block_params: int = 0  # LoRA parameters one block gains (added to the base's)
    grad_through_blocks: bool = True  # False when only the head trains (1b without the embedder)
    ema: bool = False  # an EMA copy of the trained weights (finetune.ema_decay > 0)


@dataclass(frozen=True)
class Layout:
    """How the run is spread and computed."""

    gpus: int
    parallel: str  # ddp | fsdp
    context_parallel: int  # K: GPUs sharing one sequence
    precision: str  # bf16 (autocast) | fp32
    checkpointing: bool

    @property
    def shards(self) -> int:
        """Ways FSDP splits weights, gradients and optimiser states (over all GPUs)."""
        return self.gpus if self.parallel == "fsdp" else 1


@dataclass(frozen=True)
class Hardware:
    """One GPU: its memory, the share kept free, the throughput assumed for the step time."""

    gpu_memory_gib: float
    tflops: float = DEFAULT_TFLOPS
    headroom: float = DEFAULT_HEADROOM

    @property
    def usable_bytes(self) -> float:
        return self.gpu_memory_gib * GIB * (1 - self.headroom)


# ---- what autograd keeps ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    """Bytes autograd keeps for backward: per video token, per text token, per image token (I2V), fixed."""

    per_token: float = 0.0
    per_text_token: float = 0.0
    per_image_token: float = 0.0
    fixed: float = 0.0

    def at(self, tokens: float, text_tokens: float, image_tokens: float = 0.0) -> float:
        return (
            self.per_token * tokens
            + self.per_text_token * text_tokens
            + self.per_image_token * image_tokens
            + self.fixed
        )

    def times(self, n: float) -> Saved:
        return Saved(*(n * v for v in astuple(self)))

    def __add__(self, other: Saved) -> Saved:
        return Saved(*(a + b for a, b in zip(astuple(self), astuple(other))))


# The tensor a block Linear reads: Linears sharing an input share one saved tensor in float32.
LINEAR_INPUT = {
    "attn1.to_q": "attn1.in",
    "attn1.to_k": "attn1.in",
    "attn1.to_v": "attn1.in",
    "attn1.to_out.0": "attn1.out",  # the self-attention output, which SDPA keeps anyway
    "attn2.to_q": "attn2.in",
    "attn2.to_k": "text",
    "attn2.to_v": "text",
    "attn2.add_k_proj": "image",
    "attn2.add_v_proj": "image",
    "attn2.to_out.0": "attn2.out",  # the cross-attention output, kept by SDPA
    "ffn.net.0.proj": "ffn.in",
    "ffn.net.2": "ffn.hidden",  # the GELU output (F wide)
}
KEPT_BY_ATTENTION = ("attn1.out", "attn2.out")


def block_saved(shape: TransformerShape, work: StageWork, precision: str) -> Saved:
    """Bytes one `WanTransformerBlock` keeps for backward (diffusers 0.42, peft LoRA, torch autocast), the bf16
    weight copies apart (`block_weight_copies`).

    Counted from the block's forward (D hidden, F FFN, H heads; `a` = 2 bytes under bf16 autocast, else 4).
    Whenever a gradient flows through the block (the frozen blocks of stage 1b too), per video token:
        float32  3D  inputs of norm1, norm2, norm3 (LayerNorms on hidden_states.float())
                 3D  inputs of attn1.norm_q, attn1.norm_k, attn2.norm_q (RMSNorm; autocast runs it in float32)
                 9   their statistics (mean + rstd per LayerNorm, rstd per RMSNorm)
                 2H  log-sum-exp of the self- and the cross-attention (SDPA, flash kernels)
        a        4D  self-attention q (after RoPE), k (after RoPE), v, output
                 2D  cross-attention q, output
                 F   the GELU input
      = 4 (6D + 9 + 2H) + a (6D + F) bytes; frozen Linears keep no input (no weight gradient). Per text token:
      the cross-attention k and v, 2aD (I2V: the same per image token, and per video token the image
      attention's output aD and log-sum-exp 4H). Fixed: the six (1, 6, D) modulation vectors and two
      (1 + scale) vectors in float32, 4 x 8D.
    LoRA (stage 2) adds, per LoRA Linear on the video side, its input and its A output (rank r):
        float32: inputs shared by the Linears reading one tensor (attn1 q/k/v read one; to_out reads the
                 attention output SDPA keeps): 4 (3D + F) with LoRA on every video Linear; + 4r per Linear
        bf16:    each LoRA Linear keeps its own bf16 copy of its input (peft casts the input to the float32
                 LoRA weight, autocast casts it back to a new tensor): 2 x in_features + 2r per Linear
      and with LoRA on attn2.to_k / to_v, per text token: the key's RMSNorm input and rstd 4 (D + 1) (the key
      now needs a gradient), a bf16 input copy 2D per Linear (float32: the text itself, kept once per model),
      and ar per Linear.
    Full fine-tuning adds 4 x 6D per video token (norm1 and norm3 outputs and the three RMSNorm outputs, whose
    scales and weights train; the FFN output, whose gate trains) and a (4D + F) (the inputs of attn1 q/k/v,
    attn2.to_q, both FFN Linears, the self-attention output before its gate), and per text token the key's
    RMSNorm input, output and rstd 4 (2D + 1).
    tests/test_adapt_plan.py checks every term to the byte against saved_tensors_hooks."""
    if work.kind == "embedder" or not work.grad_through_blocks:
        return Saved()
    d, f, h = shape.hidden_dim, shape.ffn_dim, shape.num_heads
    bf16 = precision == "bf16"
    a = 2 if bf16 else F32
    image = shape.image_tokens > 0
    per_token = F32 * (6 * d + 9 + 2 * h) + a * (6 * d + f)
    per_text = per_image = a * 2 * d  # the k and v of each cross-attention
    if image:
        per_token += a * d + F32 * h  # the image attention's output and log-sum-exp
    if work.kind == "lora":
        by_name = {lin.name: lin for lin in shape.linears}
        lora = [by_name[n] for n in work.lora_linears]
        video = [lin for lin in lora if lin.side == "video"]
        if bf16:
            per_token += sum(2 * lin.in_features for lin in video)
        else:  # I2V: attn2.to_out reads the sum of the two attention outputs, which nothing else keeps
            kept = ("attn1.out",) if image else KEPT_BY_ATTENTION
            inputs = {LINEAR_INPUT.get(lin.name, lin.name): lin.in_features for lin in video}
            per_token += F32 * sum(v for k, v in inputs.items() if k not in kept)
        per_token += a * work.lora_rank * len(video)
        names = {lin.name for lin in lora}
        for side, key in (("text", "attn2.to_k"), ("image", "attn2.add_k_proj")):
            n = sum(lin.side == side for lin in lora)
            extra = (
                (F32 * (d + 1) if key in names else 0) + (2 * d if bf16 else 0) * n + a * work.lora_rank * n
            )
            if side == "text":
                per_text += extra
            else:
                per_image += extra
    elif work.kind == "full":
        per_token += F32 * 6 * d + a * (4 * d + f)
        per_text += F32 * (2 * d + 1)
    return Saved(per_token, per_text, per_image if image else 0.0, fixed=F32 * 8 * d)


def block_weight_copies(shape: TransformerShape, work: StageWork, precision: str) -> float:
    """Bytes of the bf16 weight copies one block keeps under autocast (0 in float32): autocast casts each
    Linear's float32 weight to a new bf16 tensor, which autograd keeps when the Linear's input needs a
    gradient (every Linear on the video side; all of them under full fine-tuning, the text then needs one
    too) and for LoRA the A weights on the video side and every B weight (the A output needs a gradient)."""
    if precision != "bf16" or work.kind == "embedder" or not work.grad_through_blocks:
        return 0.0
    if work.kind == "full":
        return 2.0 * sum(lin.weights for lin in shape.linears)
    weights = sum(lin.weights for lin in shape.linears if lin.side == "video")
    if work.kind == "lora":
        r, by_name = work.lora_rank, {lin.name: lin for lin in shape.linears}
        lora = [by_name[n] for n in work.lora_linears]
        weights += sum(r * lin.in_features for lin in lora if lin.side == "video")
        weights += sum(r * lin.out_features for lin in lora)
    return 2.0 * weights


def checkpointed_block_saved(shape: TransformerShape, work: StageWork, precision: str) -> Saved:
    """Bytes a block keeps under gradient checkpointing: its input hidden states only (diffusers checkpoints
    each block with use_reentrant=False; the text, time and RoPE inputs are shared by all blocks). The
    residual stream is bf16 under autocast (the patch embedder's output dtype), else float32."""
    if work.kind == "embedder" or not work.grad_through_blocks:
        return Saved()
    return Saved(per_token=(2 if precision == "bf16" else F32) * shape.hidden_dim)


def model_saved(shape: TransformerShape, work: StageWork, precision: str) -> Saved:
    """Bytes kept outside the blocks: RoPE cos and sin (float32, one head_dim each per token, shared by the
    blocks), the patch embedder's input, the head (norm_out input and output in float32, the statistics, the
    proj_out input) and the loss (the float32 prediction and its difference to the target)."""
    if work.kind == "embedder":
        return Saved()
    d, a = shape.hidden_dim, (2 if precision == "bf16" else F32)
    head = F32 * (2 * d + 2) + a * d + 2 * F32 * shape.out_channels
    if not work.grad_through_blocks:
        return Saved(per_token=head)
    rope = 2 * F32 * shape.head_dim
    return Saved(
        per_token=rope + a * shape.in_channels + head, per_text_token=F32 * d, per_image_token=F32 * d
    )


def working_set(shape: TransformerShape, work: StageWork, precision: str) -> Saved:
    """Transient memory on top of what is kept, at the peak of the backward (the float32 gradients of one
    block's hidden states and FFN activations in flight): 4 (D + F) bytes per token, calibrated against the
    allocator's peak on CPU in tests/test_adapt_plan.py (within 5% there; GPU kernels may differ)."""
    if work.kind == "embedder":
        return Saved()
    if not work.grad_through_blocks:
        return Saved(per_token=F32 * shape.hidden_dim)
    return Saved(per_token=F32 * (shape.hidden_dim + shape.ffn_dim))


# ---- memory per GPU -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU of one stage under one layout."""

    frozen_weights: float
    trained_weights: float
    master_copies: float  # 0: the trained weights are float32 already
    optimizer: float  # AdamW: two float32 moments
    gradients: float
    ema: float
    parallel_buffers: float  # DDP's gradient buckets, or FSDP's gathered blocks and their unsharded gradients
    weight_copies: float  # bf16 casts of block weights that autocast makes and autograd keeps
    activations: float  # what autograd keeps (blocks + the rest)
    working: float  # transient at the peak of the backward
    optimizer_step: float  # transient of AdamW's foreach step (after the backward, activations freed)

    @property
    def persistent(self) -> float:
        return (
            self.frozen_weights
            + self.trained_weights
            + self.master_copies
            + self.optimizer
            + self.gradients
            + self.ema
            + self.parallel_buffers
        )

    @property
    def backward_peak(self) -> float:
        """What the forward and backward add on top of the persistent part."""
        return self.weight_copies + self.activations + self.working

    @property
    def total(self) -> float:
        """The peak: persistent + the larger of the backward's and the optimiser step's transients."""
        return self.persistent + max(self.backward_peak, self.optimizer_step)


def stage_memory(shape: TransformerShape, work: StageWork, layout: Layout, tokens: int) -> Memory:
    """Memory per GPU of `work` on clips of `tokens` video tokens (the whole sequence; context parallelism
    splits it over `layout.context_parallel` GPUs). FSDP2 shards over every GPU; DDP keeps a second copy of
    the gradients in its buckets."""
    shards = layout.shards
    trained = work.trainable_params
    frozen = shape.total_params + work.lora_block_params * shape.num_layers - trained
    buffers = 0.0
    if layout.gpus > 1 and layout.parallel == "ddp":
        buffers = F32 * trained
    elif layout.gpus > 1:  # this block and the prefetched next one gathered, their gradients unsharded
        block = shape.block_params + work.lora_block_params
        buffers = 2 * WEIGHT_BYTES * block + 2 * F32 * work.trainable_block_params
    block = block_saved(shape, work, layout.precision)
    copies = block_weight_copies(shape, work, layout.precision)
    if layout.checkpointing:  # every block's input, plus the one block recomputed in backward
        kept = checkpointed_block_saved(shape, work, layout.precision)
        blocks = Saved(kept.per_token * shape.num_layers) + block
    else:
        blocks = block.times(shape.num_layers)
        copies *= shape.num_layers
    saved = blocks + model_saved(shape, work, layout.precision)
    tokens_here = tokens / layout.context_parallel
    b = work.batch_size
    return Memory(
        frozen_weights=WEIGHT_BYTES * frozen / shards,
        trained_weights=WEIGHT_BYTES * trained / shards,
        master_copies=0.0,
        optimizer=2 * F32 * trained / shards,
        gradients=F32 * trained / shards,
        ema=F32 * trained / shards if work.ema else 0.0,
        parallel_buffers=buffers,
        weight_copies=copies,
        activations=b * saved.at(tokens_here, shape.text_tokens, shape.image_tokens),
        working=b * working_set(shape, work, layout.precision).at(tokens_here, 0),
        optimizer_step=F32 * trained / shards,  # one float32 temporary per trained weight
    )


def embedder_stage_memory(shape: TransformerShape, work: StageWork, tokens: int, adamw: bool) -> Memory:
    """Stage 1a runs no transformer: two patch embedders (the base one counted at the new one's size), the
    base embeddings of a clip (the Wan grid holds ~4x the tokens, pooled 2 x 2) in float32, and the float64
    rows [x; 1], targets and sums G, R of the exact solve, or AdamW on the new embedder over a batch."""
    d, k = shape.hidden_dim, shape.in_channels
    embedder = (k + 1) * d * F32
    teacher = 4 * tokens * d * F32 + tokens * d * F32
    if adamw:
        per_clip = teacher + tokens * d * F32  # + the new embedder's output
        fixed = 0.0
    else:
        per_clip = teacher + tokens * (k + 1) * 8 + tokens * d * 8
        fixed = (k + 1) ** 2 * 8 + (k + 1) * d * 8
    return Memory(
        frozen_weights=embedder,
        trained_weights=embedder,
        master_copies=0.0,
        optimizer=2 * embedder if adamw else 0.0,
        gradients=embedder if adamw else 0.0,
        ema=0.0,
        parallel_buffers=0.0,
        weight_copies=0.0,
        activations=(work.batch_size if adamw else 1) * per_clip + fixed,
        working=0.0,
        optimizer_step=embedder if adamw else 0.0,
    )


# ---- FLOPs and time -------------------------------------------------------------------------------------------


def step_flops(shape: TransformerShape, work: StageWork, layout: Layout, tokens: int) -> float:
    """Model FLOPs of one optimiser step per GPU (batch per GPU, the sequence split over K GPUs).

    Forward: the cost model's (FACTS section 5) + LoRA, 2 N r (in + out) per LoRA Linear. Backward: frozen
    Linears compute only the input gradient (1x their forward), trained ones also the weight gradient (2x);
    attention 2.5x; LoRA 2x. Checkpointing runs the forward once more. Text k / v are not split by context
    parallelism (a small over-count)."""
    if work.kind == "embedder":
        return 0.0
    dims = TransformerDims(
        shape.num_layers, shape.hidden_dim, shape.ffn_dim, shape.text_tokens + shape.image_tokens
    )
    fwd = forward_flops(dims, tokens)
    linears = fwd.projections + fwd.cross_kv + fwd.ffn
    attention = fwd.self_attention + fwd.cross_attention
    lora = 0.0
    if work.kind == "lora":
        by_name = {lin.name: lin for lin in shape.linears}
        for name in work.lora_linears:
            lin = by_name[name]
            n = tokens if lin.side == "video" else shape.text_tokens + shape.image_tokens
            lora += 2.0 * n * work.lora_rank * (lin.in_features + lin.out_features) * shape.num_layers
    forward = linears + attention + lora
    if work.grad_through_blocks:
        backward = linears * (2 if work.kind == "full" else 1) + attention * ATTENTION_BACKWARD + 2 * lora
    else:
        backward = 0.0
    recompute = forward if layout.checkpointing and work.grad_through_blocks else 0.0
    return work.batch_size * (forward + backward + recompute) / layout.context_parallel


# ---- the plan -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    frames: int
    height: int
    width: int
    tokens: int  # video tokens of one clip (the whole sequence)

    @property
    def label(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


@dataclass(frozen=True)
class StagePlan:
    stage: str
    kind: str
    bucket: Bucket
    batch_size: int  # clips per GPU per micro-step
    layout: Layout
    memory: Memory  # with the layout's checkpointing setting
    memory_off: Memory  # without gradient checkpointing
    memory_on: Memory  # with it
    step_s_off: float | None
    step_s_on: float | None
    usable_bytes: float
    changes: tuple[str, ...] = field(default=())

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.usable_bytes

    def to_dict(self) -> dict:
        gib = lambda m: {k: v / GIB for k, v in {**asdict(m), "total": m.total}.items()}  # noqa: E731
        return {
            "stage": self.stage,
            "kind": self.kind,
            "bucket": asdict(self.bucket),
            "batch_size": self.batch_size,
            "tokens_per_gpu": self.bucket.tokens / self.layout.context_parallel,
            "checkpointing": self.layout.checkpointing,
            "memory_gib": gib(self.memory),
            "memory_gib_without_checkpointing": gib(self.memory_off),
            "memory_gib_with_checkpointing": gib(self.memory_on),
            "step_s_without_checkpointing": self.step_s_off,
            "step_s_with_checkpointing": self.step_s_on,
            "usable_gib": self.usable_bytes / GIB,
            "fits": self.fits,
            "changes": list(self.changes),
        }


def _memory(shape, work, layout, tokens, adamw) -> Memory:
    if work.kind == "embedder":
        return embedder_stage_memory(shape, work, tokens, adamw)
    return stage_memory(shape, work, layout, tokens)


def _step_s(shape, work, layout, tokens, hw: Hardware) -> float | None:
    flops = step_flops(shape, work, layout, tokens)
    return flops / (hw.tflops * 1e12) if flops else None


def plan_stage(
    shape: TransformerShape,
    work: StageWork,
    bucket: Bucket,
    layout: Layout,
    hw: Hardware,
    adamw_embedder: bool = False,
) -> StagePlan:
    """Memory per GPU with and without checkpointing, step times, verdict and changes for one stage."""
    off, on = replace(layout, checkpointing=False), replace(layout, checkpointing=True)
    plan = StagePlan(
        stage=work.name,
        kind=work.kind,
        bucket=bucket,
        batch_size=work.batch_size,
        layout=layout,
        memory=_memory(shape, work, layout, bucket.tokens, adamw_embedder),
        memory_off=_memory(shape, work, off, bucket.tokens, adamw_embedder),
        memory_on=_memory(shape, work, on, bucket.tokens, adamw_embedder),
        step_s_off=_step_s(shape, work, off, bucket.tokens, hw),
        step_s_on=_step_s(shape, work, on, bucket.tokens, hw),
        usable_bytes=hw.usable_bytes,
    )
    if plan.fits:
        return plan
    return replace(plan, changes=tuple(suggest_changes(shape, work, bucket, layout, hw)))


def _fits(shape, work, layout, tokens, hw) -> bool:
    return stage_memory(shape, work, layout, tokens).total <= hw.usable_bytes


def _gib(shape, work, layout, tokens) -> str:
    return f"{stage_memory(shape, work, layout, tokens).total / GIB:.1f} GiB"


def more_gpus(gpus: int, limit: int = 1024) -> list[int]:
    """GPU counts above `gpus` a run would use: powers of two up to 8, then whole nodes of 8."""
    counts = [n for n in (2, 4, 8) if n > gpus] + list(range(max(16, (gpus // 8 + 1) * 8), limit + 1, 8))
    return counts


def suggest_changes(
    shape: TransformerShape, work: StageWork, bucket: Bucket, layout: Layout, hw: Hardware
) -> list[str]:
    """Ways to make a stage fit, cheapest first: gradient checkpointing; FSDP; a context-parallel degree (a
    divisor of the GPU count) or else more GPUs; and always the longest bucket that fits, and batch 1."""
    tokens = bucket.tokens
    ckpt = replace(layout, checkpointing=True)
    if not layout.checkpointing and _fits(shape, work, ckpt, tokens, hw):
        return [
            f"model.gradient_checkpointing=true ({_gib(shape, work, ckpt, tokens)}; one more forward per step)"
        ]
    out = []
    also = [] if layout.checkpointing else ["model.gradient_checkpointing=true"]
    best = ckpt
    if layout.parallel == "ddp" and layout.gpus > 1:
        best = replace(ckpt, parallel="fsdp")
        if _fits(shape, work, best, tokens, hw):
            return [" ".join(["parallel=fsdp", *also]) + f" ({_gib(shape, work, best, tokens)})"]
        also.append("parallel=fsdp")
    with_ = f" with {' '.join(also)}" if also else ""
    cp = [k for k in range(layout.context_parallel + 1, layout.gpus + 1) if layout.gpus % k == 0]
    found = next((k for k in cp if _fits(shape, work, replace(best, context_parallel=k), tokens, hw)), None)
    if found:
        lay = replace(best, context_parallel=found)
        out.append(
            f"--context-parallel {found}{with_} ({_gib(shape, work, lay, tokens)}, {tokens // found:,} tokens per GPU)"
        )
    else:
        for n in more_gpus(layout.gpus):
            ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if layout.context_parallel <= k <= n and n % k == 0]
            lays = [replace(best, gpus=n, parallel="fsdp", context_parallel=k) for k in ks]
            lay = next((lay for lay in lays if _fits(shape, work, lay, tokens, hw)), None)
            if lay is not None:
                out.append(
                    f"{n} GPUs with fsdp, checkpointing and --context-parallel {lay.context_parallel} "
                    f"({_gib(shape, work, lay, tokens)})"
                )
                break
    fit = max_tokens(shape, work, layout, hw)
    fit_ckpt = max_tokens(shape, work, ckpt, hw) if not layout.checkpointing else fit
    if fit_ckpt:
        note = f" ({fit:,} without checkpointing)" if fit != fit_ckpt else ""
        out.append(
            f"smaller buckets: at most {fit_ckpt:,} tokens per clip with checkpointing{note}; this one has {tokens:,}"
        )
    if work.batch_size > 1:
        out.append(f"batch_size=1 and grad_accum x{work.batch_size}: activations / {work.batch_size}")
    if not out:
        out.append("no layout within 1024 GPUs fits: the weights and states alone exceed the memory")
    return out


def max_tokens(shape: TransformerShape, work: StageWork, layout: Layout, hw: Hardware) -> int:
    """The longest sequence (video tokens per clip) that fits under `layout`, 0 if none does."""
    if not _fits(shape, work, layout, 1, hw):
        return 0
    lo, hi = 1, 2
    while _fits(shape, work, layout, hi, hw) and hi < 2**40:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _fits(shape, work, layout, mid, hw) else (lo, mid)
    return lo


# ---- rendering ------------------------------------------------------------------------------------------------


def plan_table(plans: list[StagePlan]) -> str:
    """A markdown table, one row per stage, then the verdicts."""
    from ..bench.report import markdown_table

    g = lambda v: f"{v / GIB:.2f}"  # noqa: E731
    s = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    headers = [
        "stage",
        "largest bucket",
        "batch",
        "tokens/GPU",
        "frozen w.",
        "trained w.",
        "AdamW",
        "grads",
        "EMA+buffers",
        "act. no ckpt",
        "act. ckpt",
        "total no ckpt",
        "total ckpt",
        "step s no ckpt",
        "step s ckpt",
    ]
    rows = []
    for p in plans:
        m, off, on = p.memory, p.memory_off, p.memory_on
        rows.append(
            [
                p.stage,
                p.bucket.label,
                str(p.batch_size),
                f"{p.bucket.tokens // p.layout.context_parallel:,}",
                g(m.frozen_weights),
                g(m.trained_weights + m.master_copies),
                g(m.optimizer),
                g(m.gradients),
                g(m.ema + m.parallel_buffers),
                g(off.backward_peak),
                g(on.backward_peak),
                g(off.total),
                g(on.total),
                s(p.step_s_off),
                s(p.step_s_on),
            ]
        )
    legend = (
        "GiB per GPU. Weights and states as the trainer holds them: float32, no separate master copies (bf16 is "
        "autocast); EMA+buffers: the EMA copy, DDP's gradient buckets or FSDP's gathered blocks; act.: what "
        "autograd keeps, autocast's bf16 weight copies and the backward's working set; total: the peak."
    )
    lines = [markdown_table(headers, rows), "", legend, "", "Verdicts:"]
    for p in plans:
        state = "on" if p.layout.checkpointing else "off"
        head = (
            f"- {p.stage}: {'fits' if p.fits else 'does NOT fit'} ({p.memory.total / GIB:.1f} of "
            f"{p.usable_bytes / GIB:.1f} usable GiB, checkpointing {state})"
        )
        lines.append(head)
        lines += [f"    change: {c}" for c in p.changes]
    return "\n".join(lines)


def plan_header(shape: TransformerShape, layout: Layout, hw: Hardware, model: str, autoencoder: str) -> str:
    """One line: the model, the autoencoder, the GPUs and layout, the assumed throughput."""
    return (
        f"{model}: {shape.num_layers} layers, D {shape.hidden_dim}, FFN {shape.ffn_dim}, "
        f"{shape.total_params / 1e9:.2f}B parameters, on {autoencoder}; {layout.gpus} GPU(s) x "
        f"{hw.gpu_memory_gib:g} GiB ({hw.headroom:.0%} kept free), {layout.parallel}, context parallel "
        f"{layout.context_parallel}, {layout.precision}; step time at an assumed {hw.tflops:g} TFLOP/s "
        "sustained per GPU (communication not modelled)"
    )


# ---- inputs from the configs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanInputs:
    shape: TransformerShape
    works: dict[str, StageWork]  # by stage name
    buckets: dict[str, Bucket]  # the largest of each stage
    latent: LatentLayout
    model_name: str


def autoencoder_layout(spec: str, patch: tuple[int, int, int]) -> LatentLayout:
    """The DC-AE-V's (spatial, temporal, channels) with the adapted patch, read cheaply: a folder's (or the
    bundled default's) config.json, else the fXtYcZ in the name (a preset, or an official file that need not
    be on this machine), else the official file's tensor shapes."""
    from ..models.dcae_v import DCAEVConfig
    from ..models.dcae_v.loading import default_model_dir
    from ..models.dcae_v.official import infer_config, read_official_checkpoint

    path = Path(spec) if spec and spec != "default" else default_model_dir()
    m = re.search(r"f(\d+)t(\d+)c(\d+)", path.name)
    if path.is_dir():
        try:
            raw = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise DCVGError(f"model.autoencoder={spec}: no readable config.json in {path} ({e})") from e
        cfg = DCAEVConfig(**{k: v for k, v in raw.items() if k in DCAEVConfig.__dataclass_fields__})
        s, t, c = cfg.spatial_compression, cfg.temporal_compression, cfg.latent_channels
    elif m:
        s, t, c = (int(v) for v in m.groups())
    elif path.is_file():
        cfg = infer_config(read_official_checkpoint(path))
        s, t, c = cfg.spatial_compression, cfg.temporal_compression, cfg.latent_channels
    else:
        raise DCVGError(
            f"model.autoencoder={spec}: no such folder or file, and no fXtYcZ in its name to read the latent "
            "layout from; give the autoencoder's path or a preset name such as dc-ae-v-f32t4c32"
        )
    name = f"dc-ae-v f{s}t{t}c{c} p{'x'.join(map(str, patch))}"
    return LatentLayout(name, s, t, c, tuple(patch), FrameRule.MULTIPLE_OF_T)


def base_transformer_config(cfg: AdaptConfig, model: str | None) -> tuple[dict, str]:
    """The base WanTransformer3DModel config: `model` (a registry name of `bench.wan`, a config.json or a
    folder) or the config's model.base."""
    from ..bench.wan import WAN_CONFIGS
    from .model import transformer_folder

    if model in WAN_CONFIGS:
        w = WAN_CONFIGS[model]
        return {"_class_name": "WanTransformer3DModel", **w.diffusers_kwargs()}, model
    source = model or cfg.model.base
    if not source:
        raise DCVGError(
            "model.base is not set; give it in the YAML, as model.base=PATH, or name a size with --model "
            f"({', '.join(WAN_CONFIGS)}) or a transformer config.json"
        )
    path = Path(source)
    file = path if path.is_file() else transformer_folder(path) / "config.json"
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise DCVGError(f"{file}: not a readable transformer config.json ({e})") from e
    if raw.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
        raise DCVGError(f"{file}: describes a {raw.get('_class_name')}, not a WanTransformer3DModel")
    return raw, str(source)


def _side(name: str) -> str:
    if name in ("attn2.to_k", "attn2.to_v"):
        return "text"
    if name in ("attn2.add_k_proj", "attn2.add_v_proj"):
        return "image"
    return "video"


def plan_inputs(cfg: AdaptConfig, model: str | None = None) -> PlanInputs:
    """Shapes, parameter counts and the largest bucket of every enabled stage, from the configs (the
    transformer is built on the meta device: no weights are read)."""
    import torch
    from diffusers import WanTransformer3DModel

    from .model import adapted_config

    base, model_name = base_transformer_config(cfg, model)
    latent = autoencoder_layout(cfg.model.autoencoder, tuple(cfg.model.patch_size))
    try:
        adapted = adapted_config(base, latent.channels, cfg.model.task, cfg.model.patch_size)
        with torch.device("meta"):
            net = WanTransformer3DModel.from_config(adapted)
    except (TypeError, ValueError, KeyError) as e:
        if isinstance(e, DCVGError):
            raise
        raise DCVGError(f"{model_name}: cannot build the adapted transformer from its config ({e})") from e
    block = net.blocks[0]
    linears = tuple(
        BlockLinear(n, m.in_features, m.out_features, _side(n))
        for n, m in block.named_modules()
        if isinstance(m, torch.nn.Linear)
    )
    shape = TransformerShape(
        num_layers=len(net.blocks),
        num_heads=int(adapted["num_attention_heads"]),
        head_dim=int(adapted["attention_head_dim"]),
        ffn_dim=int(adapted["ffn_dim"]),
        in_channels=int(adapted["in_channels"]),
        out_channels=int(adapted["out_channels"]),
        text_tokens=cfg.data.text_tokens,
        image_tokens=IMAGE_TOKENS if cfg.model.task == "i2v" else 0,
        total_params=sum(p.numel() for p in net.parameters()),
        block_params=sum(p.numel() for p in block.parameters()),
        linears=linears,
    )
    count = lambda pick: sum(p.numel() for n, p in net.named_parameters() if pick(n))  # noqa: E731
    in_block0 = lambda pick: lambda n: n.startswith("blocks.0.") and pick(n)  # noqa: E731
    works, buckets = {}, {}
    for name, shapes in cfg.training_shapes():
        bucket = max(
            (Bucket(f, h, w, latent.num_tokens(f, h, w, GridRounding.PAD)) for f, h, w in shapes),
            key=lambda b: b.tokens,
        )
        buckets[name] = bucket
        works[name] = _stage_work(name, cfg, net, shape, count, in_block0)
    return PlanInputs(shape, works, buckets, latent, model_name)


def stage_settings(cfg: AdaptConfig, name: str):
    """The optimiser settings of stage `name` (batch size, EMA): `AdaptConfig.stage_settings` where the config
    has resolution stages, else align_head for 1b and finetune for every other stage."""
    if hasattr(cfg, "stage_settings"):
        return cfg.stage_settings(name)
    return cfg.align_head if name == "align-head" else cfg.finetune


def _stage_work(name: str, cfg: AdaptConfig, net, shape: TransformerShape, count, in_block0) -> StageWork:
    """What stage `name` trains: 1a the embedder alone, 1b embedder + head through frozen blocks, 2 and the
    resolution stages (any other name; they continue stage 2's LoRA) LoRA or every weight."""
    from .model import finetune_params, head_alignment_params, lora_target_modules

    if name == "align-embedder":
        a = cfg.align_embedder  # the exact solve reads one clip at a time
        batch = a.batch_size if a.method == "adamw" else 1
        return StageWork(name, "embedder", batch, (shape.in_channels + 1) * shape.hidden_dim, 0)
    s = stage_settings(cfg, name)
    if name == "align-head":
        pick = head_alignment_params(s.train_embedder, s.train_modulation)
        return StageWork(
            name,
            "frozen",
            s.batch_size,
            count(pick),
            count(in_block0(pick)),
            grad_through_blocks=s.train_embedder,
        )
    f = cfg.finetune
    if f.full_finetune:
        return StageWork(
            name, "full", s.batch_size, shape.total_params, shape.block_params, ema=s.ema_decay > 0
        )
    targets = lora_target_modules(net, f.lora_targets, f.lora_cross_attention)
    in_block = tuple(t[len("blocks.0.") :] for t in targets if t.startswith("blocks.0."))
    lora_per_block = sum(
        f.lora_rank * (lin.in_features + lin.out_features) for lin in shape.linears if lin.name in in_block
    )
    base_trained = count(finetune_params(False))  # embedder, head, modulation (no LoRA on the meta model)
    return StageWork(
        name,
        "lora",
        s.batch_size,
        base_trained + lora_per_block * shape.num_layers,
        lora_per_block,
        lora_rank=f.lora_rank,
        lora_linears=in_block,
        lora_block_params=lora_per_block,
        ema=s.ema_decay > 0,
    )


def plan_run(
    cfg: AdaptConfig,
    gpus: int,
    gpu_memory_gib: float,
    context_parallel: int = 1,
    parallel: str | None = None,
    tflops: float = DEFAULT_TFLOPS,
    headroom: float = DEFAULT_HEADROOM,
    model: str | None = None,
) -> tuple[PlanInputs, Layout, Hardware, list[StagePlan]]:
    """The plan of every enabled stage of `cfg` on `gpus` GPUs of `gpu_memory_gib` GiB."""
    check_plan_args(gpus, gpu_memory_gib, context_parallel, parallel or cfg.parallel, tflops, headroom)
    inputs = plan_inputs(cfg, model)
    layout = Layout(
        gpus, parallel or cfg.parallel, context_parallel, cfg.precision, cfg.model.gradient_checkpointing
    )
    hw = Hardware(gpu_memory_gib, tflops, headroom)
    adamw = cfg.align_embedder.method == "adamw"
    plans = [
        plan_stage(inputs.shape, inputs.works[name], inputs.buckets[name], layout, hw, adamw)
        for name in inputs.works
    ]
    return inputs, layout, hw, plans


def check_plan_args(
    gpus: int, gpu_memory_gib: float, context_parallel: int, parallel: str, tflops: float, headroom: float
) -> None:
    if gpus < 1:
        raise DCVGError(f"--gpus {gpus}: must be at least 1")
    if not gpu_memory_gib > 0:
        raise DCVGError(f"--gpu-memory {gpu_memory_gib}: give the GiB of one GPU, e.g. 80")
    if context_parallel < 1 or gpus % context_parallel:
        raise DCVGError(
            f"--context-parallel {context_parallel}: must be at least 1 and divide --gpus {gpus} (the GPUs that "
            "share a sequence form groups)"
        )
    if parallel not in ("ddp", "fsdp"):
        raise DCVGError(f"--parallel {parallel!r}: use ddp or fsdp")
    if not tflops > 0:
        raise DCVGError(f"--tflops {tflops}: give the sustained TFLOP/s of one GPU, e.g. 400")
    if not 0 <= headroom < 1:
        raise DCVGError(f"--headroom {headroom}: a share of GPU memory in [0, 1), e.g. 0.1")
