"""The field's reconstruction table (MindEye, MindEye2, ATM, BrainVis): PixCorr, SSIM, 2-way identification
with AlexNet(2), AlexNet(5), InceptionV3 and CLIP ViT-L/14 features, EffNet-B and SwAV distances.

Computed as MindEye2's published evaluation does (github.com/MedARC-AI/MindEyeV2, commit c1847188,
``src/final_evaluations.ipynb``), so that the numbers are comparable with those tables:

- every image, float in [0, 1], is first resized to 256×256 (the notebook's ``imsize``), then by each metric's
  own ``transforms.Resize(size)``, bilinear and without antialiasing (torchvision 0.16's tensor default, the
  version MindEye2 pins); networks get the normalisation of their weights; no centre crop;
- PixCorr: Pearson r of all RGB values at 425×425; SSIM: skimage's Gaussian SSIM (σ 1.5, 11 taps, population
  covariance, data range 1, mean over the interior away from the 5-pixel border) on ``rgb2gray`` images at
  425×425 (skimage 0.22, which MindEye2 pins, ignores the notebook's ``multichannel=True``: 2-D SSIM);
- 2-way identification: ``np.corrcoef`` of flattened features, a success when another image correlates less
  with the generation than its own stimulus does, over n − 1 distractors;
- EffNet-B and SwAV: ``scipy.spatial.distance.correlation`` between a generation and its stimulus, averaged.

Project rules on top: the real side is each distinct stimulus (``image_id``) once, so several trials and
generations of one stimulus never serve as each other's distractors; weights come only from local files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, get_args

import numpy as np
import torch
import torchvision
from scipy.spatial import distance
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..config import ReconstructionConfig, ReconstructionMetric
from ..models.teacher import IMAGENET_MEAN, IMAGENET_STD
from .fidelity import mismatched_partners

__all__ = ["FOLLOWS", "METRIC_NAMES", "TWO_WAY", "DISTANCES", "RANDOM_WEIGHTS", "FeatureNetwork", "ReconstructionWeightsNotFound",
           "correlation_distances", "correlations", "load_networks", "mindeye_images", "pixcorr", "ssim",
           "summarise", "trial_entries", "two_way_identification", "two_way_rows"]

FOLLOWS = ("MindEye2's src/final_evaluations.ipynb, github.com/MedARC-AI/MindEyeV2 commit "
           "c1847188200e075b960ad6b87333e51ea17be1b1 (torchvision 0.16, scikit-image 0.22)")
METRIC_NAMES: tuple[str, ...] = get_args(ReconstructionMetric)
TWO_WAY = ("alexnet2", "alexnet5", "inception", "clip")
DISTANCES = ("effnet", "swav")
RANDOM_WEIGHTS = "random (tests only: not comparable with any published table)"
IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
GRAY = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray


class ReconstructionWeightsNotFound(FileNotFoundError):
    """A reconstruction network's weights are not available locally (we never download them)."""


def _resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    return TF.resize(images, size, interpolation=InterpolationMode.BILINEAR, antialias=False)


