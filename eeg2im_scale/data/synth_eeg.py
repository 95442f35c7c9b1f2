"""Simulated single-trial visual EEG whose generators are known.

Every trial is a sum of rank-one terms (a scalp topography times a waveform) plus noise:

* a class-independent visual evoked potential (P1, bilateral N1, P3), as every real trial has;
* class components: per class, three Gaussian-in-time bumps (100-400 ms) with von Mises-Fisher
  topographies around centres biased to occipito-temporal scalp, scaled by ``class_snr``;
* attribute components, scaled by ``attribute_snr``: hue drives two occipital components with
  weights cos(2 pi hue) and sin(2 pi hue) (so a linear read-out of the circular hue exists),
  brightness an early P1-like one, saturation a smaller later one;
* per subject (scaled by ``subject_variability``): a lognormal gain, a latency shift of up to
  20 ms and a small rotation of the cap that moves every topography;
* background: pink (1/f power from 0.1 Hz) noise with a spatial correlation length of ~0.5 rad,
  white sensor noise, an occipital alpha rhythm with random phase, line noise at ``line_freq``, and
  a per-block drift (DC offset that evolves over the block plus a within-trial ramp, amplitude
  ``drift``).

Amplitudes are microvolts. Tables (per class, subject, block) hold component parameters, never
waveforms, so they stay small for any corpus size.
"""

from __future__ import annotations

import enum
import functools
import math

import numpy as np

from ..config import SynthConfig
from .synth_images import BRIGHTNESS_RANGE, SATURATION_RANGE

BACKGROUND_UV = 10.0      # RMS per channel of the pink background: the unit of `drift`
SENSOR_UV = 3.0           # RMS of independent white sensor noise (keeps the noise full rank)
ALPHA_UV = 6.0
LINE_UV = 1.5
CLASS_UV = 12.0           # peak of a class component at class_snr = 1 (times 0.6-1.0)
# Attribute amplitudes at attribute_snr = 1, per unit of drive: cos / sin of the hue angle, and
# brightness / saturation mapped linearly from their image ranges to [-1, 1].
HUE_UV = 10.0
BRIGHTNESS_UV = 10.0
SATURATION_UV = 5.0
CLASS_COMPONENTS = 3
TRIAL_JITTER_S = 0.005    # latency jitter of the whole evoked response from trial to trial
NOISE_CORRELATION_RAD = 0.5
PINK_LOW_HZ = 0.1         # the 1/f background reaches down to the usual acquisition high-pass
NOISE_VARIANCE_KEPT = 0.99  # spatial modes of the background kept; the rest is sensor noise


class Stream(enum.IntEnum):
    """Independent random streams: every generator is ``default_rng([seed, stream, key])``, so any
    sample, image or table entry can be drawn on its own, in any order, by any process."""

    IMAGE = 1
    CLASS = 2
    SUBJECT = 3
    BLOCK = 4
    TRIAL = 5
    SESSIONS = 6


def generator(seed: int, stream: Stream, key: int) -> np.random.Generator:
    return np.random.default_rng([seed, int(stream), key])


def _unit(x: float, y: float, z: float) -> np.ndarray:
    vector = np.array([x, y, z])
    return vector / np.linalg.norm(vector)


# Head-frame directions (x right, y nose, z up) of the scalp regions components are tied to.
REGIONS = {
    "Oz": _unit(0.0, -1.0, 0.05), "O1": _unit(-0.3, -0.95, 0.05), "O2": _unit(0.3, -0.95, 0.05),
    "PO7": _unit(-0.6, -0.75, 0.1), "PO8": _unit(0.6, -0.75, 0.1), "P7": _unit(-0.8, -0.5, 0.0),
    "P8": _unit(0.8, -0.5, 0.0), "Pz": _unit(0.0, -0.7, 0.7), "POz": _unit(0.0, -0.9, 0.35),
}
CLASS_REGIONS = ("PO7", "PO8", "P7", "P8", "O1", "O2", "Oz", "Pz")

# (region, width rad, latency s, duration s, amplitude uV) of the evoked response every trial has,
# then of the four attribute components (amplitude per unit of drive, drives in that order).
VEP = (("Oz", 0.5, 0.100, 0.015, 4.0), ("PO7", 0.45, 0.170, 0.025, -5.0),
       ("PO8", 0.45, 0.170, 0.025, -5.0), ("Pz", 0.6, 0.320, 0.060, 5.0))
