"""Exponential moving average of weights, parameterised by half-life in thousands of images (edm).

A half-life in images, unlike a per-step decay, means the same thing at every batch size and
world size: after ``halflife_kimg`` thousand images the old weights count half.
"""

from __future__ import annotations

import contextlib

import torch


def ema_beta(images_per_step: int, halflife_kimg: float) -> float:
    return 0.5 ** (images_per_step / max(halflife_kimg * 1000.0, 1e-8))


class EMA:
    def __init__(self, module: torch.nn.Module, zero3: bool = False):
        self.zero3 = zero3
        with self._gathered(module):
            self.shadow = {n: p.detach().float().clone().cpu() if zero3 else p.detach().float().clone()
                           for n, p in module.named_parameters()}

    def _gathered(self, module):
        """Under ZeRO-3 parameters are partitioned across ranks: gather them to read them."""
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, beta: float) -> None:
        with self._gathered(module):
            for name, param in module.named_parameters():
                shadow = self.shadow[name]
                shadow.lerp_(param.detach().float().to(shadow.device), 1.0 - beta)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.cpu() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            self.shadow[name].copy_(tensor)
