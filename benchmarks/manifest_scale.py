"""Cost growth to a million samples: writing a corpus (shards, manifest, split columns, channel
statistics) and starting a loader on it, at 10k, 100k and 1M samples.

Why: a corpus far larger than today's must not make any step hold every sample in Python
objects. Per size, each in a fresh child process so its peak RSS is its own:

* ``write``: ``data.writer.write_corpus`` of N tiny samples (EEG 2 channels x 16 time points,
  float16; 8 px PNG images; 1000 samples per shard; 2 writer processes): wall time and the parent
  process's peak RSS growth over its RSS after imports (the manifest, split assignment and
  statistics live there; shard encoding is in the pool);
* ``start``: ``EEGImageLoader(cfg, "train")`` built and its first batch drawn (0 workers):
  start-up time and peak RSS growth over the RSS after imports. The start-up reads the manifest's columns into arrays, computes the
  split membership and the shard list; the EEG statistics are stored in the manifest.

The EEG is deliberately tiny: the figures are the cost of the bookkeeping that grows with the
number of samples, not of decoding (``loader_throughput.json`` measures that).
Run ``python benchmarks/manifest_scale.py --out results.json``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eeg2im_scale.bench.environment import machine_info  # noqa: E402 - after the repo path
from eeg2im_scale.config import DataConfig  # noqa: E402
from eeg2im_scale.data.loader import EEGImageLoader  # noqa: E402
from eeg2im_scale.data.writer import CorpusInfo, RawSample, write_corpus  # noqa: E402

CHANNELS, TIME_POINTS, IMAGE, PER_SHARD = 2, 16, 8, 1000
SUBJECTS, SESSIONS, CLASSES, TRIALS_PER_IMAGE = 10, 4, 40, 4


class TinySource:
    """Shard source of samples ``start..stop``: an EEG-ImageNet-like layout (10 subjects, 4
    sessions, 40 classes, each image shown 4 times), random tiny EEG and one shared image."""

    def __init__(self, start: int, stop: int, image: bytes):
        self.start, self.stop, self.image = start, stop, image

    def __call__(self):
        rng = np.random.default_rng(self.start)
        eeg = rng.standard_normal((self.stop - self.start, CHANNELS, TIME_POINTS)).astype(np.float32)
        for offset, index in enumerate(range(self.start, self.stop)):
            image_id, subject = index // TRIALS_PER_IMAGE, index % SUBJECTS
            session = image_id % SESSIONS
            yield RawSample(index=index, eeg=eeg[offset], image=self.image,
                            meta={"label": image_id % CLASSES, "subject": subject, "image_id": f"img{image_id}",
                                  "session": session, "block": subject * SESSIONS + session})


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _write(root: str, num_samples: int, queue) -> None:
    from eeg2im_scale.data.format import encode_image

    before = _peak_rss_mib()
    image = encode_image(np.zeros((IMAGE, IMAGE, 3), np.uint8), "png")
    info = CorpusInfo(channel_names=[f"E{i}" for i in range(CHANNELS)], sfreq=100.0, time_points=TIME_POINTS,
                      class_names=[f"c{i}" for i in range(CLASSES)], image_format="png", source="manifest_scale")
    sources = [TinySource(s, min(num_samples, s + PER_SHARD), image) for s in range(0, num_samples, PER_SHARD)]
    start = time.perf_counter()
    write_corpus(root, info, sources, workers=2, num_shards=len(sources))
    peak = _peak_rss_mib()
    queue.put({"seconds": round(time.perf_counter() - start, 2), "peak_rss_mib": round(peak, 1),
               "rss_before_mib": round(before, 1), "peak_rss_growth_mib": round(peak - before, 1)})


def _start(root: str, queue) -> None:
    import torch

    torch.set_num_threads(1)
    before = _peak_rss_mib()
    start = time.perf_counter()
    loader = EEGImageLoader(DataConfig(root=root, batch_size=64, image_size=IMAGE, synthesize=False), "train")
    built = time.perf_counter()
    next(iter(loader))
    queue.put({"build_s": round(built - start, 3), "first_batch_s": round(time.perf_counter() - built, 3),
               "train_samples": loader.num_samples, "peak_rss_mib": round(_peak_rss_mib(), 1),
               "rss_before_mib": round(before, 1), "peak_rss_growth_mib": round(_peak_rss_mib() - before, 1)})


def in_child(target, *args) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{target.__name__} failed with exit code {process.exitcode}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench" / "manifest_scale")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2k, 4k and 8k samples")
    args = parser.parse_args(argv)
    sizes = [2_000, 4_000, 8_000] if args.quick else [10_000, 100_000, 1_000_000]
    started = time.perf_counter()
    machine = machine_info("pyarrow")
    results = {}
    for size in sizes:
        root = args.work_dir / f"n{size}"
        shutil.rmtree(root, ignore_errors=True)
        write = in_child(_write, str(root), size)
        disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        manifest = (root / "manifest.parquet").stat().st_size
        start = in_child(_start, str(root))
        results[str(size)] = {"write": {**write, "us_per_sample": round(write["seconds"] / size * 1e6, 1)},
                              "start": start, "bytes_on_disk": disk, "manifest_bytes": manifest}
        print(json.dumps({"size": size, **results[str(size)]}), flush=True)
        shutil.rmtree(root, ignore_errors=True)
    small, large = results[str(sizes[0])], results[str(sizes[-1])]
    growth = {"samples": sizes[-1] / sizes[0],
              "write_seconds": round(large["write"]["seconds"] / small["write"]["seconds"], 2),
              "write_peak_rss_growth": round(large["write"]["peak_rss_growth_mib"]
                                             / max(small["write"]["peak_rss_growth_mib"], 1.0), 2),
              "start_seconds": round((large["start"]["build_s"] + large["start"]["first_batch_s"])
                                     / (small["start"]["build_s"] + small["start"]["first_batch_s"]), 2),
              "start_peak_rss_growth": round(large["start"]["peak_rss_growth_mib"]
                                             / max(small["start"]["peak_rss_growth_mib"], 1.0), 2)}
    report = {"benchmark": "manifest_scale", "mode": "quick" if args.quick else "full", "date": machine["date"],
              "machine": {**machine, "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
              "settings": {"sizes": sizes, "eeg": f"{CHANNELS} channels x {TIME_POINTS} time points, float16",
                           "image": f"{IMAGE} px PNG (one shared image)", "samples_per_shard": PER_SHARD,
                           "layout": f"{SUBJECTS} subjects, {SESSIONS} sessions, {CLASSES} classes, "
                                     f"{TRIALS_PER_IMAGE} trials per image", "writer_processes": 2},
              "results": results, "largest_over_smallest": growth,
              "runtime_s": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"largest/smallest ({growth['samples']:.0f}x samples): {json.dumps(growth)}")
    print(f"wrote {args.out} ({report['runtime_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