ATTRIBUTE_COMPONENTS = (("O1", 0.45, 0.140, 0.045, HUE_UV), ("O2", 0.45, 0.190, 0.045, HUE_UV),
                        ("Oz", 0.5, 0.110, 0.035, BRIGHTNESS_UV), ("POz", 0.5, 0.250, 0.050, SATURATION_UV))
ALPHA = ("POz", 0.6)


@functools.lru_cache(maxsize=1)
def biosemi128() -> tuple[tuple[str, ...], np.ndarray]:
    """Labels and unit head-frame positions of the BioSemi 128 cap (mne ships it; import is slow,
    hence lazy and cached)."""
    import mne

    positions = mne.channels.make_standard_montage("biosemi128").get_positions()["ch_pos"]
    names = tuple(positions)
    xyz = np.array([positions[name] for name in names])
    xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
    xyz.flags.writeable = False
    return names, xyz


def even_subset(xyz: np.ndarray, count: int) -> np.ndarray:
    """Indices (in montage order) of ``count`` electrodes spread evenly over the scalp: farthest-point
    sampling from the vertex, so a 32-channel corpus still covers occipital and frontal sites."""
    chosen = [int(np.argmax(xyz[:, 2]))]
    distance = np.arccos(np.clip(xyz @ xyz[chosen[0]], -1, 1))
    while len(chosen) < count:
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.arccos(np.clip(xyz @ xyz[chosen[-1]], -1, 1)))
    return np.sort(chosen)


def synth_channel_names(count: int) -> list[str]:
    """The BioSemi-128 labels of a ``count``-channel synthetic corpus (its manifest's channel_names)."""
    names, xyz = biosemi128()
    return [names[i] for i in even_subset(xyz, count)]


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation matrix."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _pink_spectrum(time_points: int, sfreq: float) -> tuple[np.ndarray, float, float]:
    """rfft amplitudes, offset std and slope std of unit-variance 1/f noise over one epoch, for
    standard-normal real and imaginary parts, offset and slope draws.

    A periodic irfft has no power below its first bin, which would leave the trial mean free of
    background noise (and unrealistically informative); the 1/f band from PINK_LOW_HZ up to half
    the first bin enters instead as a random offset (below a quarter bin) and slope (above).
    """
    freqs = np.fft.rfftfreq(time_points, 1 / sfreq)
    envelope = np.zeros_like(freqs)
    envelope[1:] = freqs[1:] ** -0.5
    # Var of irfft: each bin contributes 4|e|^2 / n^2, a Nyquist bin (real part only) |e|^2 / n^2;
    # as a density that is 4 / (n * sfreq) / f, the same constant as for the band below bin 1.
    weight = np.full_like(freqs, 4.0)
    if time_points % 2 == 0:
        weight[-1] = 1.0
    bins_variance = np.sum(weight * envelope ** 2) / time_points ** 2
    density = 4 / (time_points * sfreq)
    bin_width = sfreq / time_points
    offset_variance = density * max(math.log(bin_width / 4 / PINK_LOW_HZ), 0.0)
    slope_variance = 12 * density * math.log(2)  # the ramp spans [-1/2, 1/2]: variance 1/12
    total = math.sqrt(bins_variance + offset_variance + slope_variance / 12)
    return envelope / total, math.sqrt(offset_variance) / total, math.sqrt(slope_variance) / total


def _spatial_mixing(xyz: np.ndarray) -> np.ndarray:
    """(channels, modes) map from independent sources to smoothly correlated channels: the leading
    eigenmodes of a von Mises-Fisher correlation kernel, rows rescaled to unit variance."""
    kernel = np.exp((xyz @ xyz.T - 1) / NOISE_CORRELATION_RAD ** 2)
    values, vectors = np.linalg.eigh(kernel)
    values, vectors = values[::-1], vectors[:, ::-1]
    modes = int(np.searchsorted(np.cumsum(values) / values.sum(), NOISE_VARIANCE_KEPT)) + 1
    mixing = vectors[:, :modes] * np.sqrt(values[:modes])
    return mixing / np.linalg.norm(mixing, axis=1, keepdims=True)


def _component_table(components: tuple) -> dict[str, np.ndarray]:
    regions, widths, latencies, durations, amplitudes = zip(*components)
    return {"centre": np.array([REGIONS[r] for r in regions]), "kappa": 1 / np.square(widths),
            "latency": np.array(latencies, np.float32), "duration": np.array(durations, np.float32),
            "amplitude": np.array(amplitudes)}


