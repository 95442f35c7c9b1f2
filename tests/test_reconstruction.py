"""The reconstruction table (eval/reconstruction.py) against MindEye2's published code, the project's
distinct-stimulus and order rules, and offline weights (the evaluator run: tests/test_evaluate.py)."""

import random
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage, spatial

from eeg2im_scale.config import ConfigError, ReconstructionConfig, load_config
from eeg2im_scale.eval import reconstruction as R


def mindeye_two_way(reals: np.ndarray, preds: np.ndarray) -> float:
    """MindEye2 src/final_evaluations.ipynb two_way_identification (return_avg=True), from features on."""
    r = np.corrcoef(reals, preds)
    r = r[:len(reals), len(reals):]
    congruents = np.diag(r)
    success = r < congruents
    success_cnt = np.sum(success, 0)
    return np.mean(success_cnt) / (len(reals) - 1)


def skimage_ssim_gray(im: np.ndarray, rec: np.ndarray) -> float:
    """skimage 0.22 structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1.0) on 2-D images, written from its published procedure with scipy.ndimage."""
    f = dict(sigma=1.5, truncate=3.5, mode="reflect")
    ux, uy = ndimage.gaussian_filter(im, **f), ndimage.gaussian_filter(rec, **f)
    vx = ndimage.gaussian_filter(im * im, **f) - ux * ux
    vy = ndimage.gaussian_filter(rec * rec, **f) - uy * uy
    vxy = ndimage.gaussian_filter(im * rec, **f) - ux * uy
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s[5:-5, 5:-5].mean()


def test_two_way_equals_mindeye_with_one_generation_per_stimulus():
    rng = np.random.default_rng(0)
    for n, dim, noise in ((10, 64, 1.0), (37, 300, 3.0), (2, 8, 0.5)):
        reals = rng.normal(size=(n, dim)).astype(np.float32)
        preds = (reals + noise * rng.normal(size=(n, dim))).astype(np.float32)
        ours = R.two_way_identification(R.correlations(preds, reals), np.arange(n))
        assert ours == pytest.approx(mindeye_two_way(reals, preds), abs=1e-12)
        assert np.allclose(R.correlations(preds, reals), np.corrcoef(reals, preds)[n:, :n], atol=1e-12)


def test_pixcorr_ssim_and_distances_follow_mindeye():
    g = torch.Generator().manual_seed(0)
    a, b = (R.mindeye_images(torch.randint(0, 256, (2, 3, 24, 24), generator=g, dtype=torch.uint8)) for _ in "ab")
    big_a, big_b = (torch.nn.functional.interpolate(x, size=(425, 425), mode="bilinear", align_corners=False)
                    for x in (a, b))
    for i in range(2):
        expected = np.corrcoef(big_a[i].flatten().numpy(), big_b[i].flatten().numpy())[0, 1]
        assert R.pixcorr(a, b)[i] == pytest.approx(expected, abs=1e-6)
        gray = [x[i].permute(1, 2, 0).double().numpy() @ np.array([0.2125, 0.7154, 0.0721]) for x in (big_a, big_b)]
        assert R.ssim(a, b)[i] == pytest.approx(skimage_ssim_gray(gray[1], gray[0]), abs=1e-6)
    assert R.ssim(a, a) == pytest.approx([1.0, 1.0])
    u, v = np.random.default_rng(1).normal(size=(2, 3, 50))
    assert R.correlation_distances(u, v) == pytest.approx([spatial.distance.correlation(x, y) for x, y in zip(u, v)])


def _records(features: dict[str, np.ndarray], plan: list[tuple[str, str, np.ndarray]]):
    """Records as the evaluator makes them: (key, image_id, generated rows) with 2-way and distance features."""
    records = [{"key": key, "image_id": image_id,
                "reconstruction": {"values": {"pixcorr": [0.1] * len(fake)}, "fake": {"alexnet2": fake, "effnet": fake},
                                   "real": {"alexnet2": features[image_id], "effnet": features[image_id]}}}
               for key, image_id, fake in plan]
    R.two_way_rows(records, {i: {"alexnet2": f} for i, f in features.items()})
    return records


