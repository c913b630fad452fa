"""Exponential moving average of a model's parameters (sharded like the model under FSDP2)."""

from __future__ import annotations

import torch
from torch import nn


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor shard gathered into a plain tensor (a collective under FSDP); plain tensors as they are."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class EMA:
    def __init__(self, model: nn.Module, decay: float, trainable_only: bool = False) -> None:
        """An average of every parameter, or with `trainable_only` of those that require grad (LoRA
        fine-tuning: the frozen base weights need no average)."""
        self.decay = decay
        self.shadow = {
            n: p.detach().clone().float()
            for n, p in model.named_parameters()
            if p.requires_grad or not trainable_only
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        names = list(self.shadow)
        torch._foreach_lerp_(
            [self.shadow[n] for n in names], [params[n].detach().float() for n in names], 1 - self.decay
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) float32 weights, on CPU."""
        return {n: full_tensor(t).cpu() for n, t in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        for n, t in self.shadow.items():
            full = state[n].to(
                t.device if not hasattr(t, "device_mesh") else t.to_local().device, torch.float32
            )
            if hasattr(t, "device_mesh"):
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full, t.device_mesh, t.placements)
            t.copy_(full)