def mindeye_images(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` → float ``[B, 3, 256, 256]`` in [0, 1]: the common input of every metric."""
    return _resize(images_uint8.float() / 255.0, (256, 256))


def pixcorr(fake: torch.Tensor, real: torch.Tensor) -> np.ndarray:
    """Per pair of ``mindeye_images``: Pearson r of all RGB values at 425×425 (MindEye's PixCorr)."""
    a, b = (_resize(x, 425).flatten(1).double() for x in (fake, real))
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).cpu().numpy()


def _gaussian_taps(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage's radius: 11 taps at σ 1.5
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def ssim(fake: torch.Tensor, real: torch.Tensor) -> np.ndarray:
    """Per pair of ``mindeye_images``: skimage's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0)`` on ``rgb2gray`` images at 425×425, in float32 as skimage
    computes float32 images (MindEye's), averaged in float64. skimage filters the whole image and then drops the
    filter radius at each border, so a valid (unpadded) convolution gives the same map."""
    gray = torch.tensor(GRAY, device=fake.device).view(1, 3, 1, 1)
    x, y = ((_resize(im, 425) * gray).sum(1, keepdim=True) for im in (fake, real))
    taps = _gaussian_taps().float().to(fake.device)

    def blur(z):
        z = nn.functional.conv2d(z, taps.view(1, 1, -1, 1))
        return nn.functional.conv2d(z, taps.view(1, 1, 1, -1))

    ux, uy = blur(x), blur(y)
    vx, vy, vxy = blur(x * x) - ux * ux, blur(y * y) - uy * uy, blur(x * y) - ux * uy
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).double().mean(1).cpu().numpy()


def correlations(fake: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Pearson r ``[m, n]`` of each generated feature row with each real one: ``np.corrcoef(reals, preds)[n:, :n]``
    row by row, so that a process can correlate its own generations with every distinct stimulus."""
    a, b = (np.asarray(x, dtype=np.float64) for x in (fake, real))
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def two_way_identification(r: np.ndarray, own: np.ndarray) -> float:
    """MindEye's ``two_way_identification`` for m generations against n distinct stimuli: ``r[j, i]`` is the
    correlation of generation j with stimulus i and ``own[j]`` its stimulus' column. A success for each
    other stimulus that correlates less than the own one; each generation's count over n − 1, averaged.
    With one generation per stimulus (``own = arange(n)``) it is MindEye's function exactly."""
    r = np.asarray(r, dtype=np.float64)
    n = r.shape[1]
    if n < 2:
        raise ValueError("2-way identification needs at least 2 distinct stimuli")
    congruent = r[np.arange(len(r)), own]
    return float(np.mean((r < congruent[:, None]).sum(1)) / (n - 1))


def correlation_distances(fake: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per row pair: ``scipy.spatial.distance.correlation`` (MindEye's EffNet-B and SwAV distances)."""
    return np.array([distance.correlation(f, r) for f, r in zip(np.asarray(fake, np.float64),
                                                                  np.asarray(real, np.float64))])


@dataclass(frozen=True)
class _Spec:
    """One network as MindEye runs it: torchvision architecture, feature nodes → metrics, input size and
    normalisation, and the file torchvision / torch hub caches its weights as."""

    build: Callable[[], nn.Module] | None
    nodes: dict[str, str]
    size: int
    norm: tuple
    file: str | None


def _inception_v3():  # transform_input=True: what torchvision sets for its pretrained Inception-v3
    return torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=True)


SPECS = {
    "alexnet": _Spec(lambda: torchvision.models.alexnet(weights=None), {"features.4": "alexnet2", "features.11": "alexnet5"},
                     256, IMAGENET, "alexnet-owt-7be5be79.pth"),
    "inception": _Spec(_inception_v3, {"avgpool": "inception"}, 342, IMAGENET, "inception_v3_google-0cc3c7bd.pth"),
    "effnet": _Spec(lambda: torchvision.models.efficientnet_b1(weights=None), {"avgpool": "effnet"}, 255, IMAGENET,
                    "efficientnet_b1-c27df63c.pth"),  # EfficientNet_B1_Weights.DEFAULT (IMAGENET1K_V2)
    "swav": _Spec(lambda: torchvision.models.resnet50(weights=None), {"avgpool": "swav"}, 224, IMAGENET,
                  "swav_800ep_pretrain.pth.tar"),  # facebookresearch/swav hubconf resnet50
    "clip": _Spec(None, {"embedding": "clip"}, 224, CLIP_NORM, None),
}
NETWORK_OF = {metric: net for net, spec in SPECS.items() for metric in spec.nodes.values()}


class _ClipImage(nn.Module):
    """OpenCLIP's ``encode_image`` (MindEye: OpenAI ``clip`` ViT-L/14 ``encode_image``, the projected embedding)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return {"embedding": self.model.encode_image(x)}


class FeatureNetwork:
    """A network's preprocessing and feature extraction on ``mindeye_images``; ``weights`` says where its weights
    came from (a file path, or that they are random)."""

    def __init__(self, name: str, model: nn.Module, weights: str):
        self.name, self.model, self.weights, self.spec = name, model.eval().requires_grad_(False), weights, SPECS[name]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        mean, std = self.spec.norm
        out = self.model(TF.normalize(_resize(images, self.spec.size), mean, std))
        return {metric: out[node].float().flatten(1).cpu().numpy() for node, metric in self.spec.nodes.items()}


def _weights_file(name: str, cfg: ReconstructionConfig) -> Path:
    key = f"eval.reconstruction.{name}_weights"
    configured = getattr(cfg, f"{name}_weights")
    if configured:
        paths = [Path(configured).expanduser()]
    elif SPECS[name].file:
        paths = [Path(torch.hub.get_dir()) / "checkpoints" / SPECS[name].file]
    else:
        paths = []
    found = next((p for p in paths if p.is_file()), None)
    if found is None:
        expected = SPECS[name].file or f"an OpenCLIP {cfg.clip_model} checkpoint (OpenAI weights)"
        raise ReconstructionWeightsNotFound(
            f"reconstruction network {name!r}: weights not found (looked at: {', '.join(map(str, paths)) or 'nothing'}); "
            f"nothing is downloaded. Set {key}=/path/to/{expected}"
            + (f" or place it in the torch hub cache as {Path(torch.hub.get_dir()) / 'checkpoints' / SPECS[name].file}"
               if SPECS[name].file else "")
            + ", or leave the metrics of this network out of eval.reconstruction.metrics.")
    return found


def _load(name: str, cfg: ReconstructionConfig, seed: int) -> nn.Module:
    spec = SPECS[name]
    if name == "clip":
        import open_clip

        if cfg.random_networks:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return _ClipImage(open_clip.create_model(cfg.clip_model))
        return _ClipImage(open_clip.create_model(cfg.clip_model, pretrained=str(_weights_file(name, cfg))))
    if cfg.random_networks:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = spec.build()
    else:
        model = spec.build()
        state = torch.load(_weights_file(name, cfg), map_location="cpu", weights_only=True)
        if name == "swav":  # the hubconf's loading: "module." prefixes removed; its fc stays untrained (unused)
            state = {k.replace("module.", ""): v for k, v in state.items()}
            missing = set(model.load_state_dict(state, strict=False).missing_keys) - {"fc.weight", "fc.bias"}
            if missing:
                raise ValueError(f"swav: not a SwAV ResNet-50 checkpoint, missing {sorted(missing)[:5]}")
        else:
            model.load_state_dict(state)
    return create_feature_extractor(model, return_nodes=list(spec.nodes))


def _clip_unavailable() -> str | None:
    try:
        import open_clip  # noqa: F401
    except ImportError:
        return "open_clip is not installed (pip install 'eeg2im_scale[clip]')"
    return None


def load_networks(metrics: list[str], cfg: ReconstructionConfig, device: torch.device | str = "cpu",
                  seed: int = 0) -> tuple[dict[str, FeatureNetwork], dict[str, str]]:
    """The networks ``metrics`` need, on ``device``, and the metrics that cannot be computed here with the reason
    (CLIP without open_clip). Weights from ``eval.reconstruction.<network>_weights`` or torch hub's cache only;
    ``cfg.random_networks`` (tests only) builds them with seeded random weights instead."""
    networks, unavailable = {}, {}
    for name in dict.fromkeys(NETWORK_OF[m] for m in metrics if m in NETWORK_OF):
        reason = _clip_unavailable() if name == "clip" else None
        if reason:
            unavailable.update({m: reason for m in SPECS[name].nodes.values() if m in metrics})
            continue
        weights = RANDOM_WEIGHTS if cfg.random_networks else str(_weights_file(name, cfg))
        if name == "clip":
            weights += f" (OpenCLIP {cfg.clip_model})"
        networks[name] = FeatureNetwork(name, _load(name, cfg, seed).to(device), weights)
    return networks, unavailable


def trial_entries(networks: dict[str, FeatureNetwork], metrics: list[str], real: torch.Tensor,
                  generated: torch.Tensor, n: int) -> list[dict]:
    """Per trial (``real`` one stimulus per trial, ``generated`` n per trial, trial-major): its PixCorr and SSIM
    values, and its generations' and stimulus' features. Features, not images, travel on: ``two_way_rows`` later
    turns the 2-way features into correlation rows."""
    fake, real = mindeye_images(generated), mindeye_images(real)
    values = {}
    if "pixcorr" in metrics:
        values["pixcorr"] = pixcorr(fake, real.repeat_interleave(n, dim=0))
    if "ssim" in metrics:
        values["ssim"] = ssim(fake, real.repeat_interleave(n, dim=0))
    fake_features, real_features = {}, {}
    for network in networks.values():
        fake_features.update(network(fake))
        real_features.update(network(real))
    wanted = [m for m in fake_features if m in metrics]
    return [{"values": {m: [float(v) for v in values[m][i * n:(i + 1) * n]] for m in values},
             "fake": {m: fake_features[m][i * n:(i + 1) * n] for m in wanted},
             "real": {m: real_features[m][i] for m in wanted}} for i in range(len(real))]


def two_way_rows(records: list[dict], reals: dict[str, dict[str, np.ndarray]]) -> None:
    """Replace each record's generated 2-way features (``record["reconstruction"]``) by their correlations with
    every distinct stimulus of ``reals`` (image id → metric → feature), columns in image-id order: n numbers per
    generation instead of a feature map (AlexNet(2): 184,512 numbers at 256×256)."""
    ids = sorted(reals)
    for metric in TWO_WAY:
        if not any(metric in r["reconstruction"]["fake"] for r in records):
            continue
        matrix = np.stack([reals[i][metric] for i in ids])
        for record in records:
            entry = record["reconstruction"]
            entry.setdefault("rows", {})[metric] = correlations(entry["fake"].pop(metric), matrix)
            entry["real"].pop(metric)


def summarise(records: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """(value, chance) of each metric in the records, sorted by trial key first. 2-way: generation j against the
    distinct stimuli (``two_way_rows``' columns), its own image congruent; chance 0.5. Distances: chance is the
    distance to another trial's stimulus (``fidelity.mismatched_partners``)."""
    records = sorted(records, key=lambda r: r["key"])
    if not records:
        return {}, {}
    entries = [r["reconstruction"] for r in records]
    values = {m: float(np.mean([v for e in entries for v in e["values"][m]])) for m in entries[0]["values"]}
    chance = {}
    ids = sorted({r["image_id"] for r in records})
    column = {image_id: i for i, image_id in enumerate(ids)}
    for metric in entries[0].get("rows", {}):
        if len(ids) < 2:
            continue
        own = np.concatenate([[column[r["image_id"]]] * len(e["rows"][metric]) for r, e in zip(records, entries)])
        values[metric] = two_way_identification(np.concatenate([e["rows"][metric] for e in entries]), own)
        chance[metric] = 0.5
    partners = mismatched_partners([r["image_id"] for r in records])
    for metric in (m for m in DISTANCES if m in entries[0]["fake"]):
        fake = np.concatenate([e["fake"][metric] for e in entries])
        values[metric] = float(correlation_distances(fake, np.concatenate(
            [np.repeat(e["real"][metric][None], len(e["fake"][metric]), 0) for e in entries])).mean())
        pairs = [(e["fake"][metric], entries[p]["real"][metric]) for e, p in zip(entries, partners) if p is not None]
        if pairs:
            chance[metric] = float(correlation_distances(np.concatenate([f for f, _ in pairs]), np.concatenate(
                [np.repeat(r[None], len(f), 0) for f, r in pairs])).mean())
    return values, chance
