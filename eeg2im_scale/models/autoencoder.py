"""Image autoencoder with a *vector* latent, and the pixel-range convention shared by all models.

Images travel as uint8 [B, 3, H, W] from the data loader; every model works on float images in
[-1, 1] (the range the diffusion model is trained in). :func:`to_unit_range` and
:func:`from_unit_range` are the only place that conversion is written.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import LowLevelConfig


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [-1, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_unit_range expects uint8 images, got {images.dtype}")
    return images.float().div(127.5).sub(1.0)


def from_unit_range(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255] (clamped, rounded): for saving and metrics."""
    return images.detach().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def group_count(channels: int, max_groups: int = 32) -> int:
    """The GroupNorm group count: the largest power of two ≤ ``max_groups`` dividing ``channels``."""
    return math.gcd(channels, max_groups)


def _conv_block(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1),
        nn.GroupNorm(group_count(out_ch), out_ch),
        nn.SiLU(),
    )


class ImageAutoencoder(nn.Module):
    """Strided-conv encoder to a [B, latent_dim] vector and a mirrored decoder back to pixels.

    The latent is a vector (not a feature map) so that an EEG encoder — which has no spatial
    layout — can regress it directly. Each of ``cfg.ae_channels`` halves the resolution, so
    ``image_size`` must be divisible by ``2 ** len(cfg.ae_channels)``.
    """

    def __init__(self, cfg: LowLevelConfig, image_size: int):
        super().__init__()
        levels = len(cfg.ae_channels)
        if levels == 0 or image_size % 2 ** levels:
            raise ValueError(f"image_size {image_size} must be divisible by 2**len(model.lowlevel.ae_channels) "
                             f"= {2 ** levels} (ae_channels={list(cfg.ae_channels)})")
        self.image_size = image_size
        self.latent_dim = cfg.latent_dim
        self.bottleneck_shape = (cfg.ae_channels[-1], image_size // 2 ** levels, image_size // 2 ** levels)
        bottleneck_size = math.prod(self.bottleneck_shape)

        down, in_ch = [], 3
        for ch in cfg.ae_channels:
            down += [_conv_block(in_ch, ch, stride=2), _conv_block(ch, ch, stride=1)]
            in_ch = ch
        # The latent is standardised per sample (LayerNorm without affine): its scale cannot drift
        # while the autoencoder trains, so the EEG alignment target keeps a fixed scale.
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(bottleneck_size, cfg.latent_dim),
                                     nn.LayerNorm(cfg.latent_dim, elementwise_affine=False))

        up = []
        widths = list(reversed(cfg.ae_channels))
        for ch, out_ch in zip(widths, widths[1:] + [widths[-1]]):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), _conv_block(ch, out_ch, stride=1),
                   _conv_block(out_ch, out_ch, stride=1)]
        self.decoder_input = nn.Linear(cfg.latent_dim, bottleneck_size)
        self.decoder = nn.Sequential(*up, nn.Conv2d(widths[-1], 3, 3, padding=1), nn.Tanh())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] → latent [B, latent_dim]."""
        return self.encoder(images)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, latent_dim] → [B, 3, H, W] in [-1, 1]."""
        return self.decoder(self.decoder_input(latent).view(-1, *self.bottleneck_shape))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.encode(images)
        return self.decode(latent), latent
