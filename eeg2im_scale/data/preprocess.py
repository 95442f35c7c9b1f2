"""EEG preprocessing and image preparation: pure functions applied per sample in loader workers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import signal


def bandpass_sos(low: float, high: float, sfreq: float, order: int = 4) -> np.ndarray:
    """Butterworth band-pass (or low-pass when ``low`` is 0) as second-order sections."""
    nyquist = sfreq / 2
    if high >= nyquist:
        raise ValueError(f"band-pass high edge {high} Hz must be below Nyquist ({nyquist} Hz)")
    if low <= 0:
        return signal.butter(order, high, btype="lowpass", fs=sfreq, output="sos")
    return signal.butter(order, [low, high], btype="bandpass", fs=sfreq, output="sos")


@dataclass
class EEGPreprocess:
    """Crop to ``window`` (time samples), z-score per channel, then optionally band-pass.

    The statistics come from the manifest's training split so validation/test data never
    influence normalisation.
    """

    window: tuple[int, int] | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    sos: np.ndarray | None = None

    def __call__(self, eeg: np.ndarray) -> np.ndarray:
        if self.window is not None:
            eeg = eeg[:, self.window[0]:self.window[1]]
        if self.mean is not None:
            eeg = (eeg - self.mean[:, None]) / self.std[:, None]
        if self.sos is not None:
            eeg = signal.sosfiltfilt(self.sos, eeg, axis=-1)
        return np.ascontiguousarray(eeg, dtype=np.float32)


def prepare_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 HWC → uint8 CHW at ``size``×``size`` (bicubic resize only when needed).

    Images stay uint8 until they reach the model: four times less to move than float32.
    """
    if image.shape[0] != size or image.shape[1] != size:
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
    return np.ascontiguousarray(image.transpose(2, 0, 1))
