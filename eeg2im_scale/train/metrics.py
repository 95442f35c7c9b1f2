"""Training telemetry: ``stats.jsonl`` + TensorBoard on rank 0, throughput and FLOP estimates."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


class MetricsWriter:
    """Appends one JSON object per logging step (edm's stats.jsonl) and mirrors scalars to
    TensorBoard. Only rank 0 writes; other ranks get a writer that does nothing."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self._jsonl = self._tb = None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(out_dir / "stats.jsonl", "a")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def peak_memory_mib(device: torch.device) -> float:
    """Peak accelerator memory on GPU, peak resident set size of this process on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_flops_per_sample(forward, batch_size: int) -> float:
    """FLOPs of one training sample: the forward counted by PyTorch's FlopCounterMode, times 3
    for forward + backward (the backward costs about twice the forward)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward()  # on a forked RNG: counting must not shift the random stream a resumed run replays
    return 3.0 * counter.get_total_flops() / batch_size
