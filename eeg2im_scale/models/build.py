"""Model construction from the config and a corpus's geometry, shared by training, export and
inference: the stages build their modules with it, and a release rebuilds the same modules to load
their weights. Nothing here trains."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..config import DataConfig, ModelConfig, SynthConfig
from ..data.synth_eeg import synth_channel_names
from .eeg_encoders import HighLevelEncoder, LowLevelEncoder
from .foundation import plan_input
from .autoencoder import ImageAutoencoder
from .film_unet import FiLMUNet
from .teacher import build_teacher
from .teacher import feature_dim as teacher_feature_dim


class Geometry:
    """What the models need to know about the data: EEG channels and shape after the window, whether
    it is z-scored (``data.normalize``), classes, image size."""

    def __init__(self, data_cfg: DataConfig, info: dict):
        self.channel_names = [str(name) for name in info["channel_names"]]
        channels = len(self.channel_names)
        time_points = int(info["time_points"])
        if data_cfg.eeg_window is not None:
            time_points = data_cfg.eeg_window[1] - data_cfg.eeg_window[0]
        self.n_chans, self.n_times, self.sfreq = channels, time_points, float(info["sfreq"])
        self.normalized = data_cfg.normalize
        self.num_classes = len(info["class_names"])
        self.image_size = data_cfg.image_size

    @classmethod
    def of_synth(cls, synth_cfg: SynthConfig, data_cfg: DataConfig, class_names: list[str] | None = None) -> Geometry:
        """The geometry of the corpus a ``synth`` section describes, without reading one (sizing
        models; ``data.classes`` or ``class_names`` stand in for its classes)."""
        names = class_names or data_cfg.classes or [str(c) for c in range(synth_cfg.num_classes)]
        return cls(data_cfg, {"channel_names": synth_channel_names(synth_cfg.channels),
                              "time_points": synth_cfg.time_points, "sfreq": synth_cfg.sfreq, "class_names": names})


def build_teacher_model(model_cfg: ModelConfig, geo: Geometry) -> nn.Module:
    return build_teacher(model_cfg.teacher, geo.num_classes)


def build_highlevel(model_cfg: ModelConfig, geo: Geometry, pretrained: bool = False) -> HighLevelEncoder:
    """``pretrained``: start the backbone from ``backbone_weights`` (training's first build); every
    other build is about to load trained weights and needs only the architecture."""
    return HighLevelEncoder(model_cfg.highlevel, geo.n_chans, geo.n_times, geo.sfreq, geo.num_classes,
                            teacher_feature_dim(model_cfg.teacher.arch), pretrained, geo.channel_names, geo.normalized)


def build_lowlevel(model_cfg: ModelConfig, geo: Geometry,
                   pretrained: bool = False) -> tuple[ImageAutoencoder, LowLevelEncoder]:
    return (ImageAutoencoder(model_cfg.lowlevel, geo.image_size),
            LowLevelEncoder(model_cfg.lowlevel, geo.n_chans, geo.n_times, geo.sfreq, pretrained, geo.channel_names,
                            geo.normalized))


def encoder_inputs(model_cfg: ModelConfig, geo: Geometry) -> dict[str, dict]:
    """What each EEG encoder sees of the corpus (resampling, length, channels, scale), as a
    release's ``corpus.json`` records it; computed from the config, without building a model."""
    return {key: plan_input(cfg.backbone, cfg.backbone_kwargs, cfg.backbone_channel_map, geo.channel_names, geo.sfreq,
                            geo.n_times, geo.normalized, f"model.{key}").record()
            for key, cfg in (("highlevel", model_cfg.highlevel), ("lowlevel", model_cfg.lowlevel))}


def condition_dim(model_cfg: ModelConfig) -> int:
    """Width of the FiLM conditioning vector :func:`condition` returns."""
    widths = {"highlevel": model_cfg.highlevel.embed_dim, "lowlevel": model_cfg.lowlevel.latent_dim}
    widths["multilevel"] = widths["highlevel"] + widths["lowlevel"]
    return widths[model_cfg.diffusion.condition_on]


def build_unet(model_cfg: ModelConfig, geo: Geometry) -> FiLMUNet:
    return FiLMUNet(model_cfg.diffusion, geo.image_size, condition_dim(model_cfg), model_cfg.attention)


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
