"""What the protocols measure on a trained run: EEG-classifier accuracy, zero-shot accuracy over
unseen classes, and that a split keeps every test image out of training. One process (on the GPU
when there is one): the classifier's forward pass over a test split is cheap next to training."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..data.loader import EEGImageLoader
from ..data.manifest import Manifest
from ..models.autoencoder import to_unit_range
from ..models.teacher import Teacher
from ..models.build import Geometry, build_highlevel, load_prefixed
from ..train.stages import ShuffledLabels, stage_weights
from .plans import ProtocolError


@dataclass
class Scores:
    """Hits on a test split, with what the chance level needs."""

    correct: int
    trials: int
    label_counts: list[int]  # test trials per class
    choices: int  # classes the model chooses among


def _device() -> torch.device:
    """Chosen when scoring starts, not at import: a process may hide its GPUs after importing."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _trained_encoder(cfg: Config):
    geo = Geometry(cfg.data, Manifest.for_data(cfg.data).selected_info)
    encoder = load_prefixed(build_highlevel(cfg.model, geo), stage_weights(cfg, "highlevel"), "encoder")
    return encoder.eval().to(_device()), geo


@torch.no_grad()
def classifier_scores(cfg: Config, split: str = "test") -> Scores:
    """Top-1 accuracy of the run's high-level EEG encoder (its class head) on ``split``. On the
    training split of a shuffled-label run it is scored against the labels it was trained with:
    a control's positive control asks whether its classifier fitted what it was given."""
    encoder, geo = _trained_encoder(cfg)
    device = next(encoder.parameters()).device
    relabel = ShuffledLabels(cfg.data, cfg.train.seed) if split == "train" and cfg.train.shuffle_labels else None
    labels, correct = [], 0
    for batch in EEGImageLoader(cfg.data, split, train=False):
        predicted = encoder(batch["eeg"].to(device))["logits"].argmax(1).cpu()
        target = batch["label"] if relabel is None else relabel(batch)
        correct += int((predicted == target).sum())
        labels += target.tolist()
    return Scores(correct, len(labels), np.bincount(labels, minlength=geo.num_classes).tolist(), geo.num_classes)


def nearest_prototype(queries: torch.Tensor, query_images: list[str], image_features: dict[str, torch.Tensor],
                      image_labels: dict[str, int], num_classes: int) -> torch.Tensor:
    """The class whose prototype is nearest (cosine) to each query. A prototype is the mean of its
    class's L2-normalised image features, computed for each query without the query's own image,
    so no trial is matched against the very image it was recorded with.

    Cosine ignores a prototype's scale, so the sum stands for the mean, and leaving one image out
    only corrects the dot product and the squared norm of its own class: O(queries x classes)."""
    images = list(image_features)
    features = F.normalize(torch.stack([image_features[i] for i in images]).double(), dim=1)
    labels = torch.tensor([image_labels[i] for i in images])
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts < 2).any():
        raise ProtocolError(f"zero-shot needs at least 2 images per held-out class; images per class: "
                            f"{counts.tolist()}")
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64).index_add_(0, labels, features)
    position = {image: k for k, image in enumerate(images)}
    own = torch.tensor([position[i] for i in query_images])
    own_class, own_feature = labels[own], features[own]
    unit_queries = F.normalize(queries.double(), dim=1)
    dots = unit_queries @ sums.T
    squared_norms = (sums * sums).sum(1).expand(len(own), -1).clone()
    rows = torch.arange(len(own))
    dots[rows, own_class] -= (unit_queries * own_feature).sum(1)
    squared_norms[rows, own_class] -= 2 * (sums[own_class] * own_feature).sum(1) - 1  # |own_feature| = 1
    return (dots / squared_norms.clamp_min(1e-12).sqrt()).argmax(1)


@torch.no_grad()
def zero_shot_scores(cfg: Config, heldout: list[str]) -> Scores:
    """Zero-shot accuracy over ``heldout`` classes of a run trained without them (``cfg``: the
    run's config, whose ``data.classes`` are the training classes): the EEG encoder's projection
    into the teacher's feature space against prototypes of the fine-tuned teacher's features."""
    encoder, geo = _trained_encoder(cfg)
    device = next(encoder.parameters()).device
    teacher = load_prefixed(Teacher(cfg.model.teacher, geo.num_classes), stage_weights(cfg, "teacher"), "teacher")
    teacher = teacher.eval().to(device)
    projections, query_images, features, image_labels = [], [], {}, {}
    for batch in EEGImageLoader(replace(cfg.data, classes=list(heldout)), "test", train=False):
        projections.append(encoder(batch["eeg"].to(device))["teacher_proj"].cpu())
        query_images += batch["image_id"]
        new = [k for k, image in enumerate(batch["image_id"]) if image not in features]
        if new:
            _, pooled = teacher(to_unit_range(batch["image"][new].to(device)))
            for k, feature in zip(new, pooled.cpu()):
                features[batch["image_id"][k]] = feature
                image_labels[batch["image_id"][k]] = int(batch["label"][k])
    labels = torch.tensor([image_labels[i] for i in query_images])
    predicted = nearest_prototype(torch.cat(projections), query_images, features, image_labels, len(heldout))
    return Scores(int((predicted == labels).sum()), len(labels), torch.bincount(labels, minlength=len(heldout)).tolist(),
                  len(heldout))


def check_images_disjoint(manifest: Manifest, scheme: str, examples: int = 5) -> tuple[int, int]:
    """Training + validation images and test images of ``scheme`` share none (the by-image
    protocol's assertion); returns their counts. The ProtocolError names shared images."""
    seen = manifest.image_ids(scheme, "train") | manifest.image_ids(scheme, "val")
    tested = manifest.image_ids(scheme, "test")
    shared = sorted(seen & tested)
    if shared:
        raise ProtocolError(f"data.split_by={scheme} tests {len(shared)} of its {len(tested)} test images also "
                            f"seen in training or validation (e.g. {', '.join(map(str, shared[:examples]))}); "
                            f"use a split that holds whole images out (data.split_by=image)")
    return len(seen), len(tested)
