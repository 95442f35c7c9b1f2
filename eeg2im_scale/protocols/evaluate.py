"""What the protocols measure on a trained run: EEG-classifier accuracy, zero-shot accuracy over
unseen classes, zero-shot retrieval of unseen concepts' images, and that a split keeps every test
image (or concept) out of training. One process (on the GPU
when there is one): the classifier's forward pass over a test split is cheap next to training."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config, DataConfig
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


@dataclass
class RetrievalScores:
    """Per k, the queries whose own image ranked among the k most similar of ``candidates`` images."""

    hits: dict[int, int]
    queries: int
    candidates: int


def retrieval_ranks(queries: torch.Tensor, query_images: Sequence[str],
                    candidates: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per query, how many candidate images are strictly more similar (cosine) to it than its own
    image: 0 means retrieved first. Ties count in the query's favour, as ``topk`` would place them."""
    names = sorted(candidates)
    if missing := sorted(set(query_images) - set(names)):
        raise ValueError(f"queries of images with no candidate feature: {missing[:5]}")
    features = F.normalize(torch.stack([candidates[n] for n in names]).double(), dim=1)
    similarity = F.normalize(queries.double(), dim=1) @ features.T
    position = {name: k for k, name in enumerate(names)}
    own = similarity[torch.arange(len(query_images)), torch.tensor([position[i] for i in query_images])]
    return (similarity > own[:, None]).sum(1)


def query_eeg(batches: Iterable[dict], average: bool) -> tuple[list[str], torch.Tensor, dict[str, torch.Tensor]]:
    """The retrieval queries of a test split, in key order (so no metric depends on loader order):
    (image of each query, its EEG, one image per distinct image id). ``average``: one query per
    (subject, image), the mean of that subject's repetitions of the image; otherwise one per trial."""
    sums: dict[tuple, torch.Tensor] = {}
    counts: dict[tuple, int] = {}
    images: dict[str, torch.Tensor] = {}
    for batch in batches:
        for k, image in enumerate(batch["image_id"]):
            key = (int(batch["subject"][k]), image) if average else (batch["key"][k], image)
            eeg = batch["eeg"][k].double()
            sums[key] = sums[key] + eeg if key in sums else eeg
            counts[key] = counts.get(key, 0) + 1
            images.setdefault(image, batch["image"][k])
    keys = sorted(sums)
    eeg = torch.stack([sums[key] / counts[key] for key in keys]).float() if keys else torch.empty(0)
    return [image for _, image in keys], eeg, images


@torch.no_grad()
def retrieval_scores(data_cfg: DataConfig, embed: Callable[[torch.Tensor], torch.Tensor],
                     image_features: Callable[[torch.Tensor], torch.Tensor], *, average: bool, top_k: Sequence[int],
                     batch_size: int = 256) -> RetrievalScores:
    """Zero-shot retrieval on ``data_cfg``'s test split: each query's EEG embedded and ranked by
    cosine against the features of every distinct test image (the candidates)."""
    query_images, eeg, images = query_eeg(EEGImageLoader(data_cfg, "test", train=False), average)
    if len(images) <= max(top_k):
        raise ProtocolError(f"retrieval top-{max(top_k)} needs more than {max(top_k)} test images; "
                            f"data.split_by={data_cfg.split_by} tests {len(images)}")
    names = sorted(images)
    candidates = {}
    for start in range(0, len(names), batch_size):
        chunk = names[start:start + batch_size]
        candidates.update(zip(chunk, image_features(torch.stack([images[n] for n in chunk])).cpu()))
    queries = torch.cat([embed(eeg[start:start + batch_size]).cpu() for start in range(0, len(eeg), batch_size)])
    ranks = retrieval_ranks(queries, query_images, candidates)
    return RetrievalScores({k: int((ranks < k).sum()) for k in top_k}, len(ranks), len(candidates))


def trained_retrieval_scores(cfg: Config) -> RetrievalScores:
    """Retrieval with a trained run's EEG encoder (its projection into the teacher's feature
    space) against its fine-tuned teacher's pooled features."""
    encoder, geo = _trained_encoder(cfg)
    device = next(encoder.parameters()).device
    teacher = load_prefixed(Teacher(cfg.model.teacher, geo.num_classes), stage_weights(cfg, "teacher"), "teacher")
    teacher = teacher.eval().to(device)
    return retrieval_scores(cfg.data, lambda eeg: encoder(eeg.to(device))["teacher_proj"],
                            lambda images: teacher(to_unit_range(images.to(device)))[1],
                            average=cfg.protocol.average_repetitions, top_k=cfg.protocol.retrieval_top_k)


def check_concepts_disjoint(manifest: Manifest, scheme: str, examples: int = 5) -> tuple[int, int]:
    """No class of the test split is trained on (zero-shot retrieval's premise); returns the counts
    of training + validation classes and test classes. The ProtocolError names shared classes."""
    seen = set(manifest.labels(scheme, "train").tolist()) | set(manifest.labels(scheme, "val").tolist())
    tested = set(manifest.labels(scheme, "test").tolist())
    shared = [manifest.class_names[c] for c in sorted(seen & tested)]
    if shared:
        raise ProtocolError(f"zero-shot retrieval needs test concepts never trained on: data.split_by={scheme} tests "
                            f"{len(shared)} of its {len(tested)} test classes also in training or validation (e.g. "
                            f"{', '.join(shared[:examples])}); use a split that holds whole concepts out (THINGS-EEG2's "
                            f"release)")
    return len(seen), len(tested)


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
