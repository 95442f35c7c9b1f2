"""EEG preprocessing and image preparation: pure functions applied per sample in loader workers."""

from __future__ import annotations

import numpy as np
import torch
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


class EEGPreprocess:
    """Crop to ``window`` (time samples), z-score per channel, then optionally band-pass.

    The statistics come from the manifest's training split so validation/test data never
    influence normalisation. Works on float32 tensors [channels, time].
    """

    def __init__(self, window: tuple[int, int] | None = None, mean: np.ndarray | None = None,
                 std: np.ndarray | None = None, sos: np.ndarray | None = None):
        self.window, self.sos = window, sos
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32)[:, None]
        self.inv_std = None if std is None else 1.0 / torch.as_tensor(std, dtype=torch.float32)[:, None]

    def output_shape(self, eeg_shape: tuple[int, int]) -> tuple[int, int]:
        channels, time_points = eeg_shape
        return (channels, self.window[1] - self.window[0]) if self.window is not None else (channels, time_points)

    def __call__(self, eeg: torch.Tensor) -> torch.Tensor:
        return self.into(torch.empty(self.output_shape(eeg.shape)), eeg)

    def into(self, out: torch.Tensor, eeg: torch.Tensor) -> torch.Tensor:
        """Write the preprocessed ``eeg`` into ``out`` (float32, :meth:`output_shape`) and return it;
        ``eeg`` may be ``out`` itself (then the crop must be None)."""
        if self.window is not None:
            eeg = eeg[:, self.window[0]:self.window[1]]
        if eeg is not out:
            out.copy_(eeg)
        if self.mean is not None:
            out.sub_(self.mean).mul_(self.inv_std)
        if self.sos is not None:
            filtered = out.numpy()
            filtered[...] = signal.sosfiltfilt(self.sos, filtered, axis=-1)
        return out


def centre_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an HWC image (a view), as the reference FID/IS pipelines crop
    before resizing: a squashed stimulus would change every shape and the Inception statistics."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top:top + side, left:left + side]


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 HWC → ``size``×``size``: centre square, then bicubic resize (each only when needed)."""
    image = centre_square(image)
    if image.shape[0] != size:
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.BICUBIC))
    return image


def prepare_image(image: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 HWC → uint8 CHW at ``size``×``size`` (:func:`square_resize`), written into ``out`` when given.

    Images stay uint8 until they reach the model: four times less to move than float32.
    """
    if image.shape[0] != size or image.shape[1] != size:
        image = square_resize(image, size)
    if out is None:
        return np.ascontiguousarray(image.transpose(2, 0, 1))
    out[...] = image.transpose(2, 0, 1)
    return out
