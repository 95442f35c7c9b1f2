"""The image teacher (ResNet50 in the paper; any torchvision ImageNet classifier, or an OpenCLIP
image tower) whose logits (response KD) and pooled features (feature KD, and the image side of
zero-shot retrieval) the high-level EEG encoder learns from.

Pretrained weights are only ever read from disk — ``model.teacher.weights`` or torchvision's own
file in the torch hub cache — so a training job on an offline cluster fails at start-up with
instructions rather than hanging on a download.
"""

from __future__ import annotations

import functools
import logging
import typing
from dataclasses import dataclass
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
OPEN_CLIP = "open_clip:"  # model.teacher.arch = open_clip:<OpenCLIP model name>, e.g. open_clip:ViT-L-14


@dataclass
class Trunk:
    """An image network up to its pooled feature, and what its input must look like."""

    module: nn.Module
    width: int  # the pooled feature's
    classifier: str | None  # torchvision: the replaced classifier's name in its state dict
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int | None  # an input size the network requires (a ViT's positional embeddings); None: any


def image_models() -> list[str]:
    """torchvision's ImageNet classifiers (its top-level ``models`` namespace: no detection,
    segmentation or video models), the choices of ``model.teacher.arch`` besides ``open_clip:``."""
    return tv_models.list_models(module=tv_models)


def _torchvision_trunk(arch: str) -> Trunk:
    """torchvision's ``arch`` with its classifier — the last linear layer, whose input is the pooled
    feature in every torchvision classifier — replaced by the identity."""
    if arch not in image_models():
        raise ValueError(f"model.teacher.arch {arch!r} is not a torchvision classification model (nor "
                         f"{OPEN_CLIP}<model>); torchvision {torchvision.__version__} has: {', '.join(image_models())}")
    model = tv_models.get_model(arch, weights=None)
    linear = [n for n, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linear:  # SqueezeNet classifies with a convolution: no pooled feature to distil
        raise ValueError(f"model.teacher.arch {arch!r} has no linear classifier whose input is a pooled feature")
    name = linear[-1]
    width = model.get_submodule(name).in_features
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, nn.Identity())
    return Trunk(model, width, name, IMAGENET_MEAN, IMAGENET_STD, None)


def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise ValueError(f"model.teacher.arch={OPEN_CLIP}... needs OpenCLIP: pip install 'eeg2im_scale[clip]'") from None
    return open_clip


def _open_clip_trunk(name: str, weights: Path | None = None) -> Trunk:
    """OpenCLIP's image tower (its output: the projected image embedding CLIP retrieval compares),
    with the checkpoint ``weights`` loaded by OpenCLIP's own loader (any format it reads)."""
    open_clip = _open_clip()
    if name not in open_clip.list_models():
        raise ValueError(f"model.teacher.arch={OPEN_CLIP}{name}: OpenCLIP {open_clip.__version__} has no model "
                         f"{name!r}; it has: {', '.join(open_clip.list_models())}")
    visual = open_clip.create_model(name, pretrained=None if weights is None else str(weights)).visual
    preprocess = visual.preprocess_cfg
    size = preprocess["size"]
    return Trunk(visual, open_clip.get_model_config(name)["embed_dim"], None, tuple(preprocess["mean"]),
                 tuple(preprocess["std"]), size if isinstance(size, int) else size[0])


def _trunk(arch: str) -> Trunk:
    return _open_clip_trunk(arch[len(OPEN_CLIP):]) if arch.startswith(OPEN_CLIP) else _torchvision_trunk(arch)


@functools.lru_cache(maxsize=None)
def feature_dim(arch: str) -> int:
    """Width of the teacher's pooled feature, the target of feature-based KD: OpenCLIP's from its
    model config, torchvision's from the architecture built on the meta device (no memory for the
    weights) where it allows that."""
    if arch.startswith(OPEN_CLIP):
        return _open_clip().get_model_config(arch[len(OPEN_CLIP):])["embed_dim"]
    try:
        with torch.device("meta"):
            return _torchvision_trunk(arch).width
    except (NotImplementedError, RuntimeError):
        return _torchvision_trunk(arch).width


