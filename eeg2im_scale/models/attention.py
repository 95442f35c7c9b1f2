"""Choosing the attention kernel for the diffusers UNet: PyTorch SDPA (the default) or xformers.

The switch itself is diffusers' own (``enable_xformers_memory_efficient_attention`` /
``disable_xformers_memory_efficient_attention``, which installs the SDPA processors). xformers is
imported only when it is asked about, so CPU-only installs (and the tests) never touch it.
"""

from __future__ import annotations

import importlib
import logging
import typing
from typing import TYPE_CHECKING

import torch

from ..config import AttentionBackend

if TYPE_CHECKING:
    from diffusers import ModelMixin

log = logging.getLogger(__name__)

BACKENDS = typing.get_args(AttentionBackend)


class AttentionBackendError(RuntimeError):
    """The requested attention backend cannot run here."""


def _xformers_importable() -> tuple[bool, str]:
    try:
        importlib.import_module("xformers.ops")
    except ImportError as exc:  # xformers missing, or built against another torch/CUDA
        return False, str(exc)
    return True, ""


def select_attention_backend(requested: str, device: torch.device | str) -> str:
    """``"xformers"`` or ``"sdpa"`` for ``requested`` (a ``model.attention`` value) on ``device``,
    the device the attention runs on (not the machine's: a CPU module on a GPU machine is CPU).

    ``auto`` is PyTorch SDPA everywhere, the faster backend measured (docs/performance.md).
    xformers runs only when asked for by name; if it cannot run that is an error rather than a
    silent fallback.
    """
    if requested not in BACKENDS:
        raise ValueError(f"model.attention must be one of {', '.join(BACKENDS)}, got {requested!r}")
    on_cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    if requested == "sdpa":
        backend, why = "sdpa", "requested"
    elif requested == "auto":
        backend, why = "sdpa", "auto: the fastest measured backend"
    elif not on_cuda:
        raise AttentionBackendError(f"model.attention=xformers needs a CUDA device, but the model runs on "
                                    f"{device}; use model.attention=sdpa or auto")
    else:
        importable, error = _xformers_importable()
        if not importable:
            raise AttentionBackendError(f"model.attention=xformers but xformers cannot be imported ({error}); "
                                        "install the `gpu` extra (pip install 'eeg2im_scale[gpu]') or use "
                                        "model.attention=sdpa or auto")
        backend, why = "xformers", "requested"
    log.info("attention backend: %s (model.attention=%s; %s)", backend, requested, why)
    return backend


def apply_attention_backend(model: ModelMixin, backend: str) -> int:
    """Switch every attention layer of the diffusers model ``model`` to ``backend`` with diffusers'
    own API. Returns the number of attention layers (0 for a UNet without attention)."""
    from diffusers.models.attention_processor import Attention

    if backend not in ("xformers", "sdpa"):
        raise ValueError(f"attention backend must be 'xformers' or 'sdpa' (see select_attention_backend), got {backend!r}")
    if backend == "xformers":
        model.enable_xformers_memory_efficient_attention()
    else:  # diffusers' default processor under torch 2: AttnProcessor2_0, F.scaled_dot_product_attention
        model.disable_xformers_memory_efficient_attention()
    layers = sum(isinstance(m, Attention) for m in model.modules())
    log.debug("attention backend %s installed on %d layers", backend, layers)
    return layers
