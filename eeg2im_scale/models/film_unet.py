"""A diffusers UNet conditioned on an EEG vector by FiLM through the timestep embedding.

The EEG condition is projected to the UNet's timestep-embedding width and passed as
``class_labels`` of a ``UNet2DModel`` built with ``class_embed_type="identity"``: diffusers adds
it to the timestep embedding, and with ``resnet_time_scale_shift="scale_shift"`` every ResNet
block turns that sum into a per-channel scale and shift of its normalised features —
Feature-wise Linear Modulation at every resolution. The projection's last layer starts at zero
(as adaLN-Zero in DiT), so at initialisation the network is an unconditional DDPM UNet and the
condition is faded in by training instead of injecting noise from the first step.
"""

from __future__ import annotations

import math

import torch
from diffusers import UNet2DModel
from torch import nn

from ..config import DiffusionConfig
from .attention import apply_attention_backend, select_attention_backend


class FiLMUNet(nn.Module):
    """``forward(noisy, timesteps, cond, drop_mask) → prediction`` (noise, velocity or clean image, per ``cfg.prediction_type``).

    ``null_condition`` is the learned "no EEG" vector used for classifier-free guidance: rows of
    ``cond`` selected by ``drop_mask`` are replaced by it before projection.
    """

    def __init__(self, cfg: DiffusionConfig, image_size: int, cond_dim: int, attention: str = "auto"):
        super().__init__()
        if len(cfg.attention_levels) != len(cfg.block_channels):
            raise ValueError(f"model.diffusion.attention_levels needs one entry per block_channels level "
                             f"({len(cfg.block_channels)}), got {len(cfg.attention_levels)}")
        self.cfg = cfg
        self.image_size = image_size
        self.cond_dim = cond_dim
        self.time_embed_dim = cfg.block_channels[0] * 4  # UNet2DModel's own choice
        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=3,
            out_channels=3,
            block_out_channels=tuple(cfg.block_channels),
            layers_per_block=cfg.layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels)),
            add_attention=cfg.attention_levels[-1],  # the mid block works at the deepest level's resolution
            norm_num_groups=math.gcd(32, *cfg.block_channels),
            resnet_time_scale_shift="scale_shift",
            class_embed_type="identity",
        )
        self.cond_projection = nn.Sequential(
            nn.Linear(cond_dim, self.time_embed_dim),
            nn.SiLU(),
            nn.Linear(self.time_embed_dim, self.time_embed_dim),
        )
        nn.init.zeros_(self.cond_projection[-1].weight)
        nn.init.zeros_(self.cond_projection[-1].bias)
        self.null_condition = nn.Parameter(torch.zeros(cond_dim))
        # decided on the device of the first forward: models are built on the CPU and moved after
        self.attention, self.attention_backend = attention, None
        if attention != "xformers":  # SDPA runs on any device: install it now
            self._install_attention(torch.device("cpu"))

    def _install_attention(self, device: torch.device) -> None:
        self.attention_backend = select_attention_backend(self.attention, device)
        apply_attention_backend(self.unet, self.attention_backend)

    def apply_null_condition(self, cond: torch.Tensor, drop_mask: torch.Tensor | None) -> torch.Tensor:
        """``cond`` with the rows where ``drop_mask`` is True replaced by the learned null condition."""
        if drop_mask is None:
            return cond
        return torch.where(drop_mask.view(-1, 1), self.null_condition.to(cond.dtype).expand_as(cond), cond)

    def random_drop_mask(self, batch_size: int, device: torch.device | str | None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Training-time mask: each row dropped to the null condition with probability ``cfg.cond_dropout``."""
        return torch.rand(batch_size, device=device, generator=generator) < self.cfg.cond_dropout

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        """noisy [B, 3, H, W], timesteps [B] (or scalar), cond [B, cond_dim] → prediction [B, 3, H, W]."""
        if self.attention_backend is None:
            self._install_attention(noisy.device)
        film = self.cond_projection(self.apply_null_condition(cond, drop_mask))
        return self.unet(noisy, timesteps, class_labels=film).sample
