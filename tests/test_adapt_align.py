"""Stage 1a math (Eq. 2) and the flow-matching helpers: patch order, pooling, the exact least-squares
solve against the paper's AdamW loop, the plateau rule, and the adapted transformer's construction."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from dcvideogen.adapt import align, flow
from dcvideogen.adapt.model import (
    LoraSpec,
    adapted_state,
    add_lora,
    build_adapted_transformer,
    finetune_params,
    head_alignment_params,
    lora_parameter_count,
    lora_target_modules,
    set_trainable,
)
from dcvideogen.adapt.train import plateau_update
from dcvideogen.errors import DCVGError

from adapt_parts import tiny_wan_transformer

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


def tiny_base(in_channels=16, image_dim=None):
    return tiny_wan_transformer("i2v" if in_channels == 36 else "t2v")


def test_patch_rows_match_the_conv3d_embedder():
    conv = torch.nn.Conv3d(5, 7, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    x = torch.randn(2, 5, 3, 4, 6)
    w, b = align.embedder_weight_rows(conv)
    rows = align.patch_rows(x, (1, 2, 2)) @ w.T + b
    torch.testing.assert_close(rows, align.token_rows(conv(x)), rtol=1e-5, atol=1e-5)


def test_pooled_base_tokens_average_the_base_grid():
    base = torch.nn.Conv3d(16, 8, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    z = torch.randn(1, 16, 2, 8, 12)  # base tokens (2, 4, 6) -> new grid (2, 2, 3): 2x2 pooling
    target = align.pooled_base_tokens(base, z, (2, 2, 3))
    e = base(z)
    torch.testing.assert_close(target[0, :, 1, 1, 2], e[0, :, 1, 2:4, 4:6].mean(dim=(1, 2)))
    with pytest.raises(ValueError, match="whole numbers"):
        align.pooled_base_tokens(base, z, (2, 3, 3))


def _alignment_problem(seed=0, n=6):
    """Latent pairs where the new latent is a fixed linear image of the base one plus noise, so Eq. 2
    has a well-defined but imperfect solution."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.Conv3d(16, 24, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    mix = torch.randn(32, 16 * 16, generator=g) / 16
    pairs = []
    for _ in range(n):
        z = torch.randn(1, 16, 2, 8, 8, generator=g)  # Wan-like latent
        patches = z.view(1, 16, 2, 2, 4, 2, 4).permute(0, 2, 3, 5, 1, 4, 6).reshape(1, 2, 2, 2, 256)
        x = (patches @ mix.T).permute(0, 4, 1, 2, 3) + 0.1 * torch.randn(1, 32, 2, 2, 2, generator=g)
        pairs.append((x.contiguous(), align.pooled_base_tokens(base, z, (2, 2, 2))))
    return pairs


