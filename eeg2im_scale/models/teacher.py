"""The image teacher (ResNet50 in the paper; any torchvision ImageNet classifier) whose logits
(response KD) and pooled features (feature KD, and the image side of zero-shot retrieval) the
high-level EEG encoder learns from.

ImageNet weights are only ever read from disk — ``model.teacher.weights`` or torchvision's own
file in the torch hub cache — so a training job on an offline cluster fails at start-up with
instructions rather than hanging on a download.
"""

from __future__ import annotations

import functools
import logging
import typing
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision import models as tv_models

from ..config import TeacherConfig, TeacherFlips
from .autoencoder import to_unit_range

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_models() -> list[str]:
    """torchvision's ImageNet classifiers (its top-level ``models`` namespace: no detection,
    segmentation or video models), the choices of ``model.teacher.arch``."""
    return tv_models.list_models(module=tv_models)


def _trunk(arch: str) -> tuple[nn.Module, int, str]:
    """torchvision's ``arch`` with its classifier — the last linear layer, whose input is the pooled
    feature in every torchvision classifier — replaced by the identity: (trunk, feature width,
    the classifier's name in torchvision's state dict)."""
    if arch not in image_models():
        raise ValueError(f"model.teacher.arch {arch!r} is not a torchvision classification model; torchvision "
                         f"{torchvision.__version__} has: {', '.join(image_models())}")
    model = tv_models.get_model(arch, weights=None)
    linear = [n for n, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linear:  # SqueezeNet classifies with a convolution: no pooled feature to distil
        raise ValueError(f"model.teacher.arch {arch!r} has no linear classifier whose input is a pooled feature")
    name = linear[-1]
    width = model.get_submodule(name).in_features
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, nn.Identity())
    return model, width, name


@functools.lru_cache(maxsize=None)
def feature_dim(arch: str) -> int:
    """Width of the teacher's pooled feature, the target of feature-based KD. Built on the meta
    device (no memory for the weights) where the architecture allows it."""
    try:
        with torch.device("meta"):
            return _trunk(arch)[1]
    except (NotImplementedError, RuntimeError):
        return _trunk(arch)[1]


def weight_files(arch: str) -> list[str]:
    """The file names torchvision gives ``arch``'s ImageNet weights, its first (V1) release first."""
    return [weights.url.rsplit("/", 1)[-1] for weights in tv_models.get_model_weights(arch)]


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained teacher weights were requested but no local file provides them."""


def hub_checkpoint_dir() -> Path:
    """Where torchvision caches downloaded weights (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_imagenet_weights(cfg: TeacherConfig) -> Path:
    """The state-dict file to load: ``cfg.weights`` if set, else torchvision's file in the hub cache."""
    if cfg.weights is not None:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"model.teacher.weights points to {path}, which does not exist. Set it to a "
                                       f"torchvision {cfg.arch} state dict (.pth or .safetensors).")
        return path
    names = weight_files(cfg.arch)
    cached = [hub_checkpoint_dir() / name for name in names if (hub_checkpoint_dir() / name).is_file()]
    if not cached:
        raise WeightsNotFoundError(
            f"model.teacher.pretrained=true but no {cfg.arch} ImageNet weights were found, and nothing is downloaded. "
            f"Either set model.teacher.weights=/path/to/{cfg.arch}.pth (a torchvision {cfg.arch} state dict, .pth or "
            f".safetensors), or place torchvision's file as {hub_checkpoint_dir() / names[0]} "
            "(the torch hub cache; TORCH_HOME moves it). Or set model.teacher.pretrained=false to start from scratch.")
    return cached[0]


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: ``weights_only=True`` for .pth, safetensors otherwise — never arbitrary pickles."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


class Teacher(nn.Module):
    """A torchvision classifier's trunk (``cfg.arch``) + a ``num_classes`` linear head.

    ``forward`` takes the loader's uint8 images (or float images in [-1, 1], e.g. generated ones),
    so ImageNet normalisation and resizing live with the model that needs them.
    """

    def __init__(self, cfg: TeacherConfig, num_classes: int):
        super().__init__()
        self.input_size = cfg.input_size
        self.arch = cfg.arch
        self.trunk, width, self.classifier = _trunk(cfg.arch)  # the trunk ends at the pooled feature
        self.head = nn.Linear(width, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def load_imagenet(self, state: dict[str, torch.Tensor], source: Path) -> None:
        """Load a torchvision state dict of ``arch``; its classifier is kept only if it already has our class count."""
        prefix = f"{self.classifier}."
        classifier = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        try:
            self.trunk.load_state_dict({k: v for k, v in state.items() if not k.startswith(prefix)}, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{source} is not a torchvision {self.arch} state dict: {exc}") from exc
        keep_head = "weight" in classifier and classifier["weight"].shape == self.head.weight.shape
        if keep_head:
            self.head.load_state_dict(classifier)
        log.info("teacher: %s weights from %s (%s head)", self.arch, source, "loaded" if keep_head else "new")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [-1, 1] float → ImageNet-normalised float at ``input_size``."""
        if images.dtype == torch.uint8:
            images = to_unit_range(images)
        images = (images + 1) / 2
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        # the buffers may stay float32 while the weights run in bf16 (ZeRO-3 casts parameters only)
        return ((images - self.mean) / self.std).to(images.dtype)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (logits [B, num_classes], pooled features [B, feature_dim(arch)])."""
        features = self.trunk(self.preprocess(images))
        if isinstance(features, tuple):  # Inception / GoogLeNet in training mode: (main, auxiliary outputs)
            features = features[0]
        return self.head(features), features


FLIPS = typing.get_args(TeacherFlips)


def flip_and_shift(images: torch.Tensor, flips: str = "horizontal", max_shift: float = 0.125) -> torch.Tensor:
    """Random flips (``flips``: ``horizontal``, ``both`` or ``none``) and translations of up to
    ``max_shift`` of the side, per image, edges repeated: label-preserving augmentation for
    fine-tuning the teacher on a few hundred images, which it would otherwise memorise rather than
    learn. Photos keep their label under a horizontal flip only (an upside-down dog is not an
    ImageNet dog); ``both`` suits stimuli whose class survives a vertical flip."""
    if flips not in FLIPS:
        raise ValueError(f"flips must be one of {', '.join(FLIPS)}, got {flips!r}")
    n = images.shape[0]
    signs = torch.randint(0, 2, (n, 2), device=images.device).to(images.dtype) * 2 - 1
    if flips != "both":
        signs[:, 1] = 1  # column 1: the y axis (vertical flip)
    if flips == "none":
        signs[:, 0] = 1  # column 0: the x axis (horizontal flip)
    shifts = (torch.rand(n, 2, device=images.device, dtype=images.dtype) * 2 - 1) * (2 * max_shift)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = signs[:, 0], signs[:, 1], shifts
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def build_teacher(cfg: TeacherConfig, num_classes: int) -> Teacher:
    """A :class:`Teacher`, with ImageNet weights from disk when ``cfg.pretrained`` (see :func:`find_imagenet_weights`)."""
    teacher = Teacher(cfg, num_classes)
    if cfg.pretrained:
        path = find_imagenet_weights(cfg)
        teacher.load_imagenet(load_state_dict_file(path), path)
    elif cfg.weights is not None:
        log.warning("model.teacher.weights=%s is ignored because model.teacher.pretrained=false", cfg.weights)
    return teacher
