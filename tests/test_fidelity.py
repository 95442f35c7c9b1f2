"""Fidelity metrics: identities, hand-computed values, torchmetrics parity, and recovery of the
recorded colour of real synthetic images."""

import colorsys

import pytest
import torch

from eeg2im_scale.config import SynthConfig
from eeg2im_scale.data.synth import SyntheticCorpus
from eeg2im_scale.eval.fidelity import (
    attribute_errors,
    dominant_colour,
    histogram_intersection,
    hsv_histograms,
    hue_emd,
    n_way_topk_accuracy,
    pixel_correlation,
    rgb_to_hsv,
    ssim,
    topk_accuracy,
)


@pytest.fixture(scope="module")
def synthetic():
    """Images [B, 3, 32, 32] uint8 and their recorded attributes (tensors [B])."""
    corpus = SyntheticCorpus(SynthConfig(channels=8, time_points=64, image_size=32, num_samples=40))
    records = [corpus.image(i) for i in range(corpus.num_images)]
    images = torch.stack([torch.from_numpy(pixels).permute(2, 0, 1) for _, pixels in records])
    attributes = {key: torch.tensor([a[key] for a, _ in records]) for key in records[0][0]}
    return images, attributes


def solid(hsv, size=16):
    rgb = torch.tensor([round(c * 255) for c in colorsys.hsv_to_rgb(*hsv)], dtype=torch.uint8)
    return rgb.view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def object_on_grey(hue, size=16):
    """A saturated square of ``hue`` on a pure grey background."""
    image = solid((0.0, 0.0, 0.5), size)
    image[..., 4:12, 4:12] = solid((hue, 0.9, 0.8), 8)
    return image


def test_rgb_to_hsv_matches_colorsys():
    pixels = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    hsv = rgb_to_hsv(pixels)
    for r, g, b, h, s, v in zip(*pixels.flatten(2)[0].tolist(), *hsv.flatten(2)[0].tolist()):
        expected = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        assert abs(h - expected[0]) < 1e-5 or abs(abs(h - expected[0]) - 1) < 1e-5
        assert (s, v) == pytest.approx(expected[1:], abs=1e-5)


def test_histogram_intersection(synthetic):
    images = synthetic[0][:8]
    recoloured = images[:, [2, 0, 1]]  # RGB -> BRG: hue rotates by a third
    same = histogram_intersection(hsv_histograms(images), hsv_histograms(images))
    other = histogram_intersection(hsv_histograms(images), hsv_histograms(recoloured))
    assert torch.allclose(same, torch.ones(8))
    assert (other < 0.99).all()
    assert hsv_histograms(images).sum(-1).allclose(torch.ones(8))
    assert hsv_histograms(images).shape == (8, 8 * 4 * 4)


def test_hue_emd(synthetic):
    images = synthetic[0][:8]
    shifted = images[:, [2, 0, 1]]
    assert torch.allclose(hue_emd(images, images), torch.zeros(8))
    assert torch.allclose(hue_emd(images, shifted), hue_emd(shifted, images))
    assert (hue_emd(images, shifted) > 0.1).all()
    a = torch.cat([object_on_grey(0.1), object_on_grey(0.3)])
    b = torch.cat([object_on_grey(0.9), object_on_grey(0.8)])
    assert hue_emd(a, b).tolist() == pytest.approx([0.2, 0.5], abs=1 / 36)
    assert (hue_emd(a, b) <= 0.5 + 1e-6).all()


def test_hue_emd_of_a_split_distribution():
    """Half the weight moves 0.1, half stays: EMD = 0.05 (circular shift matters, not wrap)."""
    a = object_on_grey(0.0)
    b = a.clone()
    b[..., 4:8, 4:12] = solid((0.1, 0.9, 0.8), 8)[..., :4, :]
    assert hue_emd(a, b).item() == pytest.approx(0.05, abs=1 / 36)


def test_ssim_values_are_pinned(synthetic):
    """SSIM comes from torchmetrics; these values (computed by the hand-written Gaussian-window SSIM
    it replaced, which matched torchmetrics within 1e-4) catch a change of its defaults (window,
    constants, padding or averaging) in a torchmetrics upgrade."""
    images = synthetic[0][:6]
    noisy = (images.float() + 25 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0)))
    noisy = noisy.clamp(0, 255).to(torch.uint8)
    pinned = torch.tensor([0.314105, 0.276023, 0.240389, 0.287166, 0.200766, 0.177184])
    assert torch.allclose(ssim(images, noisy), pinned, atol=1e-5)
    assert torch.allclose(ssim(noisy, images), pinned, atol=1e-5)  # symmetric
    assert torch.allclose(ssim(images, images), torch.ones(6), atol=1e-6)


