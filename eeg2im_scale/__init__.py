"""eeg2im_scale: distributed, scalable training of EEG2IM (EEG-to-image generation)."""

import warnings

# braindecode 1.8 builds an MNE montage at import under a name MNE has deprecated; nothing we can act on
warnings.filterwarnings("ignore", message="Montage name 'standard_1020' is deprecated", category=FutureWarning)

__version__ = "0.1.0"
