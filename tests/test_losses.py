"""Losses against hand-written references (explicit loops, numpy, scipy) and gradient checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, logsumexp, softmax

from eeg2im_scale.config import HighLevelConfig, LowLevelConfig
from eeg2im_scale.models.autoencoder import to_unit_range
from eeg2im_scale.models.losses import (alignment_loss, diffusion_loss, feature_kd_loss, highlevel_loss, info_nce,
                                        lowlevel_loss, response_kd_loss)

B, K, D = 6, 5, 7


def tensors(*shape, seed: int = 0, requires_grad: bool = False) -> torch.Tensor:
    array = np.random.default_rng(seed).standard_normal(shape)
    return torch.tensor(array, dtype=torch.float64, requires_grad=requires_grad)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_response_kd_matches_explicit_sum(temperature):
    student, teacher = tensors(B, K, seed=1), tensors(B, K, seed=2) * 3
    s, t = student.numpy(), teacher.numpy()
    total = 0.0
    for b in range(B):
        p_student = softmax(s[b] / temperature)
        p_teacher = softmax(t[b] / temperature)
        total += sum(p_teacher[k] * math.log(p_teacher[k] / p_student[k]) for k in range(K))
    expected = temperature ** 2 * total / B
    assert response_kd_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-10)


def test_response_kd_is_zero_for_identical_logits_and_trains_the_student():
    logits = tensors(B, K, seed=3)
    assert response_kd_loss(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-12)
    student = tensors(B, K, seed=4, requires_grad=True)
    loss = response_kd_loss(student, logits, 4.0)
    assert loss.item() > 0
    loss.backward()
    assert student.grad.abs().sum() > 0


def test_feature_kd_mse_and_cosine_match_numpy():
    projected, teacher = tensors(B, D, seed=5), tensors(B, D, seed=6)
    p, t = projected.numpy(), teacher.numpy()
    assert feature_kd_loss(projected, teacher, "mse").item() == pytest.approx(np.mean((p - t) ** 2))
    cosine = np.sum(p * t, axis=1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1))
    assert feature_kd_loss(projected, teacher, "cosine").item() == pytest.approx(np.mean(1 - cosine))
    assert feature_kd_loss(projected, 2.5 * projected, "cosine").item() == pytest.approx(0.0, abs=1e-12)
    assert feature_kd_loss(projected, projected, "mse").item() == 0.0


def test_alignment_loss_kinds():
    eeg, image = tensors(B, D, seed=7, requires_grad=True), tensors(B, D, seed=8)
    assert alignment_loss(eeg, image, "mse").item() == pytest.approx(np.mean((eeg.detach().numpy() - image.numpy()) ** 2))
    loss = alignment_loss(eeg, image, "cosine")
    loss.backward()
    assert 0 < loss.item() < 2 and eeg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mse"):
        alignment_loss(eeg, image, "l1")


def test_info_nce_matches_manual_cross_entropy():
    a, b, temperature = tensors(B, D, seed=9), tensors(B, D, seed=10), 0.2
    an = a.numpy() / np.linalg.norm(a.numpy(), axis=1, keepdims=True)
    bn = b.numpy() / np.linalg.norm(b.numpy(), axis=1, keepdims=True)
    similarity = an @ bn.T / temperature
    a_to_b = np.mean([logsumexp(similarity[i]) - similarity[i, i] for i in range(B)])
    b_to_a = np.mean([logsumexp(similarity[:, j]) - similarity[j, j] for j in range(B)])
    assert info_nce(a, b, temperature).item() == pytest.approx((a_to_b + b_to_a) / 2, rel=1e-10)


def test_info_nce_is_small_for_matched_pairs_and_trains_both_sides():
    matched = torch.eye(B, dtype=torch.float64)
    assert info_nce(matched, 3 * matched, 0.05).item() < 1e-6
    a, b = tensors(B, D, seed=11, requires_grad=True), tensors(B, D, seed=12, requires_grad=True)
    info_nce(a, b, 0.1).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_diffusion_loss_is_mse():
    pred, target = tensors(2, 3, 4, 4, seed=13), tensors(2, 3, 4, 4, seed=14)
    assert diffusion_loss(pred, target).item() == pytest.approx(np.mean((pred.numpy() - target.numpy()) ** 2))


def highlevel_inputs():
    outputs = {"logits": tensors(B, K, seed=15, requires_grad=True), "teacher_proj": tensors(B, D, seed=16, requires_grad=True)}
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    return outputs, labels, tensors(B, K, seed=17, requires_grad=True), tensors(B, D, seed=18, requires_grad=True)


def test_highlevel_loss_is_the_weighted_sum_and_leaves_the_teacher_alone():
    cfg = HighLevelConfig(ce_weight=0.5, kd_weight=2.0, kd_temperature=3.0, feature_kd_weight=0.25,
                          feature_kd_loss="cosine")
    outputs, labels, teacher_logits, teacher_features = highlevel_inputs()
    total, terms = highlevel_loss(outputs, labels, teacher_logits, teacher_features, cfg)
    logits = outputs["logits"].detach().numpy()
    ce = -np.mean(log_softmax(logits, axis=1)[np.arange(B), labels.numpy()])
    kd = response_kd_loss(outputs["logits"], teacher_logits, 3.0).item()
    feature = feature_kd_loss(outputs["teacher_proj"], teacher_features, "cosine").item()
    assert terms["ce"].item() == pytest.approx(ce)
    assert set(terms) == {"ce", "kd", "feature_kd"} and not any(t.requires_grad for t in terms.values())
    assert total.item() == pytest.approx(0.5 * ce + 2.0 * kd + 0.25 * feature)
    total.backward()
    assert outputs["logits"].grad.abs().sum() > 0 and outputs["teacher_proj"].grad.abs().sum() > 0
    assert teacher_logits.grad is None and teacher_features.grad is None


def test_highlevel_loss_skips_zero_weights_and_needs_the_teacher_otherwise():
    outputs, labels, teacher_logits, _ = highlevel_inputs()
    total, terms = highlevel_loss(outputs, labels, None, None, HighLevelConfig(kd_weight=0, feature_kd_weight=0))
    assert set(terms) == {"ce"} and total.item() == pytest.approx(terms["ce"].item())
    with pytest.raises(ValueError, match="feature_kd_weight"):
        highlevel_loss(outputs, labels, teacher_logits, None, HighLevelConfig())


def test_lowlevel_loss_is_the_weighted_sum_with_a_detached_alignment_target():
    images = torch.randint(0, 256, (B, 3, 4, 4), dtype=torch.uint8)
    recon = tensors(B, 3, 4, 4, seed=19, requires_grad=True)
    eeg_latent, image_latent = tensors(B, D, seed=20, requires_grad=True), tensors(B, D, seed=21, requires_grad=True)
    cfg = LowLevelConfig(recon_weight=2.0, align_weight=0.5, align_loss="mse", contrastive_weight=0.0)
    total, terms = lowlevel_loss(recon, images, eeg_latent, image_latent, cfg)
    recon_mse = np.mean((recon.detach().numpy() - to_unit_range(images).double().numpy()) ** 2)
    align = np.mean((eeg_latent.detach().numpy() - image_latent.detach().numpy()) ** 2)
    assert set(terms) == {"recon", "align"}
    assert total.item() == pytest.approx(2.0 * recon_mse + 0.5 * align)
    total.backward()
    assert recon.grad.abs().sum() > 0 and eeg_latent.grad.abs().sum() > 0
    assert image_latent.grad is None  # alignment chases the image latent, never moves it

    cfg = LowLevelConfig(recon_weight=0.0, align_weight=0.0, contrastive_weight=1.0, contrastive_temperature=0.1)
    total, terms = lowlevel_loss(recon, images, eeg_latent, image_latent, cfg)
    assert set(terms) == {"contrastive"}
    assert total.item() == pytest.approx(info_nce(eeg_latent, image_latent, 0.1).item())
    total.backward()
    assert image_latent.grad.abs().sum() > 0  # the contrastive term trains both encoders


def test_colour_layout_term_matches_cell_means_computed_by_hand():
    from eeg2im_scale.models.losses import colour_layout

    images = torch.randint(0, 256, (B, 3, 8, 8), dtype=torch.uint8)
    unit = to_unit_range(images).double().numpy()
    expected = unit.reshape(B, 3, 2, 4, 2, 4).mean(axis=(3, 5)).reshape(B, -1)  # 2x2 grid of 4x4-pixel cells
    assert np.allclose(colour_layout(to_unit_range(images).double(), 2).numpy(), expected)
    prediction = tensors(B, 12, seed=22, requires_grad=True)
    cfg = LowLevelConfig(recon_weight=0.0, align_weight=0.0, colour_layout_weight=3.0, colour_layout_size=2)
    total, terms = lowlevel_loss(tensors(B, 3, 8, 8, seed=23), images, tensors(B, D, seed=24),
                                 tensors(B, D, seed=25), cfg, prediction)
    assert set(terms) == {"colour_layout"}
    assert total.item() == pytest.approx(3.0 * np.mean((prediction.detach().numpy() - expected) ** 2))


def test_colour_distribution_term_is_the_kl_to_the_hue_histogram():
    from eeg2im_scale.eval.fidelity import hue_histogram

    images = torch.randint(0, 256, (B, 3, 8, 8), dtype=torch.uint8)
    logits = tensors(B, 6, seed=26, requires_grad=True)
    cfg = LowLevelConfig(recon_weight=0.0, align_weight=0.0, colour_distribution_weight=2.0, colour_distribution_bins=6)
    total, terms = lowlevel_loss(tensors(B, 3, 8, 8, seed=27), images, tensors(B, D, seed=28), tensors(B, D, seed=29),
                                 cfg, colour_logits=logits)
    target = hue_histogram(images, 6).numpy()
    log_p = log_softmax(logits.detach().numpy(), axis=1)
    kl = np.sum(np.where(target > 0, target * (np.log(np.where(target > 0, target, 1)) - log_p), 0), axis=1).mean()
    assert set(terms) == {"colour_distribution"} and total.item() == pytest.approx(2.0 * kl, rel=1e-5)
    total.backward()
    assert logits.grad.abs().sum() > 0
