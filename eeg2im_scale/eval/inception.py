"""The standard FID Inception (TF 2015-12-05 weights, torch-fidelity's port), loaded offline.

FID/IS/KID are only comparable with published numbers when computed by this exact network and
input pipeline, so nothing here downloads weights or falls back to another network: a missing
file is an error that says where to put it.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    FeatureExtractorInceptionV3,
)

__all__ = [
    "WEIGHTS_FILE",
    "InceptionWeightsNotFound",
    "extract",
    "inception_inputs",
    "load_fid_inception",
    "random_fid_inception",
]

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
FEATURES = ("2048", "logits_unbiased")  # pool3 features; fc logits without bias (IS convention)


class InceptionWeightsNotFound(FileNotFoundError):
    """The FID Inception weights file is not available locally (we never download it)."""


class _FIDInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's extractor whose constructor skips its own weight loading.

    The parent constructor builds the layers and then either downloads weights or ``torch.load``s a
    path; we hand it an empty in-memory checkpoint and ignore the ``load_state_dict`` call made
    during construction, so weights are loaded (strictly) by us afterwards, or not at all.
    """

    def __init__(self):
        empty = io.BytesIO()
        torch.save({}, empty)
        empty.seek(0)
        super().__init__("inception-v3-compat", list(FEATURES), feature_extractor_weights_path=empty)
        self._constructed = True

    def load_state_dict(self, state_dict, *args, **kwargs):
        if not self.__dict__.get("_constructed", False):
            return None  # the parent constructor's call with the empty checkpoint
        return super().load_state_dict(state_dict, *args, **kwargs)


def _candidates(weights_path: str | None) -> list[Path]:
    if weights_path:
        return [Path(weights_path).expanduser()]
    return [Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE]


def load_fid_inception(weights_path: str | None, device: torch.device | str = "cpu") -> nn.Module:
    """The FID Inception with the TF 2015-12-05 weights, in eval mode on ``device``.

    Looks at ``weights_path`` if given (config key ``eval.inception_weights``), else at
    ``<torch hub dir>/checkpoints/weights-inception-2015-12-05-6726825d.pth`` where torch-fidelity
    caches it. Raises ``InceptionWeightsNotFound`` (a ``FileNotFoundError``) otherwise.
    """
    paths = _candidates(weights_path)
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise InceptionWeightsNotFound(
            f"FID Inception weights not found (looked at: {', '.join(map(str, paths))}). This code never "
            f"downloads them. Fetch {WEIGHTS_FILE} from {URL_INCEPTION_V3} on a machine with network access, "
            f"then either put it at {Path(torch.hub.get_dir()) / 'checkpoints' / WEIGHTS_FILE} or set the config "
            f"key eval.inception_weights=/path/to/{WEIGHTS_FILE} (CLI override: eval.inception_weights=...). "
            f"For tests only, eval.random_inception=true uses a randomly initialised network."
        )
    model = _FIDInceptionV3()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.to(device).eval()


def random_fid_inception(device: torch.device | str = "cpu", seed: int = 0) -> nn.Module:
    """TEST ONLY: the same architecture and input pipeline with random weights.

    Convolutions get Kaiming-normal (ReLU) weights so activations keep an O(1) scale through the
    ~50 layers (PyTorch's default init shrinks them by orders of magnitude); the fc layer keeps its
    default init. Deterministic for ``seed`` without touching the global RNG. Metrics computed with
    it are NOT comparable to published FID/IS/KID.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _FIDInceptionV3()
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.to(device).eval()


def inception_inputs(images: torch.Tensor) -> torch.Tensor:
    """Project images (uint8 [B, 3, H, W], 0–255) → the extractor's input: the same uint8 tensor.

    The extractor itself does the FID-standard preprocessing: TF1-compatible bilinear resize to
    299×299 without antialiasing (torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``)
    and (x − 128) / 128. We keep that convention deliberately: torchmetrics ≥ 1.8 resizes with
    antialias=True by default, which changes FID, so its numbers are not comparable with ours.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 tensor, got {getattr(images, 'dtype', type(images))}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected [B, 3, H, W] images, got {tuple(images.shape)}")
    return images


@torch.no_grad()
def extract(model: nn.Module, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool3 features [B, 2048] float64, logits [B, 1008]) on the model's device.

    The logits are torch-fidelity's ``logits_unbiased`` (pool3 · Wᵀ without the fc bias), the
    input its Inception Score uses, matching the original improved-GAN IS code.
    """
    device = next(model.parameters()).device
    features, logits = model(inception_inputs(images_uint8).to(device))
    return features.double(), logits
