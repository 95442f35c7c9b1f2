"""Half-precision training without half-precision statistics.

DeepSpeed's bf16/fp16 modes cast a module's parameters; the loop casts its buffers too (CPU kernels
reject a bf16 input with float32 statistics). A BatchNorm running mean or variance kept in bf16
holds about three significant digits: an update momentum·(batch − running) below half its ulp is
lost, so the statistics that eval mode normalises with freeze or drift (a mean near 100 moves in
steps of 0.5). :func:`cast_for_training` casts everything else and keeps every BatchNorm's
statistics, and its arithmetic, in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Float32BatchNorm:
    """Mixin for ``nn.BatchNorm{1,2,3}d``: normalise in float32 with float32 running statistics,
    whatever the dtype of the input and of the (optimizer-cast) affine parameters; the output
    returns in the input's dtype. The arithmetic of ``_BatchNorm.forward``, with casts."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        out = F.batch_norm(input.float(), self.running_mean if keep else None, self.running_var if keep else None,
                           None if self.weight is None else self.weight.float(),
                           None if self.bias is None else self.bias.float(), use_batch, factor, self.eps)
        return out.to(input.dtype)


_FLOAT32_CLASSES = {cls: type(f"Float32{cls.__name__}", (Float32BatchNorm, cls), {})
                    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)}


def cast_for_training(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module.to(dtype)``, except BatchNorm statistics, which stay float32 and are updated in
    float32 (the class of each BatchNorm is swapped in place, so state-dict keys do not change)."""
    module.to(dtype)
    if dtype == torch.float32:
        return module
    for norm in module.modules():
        if type(norm) in _FLOAT32_CLASSES:
            norm.__class__ = _FLOAT32_CLASSES[type(norm)]
            for name in ("running_mean", "running_var"):
                buffer = getattr(norm, name)
                if buffer is not None:
                    setattr(norm, name, buffer.float())
    return module
