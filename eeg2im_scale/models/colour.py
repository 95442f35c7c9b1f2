"""Colour maths shared by a training loss (the low-level colour-distribution head) and the fidelity
metrics: it lives below both, so that models/ never imports from eval/. Images are uint8 RGB tensors
``[B, 3, H, W]``; hues are fractions of a turn in [0, 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bin_index", "check_images", "hue_histogram", "rgb_to_hsv"]


def check_images(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise TypeError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")


def rgb_to_hsv(images: Tensor) -> Tensor:
    """HSV of uint8 RGB images as float ``[B, 3, H, W]`` in [0, 1] (hue in [0, 1)).

    Grey pixels (max == min) get hue 0 and saturation 0; saturation is what later functions use
    to tell an undefined hue from a real one.
    """
    check_images(images)
    rgb = images.float() / 255.0
    r, g, b = rgb.unbind(1)
    maxc, _ = rgb.max(1)
    minc, _ = rgb.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe) % 6.0,
                      torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue)) % 1.0
    saturation = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)),
                             torch.zeros_like(maxc))
    return torch.stack((hue, saturation, maxc), 1)


def bin_index(values: Tensor, bins: int, circular: bool = False) -> Tensor:
    index = (values * bins).long()
    return index % bins if circular else index.clamp(0, bins - 1)


def hue_histogram(images: Tensor, bins: int) -> Tensor:
    """Saturation-weighted hue histogram ``[B, bins]`` summing to 1 (uniform for a grey image,
    whose hue is undefined): grey pixels carry no hue information, so they weigh nothing."""
    hsv = rgb_to_hsv(images).flatten(2)
    index = bin_index(hsv[:, 0], bins, circular=True)
    hist = torch.zeros(hsv.shape[0], bins, dtype=torch.float64, device=hsv.device)
    hist.scatter_add_(1, index, hsv[:, 1].double())
    total = hist.sum(-1, keepdim=True)
    return torch.where(total > 0, hist / total.clamp_min(1e-12), torch.full_like(hist, 1.0 / bins))
