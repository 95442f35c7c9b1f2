"""The synthetic corpus: interface, layout, determinism, decodability, image ground truth, memory."""

import dataclasses
import math
import tracemalloc

import numpy as np
import pytest
from PIL import Image
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_predict, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from eeg2im_scale.config import SynthConfig
from eeg2im_scale.data.synth import SyntheticCorpus
from eeg2im_scale.data.synth_eeg import biosemi128

ATTRIBUTES = {"hue", "saturation", "brightness", "hue2", "saturation2", "brightness2",
              "x", "y", "scale", "rotation"}
# 32 channels x 440 ms at 500 Hz: small, but long enough for every class component (100-400 ms).
SMALL = SynthConfig(num_samples=600, num_classes=4, num_subjects=2, sessions_per_subject=3, channels=32,
                    time_points=220, sfreq=500.0, image_size=32, seed=3)


def small(**knobs) -> SyntheticCorpus:
    return SyntheticCorpus(dataclasses.replace(SMALL, **knobs))


@pytest.fixture(autouse=True, scope="module")
def single_threaded_blas():
    """The decoders here are small: extra BLAS threads only contend (3x slower on 2 busy cores)."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def corpus() -> SyntheticCorpus:
    return small()


def eeg_features(corpus: SyntheticCorpus) -> tuple[np.ndarray, list[dict]]:
    """Per-channel means in 40 ms bins of every sample: the usual low-dimensional ERP read-out."""
    samples = [corpus.sample(i) for i in range(len(corpus))]
    count = len(samples)
    eeg = np.stack([s["eeg"] for s in samples])
    step = int(0.04 * corpus.cfg.sfreq)
    bins = eeg.shape[-1] // step
    features = eeg[..., :bins * step].reshape(count, eeg.shape[1], bins, step).mean(-1).reshape(count, -1)
    return features, [s["meta"] for s in samples]


def circular_distance(a, b):
    """Distance between hues (or arrays of them) on the unit circle."""
    return np.abs((a - b + 0.5) % 1.0 - 0.5)


# ------------------------------------------------------------------------------------------------
# Interface and layout


def test_sample_has_the_documented_shapes_types_and_meta(corpus):
    cfg = corpus.cfg
    assert len(corpus) == cfg.num_samples and corpus.num_images == math.ceil(cfg.num_samples / cfg.num_subjects)
    assert len(corpus.channel_names) == cfg.channels == len(set(corpus.channel_names))
    assert set(corpus.channel_names) <= set(biosemi128()[0])
    assert corpus.class_names[:4] == ["disk-solid", "square-hstripes", "triangle-vstripes", "pentagon-dstripes"]
    sample = corpus.sample(7)
    assert sample["eeg"].dtype == np.float32 and sample["eeg"].shape == (cfg.channels, cfg.time_points)
    assert sample["image"].dtype == np.uint8 and sample["image"].shape == (cfg.image_size, cfg.image_size, 3)
    meta = sample["meta"]
    assert set(meta) == {"label", "class_name", "subject", "image_id", "session", "block", "attributes"}
    assert meta["class_name"] == corpus.class_names[meta["label"]]
    assert set(meta["attributes"]) == ATTRIBUTES
    assert all(type(v) is float for v in meta["attributes"].values())
    assert 1 < np.abs(sample["eeg"]).mean() < 50  # microvolt-like


def test_layout_is_cheap_and_matches_the_samples(corpus):
    cfg = corpus.cfg
    sessions_seen = {}
    for index in range(len(corpus)):
        layout = corpus.layout(index)
        assert all(type(v) is int for v in layout.values())
        assert layout["image_id"] == index // cfg.num_subjects and layout["subject"] == index % cfg.num_subjects
        assert layout["label"] == layout["image_id"] % cfg.num_classes
        assert layout["block"] == layout["subject"] * cfg.sessions_per_subject + layout["session"]
        sessions_seen.setdefault(layout["subject"], []).append(layout["session"])
    for sessions in sessions_seen.values():
        counts = np.bincount(sessions, minlength=cfg.sessions_per_subject)
        assert counts.max() - counts.min() <= 1
    assert sessions_seen[0] != sessions_seen[1]  # each subject has its own viewing order
    for index in (0, 5, np.int64(599)):
        meta = corpus.sample(index)["meta"]
        assert all(type(meta[k]) is int for k in corpus.layout(index))
        assert {k: meta[k] for k in corpus.layout(index)} == corpus.layout(index)
    with pytest.raises(IndexError):
        corpus.layout(len(corpus))


def test_an_image_is_the_same_for_every_subject(corpus):
    first, second = corpus.sample(10), corpus.sample(11)  # image 5, subjects 0 and 1
    assert first["meta"]["image_id"] == second["meta"]["image_id"]
    assert first["meta"]["subject"] != second["meta"]["subject"]
    np.testing.assert_array_equal(first["image"], second["image"])
    assert first["meta"]["attributes"] == second["meta"]["attributes"]
    assert not np.array_equal(first["eeg"], second["eeg"])


def test_channel_subset_is_spread_over_the_scalp(corpus):
    def closest_pair(xyz):
        cosine = xyz @ xyz.T
        np.fill_diagonal(cosine, -1)
        return np.arccos(cosine.max())

    assert closest_pair(corpus.eeg.positions) > 1.5 * closest_pair(biosemi128()[1])


# ------------------------------------------------------------------------------------------------
# Determinism and streaming


def assert_same_sample(a: dict, b: dict) -> None:
    np.testing.assert_array_equal(a["eeg"], b["eeg"])
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["meta"] == b["meta"]


def test_samples_are_a_pure_function_of_config_and_index(corpus):
    other = small()
    for index in (0, 1, 123, 599):
        assert_same_sample(corpus.sample(index), other.sample(index))
    forward = [corpus.sample(i) for i in range(20)]
    for index in reversed(range(20)):
        assert_same_sample(other.sample(index), forward[index])


def test_a_different_seed_gives_a_different_corpus(corpus):
    a, b = corpus.sample(3), small(seed=4).sample(3)
    assert not np.array_equal(a["eeg"], b["eeg"])
    assert not np.array_equal(a["image"], b["image"])
    assert a["meta"]["attributes"] != b["meta"]["attributes"]


def test_a_million_samples_need_no_per_sample_tables():
    huge = small(num_samples=1_000_000)
    last = huge.sample(999_999)
    assert last["meta"]["image_id"] == 499_999 and last["eeg"].shape == (32, 220)


def test_memory_stays_flat_while_streaming():
    corpus = small(num_samples=2200)

    def peak_while_generating(indices) -> int:
        tracemalloc.start()
        for index in indices:
            corpus.sample(index)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    short, long = peak_while_generating(range(200)), peak_while_generating(range(200, 2200))
    assert long < 1.2 * short + 64 * 1024, (short, long)


# ------------------------------------------------------------------------------------------------
# What the EEG carries


def class_accuracy(corpus: SyntheticCorpus) -> float:
    features, meta = eeg_features(corpus)
    labels = [m["label"] for m in meta]
    decoder = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    return cross_val_score(decoder, features, labels, cv=5).mean()


def hue_r2(corpus: SyntheticCorpus) -> float:
    """Cross-validated R^2 of (cos, sin) of the hue angle, by ridge regression."""
    features, meta = eeg_features(corpus)
    angle = 2 * np.pi * np.array([m["attributes"]["hue"] for m in meta])
    target = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    decoder = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(0, 5, 11)))
    predicted = cross_val_predict(decoder, features, target, cv=5)
    return 1 - ((predicted - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()


def test_class_is_decodable_only_when_class_snr_is_positive(corpus):
    chance = 1 / corpus.cfg.num_classes
    assert class_accuracy(corpus) > chance + 0.25
    assert class_accuracy(small(class_snr=0.0)) < chance + 0.1


def test_hue_is_decodable_only_when_attribute_snr_is_positive(corpus):
    assert hue_r2(corpus) > 0.15
    assert hue_r2(small(attribute_snr=0.0)) < 0.05


def test_drift_makes_the_block_decodable():
    def block_accuracy(drift: float) -> float:
        corpus = small(drift=drift)
        eeg = np.stack([corpus.sample(i)["eeg"] for i in range(240)])
        blocks = [corpus.layout(i)["block"] for i in range(240)]
        return cross_val_score(LinearDiscriminantAnalysis(), eeg.mean(-1), blocks, cv=4).mean()

    chance = 1 / (SMALL.num_subjects * SMALL.sessions_per_subject)
    assert block_accuracy(0.5) > 0.9
    assert block_accuracy(0.0) < chance + 0.25  # subjects still differ (alpha, line noise)


# ------------------------------------------------------------------------------------------------
# What the images carry


def hsv_pixels(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).convert("HSV"), dtype=np.float64) / 255.0


def image_corpus() -> SyntheticCorpus:
    """64 px images of 80 classes (so shape x texture variants too), 2000 distinct images."""
    return small(image_size=64, num_classes=80, num_samples=4000)


def test_recorded_hue_is_the_dominant_object_hue():
    corpus = image_corpus()
    for image_id in range(0, 2000, 23):  # 87 images, every class
        attributes, image = corpus.image(image_id)
        hsv = hsv_pixels(image)
        hue = hsv[..., 0][hsv[..., 1] > 0.3]  # object pixels: the background is grey
        mode = (np.argmax(np.bincount((hue * 64).astype(int) % 64, minlength=64)) + 0.5) / 64
        peak = hue[circular_distance(hue, mode) < 0.05] * 2 * np.pi
        dominant = (np.arctan2(np.sin(peak).mean(), np.cos(peak).mean()) / (2 * np.pi)) % 1.0
        assert circular_distance(dominant, attributes["hue"]) < 0.02, (image_id, dominant, attributes["hue"])


def test_recorded_position_is_the_object_centroid():
    corpus = image_corpus()
    for image_id in range(0, 2000, 23):  # 87 images, every class
        attributes, image = corpus.image(image_id)
        rows, cols = np.nonzero(hsv_pixels(image)[..., 1] > 0.3)
        assert abs((cols.mean() + 0.5) / 64 - attributes["x"]) < 1.5 / 64, image_id
        assert abs((rows.mean() + 0.5) / 64 - attributes["y"]) < 1.5 / 64, image_id


def test_a_corpus_written_with_other_synth_settings_is_not_silently_reused(tmp_path):
    from eeg2im_scale.config import ConfigError, load_config
    from eeg2im_scale.data.corpus import ensure_corpus

    overrides = [f"data.root={tmp_path / 'corpus'}", "synth.num_samples=40", "synth.samples_per_shard=20",
                 "synth.channels=8", "synth.time_points=64", "synth.image_size=16", "synth.workers=1"]
    manifest = ensure_corpus(load_config("configs/synthetic_tiny.yaml", overrides))
    assert ensure_corpus(load_config("configs/synthetic_tiny.yaml", [*overrides, "synth.workers=2"])) == manifest
    with pytest.raises(ConfigError, match=r"synth.class_snr: 2.5 on disk vs 0.5.*delete"):
        ensure_corpus(load_config("configs/synthetic_tiny.yaml", [*overrides, "synth.class_snr=0.5"]))


def test_writing_a_corpus_shows_progress_in_samples(tmp_path, monkeypatch):
    """On a terminal the writer's bar counts samples (with a rate and ETA), not a handful of shards:
    a long synthesis is never silent for minutes."""
    import io

    import tqdm

    from eeg2im_scale.data import writer
    from eeg2im_scale.data.corpus import write_synthetic

    shown = io.StringIO()
    real = tqdm.tqdm
    monkeypatch.setattr(writer, "tqdm", lambda *a, **k: real(*a, **{**k, "disable": False, "file": shown}))
    write_synthetic(SynthConfig(num_samples=30, samples_per_shard=8, num_classes=3, num_subjects=2, channels=8,
                                time_points=32, image_size=16), tmp_path / "corpus")
    assert "30/30" in shown.getvalue() and "sample/s" in shown.getvalue()