class EEGSimulator:
    """Draws one trial from a few small tables; see the module docstring for the model."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        names, full_xyz = biosemi128()
        used = even_subset(full_xyz, cfg.channels)
        self.channel_names = [names[i] for i in used]
        self.positions = full_xyz[used]
        self.times = (np.arange(cfg.time_points) / cfg.sfreq).astype(np.float32)
        self.ramp = (self.times / max(self.times[-1], 1e-9) - 0.5).astype(np.float32)
        envelope, self.pink_offset, self.pink_slope = _pink_spectrum(cfg.time_points, cfg.sfreq)
        self.pink_envelope = envelope.astype(np.float32)
        self.mixing = (_spatial_mixing(self.positions) * BACKGROUND_UV).astype(np.float32)
        self.fixed = _component_table(VEP + ATTRIBUTE_COMPONENTS)
        self.classes = self._class_table(cfg)
        self.subjects = self._subject_table(cfg, used)
        self.blocks = self._block_table(cfg, used)

    @staticmethod
    def _class_table(cfg: SynthConfig) -> dict[str, np.ndarray]:
        """(classes, CLASS_COMPONENTS[, 3]) component parameters."""
        rows = []
        for label in range(cfg.num_classes):
            rng = generator(cfg.seed, Stream.CLASS, label)
            region = rng.choice(len(CLASS_REGIONS), CLASS_COMPONENTS)
            centre = np.array([REGIONS[CLASS_REGIONS[r]] for r in region])
            centre += 0.25 * rng.standard_normal((CLASS_COMPONENTS, 3))
            rows.append({
                "centre": centre / np.linalg.norm(centre, axis=1, keepdims=True),
                "kappa": 1 / rng.uniform(0.35, 0.6, CLASS_COMPONENTS) ** 2,
                "latency": rng.uniform(0.1, 0.4, CLASS_COMPONENTS).astype(np.float32),
                "duration": rng.uniform(0.03, 0.06, CLASS_COMPONENTS).astype(np.float32),
                "amplitude": CLASS_UV * rng.choice([-1.0, 1.0], CLASS_COMPONENTS)
                             * rng.uniform(0.6, 1.0, CLASS_COMPONENTS),
            })
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

    @staticmethod
    def _subject_table(cfg: SynthConfig, used: np.ndarray) -> dict[str, np.ndarray]:
        """Per subject: evoked gain and latency shift, cap rotation, alpha and line-noise levels.
        Per-channel values are drawn for all 128 electrodes, then subset, so a smaller montage
        sees the same subject."""
        spread = cfg.subject_variability
        rows = []
        for subject in range(cfg.num_subjects):
            rng = generator(cfg.seed, Stream.SUBJECT, subject)
            axis = rng.standard_normal(3)
            rows.append({
                "gain": math.exp(0.25 * spread * rng.standard_normal()),
                "shift": float(np.clip(0.008 * spread * rng.standard_normal(), -0.02, 0.02)),
                "rotation": _rotation(axis / np.linalg.norm(axis), 0.08 * spread * rng.standard_normal()),
                "alpha_freq": float(np.clip(10 + rng.standard_normal(), 8, 12)),
                "alpha_gain": math.exp(0.3 * rng.standard_normal()),
                "line_gain": np.exp(0.5 * rng.standard_normal(128))[used],
            })
        return {key: np.array([row[key] for row in rows]) for key in rows[0]}

    @staticmethod
    def _block_table(cfg: SynthConfig, used: np.ndarray) -> dict[str, np.ndarray]:
        """Per block and channel: DC offset, its change over the block, and a within-trial ramp."""
        blocks = cfg.num_subjects * cfg.sessions_per_subject
        scale = cfg.drift * BACKGROUND_UV
        draws = np.array([generator(cfg.seed, Stream.BLOCK, block).standard_normal((3, 128))[:, used]
                          for block in range(blocks)])
        return {"offset": scale * draws[:, 0], "trend": scale * draws[:, 1], "ramp": 0.5 * scale * draws[:, 2]}

    def trial(self, rng: np.random.Generator, label: int, subject: int, block: int, progress: float,
              attributes: dict) -> np.ndarray:
        """(channels, time_points) float32 microvolts. ``progress`` in [0, 1] is the trial's place in
        its block (drives the slow drift)."""
        evoked_topographies, evoked = self._evoked(rng, label, subject, attributes)
        background_topographies, background = self._background(rng, subject, block, progress)
        spatial = np.concatenate([evoked_topographies, background_topographies], axis=1).astype(np.float32)
        # Uniform rather than Gaussian sensor noise: 5x cheaper, and invisible under the pink background.
        eeg = rng.random((len(self.positions), self.times.size), dtype=np.float32)
        eeg -= 0.5
        eeg *= SENSOR_UV * math.sqrt(12)
        eeg += spatial @ np.concatenate([evoked, background])
        return eeg

    def _evoked(self, rng: np.random.Generator, label: int, subject: int, attributes: dict
                ) -> tuple[np.ndarray, np.ndarray]:
        """(channels, n) topographies and (n, time) float32 waveforms of the evoked terms and alpha."""
        cfg, fixed, classes, subjects = self.cfg, self.fixed, self.classes, self.subjects
        hue_angle = 2 * math.pi * attributes["hue"]
        drives = cfg.attribute_snr * np.array([
            math.cos(hue_angle), math.sin(hue_angle),
            _centred(attributes["brightness"], BRIGHTNESS_RANGE),
            _centred(attributes["saturation"], SATURATION_RANGE),
        ])
        amplitude = np.concatenate([cfg.class_snr * classes["amplitude"][label],
                                    fixed["amplitude"] * np.concatenate([np.ones(len(VEP)), drives])])
        amplitude *= float(subjects["gain"][subject]) * math.exp(0.15 * rng.standard_normal())
        latency = np.concatenate([classes["latency"][label], fixed["latency"]])
        latency += float(subjects["shift"][subject]) + TRIAL_JITTER_S * rng.standard_normal()
        duration = np.concatenate([classes["duration"][label], fixed["duration"]])
        centre = np.concatenate([classes["centre"][label], fixed["centre"], REGIONS[ALPHA[0]][None]])
        kappa = np.concatenate([classes["kappa"][label], fixed["kappa"], [1 / ALPHA[1] ** 2]])
        topographies = np.exp(kappa * (self.positions @ (subjects["rotation"][subject] @ centre.T) - 1))

        # float32 waveforms (latency and duration tables are float32): float64 temporaries cost more
        # than the arithmetic.
        t = self.times
        waveforms = np.exp(-0.5 * np.square((t - latency[:, None]) / duration[:, None]))
        waveforms *= amplitude[:, None]
        alpha_freq = float(subjects["alpha_freq"][subject]) + 0.3 * rng.standard_normal()
        alpha = (ALPHA_UV * float(subjects["alpha_gain"][subject]) * math.exp(0.4 * rng.standard_normal())
                 * np.sin(2 * math.pi * alpha_freq * t + rng.uniform(0, 2 * math.pi)))
        return topographies, np.concatenate([waveforms, alpha[None]])

    def _background(self, rng: np.random.Generator, subject: int, block: int, progress: float
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(channels, n) topographies and (n, time) float32 waveforms of line noise, drift and pink noise."""
        t, blocks = self.times, self.blocks
        line = np.sin(2 * math.pi * self.cfg.line_freq * t + rng.uniform(0, 2 * math.pi))
        dc = blocks["offset"][block] + (progress - 0.5) * blocks["trend"][block]
        spectrum = rng.standard_normal((2, self.mixing.shape[1], len(self.pink_envelope)), dtype=np.float32)
        pink = np.fft.irfft((spectrum[0] + 1j * spectrum[1]) * self.pink_envelope, n=t.size)
        low = rng.standard_normal((2, len(pink), 1), dtype=np.float32)
        pink += low[0] * self.pink_offset + low[1] * self.pink_slope * self.ramp
        topographies = np.concatenate([(LINE_UV * self.subjects["line_gain"][subject])[:, None], dc[:, None],
                                       blocks["ramp"][block][:, None], self.mixing], axis=1)
        waveforms = np.concatenate([line[None], np.ones((1, t.size), np.float32), self.ramp[None], pink])
        return topographies, waveforms


def _centred(value: float, bounds: tuple[float, float]) -> float:
    """``value`` mapped linearly from ``bounds`` to [-1, 1]."""
    low, high = bounds
    return (2 * value - low - high) / (high - low)