def test_pixel_correlation(synthetic):
    images = synthetic[0][:4]
    assert torch.allclose(pixel_correlation(images, images), torch.ones(4), atol=1e-6)
    assert torch.allclose(pixel_correlation(images, 255 - images), -torch.ones(4), atol=1e-6)
    assert pixel_correlation(solid((0, 0, 0.5)), solid((0, 0, 0.5))).item() == 0.0


def test_dominant_colour_recovers_recorded_attributes(synthetic):
    images, attributes = synthetic
    found = dominant_colour(images)
    errors = attribute_errors(images, attributes)
    assert errors["hue"].max() < 0.02, errors["hue"]
    assert errors["saturation"].max() < 0.05, errors["saturation"]
    assert errors["brightness"].max() < 0.05, errors["brightness"]
    assert found["hue"].shape == (len(images),)


def test_attribute_errors_flag_shifted_hue(synthetic):
    images, attributes = synthetic
    shifted = images[:, [2, 0, 1]]  # hue + 1/3 turn, saturation and brightness unchanged
    errors = attribute_errors(shifted, attributes)
    assert torch.allclose(errors["hue"], torch.full_like(errors["hue"], 1 / 3), atol=0.02)
    assert errors["brightness"].max() < 0.05
    wrapped = dict(attributes, hue=attributes["hue"] + 1 / 3)
    assert attribute_errors(shifted, wrapped)["hue"].max() < 0.02
    assert (errors["hue"] <= 0.5).all()


LOGITS = torch.tensor([[0.9, 0.5, 0.1, 0.0],
                       [0.2, 0.8, 0.7, 0.1],
                       [0.3, 0.2, 0.1, 0.4],
                       [0.0, 0.0, 0.0, 0.0]])
LABELS = torch.tensor([0, 2, 3, 1])


def test_topk_accuracy_hand_computed():
    # ranks of the true class: 1, 2, 1, tied with all four (expected hit k / 4)
    assert topk_accuracy(LOGITS, LABELS, 1) == pytest.approx((1 + 0 + 1 + 0.25) / 4)
    assert topk_accuracy(LOGITS, LABELS, 2) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert topk_accuracy(LOGITS, LABELS, 4) == 1.0
    assert topk_accuracy(torch.eye(5), torch.arange(5), 1) == 1.0


def test_n_way_topk_accuracy():
    torch.manual_seed(0)
    logits, labels = torch.randn(200, 10), torch.randint(0, 10, (200,))
    for k in (1, 3):
        assert n_way_topk_accuracy(logits, labels, n=10, k=k, trials=3) == pytest.approx(topk_accuracy(logits, labels, k))
    assert n_way_topk_accuracy(10 * torch.eye(10)[labels], labels, n=5, k=1) == 1.0
    assert n_way_topk_accuracy(logits, labels, n=5, k=5) == 1.0
    # random logits: chance is k / n
    assert n_way_topk_accuracy(logits, labels, n=2, k=1, trials=200) == pytest.approx(0.5, abs=0.03)
    # seeded: same seed, same value
    assert n_way_topk_accuracy(logits, labels, 4, 1, 5, seed=3) == n_way_topk_accuracy(logits, labels, 4, 1, 5, seed=3)


def test_n_way_hand_computed():
    """Sample 1 (label 2, beaten only by class 1): in a 2-way draw it loses only against class 1,
    drawn 1/3 of the time; in a 3-way draw it is top-1 only when class 1 is absent (1/3)."""
    logits, labels = LOGITS[1:2], LABELS[1:2]
    assert n_way_topk_accuracy(logits, labels, n=2, k=1, trials=3000, seed=1) == pytest.approx(2 / 3, abs=0.03)
    assert n_way_topk_accuracy(logits, labels, n=3, k=1, trials=3000, seed=1) == pytest.approx(1 / 3, abs=0.03)
    assert n_way_topk_accuracy(logits, labels, n=3, k=2, trials=10) == 1.0


def test_dominant_colour_is_exact_at_64_px_and_finite_on_grey():
    """100 images of 80 classes (every texture); 32 px textures alias, 64 px ones do not."""
    corpus = SyntheticCorpus(SynthConfig(channels=8, time_points=64, image_size=64, num_classes=80, num_samples=400))
    records = [corpus.image(i) for i in range(corpus.num_images)]
    images = torch.stack([torch.from_numpy(pixels).permute(2, 0, 1) for _, pixels in records])
    attributes = {key: torch.tensor([a[key] for a, _ in records]) for key in ("hue", "saturation", "brightness")}
    errors = attribute_errors(images, attributes)
    assert max(e.max().item() for e in errors.values()) < 0.01, errors
    grey = dominant_colour(torch.cat([solid((0, 0, 0.5)), solid((0, 0, 0))]))
    assert all(torch.isfinite(v).all() for v in grey.values())
    assert grey["saturation"].tolist() == [0.0, 0.0]
