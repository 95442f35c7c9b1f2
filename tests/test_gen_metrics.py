"""FID / IS / KID agree with torch-fidelity 0.4.0 and the pytorch-fid formula; the Inception loads offline."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.metric_fid import (
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric

from eeg2im_scale.eval.gen_metrics import (
    FeatureStats,
    fid_from_stats,
    frechet_distance,
    inception_score,
    kid,
)
from eeg2im_scale.eval.inception import (
    InceptionWeightsNotFound,
    extract,
    load_fid_inception,
    random_fid_inception,
)

D = 64


def _features(n, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(D, D, generator=g, dtype=torch.float64) / D**0.5
    return (torch.randn(n, D, generator=g, dtype=torch.float64) @ mix + shift).relu()  # pool3-like: ≥ 0, correlated


def _pytorch_fid(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance, written out."""
    diff = mu1 - mu2
    covmean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.mark.parametrize("chunks", [1, 5])
def test_fid_matches_pytorch_fid_and_torch_fidelity(chunks):
    a, b = _features(300, seed=1), _features(400, shift=0.3, seed=2)
    # accumulate in chunks on separate "processes", merge through the flat all-reduce tensor
    parts = [FeatureStats(D).update(c) for c in a.chunk(chunks)]
    flat = torch.stack([p.to_tensor() for p in parts]).sum(0)
    stats_a = FeatureStats.from_tensor(flat)
    stats_b = sum((FeatureStats(D).update(c) for c in b.chunk(chunks)), FeatureStats(D))
    assert stats_a.count == 300 and stats_b.count == 400
    np.testing.assert_allclose(stats_a.cov().numpy(), np.cov(a.numpy(), rowvar=False), rtol=1e-9, atol=1e-12)

    fid = fid_from_stats(stats_a, stats_b)
    ta, tb = fid_features_to_statistics(a), fid_features_to_statistics(b)
    reference = _pytorch_fid(ta["mu"], ta["sigma"], tb["mu"], tb["sigma"])
    tf_fid = fid_statistics_to_metric(ta, tb, verbose=False)["frechet_inception_distance"]
    assert fid > 0.1
    assert _rel(fid, reference) < 1e-4 and _rel(fid, tf_fid) < 1e-4
    assert abs(fid_from_stats(stats_a, stats_a)) < 1e-8


def test_fid_singular_covariance():
    """Fewer samples than dimensions (rank-deficient Σ): still finite and equal to the reference."""
    a, b = _features(40, seed=3), _features(50, shift=0.2, seed=4)
    ta, tb = fid_features_to_statistics(a), fid_features_to_statistics(b)
    fid = frechet_distance(ta["mu"], ta["sigma"], tb["mu"], tb["sigma"])
    assert np.isfinite(fid) and _rel(fid, _pytorch_fid(ta["mu"], ta["sigma"], tb["mu"], tb["sigma"])) < 1e-4


def test_feature_stats_empty_process_and_errors():
    empty = FeatureStats(D)
    merged = FeatureStats.from_tensor(empty.to_tensor() + FeatureStats(D).update(_features(10)).to_tensor())
    assert merged.count == 10
    with pytest.raises(ValueError):
        FeatureStats(D).update(torch.zeros(3, D + 1))
    with pytest.raises(ValueError):
        empty.cov()


def test_inception_score_matches_torch_fidelity():
    logits = torch.randn(250, 1008, generator=torch.Generator().manual_seed(5)) * 3
    for splits in (10, 3):
        mean, std = inception_score(logits, splits=splits)
        ref = isc_features_to_metric(logits, splits=splits)
        assert _rel(mean, ref["inception_score_mean"]) < 1e-4 and _rel(std, ref["inception_score_std"]) < 1e-4
    probs_mean, _ = inception_score(logits.double().softmax(1), splits=10, probs=True)
    assert _rel(probs_mean, isc_features_to_metric(logits, splits=10)["inception_score_mean"]) < 1e-4