def image_encoder(cfg: TeacherConfig) -> str:
    """What the teacher's features are, in words (recorded beside retrieval rows and in model cards)."""
    start = "pretrained, " if cfg.pretrained else "randomly initialised, "
    return f"{cfg.arch} ({start}{'frozen, head trained' if cfg.freeze_trunk else 'fine-tuned'} on the training images)"


def weight_files(arch: str) -> list[str]:
    """The file names torchvision gives ``arch``'s ImageNet weights, its first (V1) release first."""
    return [weights.url.rsplit("/", 1)[-1] for weights in tv_models.get_model_weights(arch)]


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained teacher weights were requested but no local file provides them."""


def hub_checkpoint_dir() -> Path:
    """Where torchvision caches downloaded weights (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_imagenet_weights(cfg: TeacherConfig) -> Path:
    """The weights file to load: ``cfg.weights`` if set, else torchvision's file in the hub cache
    (an OpenCLIP model has no such file: it needs ``cfg.weights``)."""
    if cfg.weights is not None:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"model.teacher.weights points to {path}, which does not exist. Set it to a "
                                       f"{'checkpoint OpenCLIP reads' if cfg.arch.startswith(OPEN_CLIP) else 'torchvision'}"
                                       f" {cfg.arch} state dict (.pth or .safetensors).")
        return path
    if cfg.arch.startswith(OPEN_CLIP):
        raise WeightsNotFoundError(f"model.teacher.pretrained=true with {cfg.arch} needs model.teacher.weights=/path/to/"
                                   f"an OpenCLIP checkpoint of that model (e.g. open_clip_pytorch_model.bin from its Hub "
                                   f"repository); nothing is downloaded. Or set model.teacher.pretrained=false.")
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
    """An image network's trunk (``cfg.arch``) + a ``num_classes`` linear head.

    ``forward`` takes the loader's uint8 images (or float images in [-1, 1], e.g. generated ones),
    so the network's normalisation and resizing live with the model that needs them. With
    ``cfg.freeze_trunk`` only the head trains and the trunk stays in eval mode (its BatchNorm
    statistics too): the features stay the pretrained network's own.
    """

    def __init__(self, cfg: TeacherConfig, num_classes: int, trunk: Trunk | None = None):
        super().__init__()
        trunk = trunk or _trunk(cfg.arch)
        if trunk.image_size is not None and cfg.input_size != trunk.image_size:
            raise ValueError(f"model.teacher.input_size={cfg.input_size}, but {cfg.arch} takes {trunk.image_size} px "
                             f"images only: set model.teacher.input_size={trunk.image_size}")
        self.input_size, self.arch, self.frozen = cfg.input_size, cfg.arch, cfg.freeze_trunk
        self.trunk, self.classifier = trunk.module, trunk.classifier  # the trunk ends at the pooled feature
        self.trunk.requires_grad_(not self.frozen)
        self.head = nn.Linear(trunk.width, num_classes)
        self.register_buffer("mean", torch.tensor(trunk.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(trunk.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> Teacher:
        super().train(mode)
        if self.frozen:
            self.trunk.eval()
        return self

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
        """uint8 or [-1, 1] float → normalised float at ``input_size``."""
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
    """A :class:`Teacher`, with pretrained weights from disk when ``cfg.pretrained`` (see :func:`find_imagenet_weights`)."""
    if cfg.pretrained and cfg.arch.startswith(OPEN_CLIP):
        path = find_imagenet_weights(cfg)
        log.info("teacher: %s weights from %s", cfg.arch, path)
        return Teacher(cfg, num_classes, _open_clip_trunk(cfg.arch[len(OPEN_CLIP):], path))
    teacher = Teacher(cfg, num_classes)
    if cfg.pretrained:
        path = find_imagenet_weights(cfg)
        teacher.load_imagenet(load_state_dict_file(path), path)
    elif cfg.weights is not None:
        log.warning("model.teacher.weights=%s is ignored because model.teacher.pretrained=false", cfg.weights)
    return teacher
