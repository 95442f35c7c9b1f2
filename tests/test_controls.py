"""Controls that can fail (docs/protocols.md): the drift probe flags a drift-only block-design
corpus under a split that shares blocks and not under one that holds them out, leaves a corpus
with stimulus signal and no drift alone, says "cannot be tested" when the file's band-pass removed
what it looks at, and a starved control classifier is "inconclusive", never "no leakage"."""

import numpy as np
import pytest
import torch

from eeg2im_scale.cli.main import main as cli_main
from eeg2im_scale.data.convert.eeg_imagenet import release_band
from eeg2im_scale.data.writer import CorpusInfo, RawSample, write_corpus
from eeg2im_scale.protocols.probe import slow_features
from eeg2im_scale.protocols.table import read_table

CONFIG = "tests/configs/tiny_train.yaml"
CLASSES, IMAGES_PER_CLASS, SUBJECTS, CHANNELS, TIME, SFREQ = 4, 24, 3, 16, 128, 250.0
PROBE_ONLY = ["protocol.deep_controls=false"]


def trials(drift: bool, stimulus: bool):
    """Each (subject, class) one recording block, its trials in a row. ``drift``: every block has
    its own per-channel offset and slow ramp across the block; ``stimulus``: a class-specific
    waveform above 8 Hz with no mean and no trend in any trial (what drift probes must not take
    for drift). White noise throughout."""
    rng = np.random.default_rng(7)
    t = np.arange(TIME) / SFREQ
    centred = np.stack([np.ones(TIME), t - t.mean()])
    waves = []
    for _ in range(CLASSES):
        freqs, phases = rng.uniform(8, 30, (CHANNELS, 1)), rng.uniform(0, 2 * np.pi, (CHANNELS, 1))
        wave = np.sin(2 * np.pi * freqs * t + phases)
        coef, *_ = np.linalg.lstsq(centred.T, wave.T, rcond=None)
        waves.append(wave - (centred.T @ coef).T)  # no offset, no linear trend
    index = 0
    for subject in range(SUBJECTS):
        for label in range(CLASSES):
            block = subject * CLASSES + label
            offset, ramp = rng.normal(0, 0.6, (CHANNELS, 1)), rng.normal(0, 0.6, (CHANNELS, 1))
            for k in range(IMAGES_PER_CLASS):
                eeg = rng.standard_normal((CHANNELS, TIME)) + rng.normal(0, 0.3, (CHANNELS, 1))
                if drift:
                    eeg += offset + ramp * (k / IMAGES_PER_CLASS + t / t[-1] / IMAGES_PER_CLASS)
                if stimulus:
                    eeg += 0.5 * waves[label]
                image_id = label * IMAGES_PER_CLASS + k
                pixels = np.full((32, 32, 3), (40 * label + 3 * k) % 256, np.uint8)
                yield RawSample(index, eeg.astype(np.float32), pixels,
                                {"label": label, "subject": subject, "image_id": image_id, "session": 0,
                                 "block": block, "class_name": f"c{label}"})
                index += 1


def write(root, *, drift: bool, stimulus: bool, extra: dict | None = None):
    info = CorpusInfo(channel_names=[f"E{c}" for c in range(CHANNELS)], sfreq=SFREQ, time_points=TIME,
                      class_names=[f"c{c}" for c in range(CLASSES)], source="test, block design", extra=extra or {})
    write_corpus(root, info, [lambda: trials(drift, stimulus)], split_fractions=(0.7, 0.1, 0.2), seed=0)
    return root


@pytest.fixture(scope="module")
def drift_only(tmp_path_factory):
    return write(tmp_path_factory.mktemp("controls") / "drift", drift=True, stimulus=False)


@pytest.fixture(scope="module")
def stimulus_only(tmp_path_factory):
    return write(tmp_path_factory.mktemp("controls") / "stimulus", drift=False, stimulus=True)


def controls(root, run_dir, *overrides) -> dict[str, dict]:
    assert cli_main(["protocol", "controls", "--config", CONFIG, f"data.root={root}", "data.synthesize=false",
                     f"run_dir={run_dir}", *overrides]) == 0
    return {r["variant"]: r for r in read_table(run_dir)["rows"]}


def test_slow_features_are_the_offset_the_slope_and_the_low_band():
    t = np.arange(TIME) - (TIME - 1) / 2
    eeg = np.stack([np.stack([2 + 0 * t, 0.5 * t]), np.stack([np.sin(2 * np.pi * 30 * t / SFREQ), 0 * t])])
    features = slow_features(eeg, SFREQ, 1.0)
    np.testing.assert_allclose(features["channel means"], [[2, 0], [0, 0]], atol=1e-2)
    np.testing.assert_allclose(features["linear trends"], [[0, 0.5], [0, 0]], atol=1e-2)
    assert features["low-band power"][0, 1] > features["low-band power"][1, 0] + 5  # a ramp vs 30 Hz


@pytest.mark.parametrize("split_by, leaks", [("image", True), ("block", False)])
def test_drift_probe_flags_a_drift_only_block_design_only_when_blocks_are_shared(drift_only, tmp_path, split_by,
                                                                                  leaks):
    row = controls(drift_only, tmp_path / "run", *PROBE_ONLY, f"data.split_by={split_by}")["drift probe"]
    assert row["leak"] is leaks and (row["p_value"] < 0.01) is leaks, row
    if leaks:
        assert row["value"] > 0.9 and row["probe"] in row["verdict"] and row["train_accuracy"] > 0.9
    else:  # the probe fitted its training blocks, and they tell nothing about held-out blocks
        assert row["train_accuracy"] > 0.9 and row["verdict"] == "no leakage detected"


def test_drift_probe_leaves_stimulus_signal_without_drift_alone(stimulus_only, tmp_path):
    row = controls(stimulus_only, tmp_path / "run", *PROBE_ONLY, "data.split_by=image")["drift probe"]
    assert row["leak"] is not True and row["p_value"] > 0.01, row


def test_drift_cannot_be_tested_on_a_file_high_passed_above_the_control_band(tmp_path):
    assert release_band("/data/eeg_5_95_std.pth") == [5.0, 95.0] and release_band("eeg_signals_raw.pth") is None
    root = write(tmp_path / "highpassed", drift=False, stimulus=True, extra={"bandpass_hz": [5.0, 95.0]})
    row = controls(root, tmp_path / "run", *PROBE_ONLY, "data.split_by=image")["drift probe"]
    assert row["leak"] is None and row["verdict"].startswith("drift cannot be tested on this file")
    assert "compare `data.split_by=block`" in row["verdict"]


def test_a_starved_control_classifier_is_inconclusive_never_clean(drift_only, tmp_path):
    torch.set_num_threads(1)
    rows = controls(drift_only, tmp_path / "run", "data.split_by=block", "model.teacher.arch=resnet18",
                    "train.teacher.steps=1", "protocol.control_steps=1")
    for name in ("shuffled labels", "< 1 Hz only"):
        row = rows[name]
        assert row["leak"] is None and row["verdict"].startswith("inconclusive: the control's classifier did not learn")
        assert row["train_accuracy"] is not None and row["train_accuracy"] < row["chance"] + 0.2, row
