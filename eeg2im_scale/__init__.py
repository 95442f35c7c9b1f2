"""eeg2im_scale: distributed, scalable training of EEG2IM (EEG-to-image generation)."""

__version__ = "0.1.0"
