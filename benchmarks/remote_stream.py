"""Remote streaming benchmark: a corpus read over HTTP (loopback) against the same corpus on local disk.

Why: ``data.root`` may be a URL (``eeg2im_scale/data/remote.py``), and a cluster without a shared
filesystem should lose little throughput to it. This script measures one training epoch of the
train split through :class:`EEGImageLoader` for each source and ``num_workers``:

* ``local``: the corpus directory;
* ``http``: the same files served by a separate ``python -m http.server`` process on 127.0.0.1,
  streamed (no cache);
* ``http_cache_cold`` / ``http_cache_warm``: with ``data.cache_dir``: the first epoch downloads
  every shard into the cache, the second reads the cache.

Per row: samples/s and MB/s (bytes of the epoch's shards, whole files, over wall time, the
loader's start-up included) as the median of ``--rounds`` rounds after one untimed warm-up epoch
per source, the sources alternating within a round so the shared machine's drift hits all alike;
and the fraction of ``local``'s throughput at the same worker count: the median over rounds of the
ratio within a round (local's seconds over the source's), with its range. Loopback has no network latency or bandwidth limit: the figure is the cost of the
remote code path (HTTP parsing, streaming, no seeks), not of a real network. With two or more
cores the server is pinned to one core and the benchmark (every source alike) to the others, so the
server stands in for another host instead of taking the loader's cores.
Run ``python benchmarks/remote_stream.py --out results.json``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eeg2im_scale.bench.environment import machine_info, synthetic_corpus  # noqa: E402 - after the repo path
from eeg2im_scale.config import DataConfig, SynthConfig  # noqa: E402
from eeg2im_scale.data.loader import EEGImageLoader  # noqa: E402
from eeg2im_scale.data.manifest import Manifest  # noqa: E402

SOURCES = ("local", "http", "http_cache_cold", "http_cache_warm")


def serve(folder: Path) -> tuple[subprocess.Popen, str]:
    """A static HTTP server process on 127.0.0.1 serving ``folder``; → (process, base URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cores = sorted(os.sched_getaffinity(0))
    pin = (lambda: os.sched_setaffinity(0, cores[:1])) if len(cores) > 1 else None  # the server's own core
    process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=pin)
    if len(cores) > 1:  # the loader and its workers on the others: the server stands in for another host
        os.sched_setaffinity(0, cores[1:])
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base, timeout=1).close()
            return process, base
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the HTTP server did not start")


def one_epoch(cfg: DataConfig) -> dict:
    start = time.perf_counter()
    loader = EEGImageLoader(cfg, "train")
    samples = sum(len(batch["key"]) for batch in loader)
    return {"seconds": time.perf_counter() - start, "samples": samples}


def source_configs(root: Path, url: str, workers: int, batch_size: int, cache: Path) -> dict[str, DataConfig]:
    """The loader settings of each source; ``http`` has no ``cache_dir``: every shard is streamed."""
    common = dict(num_workers=workers, batch_size=batch_size, synthesize=False)
    cached = DataConfig(root=url, cache_dir=str(cache), **common)
    return {"local": DataConfig(root=str(root), **common), "http": DataConfig(root=url, **common),
            "http_cache_cold": cached, "http_cache_warm": cached}  # the same cache: full after the cold epoch


def measure(root: Path, url: str, workers: int, rounds: int, batch_size: int, log) -> dict:
    shards = Manifest(root).shards("image", "train")
    shard_bytes = sum(Path(e.path).stat().st_size for e in shards)
    runs: dict[str, list[dict]] = {s: [] for s in SOURCES}
    with tempfile.TemporaryDirectory() as warm:  # first-use costs (imports, page cache, the server's) not timed
        for root_ in (str(root), url):
            one_epoch(DataConfig(root=root_, num_workers=workers, batch_size=batch_size, synthesize=False,
                                 cache_dir=warm))
    for round_ in range(rounds):
        cache = Path(tempfile.mkdtemp(prefix="eeg2im_remote_bench_"))
        try:
            configs = source_configs(root, url, workers, batch_size, cache)
            for source in SOURCES:
                result = one_epoch(configs[source])
                runs[source].append(result)
                log(f"workers {workers} round {round_ + 1}/{rounds} {source}: {result['samples']} samples in "
                    f"{result['seconds']:.2f} s")
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    rows = {}
    for source, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        rows[source] = {"samples": results[0]["samples"], "seconds_median": round(seconds, 3),
                        "samples_per_s": round(results[0]["samples"] / seconds, 1),
                        "mb_per_s": round(shard_bytes / seconds / 1e6, 2),
                        "seconds_all_rounds": [round(r["seconds"], 3) for r in results]}
    for source in SOURCES:  # paired within each round, where the shared machine's drift hit both sources alike
        ratios = [local["seconds"] / remote["seconds"] for local, remote in zip(runs["local"], runs[source])]
        rows[source]["fraction_of_local"] = round(statistics.median(ratios), 3)
        rows[source]["fraction_of_local_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench" / "remote_stream")
    parser.add_argument("--quick", action="store_true", help="smoke run: 240 small samples, 1 round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per worker count (default 9; quick 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in DataLoader workers; see loader_throughput.py
    rounds = args.rounds or (1 if args.quick else 9)
    synth = (SynthConfig(num_samples=240, channels=16, time_points=128, image_size=32, samples_per_shard=40)
             if args.quick else SynthConfig(num_samples=2000, channels=128, time_points=440, image_size=64,
                                            samples_per_shard=250, workers=2))
    started = time.perf_counter()
    machine = machine_info("fsspec")
    root, reused = synthetic_corpus(synth, args.work_dir / "corpus", "remote")
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="eeg2im_remote_bench_home_")  # where a streamed
    # corpus's manifest copy goes (data.cache_dir unset): not the user's own cache
    server, base = serve(root.parent)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    try:
        url = f"{base}/{root.name}"
        results = {str(workers): measure(root, url, workers, rounds, 64, log) for workers in (0, 2)}
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(os.environ["XDG_CACHE_HOME"], ignore_errors=True)
    report = {
        "benchmark": "remote_stream", "mode": "quick" if args.quick else "full", "date": machine["date"],
        "machine": {**machine, "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "settings": {"synth": {"num_samples": synth.num_samples, "channels": synth.channels,
                               "time_points": synth.time_points, "image_size": synth.image_size,
                               "samples_per_shard": synth.samples_per_shard},
                     "corpus_reused": reused, "rounds": rounds, "batch_size": 64, "split": "train (image scheme)",
                     "server": "python -m http.server, a separate process on 127.0.0.1",
                     "cores": ("server pinned to the first usable core, the benchmark (loader and workers, local and "
                               "remote alike) to the others" if len(os.sched_getaffinity(0)) < (os.cpu_count() or 1)
                               else "all usable cores shared"),
                     "mb_per_s": "bytes of the epoch's shards (whole files) / wall time, start-up included"},
        "results": results,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for workers, rows in results.items():
        print(f"workers {workers}: " + ", ".join(f"{s} {r['samples_per_s']} samples/s ({r['fraction_of_local']:.2f} "
                                                 f"of local)" for s, r in rows.items()))
    print(f"wrote {args.out} ({report['runtime_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