def test_repeated_trials_of_a_stimulus_are_not_distractors_and_order_does_not_matter():
    rng = np.random.default_rng(2)
    features = {i: rng.normal(size=32) for i in "ABC"}
    plan = [("0", "A", features["A"][None]), ("1", "A", features["A"][None]),
            ("2", "B", features["B"][None]), ("3", "C", features["C"][None])]
    values, chance = R.summarise(_records(features, plan))
    assert values["alexnet2"] == 1.0 and chance["alexnet2"] == 0.5  # a stimulus' own repeat is no distractor
    reals = np.stack([features[i] for _, i, _ in plan])  # MindEye's function on the trials, repeats as distractors
    assert mindeye_two_way(reals, reals) < 1.0
    assert values["effnet"] == pytest.approx(0.0) and chance["effnet"] > 0.5

    plan = [(f"{k:03d}", image_id, rng.normal(size=(2, 32)) + features[image_id])
            for k, image_id in enumerate("AABCCCBA")]
    ordered = R.summarise(_records(features, plan))
    random.Random(0).shuffle(plan)
    assert R.summarise(_records(features, plan)) == ordered


def test_planted_reconstructions_score_one_and_a_derangement_does_not():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    images[:, :, :16] //= torch.arange(1, 5, dtype=torch.uint8).view(4, 1, 1, 1)  # different layouts too
    metrics = ["alexnet2", "alexnet5", "inception", "effnet", "swav"]
    networks, unavailable = R.load_networks(metrics, ReconstructionConfig(random_networks=True))
    assert set(networks) == {"alexnet", "inception", "effnet", "swav"} and not unavailable
    assert all(net.weights == R.RANDOM_WEIGHTS for net in networks.values())
    ids = list("abcd")
    features = {}
    for network in networks.values():  # each network once on the 4 images: generated ones are these, permuted
        features.update(network(R.mindeye_images(images)))
    for metric in ("alexnet2", "inception", "swav"):  # random networks still tell these images apart
        assert np.ptp(features[metric], axis=0).max() > 0

    def table(order):
        records = [{"key": str(k), "image_id": i, "reconstruction": {
            "values": {}, "fake": {m: f[[j]] for m, f in features.items()},
            "real": {m: f[k] for m, f in features.items()}}} for k, (i, j) in enumerate(zip(ids, order))]
        R.two_way_rows(records, {i: {m: f[k] for m, f in features.items()} for k, i in enumerate(ids)})
        return R.summarise(records)[0]

    same = table([0, 1, 2, 3])
    assert all(same[m] == 1.0 for m in ("alexnet2", "alexnet5", "inception"))
    assert same["effnet"] == pytest.approx(0.0, abs=1e-6) and same["swav"] == pytest.approx(0.0, abs=1e-6)
    deranged = table([1, 2, 3, 0])
    assert all(deranged[m] <= 0.6 for m in ("alexnet2", "alexnet5", "inception"))
    assert deranged["effnet"] > 0 and deranged["swav"] > 0


def test_missing_weights_name_the_network_key_and_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(R.ReconstructionWeightsNotFound) as caught:
        R.load_networks(["ssim", "effnet"], ReconstructionConfig(metrics=["ssim", "effnet"]))
    message = str(caught.value)
    assert "'effnet'" in message and "eval.reconstruction.effnet_weights" in message
    assert str(tmp_path / "hub" / "checkpoints" / "efficientnet_b1-c27df63c.pth") in message
    missing = tmp_path / "alex.pth"
    with pytest.raises(R.ReconstructionWeightsNotFound, match="eval.reconstruction.alexnet_weights") as caught:
        R.load_networks(["alexnet5"], ReconstructionConfig(alexnet_weights=str(missing)))
    assert str(missing) in str(caught.value)
    assert R.load_networks(["pixcorr", "ssim"], ReconstructionConfig()) == ({}, {})  # the default needs no file
    with pytest.raises(R.ReconstructionWeightsNotFound, match="eval.reconstruction.clip_weights=/path/to/an "
                                                            "OpenCLIP ViT-L-14 checkpoint"):
        R.load_networks(["clip"], ReconstructionConfig(metrics=["clip"]))
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as where OpenCLIP is not installed: listed, never faked
    assert R.load_networks(["clip"], ReconstructionConfig(metrics=["clip"])) == (
        {}, {"clip": "open_clip is not installed (pip install 'eeg2im_scale[clip]')"})


def test_config_rejects_unknown_and_repeated_metrics():
    with pytest.raises(ConfigError, match="eval.reconstruction.metrics"):
        load_config("tests/configs/tiny_train.yaml", ["eval.reconstruction.metrics=[ssim,lpips]"])
    with pytest.raises(ConfigError, match="twice"):
        load_config("tests/configs/tiny_train.yaml", ["eval.reconstruction.metrics=[ssim,ssim]"])
    assert load_config("tests/configs/tiny_train.yaml").eval.reconstruction.metrics == ["pixcorr", "ssim"]
