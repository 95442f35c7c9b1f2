"""Converters from published EEG/image releases to the corpus format (shards + manifest).

``eeg_imagenet`` (Spampinato et al. 2017), ``things_eeg2`` (Gifford et al. 2022) and ``arrays``
(any [N, C, T] array plus a table); see docs/converters.md.
"""

from .arrays import convert_arrays
from .common import ConvertError, ConvertOptions, parse_window, summary
from .eeg_imagenet import convert_eeg_imagenet
from .things_eeg2 import convert_things_eeg2

__all__ = ["ConvertError", "ConvertOptions", "convert_arrays", "convert_eeg_imagenet", "convert_things_eeg2",
           "parse_window", "summary"]
