"""What every benchmark records beside its numbers, written once: the machine and software a
measurement was taken on, and the synthetic corpus it was taken over (written once per settings
and reused)."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
from pathlib import Path

from ..config import SynthConfig
from ..data.corpus import write_synthetic
from ..data.manifest import MANIFEST


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(*packages: str) -> dict:
    """Date, host, CPUs (present and usable by this process), memory, platform, Python, torch and
    ``packages``' versions, the GPUs by name, and the 1-minute load average now (the machines
    benchmarks run on are often shared: a reader must see how loaded it was)."""
    import psutil
    import torch

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, **{name: package_version(name) for name in packages},
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    if info["gpus"]:
        info["cuda"] = torch.version.cuda
    return info


def synthetic_corpus(synth_cfg: SynthConfig, parent: Path, name: str) -> tuple[Path, bool]:
    """``parent/<name>_<digest of synth_cfg>``, written by the package's synthesizer unless a
    complete corpus with these settings is already there; → (root, reused)."""
    digest = hashlib.sha1(json.dumps(dataclasses.asdict(synth_cfg), sort_keys=True).encode()).hexdigest()[:10]
    root = Path(parent) / f"{name}_{digest}"
    reused = (root / MANIFEST).is_file()
    if not reused:
        shutil.rmtree(root, ignore_errors=True)
        write_synthetic(synth_cfg, root)
    return root, reused
