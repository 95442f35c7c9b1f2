"""Training telemetry: ``stats.jsonl`` + TensorBoard on rank 0, throughput and FLOP estimates."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


class MetricsWriter:
    """One JSON object per logging step (edm's stats.jsonl), mirrored to TensorBoard. A resumed
    run appends; a fresh one starts the file anew. Only rank 0 writes."""

    def __init__(self, out_dir: Path, enabled: bool, append: bool):
        self.enabled = enabled
        self._jsonl = self._tb = None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(out_dir / "stats.jsonl", "a" if append else "w")
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


def reset_peak_memory(device: torch.device) -> None:
    """Start a new high-water mark: CUDA's allocator counter, or Linux's VmHWM via clear_refs."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the process-lifetime peak (ru_maxrss) is reported instead


def peak_memory_mib(device: torch.device) -> float:
    """Peak accelerator memory on GPU; on the CPU, the peak resident set since the last reset."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_flops_per_sample(forward, frozen_forward, batch_size: int) -> float:
    """FLOPs of one training sample, counted by PyTorch's FlopCounterMode: the trained part's
    forward ×3 (the backward costs about twice the forward) plus the frozen networks' forward
    once (teacher, conditioning encoders: no backward). A compiled UNet is counted eagerly
    (``force_eager``): the same count, without tracing a graph under the counting mode."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    counts = []
    for run in (forward, frozen_forward):
        with torch.random.fork_rng(devices=devices), torch.no_grad(), torch.compiler.set_stance("force_eager"), \
                FlopCounterMode(display=False) as counter:
            run()  # on a forked RNG: counting must not shift the random stream a resumed run replays
        counts.append(counter.get_total_flops())
    total, frozen = counts
    return (3.0 * (total - frozen) + frozen) / batch_size