def test_kid_matches_torch_fidelity():
    a, b = _features(120, seed=6), _features(150, shift=0.1, seed=7)
    mean, std = kid(a, b, subsets=20, subset_size=50, seed=11)
    ref = kid_features_to_metric(a, b, kid_subsets=20, kid_subset_size=50, rng_seed=11, verbose=False)
    assert _rel(mean, ref["kernel_inception_distance_mean"]) < 1e-4
    assert _rel(std, ref["kernel_inception_distance_std"]) < 1e-4
    # subset_size larger than a set: clipped to the smaller set (torch-fidelity refuses)
    clipped = kid(a, b, subsets=3, subset_size=1000, seed=0)
    ref = kid_features_to_metric(a, b, kid_subsets=3, kid_subset_size=120, rng_seed=0, verbose=False)
    assert _rel(clipped[0], ref["kernel_inception_distance_mean"]) < 1e-4


def test_missing_inception_weights_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    for path in (None, str(tmp_path / "nope.pth")):
        with pytest.raises(InceptionWeightsNotFound, match="eval.inception_weights") as info:
            load_fid_inception(path, "cpu")
        assert isinstance(info.value, FileNotFoundError)


def test_random_inception_shapes_and_determinism(tmp_path, monkeypatch):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = random_fid_inception("cpu", seed=3)
    features, logits = extract(model, images)
    assert features.shape == (2, 2048) and features.dtype == torch.float64 and logits.shape == (2, 1008)
    assert torch.isfinite(features).all() and features.std() > 1e-3
    again = extract(random_fid_inception("cpu", seed=3), images)
    assert torch.equal(features, again[0]) and torch.equal(logits, again[1])
    assert not torch.equal(random_fid_inception("cpu", seed=4).fc.weight, model.fc.weight)
    # a saved state dict loads strictly through the offline path (explicit path, then the hub cache)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    loaded = load_fid_inception(str(tmp_path / "w.pth"), "cpu")
    assert torch.equal(extract(loaded, images)[0], features)
    with pytest.raises(TypeError):
        extract(model, images.float())


# ---------------------------------------------------------------------------------------------
# The evaluator's metric path: order-free, one real image per stimulus


def _records(trials: int = 60, per_image: int = 3, images_per_trial: int = 2, classes: int = 4):
    """Gathered-record stand-ins whose features and logits vary strongly from row to row (a random-weight
    Inception's rows are nearly equal and would hide any order effect)."""
    rng = np.random.default_rng(0)
    images = trials // per_image
    real = {f"img{i:03d}": rng.normal(size=D).astype(np.float32) * 3 for i in range(images)}
    records = []
    for t in range(trials):
        image_id = f"img{t % images:03d}"
        label = (t % images) % classes
        records.append({
            "key": f"{t:06d}", "image_id": image_id, "subject": t % 3, "label": label,
            "eeg_top1": bool(t % 2), "eeg_top5": True,
            "teacher_logits": rng.normal(size=(images_per_trial, classes)) * 3,
            "real_teacher_logits": rng.normal(size=(1, classes)) * 3,
            "fake_features": (rng.normal(size=(images_per_trial, D)) + label).astype(np.float32),
            "fake_logits": (rng.normal(size=(images_per_trial, 100)) * 4).astype(np.float32),
            "real_features": real[image_id],
            "ssim": [float(rng.random()) for _ in range(images_per_trial)],
            "reconstruction": {"values": {m: [float(rng.random()) for _ in range(images_per_trial)]
                                          for m in ("pixcorr", "ssim")}, "fake": {}, "real": {}},
        })
    return records, real


def _metric_values(records, class_images=None, **eval_overrides):
    from types import SimpleNamespace

    from eeg2im_scale.config import load_config
    from eeg2im_scale.eval.evaluator import _summarise
    from eeg2im_scale.eval.selection import SamplerSettings

    cfg = load_config(None, ["eval.images_per_trial=2", "eval.is_splits=4", "eval.kid_subsets=20",
                             "eval.kid_subset_size=15", "eval.n_way=3",
                             *(f"eval.{k}={v}" for k, v in eval_overrides.items())])
    pipeline = SimpleNamespace(corpus={"class_names": ["a", "b", "c", "d"]})
    out = _summarise(cfg.eval, cfg.data.split_by, pipeline, records, class_images, SamplerSettings("ddim", 4, 3.0),
                     recon_weights={}, recon_unavailable={})
    return {name: entry["value"] for name, entry in out["metrics"].items()}, out["protocol"]


