"""EEG encoders built on braindecode backbones.

Every backbone is built with ``n_outputs`` = the embedding width, so its own final layer (a
linear layer or a full-length "final conv") is the projection to the embedding. That is the one
construction all five backbones support unchanged: their heads differ too much (conv vs linear,
ATCNet's ensemble of per-window max-norm linears averaged together) to strip reliably, and
braindecode already computes the flattened feature size for any input length.
"""

from __future__ import annotations

import typing
import warnings
from typing import Callable

import torch
from torch import nn

from ..config import Backbone, HighLevelConfig, LowLevelConfig

# braindecode classes by name; braindecode (and MNE behind it) is imported when a backbone is built,
# so the diffusion-only paths (sampling, GPU benchmarks) import this package without it
BACKBONES = typing.get_args(Backbone)
_SHAPE_ERRORS = (ValueError, RuntimeError)  # what braindecode raises when the input is too short
_LONGEST_SEARCHED = 1 << 16


def _minimum_n_times(builds: Callable[[int], bool], too_short: int) -> int | None:
    """Smallest n_times that ``builds``, given that ``too_short`` does not (None if none up to 65536)."""
    high = max(2 * too_short, 2)
    while not builds(high):
        if high >= _LONGEST_SEARCHED:
            return None
        high *= 2
    low = too_short  # invariant: low fails, high builds
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if builds(middle) else (middle, high)
    return high


def build_backbone(name: str, n_chans: int, n_times: int, sfreq: float, n_outputs: int) -> nn.Module:
    """The braindecode model ``name`` mapping [B, n_chans, n_times] to [B, n_outputs].

    Raises ValueError naming the backbone and the shortest input it accepts when ``n_times`` is
    too short for its fixed temporal kernels and pools.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown EEG backbone {name!r}; choose one of {', '.join(BACKBONES)}")

    from braindecode import models as braindecode_models

    backbone_class = getattr(braindecode_models, name)

    def make(length: int) -> nn.Module:
        return backbone_class(n_chans=n_chans, n_outputs=n_outputs, n_times=length,
                              input_window_seconds=length / sfreq, sfreq=sfreq)

    def builds(length: int) -> bool:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                make(length)
        except _SHAPE_ERRORS:
            return False
        return True

    try:
        return make(n_times)
    except _SHAPE_ERRORS as exc:
        minimum = _minimum_n_times(builds, n_times)
        if minimum is None:
            raise ValueError(f"{name} cannot be built for n_chans={n_chans}, n_times={n_times}: {exc}") from exc
        raise ValueError(f"{name} needs at least {minimum} time points per trial, got n_times={n_times}; "
                         f"use a longer data.eeg_window or another backbone") from exc


class HighLevelEncoder(nn.Module):
    """Semantic EEG encoder: backbone → embedding, plus a class head and a projection into the
    teacher's 2048-d feature space (the regressor for feature-based KD, as in FitNets)."""

    def __init__(self, cfg: HighLevelConfig, n_chans: int, n_times: int, sfreq: float, num_classes: int,
                 teacher_dim: int = 2048):
        super().__init__()
        self.backbone = build_backbone(cfg.backbone, n_chans, n_times, sfreq, cfg.embed_dim)
        self.classifier = nn.Linear(cfg.embed_dim, num_classes)
        self.teacher_projection = nn.Linear(cfg.embed_dim, teacher_dim)

    def forward(self, eeg: torch.Tensor) -> dict[str, torch.Tensor]:
        """eeg [B, C, T] → embedding [B, embed_dim], logits [B, num_classes], teacher_proj [B, teacher_dim]."""
        embedding = self.backbone(eeg)
        return {"embedding": embedding, "logits": self.classifier(embedding),
                "teacher_proj": self.teacher_projection(embedding)}


class LowLevelEncoder(nn.Module):
    """Perceptual EEG encoder: backbone → a vector regressed onto the image autoencoder's latent."""

    def __init__(self, cfg: LowLevelConfig, n_chans: int, n_times: int, sfreq: float):
        super().__init__()
        self.backbone = build_backbone(cfg.backbone, n_chans, n_times, sfreq, cfg.latent_dim)

    def forward(self, eeg: torch.Tensor) -> torch.Tensor:
        """eeg [B, C, T] → latent [B, latent_dim]."""
        return self.backbone(eeg)
