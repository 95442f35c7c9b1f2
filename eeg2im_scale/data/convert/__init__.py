"""Converters from published EEG/image releases to the corpus format (shards + manifest).

``eeg_imagenet`` (Spampinato et al. 2017), ``eeg_imagenet_2024`` (Zhu et al. 2024), ``things_eeg2``
(Gifford et al. 2022) and ``arrays`` (any [N, C, T] array plus a table); see docs/converters.md.
"""

from .arrays import convert_arrays
from .common import ConvertError, ConvertOptions, parse_window, summary
from .eeg_imagenet import convert_eeg_imagenet
from .eeg_imagenet_2024 import convert_eeg_imagenet_2024
from .things_eeg2 import convert_things_eeg2

__all__ = ["ConvertError", "ConvertOptions", "convert_arrays", "convert_eeg_imagenet", "convert_eeg_imagenet_2024",
           "convert_things_eeg2", "parse_window", "summary"]
