"""EEG2IM models: image teacher, EEG encoders, image autoencoder, FiLM-conditioned diffusion UNet.

Every model is built from the dataclasses in :mod:`eeg2im_scale.config`; the objectives are pure
functions in :mod:`eeg2im_scale.models.losses`. See ``docs/models.md``.
"""

from .attention import AttentionBackendError, apply_attention_backend, select_attention_backend
from .autoencoder import ImageAutoencoder, from_unit_range, to_unit_range
from .eeg_encoders import BACKBONES, HighLevelEncoder, LowLevelEncoder, build_backbone
from .film_unet import FiLMUNet
from .sampling import (diffusion_training_target, guided_prediction, make_sampling_scheduler,
                                          make_train_scheduler, sample)
from .teacher import Teacher, WeightsNotFoundError, build_teacher

__all__ = [
    "AttentionBackendError", "apply_attention_backend", "select_attention_backend",
    "ImageAutoencoder", "from_unit_range", "to_unit_range",
    "BACKBONES", "HighLevelEncoder", "LowLevelEncoder", "build_backbone",
    "FiLMUNet",
    "diffusion_training_target", "guided_prediction", "make_sampling_scheduler", "make_train_scheduler", "sample",
    "Teacher", "WeightsNotFoundError", "build_teacher",
]
