"""EEG encoders built on braindecode backbones.

Every backbone is built with ``n_outputs`` = the embedding width, so its own final layer (a
linear layer or a full-length "final conv") is the projection to the embedding. That is the one
construction all five backbones support unchanged: their heads differ too much (conv vs linear,
ATCNet's ensemble of per-window max-norm linears averaged together) to strip reliably, and
braindecode already computes the flattened feature size for any input length.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..config import HighLevelConfig, LowLevelConfig
from .finetune import apply_finetune
from .foundation import InputAdapter, plan_input

# the classic backbones the test suite builds and trains; any braindecode model name works (braindecode_models).
# braindecode (and MNE behind it) is imported when a backbone is built, so the diffusion-only paths (sampling,
# GPU benchmarks) import this package without it
BACKBONES = ("EEGNet", "ShallowFBCSPNet", "Deep4Net", "EEGConformer", "ATCNet")
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


def braindecode_models() -> dict[str, type[nn.Module]]:
    """Every braindecode model class (its ``EEGModuleMixin`` subclasses) by name."""
    from braindecode import models
    from braindecode.models.base import EEGModuleMixin

    found = ((name, getattr(models, name)) for name in dir(models))
    return {name: cls for name, cls in found
            if inspect.isclass(cls) and issubclass(cls, EEGModuleMixin) and cls is not EEGModuleMixin}


class BackboneWeightsError(FileNotFoundError):
    """``backbone_weights`` names weights that are not on this machine."""


def build_backbone(name: str, n_chans: int, n_times: int, sfreq: float, n_outputs: int,
                   kwargs: dict | None = None, weights: str | None = None) -> nn.Module:
    """The braindecode model ``name`` mapping [B, n_chans, n_times] to [B, n_outputs], built with
    ``kwargs`` (``backbone_kwargs``), or loaded from ``weights`` (``backbone_weights``: a
    ``save_pretrained`` directory, or a Hugging Face id resolved from the local cache only) with its
    head replaced when its output size differs.

    Raises ValueError naming the backbone and the shortest input it accepts when ``n_times`` is
    too short for its fixed temporal kernels and pools.
    """
    available = braindecode_models()
    if name not in available:
        raise ValueError(f"unknown EEG backbone {name!r}; braindecode {_version()} has: {', '.join(sorted(available))}")
    backbone_class, kwargs = available[name], dict(kwargs or {})

    def make(length: int) -> nn.Module:
        return backbone_class(n_chans=n_chans, n_outputs=n_outputs, n_times=length,
                              input_window_seconds=length / sfreq, sfreq=sfreq, **kwargs)

    def builds(length: int) -> bool:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                make(length)
        except _SHAPE_ERRORS:
            return False
        return True

    try:
        if weights is None:
            return make(n_times)
        described = make(n_times)  # the architecture this config describes, to check the weights against
    except _SHAPE_ERRORS as exc:
        minimum = _minimum_n_times(builds, n_times)
        if minimum is None:
            raise ValueError(f"{name} cannot be built for n_chans={n_chans}, n_times={n_times}: {exc}") from exc
        raise ValueError(f"{name} needs at least {minimum} time points per trial, got n_times={n_times}; "
                         f"use a longer data.eeg_window or another backbone") from exc
    return _pretrained(backbone_class, weights, described, n_outputs)


def _pretrained(backbone_class, weights: str, described: nn.Module, n_outputs: int) -> nn.Module:
    """``weights`` loaded offline into ``backbone_class``, checked to have the architecture the
    config describes: a release rebuilds the encoder from the config alone, without the weights."""
    local = Path(weights).expanduser()
    try:
        model = backbone_class.from_pretrained(str(local) if local.exists() else weights, local_files_only=True)
    except Exception as exc:  # a missing file, or an id not in the local Hugging Face cache
        raise BackboneWeightsError(
            f"backbone_weights={weights!r}: not a save_pretrained directory and not in the local Hugging Face "
            f"cache ({type(exc).__name__}: {exc}). Download it where the Hub is reachable (`hf download "
            f"{weights} --local-dir DIR`) and set backbone_weights: DIR") from None
    if model.n_outputs != n_outputs:
        try:
            model.reset_head(n_outputs)
        except NotImplementedError:  # braindecode has no head reset for this model: move the rest over
            model = _transplant(model, described, weights)
    ours = {k: tuple(v.shape) for k, v in described.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if ours != theirs:
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))[:5]
        raise ValueError(f"backbone_weights={weights!r}: its {type(model).__name__} differs from the one the "
                         f"config describes ({', '.join(f'{k}: {theirs.get(k)} vs {ours.get(k)}' for k in differ)}); "
                         f"copy its architecture arguments from its config.json into backbone_kwargs and check "
                         f"the corpus's channels and time points")
    return model


def _transplant(pretrained: nn.Module, described: nn.Module, weights: str) -> nn.Module:
    """``described`` with every tensor of ``pretrained`` but the output layer's (the one weight and
    bias whose shape the new output size changes)."""
    theirs, ours = pretrained.state_dict(), described.state_dict()
    differing = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
    if len(differing) > 2 or len(theirs) != len(ours):
        raise ValueError(f"backbone_weights={weights!r}: its {type(pretrained).__name__} differs from the one the "
                         f"config describes beyond the output layer ({', '.join(differing[:5])}); copy its "
                         f"architecture arguments from its config.json into backbone_kwargs")
    described.load_state_dict({k: v for k, v in theirs.items() if k not in differing}, strict=False)
    return described


def _version() -> str:
    import braindecode

    return braindecode.__version__


def _adapted_backbone(cfg: HighLevelConfig | LowLevelConfig, key: str, n_outputs: int, n_chans: int, n_times: int,
                      sfreq: float, channel_names: list[str] | None, normalized: bool,
                      pretrained: bool) -> tuple[InputAdapter, nn.Module]:
    """The input adapter and backbone of an encoder. ``pretrained``: the build training starts from
    (``backbone_weights`` loaded, ``finetune`` applied); every other build is about to load trained,
    LoRA-merged weights into a plain backbone."""
    names = list(channel_names) if channel_names is not None else [f"E{i}" for i in range(n_chans)]
    plan = plan_input(cfg.backbone, cfg.backbone_kwargs, cfg.backbone_channel_map, names, sfreq, n_times, normalized,
                      key)
    backbone = build_backbone(cfg.backbone, plan.n_chans, plan.n_times, plan.sfreq, n_outputs,
                              {**plan.constructor_kwargs(), **cfg.backbone_kwargs},
                              cfg.backbone_weights if pretrained else None)
    if pretrained:
        example = torch.zeros(2, plan.n_chans, plan.n_times)
        backbone = apply_finetune(backbone, cfg.finetune, cfg.lora, key,
                                  lambda model: model(example, **plan.forward_kwargs()))
    return InputAdapter(plan), backbone


class HighLevelEncoder(nn.Module):
    """Semantic EEG encoder: input adapter → backbone → embedding, plus a class head and a projection
    into the teacher's 2048-d feature space (the regressor for feature-based KD, as in FitNets)."""

    def __init__(self, cfg: HighLevelConfig, n_chans: int, n_times: int, sfreq: float, num_classes: int,
                 teacher_dim: int = 2048, pretrained: bool = True, channel_names: list[str] | None = None,
                 normalized: bool = True):
        super().__init__()
        self.adapter, self.backbone = _adapted_backbone(cfg, "model.highlevel", cfg.embed_dim, n_chans, n_times, sfreq,
                                                        channel_names, normalized, pretrained)
        self.classifier = nn.Linear(cfg.embed_dim, num_classes)
        self.teacher_projection = nn.Linear(cfg.embed_dim, teacher_dim)

    def forward(self, eeg: torch.Tensor) -> dict[str, torch.Tensor]:
        """eeg [B, C, T] → embedding [B, embed_dim], logits [B, num_classes], teacher_proj [B, teacher_dim]."""
        embedding = self.backbone(self.adapter(eeg), **self.adapter.plan.forward_kwargs())
        return {"embedding": embedding, "logits": self.classifier(embedding),
                "teacher_proj": self.teacher_projection(embedding)}


class LowLevelEncoder(nn.Module):
    """Perceptual EEG encoder: input adapter → backbone → a vector regressed onto the image
    autoencoder's latent."""

    def __init__(self, cfg: LowLevelConfig, n_chans: int, n_times: int, sfreq: float, pretrained: bool = True,
                 channel_names: list[str] | None = None, normalized: bool = True):
        super().__init__()
        self.adapter, self.backbone = _adapted_backbone(cfg, "model.lowlevel", cfg.latent_dim, n_chans, n_times, sfreq,
                                                        channel_names, normalized, pretrained)

    def forward(self, eeg: torch.Tensor) -> torch.Tensor:
        """eeg [B, C, T] → latent [B, latent_dim]."""
        return self.backbone(self.adapter(eeg), **self.adapter.plan.forward_kwargs())
