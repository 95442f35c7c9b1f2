"""Training objectives as pure functions of tensors (no modules, no state).

The composite losses return ``(total, terms)``: ``total`` carries the graph, ``terms`` holds each
*unweighted* term detached, ready for logging. Targets coming from another network (the teacher's
logits and features, the image autoencoder's latent for alignment) are detached there, so a
distillation or alignment term never trains the network it distils from.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..config import HighLevelConfig, LowLevelConfig
from .autoencoder import from_unit_range, to_unit_range
from .colour import hue_histogram


def response_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Response-based KD (Hinton et al., 2015): T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch.

    The T² factor keeps the gradient scale independent of T, so the KD weight need not be re-tuned
    when the temperature changes.
    """
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature ** 2


def _vector_distance(a: torch.Tensor, b: torch.Tensor, kind: Literal["mse", "cosine"]) -> torch.Tensor:
    """Mean over rows of MSE (per element) or of cosine distance 1 − cos(a_i, b_i)."""
    if kind == "mse":
        return F.mse_loss(a, b)
    if kind == "cosine":
        return (1 - F.cosine_similarity(a, b, dim=-1)).mean()
    raise ValueError(f"distance kind must be 'mse' or 'cosine', got {kind!r}")


def feature_kd_loss(projected: torch.Tensor, teacher_features: torch.Tensor,
                    kind: Literal["mse", "cosine"] = "mse") -> torch.Tensor:
    """Feature-based KD (FitNets-style hint): the student's projected embedding vs the teacher's pooled feature.

    ``mse`` matches magnitude too; ``cosine`` only the direction, which is more forgiving when
    the teacher's feature scale (post-ReLU, unnormalised) is far from the student's.
    """
    return _vector_distance(projected, teacher_features, kind)


def alignment_loss(eeg_latent: torch.Tensor, image_latent: torch.Tensor,
                   kind: Literal["mse", "cosine"] = "mse") -> torch.Tensor:
    """Distance between the low-level EEG latent and the image autoencoder's latent of the seen image."""
    return _vector_distance(eeg_latent, image_latent, kind)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP loss): row i of ``a`` and of ``b`` are the positive pair, all other rows negatives.

    Cosine similarities / temperature form the logits; the loss is the mean of the a→b and b→a
    cross-entropies against the diagonal.
    """
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    targets = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Simple DDPM objective (Ho et al., 2020): MSE between the prediction and its epsilon/v target."""
    return F.mse_loss(pred, target)


def _weighted_sum(weighted_terms: dict[str, tuple[float, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    total = sum(weight * term for weight, term in weighted_terms.values())
    return total, {name: term.detach() for name, (_, term) in weighted_terms.items()}


def highlevel_loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                   teacher_features: torch.Tensor | None, cfg: HighLevelConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ce_weight·CE + kd_weight·response KD + feature_kd_weight·feature KD for :class:`HighLevelEncoder` outputs.

    Terms with weight 0 are skipped, so the teacher inputs may be None when their weight is 0
    (the loop need not run the teacher at all). Returns (total, {"ce", "kd", "feature_kd"}).
    """
    terms: dict[str, tuple[float, torch.Tensor]] = {}
    if cfg.ce_weight:
        terms["ce"] = (cfg.ce_weight, F.cross_entropy(outputs["logits"], labels))
    if cfg.kd_weight:
        if teacher_logits is None:
            raise ValueError("model.highlevel.kd_weight > 0 needs teacher_logits")
        terms["kd"] = (cfg.kd_weight, response_kd_loss(outputs["logits"], teacher_logits.detach(), cfg.kd_temperature))
    if cfg.feature_kd_weight:
        if teacher_features is None:
            raise ValueError("model.highlevel.feature_kd_weight > 0 needs teacher_features")
        terms["feature_kd"] = (cfg.feature_kd_weight,
                               feature_kd_loss(outputs["teacher_proj"], teacher_features.detach(), cfg.feature_kd_loss))
    if not terms:
        raise ValueError("all model.highlevel loss weights are 0: nothing to train")
    return _weighted_sum(terms)


def colour_layout(images: torch.Tensor, size: int) -> torch.Tensor:
    """The image's colour layout: its mean colour in each cell of a ``size`` × ``size`` grid,
    flattened [B, 3·size²]; ``images`` in [-1, 1]."""
    return F.adaptive_avg_pool2d(images, size).flatten(1)


def colour_distribution_loss(logits: torch.Tensor, images: torch.Tensor, bins: int) -> torch.Tensor:
    """KL(image's saturation-weighted hue histogram || softmax(logits)), batch mean: the image's
    colour distribution as a target that shape and position do not dilute; images in [-1, 1]."""
    target = hue_histogram(from_unit_range(images.detach().float()), bins).to(logits.device, torch.float32)
    return F.kl_div(F.log_softmax(logits.float(), dim=-1), target, reduction="batchmean")


def lowlevel_loss(recon: torch.Tensor, images: torch.Tensor, eeg_latent: torch.Tensor, image_latent: torch.Tensor,
                  cfg: LowLevelConfig, layout_prediction: torch.Tensor | None = None,
                  colour_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """recon_weight·MSE(recon, images) + align_weight·alignment + contrastive_weight·InfoNCE
    + colour_layout_weight·MSE(layout_prediction, colour layout of the images)
    + colour_distribution_weight·KL(hue histogram || colour_logits).

    ``images`` are uint8 or already in [-1, 1]. The alignment target (the image latent) is
    detached: the autoencoder's latent is shaped by reconstruction alone and the EEG chases it —
    otherwise MSE alignment would pay the autoencoder to shrink its latent towards the EEG. The
    InfoNCE term is symmetric and trains both encoders, as its negatives prevent that collapse.
    The colour terms (``layout_prediction`` and ``colour_logits`` read from the EEG latent by
    linear heads) name the low-level attributes outright: the autoencoder's latent mixes colour with shape
    and position, and matching it alone leaves colour the weakest part of the EEG latent.
    Returns (total, {"recon", "align", "contrastive", "colour_layout", "colour_distribution"}) —
    terms with weight 0 are skipped.
    """
    if images.dtype == torch.uint8:
        images = to_unit_range(images).to(recon.dtype)
    terms: dict[str, tuple[float, torch.Tensor]] = {}
    if cfg.recon_weight:
        terms["recon"] = (cfg.recon_weight, F.mse_loss(recon, images))
    if cfg.align_weight:
        terms["align"] = (cfg.align_weight, alignment_loss(eeg_latent, image_latent.detach(), cfg.align_loss))
    if cfg.contrastive_weight:
        terms["contrastive"] = (cfg.contrastive_weight, info_nce(eeg_latent, image_latent, cfg.contrastive_temperature))
    if cfg.colour_layout_weight:
        target = colour_layout(images, cfg.colour_layout_size)
        terms["colour_layout"] = (cfg.colour_layout_weight, F.mse_loss(layout_prediction, target))
    if cfg.colour_distribution_weight:
        terms["colour_distribution"] = (cfg.colour_distribution_weight,
                                        colour_distribution_loss(colour_logits, images, cfg.colour_distribution_bins))
    if not terms:
        raise ValueError("all model.lowlevel loss weights are 0: nothing to train")
    return _weighted_sum(terms)