def test_exact_solve_equals_the_converged_adamw_loop():
    torch.manual_seed(0)
    pairs = _alignment_problem()
    sums = align.LeastSquaresSums(32, 24)
    for x, y in pairs:
        sums.add(align.patch_rows(x, (1, 1, 1)), align.token_rows(y))
    exact = torch.nn.Conv3d(32, 24, kernel_size=1)
    align.set_embedder(exact, *sums.solve(ridge=0.0))
    exact_loss = sums.loss(*align.embedder_weight_rows(exact))
    direct = sum(align.alignment_loss(exact(x), y).item() for x, y in pairs) / len(pairs)
    assert exact_loss == pytest.approx(direct, rel=1e-4)  # the loss from the sums is the loss

    adamw = torch.nn.Conv3d(32, 24, kernel_size=1)
    start = sums.loss(*align.embedder_weight_rows(adamw))
    opt = torch.optim.AdamW(adamw.parameters(), lr=1e-2, weight_decay=0.0)
    for step in range(1500):
        x, y = pairs[step % len(pairs)]
        loss = align.alignment_loss(adamw(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for g in opt.param_groups:
        g["lr"] = 1e-3
    for step in range(1500):
        x, y = pairs[step % len(pairs)]
        opt.zero_grad()
        align.alignment_loss(adamw(x), y).backward()
        opt.step()
    adam_loss = sums.loss(*align.embedder_weight_rows(adamw))
    assert start > 10 * exact_loss
    assert adam_loss >= exact_loss * (1 - 1e-6)  # nothing beats the minimiser
    assert adam_loss == pytest.approx(exact_loss, rel=0.02)  # and AdamW converges to it


def test_aligned_embedder_beats_a_random_one_on_held_out_pairs():
    pairs = _alignment_problem(n=48)
    train, held = pairs[:40], pairs[40:]
    sums, held_sums = align.LeastSquaresSums(32, 24), align.LeastSquaresSums(32, 24)
    for part, s in ((train, sums), (held, held_sums)):
        for x, y in part:
            s.add(align.patch_rows(x, (1, 1, 1)), align.token_rows(y))
    aligned, random = torch.nn.Conv3d(32, 24, 1), torch.nn.Conv3d(32, 24, 1)
    align.set_embedder(aligned, *sums.solve(1e-6))
    assert held_sums.loss(*align.embedder_weight_rows(aligned)) < 0.5 * held_sums.loss(
        *align.embedder_weight_rows(random)
    )


def test_flow_matching_helpers():
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(flow.shift_sigma(sigma, 1.0), sigma)
    shifted = flow.shift_sigma(sigma, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and torch.all(shifted[1:3] > sigma[1:3])
    x0, eps = torch.randn(4, 2, 1, 2, 2), torch.randn(4, 2, 1, 2, 2)
    xt = flow.noisy_latent(x0, eps, sigma)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[-1], eps[-1])
    # the velocity target is the derivative of x_t in sigma
    d = (flow.noisy_latent(x0, eps, sigma + 1e-3) - xt) / 1e-3
    torch.testing.assert_close(d, flow.velocity_target(x0, eps), rtol=1e-2, atol=1e-2)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([flow.sample_sigma(g, "logit_normal", shift=5.0) for _ in range(200)])
    assert draws.min() > 0 and draws.max() < 1 and draws.mean() > 0.6  # shift 5 moves toward noise


def test_plateau_rule_fires_after_patience_without_improvement():
    p = {}
    stops = [plateau_update(p, 1.0 / (1 + s) if s < 20 else 0.05, s, 0.5, 0.01, 10) for s in range(1, 60)]
    first = stops.index(True) + 1
    assert 25 <= first <= 40 and p["best_step"] < first
    assert not any(plateau_update({}, 1.0, s, 0.5, 0.01, 0) for s in range(5))  # patience 0: off


def test_adapted_transformer_keeps_base_weights_and_zero_head():
    base = tiny_base()
    model = build_adapted_transformer(base, 32, "t2v", (1, 1, 1))
    assert model.config.in_channels == 32 and tuple(model.config.patch_size) == (1, 1, 1)
    sd, bsd = model.state_dict(), base.state_dict()
    for k, v in bsd.items():
        if not k.startswith(("patch_embedding.", "proj_out.")):
            assert torch.equal(sd[k], v), k
    assert torch.count_nonzero(model.proj_out.weight) == 0 and model.patch_embedding.weight.abs().sum() > 0
    out = model(torch.randn(1, 32, 2, 2, 2), torch.tensor([500.0]), torch.randn(1, 5, 32)).sample
    assert out.shape == (1, 32, 2, 2, 2) and torch.count_nonzero(out) == 0  # a zero head predicts 0
    with pytest.raises(DCVGError, match="T2V model"):
        build_adapted_transformer(base, 32, "i2v")
    i2v = build_adapted_transformer(tiny_base(36, image_dim=80), 32, "i2v")
    assert i2v.config.in_channels == 68


def test_stage_parameter_selection_and_lora():
    model = build_adapted_transformer(tiny_base(), 32, "t2v")
    head = set_trainable(model, head_alignment_params(True, True))
    assert sorted(head) == [
        "patch_embedding.bias",
        "patch_embedding.weight",
        "proj_out.bias",
        "proj_out.weight",
        "scale_shift_table",
    ]
    targets = lora_target_modules(model, TARGETS)
    assert len(targets) == 2 * 10  # self + cross q, k, v, out and both FFN linears, 2 blocks
    assert len(lora_target_modules(model, TARGETS, cross_attention=False)) == 2 * 6
    add_lora(model, LoraSpec(4, 8.0, tuple(targets)))
    chosen = set_trainable(model, finetune_params(False))
    lora = [n for n in chosen if "lora_" in n]
    assert len(lora) == 2 * len(targets)
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == lora_parameter_count(
        model, [t + ".base_layer" for t in targets], 4
    )
    assert set(adapted_state(model)) == set(chosen)


def test_lora_count_for_wan_1_3b_matches_the_paper():
    """Rank 256 on the ten linears of Wan-1.3B's 30 blocks + the new embedder and head: the paper's 350.37M
    trainable parameters (Table 8) to 0.1%."""
    with torch.device("meta"):
        big = WanTransformer3DModel(
            patch_size=(1, 1, 1),
            num_attention_heads=12,
            attention_head_dim=128,
            in_channels=32,
            out_channels=32,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=8960,
            num_layers=30,
        )
    lora = lora_parameter_count(big, lora_target_modules(big, TARGETS), 256)
    new = sum(p.numel() for n, p in big.named_parameters() if n.startswith(("patch_embedding.", "proj_out.")))
    assert (lora + new) / 1e6 == pytest.approx(350.37, rel=1e-3)