def test_metrics_do_not_depend_on_the_order_records_were_gathered_in():
    """Process order reaches the metric path as row order: IS splits, KID subsets and n-way draws
    must see the same rows whatever it is (here: every trial's rows shuffled as processes interleave)."""
    records, _ = _records()
    reference, _ = _metric_values(records)
    for seed in (1, 2):
        shuffled = [records[i] for i in np.random.default_rng(seed).permutation(len(records))]
        values, _ = _metric_values(shuffled)
        assert values == reference


def test_real_reference_holds_each_stimulus_once():
    records, real = _records(trials=60, per_image=3)
    values, protocol = _metric_values(records)
    distinct = np.stack([real[k] for k in sorted(real)]).astype(np.float64)
    fake = np.concatenate([r["fake_features"] for r in records]).astype(np.float64)
    assert protocol["real_images"] == protocol["distinct_stimuli"] == 20 and protocol["generated_images"] == 120
    assert "distinct" in protocol["reference"]
    expected = frechet_distance(distinct.mean(0), np.cov(distinct, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))
    assert values["fid"] == pytest.approx(expected, rel=1e-9)
    kid_mean, _ = kid(torch.from_numpy(fake), torch.from_numpy(distinct), subsets=20, subset_size=15, seed=0)
    assert values["kid"]["mean"] == pytest.approx(kid_mean, rel=1e-12)


def test_class_images_reference_replaces_the_trials_stimuli():
    records, real = _records()
    extra = {f"train{i}": np.full(D, float(i), np.float32) for i in range(5)}
    values, protocol = _metric_values(records, {**real, **extra}, reference="class_images")
    assert protocol["real_images"] == len(real) + len(extra) and "all splits" in protocol["reference"]
    assert values["fid"] != _metric_values(records)[0]["fid"]


def test_chance_levels_pair_each_generation_with_another_stimulus():
    """Chance for the colour measures: each generated image against the stimulus of the next trial
    (in key order) showing another image; for EEG accuracy the best constant guess; for the
    teacher's judgement top_k / n_way. Hand-computed on one-hot histograms and recorded colours."""
    from eeg2im_scale.eval.evaluator import chance_levels

    def one_hot(i, size):
        v = np.zeros(size, np.float32)
        v[i] = 1.0
        return v

    recorded = {"a": np.array([0.1, 0.5, 0.5], np.float32), "b": np.array([0.6, 0.9, 0.2], np.float32)}
    records = []
    for key, image, label in (("000", "a", 0), ("001", "a", 0), ("002", "b", 1)):
        bin_ = 0 if image == "a" else 1
        records.append({"key": key, "image_id": image, "label": label,
                        "colour": {"fake_hsv": one_hot(bin_, 128)[None].repeat(2, 0), "real_hsv": one_hot(bin_, 128),
                                   "fake_hue": one_hot(bin_, 36)[None].repeat(2, 0), "real_hue": one_hot(bin_, 36),
                                   "recovered": recorded[image][None].repeat(2, 0), "recorded": recorded[image]}})
    chance = chance_levels(records, n_way=2, top_k=1)
    assert chance["eeg_top1"] == pytest.approx(2 / 3) and chance["eeg_top5"] == 1.0
    assert chance["generated_n_way_top_k"] == chance["real_n_way_top_k"] == 0.5
    assert chance["hist_intersection"] == 0.0  # every generation matches its own stimulus, none another's
    assert chance["hue_emd"] == pytest.approx(1 / 36)  # adjacent hue bins
    assert chance["hue_error"] == pytest.approx(0.5)
    assert chance["saturation_error"] == pytest.approx(0.4) and chance["brightness_error"] == pytest.approx(0.3)
    assert "ssim" not in chance and "fid" not in chance  # no chance level computed: metric_info gives a reference
