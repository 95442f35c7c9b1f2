"""Model construction from the config and a corpus's geometry, shared by training, export and
inference: the stages build their modules with it, and a release rebuilds the same modules to load
their weights. Nothing here trains."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..config import Config
from .eeg_encoders import HighLevelEncoder, LowLevelEncoder
from .autoencoder import ImageAutoencoder
from .film_unet import FiLMUNet
from .teacher import build_teacher
from .teacher import feature_dim as teacher_feature_dim

class Geometry:
    """What the models need to know about the data: EEG shape after the window, classes, image size."""

    def __init__(self, cfg: Config, info: dict):
        channels = len(info["channel_names"])
        time_points = int(info["time_points"])
        if cfg.data.eeg_window is not None:
            time_points = cfg.data.eeg_window[1] - cfg.data.eeg_window[0]
        self.n_chans, self.n_times, self.sfreq = channels, time_points, float(info["sfreq"])
        self.num_classes = len(info["class_names"])
        self.image_size = cfg.data.image_size

    @classmethod
    def of_synth(cls, cfg: Config, class_names: list[str] | None = None) -> Geometry:
        """The geometry of the corpus the config's ``synth`` section describes, without reading one
        (sizing models; ``data.classes`` or ``class_names`` stand in for its classes)."""
        s = cfg.synth
        names = class_names or cfg.data.classes or [str(c) for c in range(s.num_classes)]
        return cls(cfg, {"channel_names": [f"E{i}" for i in range(s.channels)], "time_points": s.time_points,
                         "sfreq": s.sfreq, "class_names": names})


def build_teacher_model(cfg: Config, geo: Geometry) -> nn.Module:
    return build_teacher(cfg.model.teacher, geo.num_classes)


def build_highlevel(cfg: Config, geo: Geometry) -> HighLevelEncoder:
    return HighLevelEncoder(cfg.model.highlevel, geo.n_chans, geo.n_times, geo.sfreq, geo.num_classes,
                            teacher_feature_dim(cfg.model.teacher.arch))


def build_lowlevel(cfg: Config, geo: Geometry) -> tuple[ImageAutoencoder, LowLevelEncoder]:
    return (ImageAutoencoder(cfg.model.lowlevel, geo.image_size),
            LowLevelEncoder(cfg.model.lowlevel, geo.n_chans, geo.n_times, geo.sfreq))


def build_unet(cfg: Config, geo: Geometry) -> FiLMUNet:
    widths = {"highlevel": cfg.model.highlevel.embed_dim, "lowlevel": cfg.model.lowlevel.latent_dim}
    widths["multilevel"] = widths["highlevel"] + widths["lowlevel"]
    cond_dim = widths[cfg.model.diffusion.condition_on]
    return FiLMUNet(cfg.model.diffusion, geo.image_size, cond_dim, cfg.model.attention)


def load_prefixed(module: nn.Module, path: Path, prefix: str) -> nn.Module:
    """Load the ``prefix.``-named tensors of a stage export into ``module`` (strictly)."""
    state = {k[len(prefix) + 1:]: v for k, v in load_file(str(path)).items() if k.startswith(prefix + ".")}
    module.load_state_dict(state, strict=True)
    return module


def frozen(module: nn.Module, device: torch.device) -> nn.Module:
    module.eval().requires_grad_(False)
    return module.to(device)


def condition(high: HighLevelEncoder, low: LowLevelEncoder, eeg: torch.Tensor,
              condition_on: str = "multilevel") -> torch.Tensor:
    """The FiLM conditioning vector: [high-level embedding, low-level latent] of the EEG, or one of
    them alone (``model.diffusion.condition_on``, for the ablation)."""
    eeg = eeg.float()
    if condition_on == "highlevel":
        return high(eeg)["embedding"]
    if condition_on == "lowlevel":
        return low(eeg)
    return torch.cat([high(eeg)["embedding"], low(eeg)], dim=1)
