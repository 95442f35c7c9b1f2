"""The drift probe: regularised linear models on each trial's slow features, fitted on a scheme's
training split and tested on its test split. No deep training, so it runs in seconds even on
EEG-ImageNet-40; the shards are streamed and only a few numbers per channel and trial are kept.

A block-design corpus leaks through what is constant or slow within a block: per-channel offset,
a ramp, power below the control band. Each is one probe; the strongest (Bonferroni-corrected
over probes) is the row's evidence, and its training accuracy is the row's positive control."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..data.format import load_npy, read_shard
from ..data.manifest import Manifest
from ..data.preprocess import bandpass_sos
from .stats import binomial_p_value, chance_level

PROBES = ("channel means", "linear trends", "low-band power")


def slow_features(eeg: np.ndarray, sfreq: float, lowpass_hz: float) -> dict[str, np.ndarray]:
    """Per trial of ``eeg`` [trials, channels, time], one feature per channel and probe: the mean,
    the least-squares slope, and the log mean power of the zero-phase low-passed, mean-removed
    trial (what the < ``lowpass_hz`` band holds beyond the offset)."""
    eeg = np.asarray(eeg, np.float64)
    t = np.arange(eeg.shape[-1]) - (eeg.shape[-1] - 1) / 2
    means = eeg.mean(-1)
    trends = (eeg * t).sum(-1) / (t * t).sum()
    slow = signal.sosfiltfilt(bandpass_sos(0, lowpass_hz, sfreq), eeg - means[..., None], axis=-1)
    power = np.log((slow * slow).mean(-1) + 1e-12)
    return dict(zip(PROBES, (means, trends, power)))


def split_features(manifest: Manifest, scheme: str, split: str, sfreq: float, lowpass_hz: float,
                   window: tuple[int, int] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Slow features and labels (as training sees them) of every trial of ``split``, streamed shard by shard."""
    mask = manifest.membership(scheme, split)
    table = manifest.read(["index", "label"]).to_pydict()
    label_of = dict(zip(table["index"], manifest.label_map[np.asarray(table["label"])].tolist()))
    parts: dict[str, list[np.ndarray]] = {p: [] for p in PROBES}
    labels: list[int] = []
    for entry in manifest.shards(scheme, split):
        batch, keys = [], []
        for raw in read_shard(entry.path, entry.total, keep=lambda key: bool(mask[int(key)])):
            eeg = load_npy(raw["eeg.npy"])
            batch.append(eeg if window is None else eeg[:, window[0]:window[1]])
            keys.append(int(raw["__key__"]))
        for name, values in slow_features(np.stack(batch), sfreq, lowpass_hz).items():
            parts[name].append(values)
        labels += [label_of[k] for k in keys]
    return {name: np.concatenate(values) for name, values in parts.items()}, np.asarray(labels)


def drift_untestable(info: dict, lowpass_hz: float) -> str | None:
    """Why this corpus cannot show drift below ``lowpass_hz``, from the band-pass its converter
    recorded (``extra.bandpass_hz``, e.g. [5, 95] for EEG-ImageNet's ``eeg_5_95_std.pth``), or
    None. A control that sees nothing in its band lands at chance on any corpus, leaky or not."""
    band = (info.get("extra") or {}).get("bandpass_hz")
    if band is None or band[0] is None or band[0] < lowpass_hz:
        return None
    return (f"its recorded band-pass {band[0]:g}-{band[1]:g} Hz leaves no power below {lowpass_hz:g} Hz, the band "
            f"the drift control looks at")


@dataclass
class ProbeResult:
    """The strongest probe on one window: its test hits and its fit of the training split."""

    probe: str
    correct: int
    trials: int
    chance: float
    p_value: float  # Bonferroni-corrected over the probes
    train_accuracy: float
    train_chance: float


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> tuple[float, np.ndarray]:
    """L2-regularised multinomial logistic regression on standardised features: (training accuracy,
    test predictions)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    model.fit(train_x, train_y)
    return float(model.score(train_x, train_y)), model.predict(test_x)


def run_probes(train: tuple[dict[str, np.ndarray], np.ndarray], test: tuple[dict[str, np.ndarray], np.ndarray],
               num_classes: int) -> ProbeResult:
    """Every probe fitted on ``train`` and tested on ``test``; the one with the smallest p-value."""
    (train_x, train_y), (test_x, test_y) = train, test
    chance = chance_level(np.bincount(test_y, minlength=num_classes).tolist(), num_classes)
    train_chance = chance_level(np.bincount(train_y, minlength=num_classes).tolist(), num_classes)
    results = []
    for name in PROBES:
        train_accuracy, predicted = fit_probe(train_x[name], train_y, test_x[name])
        correct = int((predicted == test_y).sum())
        p_value = min(1.0, len(PROBES) * binomial_p_value(correct, len(test_y), chance))
        results.append(ProbeResult(name, correct, len(test_y), chance, p_value, train_accuracy, train_chance))
    return min(results, key=lambda r: (r.p_value, -r.train_accuracy))
