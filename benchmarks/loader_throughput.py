"""Loader benchmark: the streaming shard loader against the way published EEG-to-image code reads data.

Why: the streaming loader exists so that the corpus size is bounded by disk, not RAM, without
giving up throughput. This script puts numbers on both claims on one synthetic corpus:

* ``streaming``: samples/s (and MB/s of delivered tensors) of :class:`EEGImageLoader`, one
  training epoch of the train split, for several ``num_workers``;
* ``baseline_published``: the same samples read as Spampinato et al. (CVPR 2017) / EEG-ImageNet
  loaders do: one ``torch.load``-ed file holding every trial's EEG as a float32 tensor, plus one
  image file per image decoded with PIL in a map-style ``Dataset.__getitem__``;
* ``decode_ceiling``: the loader's own per-sample work on raw bytes already in memory, in one
  tight loop: what streaming could reach if reading and shuffling were free;
* ``memory``: peak RSS of each loader (``num_workers=0``, one process holds everything) at three
  corpus sizes, each in a fresh child process, to show which one grows with the corpus;
* ``cost_growth``: writing and streaming time per sample and peak memory across those sizes
  (linear time keeps the per-sample figures flat; bounded memory keeps streaming RSS flat).

Corpora (and the baseline's export of them) are written once into ``--work-dir`` and reused.
Torch runs one intra-op thread, as in DataLoader workers: on a busy 2-core machine the two-thread
``torch.stack`` of the baseline's ``default_collate`` spun for ~0.5 s per batch (vs ~1 ms), which
would have measured CPU contention instead of the loaders.
Run ``python benchmarks/loader_throughput.py --out results.json``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from eeg2im_scale.bench.environment import machine_info
from eeg2im_scale.bench.summaries import cost_growth
from eeg2im_scale.config import DataConfig, SynthConfig
from eeg2im_scale.data.corpus import write_synthetic
from eeg2im_scale.data.format import decode_sample, read_shard
from eeg2im_scale.data.loader import BatchBuilder, EEGImageLoader
from eeg2im_scale.data.manifest import Manifest
from eeg2im_scale.data.preprocess import EEGPreprocess, prepare_image

SETTINGS_FILE = "bench_corpus.json"
BASELINE_DIR = "baseline_published"
BASELINE_EEG = "eeg_dataset.pth"
SPLIT_BY = "image"
TORCH_THREADS = 1


@dataclasses.dataclass
class Bench:
    """What one run measures; ``--quick`` swaps in a tiny preset."""

    sizes: list[int]
    workers: list[int]
    work_dir: Path
    channels: int = 128
    time_points: int = 440
    image_size: int = 64
    samples_per_shard: int = 250
    batch_size: int = 64
    shuffle_buffer: int = DataConfig.shuffle_buffer
    max_batches: int = 0  # 0: one full epoch of the train split
    warmup_batches: int = 2
    repeats: int = 5
    synth_workers: int = 2

    def synth(self, num_samples: int) -> SynthConfig:
        return SynthConfig(num_samples=num_samples, channels=self.channels, time_points=self.time_points,
                           image_size=self.image_size, samples_per_shard=self.samples_per_shard,
                           workers=self.synth_workers)

    def data(self, root: Path, num_workers: int) -> DataConfig:
        return DataConfig(root=str(root), split_by=SPLIT_BY, batch_size=self.batch_size, num_workers=num_workers,
                          shuffle_buffer=self.shuffle_buffer, image_size=self.image_size, synthesize=False)


# --------------------------------------------------------------------------------------------
# Corpora: synthesized once, exported once to the published layout


def ensure_corpus(bench: Bench, num_samples: int) -> dict:
    """The corpus of ``num_samples`` under the work dir, written unless an identical one exists.

    The synthesis rate is stored next to the corpus, so a reused corpus still reports the rate
    measured when it was written (``reused`` says which)."""
    cfg = bench.synth(num_samples)
    root = bench.work_dir / f"n{num_samples}_c{cfg.channels}_t{cfg.time_points}_img{cfg.image_size}"
    wanted = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workers"}
    wanted["split_fractions"] = list(wanted["split_fractions"])
    settings_path = root / SETTINGS_FILE
    if settings_path.is_file():
        recorded = json.loads(settings_path.read_text())
        if recorded["synth"] == wanted and (root / "manifest.parquet").is_file():
            return {**recorded["corpus"], "root": str(root), "reused": True}
    shutil.rmtree(root, ignore_errors=True)  # also drops a stale baseline export
    start = time.perf_counter()
    write_synthetic(cfg, root)
    seconds = time.perf_counter() - start
    corpus = {"num_samples": num_samples,
              "train_samples": Manifest(root).count(SPLIT_BY, "train"),
              "bytes_on_disk": _tree_bytes(root),
              "synthesis_seconds": round(seconds, 2),
              "synthesis_samples_per_s": round(num_samples / seconds, 1),
              "synthesis_workers": cfg.workers}
    settings_path.write_text(json.dumps({"synth": wanted, "corpus": corpus}, indent=1))
    return {**corpus, "root": str(root), "reused": False}


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export_published(root: Path) -> dict:
    """Write the corpus the way Spampinato et al. / EEG-ImageNet distribute theirs (untimed).

    ``eeg_dataset.pth`` = ``{"dataset": [{"eeg": float32 (C, T), "image": int, "label": int,
    "subject": int}, ...], "labels": [class names], "images": [image names]}`` for *every*
    sample in index order, plus ``images/<name>.<ext>`` holding each image's encoded bytes once."""
    out = root / BASELINE_DIR
    done = out / "export.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    manifest = Manifest(root)
    dataset, images, image_index = [], [], {}
    for shard in sorted((root / "shards").glob("*.tar")):
        for raw in read_shard(shard):
            sample = decode_sample(raw, str(shard), manifest.eeg_shape)
            if int(sample.key) != len(dataset):
                raise RuntimeError(f"{shard}: expected sample {len(dataset)}, found {sample.key}")
            name = str(sample.meta["image_id"])
            if name not in image_index:
                ext = next(f for f in ("png", "jpg", "jpeg") if f in raw)
                (out / "images" / f"{name}.{ext}").write_bytes(raw[ext])
                image_index[name] = len(images)
                images.append(name)
            dataset.append({"eeg": sample.eeg, "image": image_index[name],
                            "label": sample.meta["label"], "subject": sample.meta["subject"]})
    torch.save({"dataset": dataset, "labels": list(manifest.info["class_names"]), "images": images},
               out / BASELINE_EEG)
    info = {"bytes_on_disk": _tree_bytes(out), "eeg_file_bytes": (out / BASELINE_EEG).stat().st_size,
            "image_files": len(images)}
    done.write_text(json.dumps(info))
    return info


class PublishedStyleDataset(Dataset):
    """Map-style dataset as in published EEG-to-image code: every trial's EEG in RAM from one
    ``torch.load``, each image file opened and decoded per sample in ``__getitem__``.

    Preprocessing is the streaming loader's (same z-score statistics, same image preparation), so
    the comparison measures the data layout and reading pattern, not different maths."""

    def __init__(self, root: Path, split: str, image_size: int):
        manifest = Manifest(root)
        loaded = torch.load(root / BASELINE_DIR / BASELINE_EEG)
        self.data, self.images = loaded["dataset"], loaded["images"]
        self.image_files = {p.stem: p for p in (root / BASELINE_DIR / "images").iterdir()}
        self.indices = np.flatnonzero(manifest.membership(SPLIT_BY, split))
        self.preprocess = EEGPreprocess(None, *manifest.eeg_stats(SPLIT_BY))
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        item = self.data[self.indices[i]]
        with Image.open(self.image_files[self.images[item["image"]]]) as pil:
            image = prepare_image(np.asarray(pil.convert("RGB")), self.image_size)
        return {"eeg": self.preprocess(item["eeg"]), "image": torch.from_numpy(image),
                "label": item["label"], "subject": item["subject"]}


def published_loader(dataset: PublishedStyleDataset, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers)


# --------------------------------------------------------------------------------------------
# Timing


def _tensor_bytes(batch: dict) -> int:
    return sum(v.nbytes for v in batch.values() if isinstance(v, torch.Tensor))


def time_pass(batches: Iterable[dict], max_batches: int, skip: int) -> dict:
    """One pass: samples/s and MB/s from the call to ``iter`` to the last batch (worker start-up
    and shuffle-buffer fill included, as a training epoch pays them), and ``steady`` samples/s
    after the first ``skip`` batches (None when the pass is not longer than that)."""
    start = time.perf_counter()
    samples = nbytes = count = 0
    steady_start, steady_samples = 0.0, 0
    for batch in batches:
        samples += len(batch["label"])
        nbytes += _tensor_bytes(batch)
        count += 1
        if count == skip:
            steady_start, steady_samples = time.perf_counter(), samples
        if max_batches and count >= max_batches:
            break
    end = time.perf_counter()
    seconds = end - start
    steady = (samples - steady_samples) / (end - steady_start) if count > skip else None
    return {"samples": samples, "batches": count, "seconds": seconds, "samples_per_s": samples / seconds,
            "mb_per_s": nbytes / seconds / 1e6, "steady_samples_per_s": steady}


def _warm_up(batches: Iterable[dict], count: int) -> None:
    for n, _ in enumerate(batches, 1):
        if n >= count:
            break


def _median_of(passes: list[dict]) -> dict:
    """Median of each figure over repeated passes, plus every pass's samples/s for spread."""
    summary = {}
    for key in passes[0]:
        values = [p[key] for p in passes if p[key] is not None]
        summary[key] = round(statistics.median(values), 3) if values else None
    summary["samples_per_s_each_pass"] = [round(p["samples_per_s"], 1) for p in passes]
    return summary


def streaming_epoch(bench: Bench, loader: EEGImageLoader, epoch: int) -> dict:
    """One timed training epoch (a new epoch, hence a new shuffle)."""
    loader.set_epoch(epoch)
    return time_pass(loader, bench.max_batches, skip=max(1, loader.num_workers))


def decode_ceiling_batches(bench: Bench, plan) -> tuple[Callable[[], Iterator[dict]], int]:
    """The ceiling: raw train samples read into memory first (untimed), then decoded,
    preprocessed and batched by the loader's own code (``BatchBuilder``: ``decode_sample`` →
    ``EEGPreprocess`` → ``prepare_image``, straight into the batch's tensors), in one process, no
    I/O. Returns a pass factory and the raw bytes held."""
    wanted = bench.max_batches * bench.batch_size if bench.max_batches else None
    raws = [raw for entry in plan.shards for raw in read_shard(entry.path) if plan.member[int(raw["__key__"])]]
    raws = raws[:wanted]

    def batches() -> Iterator[dict]:
        for start in range(0, len(raws), bench.batch_size):
            batch = BatchBuilder(plan)
            for raw in raws[start:start + bench.batch_size]:
                batch.add(raw)
            yield batch.finish()

    return batches, sum(len(v) for raw in raws for v in raw.values() if isinstance(v, (bytes, bytearray)))


def measure_throughput(bench: Bench, root: Path, log=print) -> dict:
    """Streaming and published-style loaders at each worker count, and the decode ceiling, in
    rounds: every round times one pass of each, so the machine's load drifts over all of them
    alike. Timed one configuration after the other, a busy minute on this shared 2-core machine
    landed on whichever ran then, and figures moved by up to 1.5x between runs."""
    streaming = {w: EEGImageLoader(bench.data(root, w), "train") for w in bench.workers}
    dataset = PublishedStyleDataset(root, "train", bench.image_size)
    baseline = {w: published_loader(dataset, bench.batch_size, w) for w in bench.workers}
    ceiling, raw_bytes = decode_ceiling_batches(bench, streaming[bench.workers[0]].plan)
    # (section, workers or None) -> one timed pass of that epoch
    passes: dict[tuple[str, int | None], Callable[[int], dict]] = {}
    for w, loader in streaming.items():
        passes["streaming", w] = lambda epoch, loader=loader: streaming_epoch(bench, loader, epoch)
    for w, loader in baseline.items():
        passes["baseline_published", w] = lambda epoch, loader=loader, w=w: time_pass(
            loader, bench.max_batches, skip=max(1, w))
    passes["decode_ceiling", None] = lambda epoch: time_pass(ceiling(), 0, skip=1)
    for loader in [*streaming.values(), *baseline.values()]:
        _warm_up(loader, bench.warmup_batches)
    _warm_up(ceiling(), bench.warmup_batches)
    timed: dict[tuple[str, int | None], list[dict]] = {name: [] for name in passes}
    for epoch in range(1, bench.repeats + 1):
        log(f"round {epoch}/{bench.repeats}")
        for name, one_pass in passes.items():
            timed[name].append(one_pass(epoch))
    result: dict = {"streaming": {}, "baseline_published": {}}
    for (section, workers), runs in timed.items():
        if workers is None:
            result[section] = _median_of(runs)
        else:
            result[section][f"workers_{workers}"] = _median_of(runs)
    summary = result["decode_ceiling"]
    summary["raw_bytes_in_memory"] = raw_bytes
    if 0 in bench.workers:
        streaming0 = result["streaming"]["workers_0"]
        for name, figure in (("", "samples_per_s"), ("_steady", "steady_samples_per_s")):
            value, limit = streaming0[figure], summary[figure]
            summary[f"ratio_streaming_workers_0{name}"] = round(value / limit, 3) if value and limit else None
        summary["ratio_each_round"] = [round(s["samples_per_s"] / c["samples_per_s"], 3)
                                       for s, c in zip(timed["streaming", 0], timed["decode_ceiling", None])]
    return result


# --------------------------------------------------------------------------------------------
# Memory: one fresh process per loader and corpus size


def _proc_status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status``, in MiB.

    ``VmHWM`` (the peak RSS) belongs to the address space, which ``exec`` replaces, so it counts
    only this interpreter. ``getrusage``'s ``ru_maxrss`` would not do: Linux carries it across
    ``execve``, so a child would report the parent's peak whenever that was larger."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_child(spec: dict) -> dict:
    """Body of ``--child``: build one loader with ``num_workers=0`` and run one pass in this
    (fresh) interpreter; report its peak RSS and its RSS before the loader was built."""
    bench = Bench(sizes=[], workers=[0], work_dir=Path(), **spec["bench"])
    root = Path(spec["root"])
    before = _proc_status_mib("VmRSS")
    if spec["kind"] == "streaming":
        batches: Iterable[dict] = EEGImageLoader(bench.data(root, 0), "train")
    else:
        batches = published_loader(PublishedStyleDataset(root, "train", bench.image_size), bench.batch_size, 0)
    result = time_pass(batches, bench.max_batches, skip=1)
    return {"peak_rss_mib": round(_proc_status_mib("VmHWM"), 1), "rss_after_imports_mib": round(before, 1),
            "samples": result["samples"], "seconds": round(result["seconds"], 2)}


def measure_memory(bench: Bench, root: Path, kind: str) -> dict:
    """Run :func:`run_child` in a fresh interpreter, so nothing this process holds is counted."""
    settings = {k: getattr(bench, k) for k in ("batch_size", "image_size", "shuffle_buffer", "max_batches")}
    spec = json.dumps({"kind": kind, "root": str(root), "bench": settings})
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", spec],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory child ({kind}, {root}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------


def run(bench: Bench, log=print) -> dict:
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    corpora = {}
    for size in bench.sizes:
        log(f"corpus {size}: synthesizing or reusing ...")
        corpus = corpora[str(size)] = ensure_corpus(bench, size)
        log(f"corpus {size}: exporting the published layout or reusing ...")
        corpus["baseline_published_bytes_on_disk"] = export_published(Path(corpus["root"]))["bytes_on_disk"]

    size = str(min(bench.sizes))
    root = Path(corpora[size]["root"])
    throughput = measure_throughput(bench, root, log)

    memory = {}
    for size_key, info in corpora.items():
        log(f"memory, corpus {size_key} ...")
        s, b = (measure_memory(bench, Path(info["root"]), kind) for kind in ("streaming", "baseline"))
        memory[size_key] = {"streaming_peak_rss_mib": s["peak_rss_mib"], "baseline_peak_rss_mib": b["peak_rss_mib"],
                            "streaming_rss_after_imports_mib": s["rss_after_imports_mib"],
                            "baseline_rss_after_imports_mib": b["rss_after_imports_mib"],
                            "streaming_samples": s["samples"], "baseline_samples": b["samples"],
                            "streaming_seconds": s["seconds"], "baseline_seconds": b["seconds"]}

    growth = cost_growth(corpora, memory)
    per_pass = f"{bench.max_batches} batches" if bench.max_batches else "one full epoch of the train split"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info("numpy", "webdataset", "pillow"), "load_average_1min_at_start": round(load_at_start, 2),
                    "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "settings": {**{k: v for k, v in dataclasses.asdict(bench).items() if k != "work_dir"},
                     "work_dir": str(bench.work_dir), "split_by": SPLIT_BY, "split": "train",
                     "throughput_corpus_samples": int(size), "torch_threads": TORCH_THREADS},
        "measured": {
            "throughput": f"on the {size}-sample corpus; each figure is the median of {bench.repeats} passes of "
                          f"{per_pass}, after {bench.warmup_batches} warm-up batches; passes run in rounds, one "
                          "pass of every loader and of the ceiling per round; samples_per_s and mb_per_s "
                          "count from the call to iter() to the last batch (worker start and shuffle-buffer fill "
                          "included); steady_samples_per_s excludes the first max(1, workers) batches; mb_per_s "
                          "counts every tensor delivered in the batches",
            "streaming": "EEGImageLoader, training mode, train split, data.batch_size and shuffle_buffer as in settings",
            "baseline_published": "torch.load of one file with every trial's float32 EEG + one PNG per image decoded "
                                  "with PIL per sample; map-style Dataset, DataLoader(shuffle=True); the torch.load "
                                  "happens once before timing",
            "decode_ceiling": "train-split raw sample bytes held in memory, decoded into batches with the loader's "
                              "BatchBuilder in one process; ratio_* = streaming (0 workers) / ceiling medians; "
                              "ratio_each_round = the same per round",
            "memory": f"peak RSS (VmHWM) of a fresh child process, num_workers=0, running {per_pass}; "
                      "rss_after_imports is the same process before building the loader",
            "cost_growth": "per corpus size: writing (synthesis + shard writing, synth_workers processes) and one "
                           "streaming pass (the memory child's) in seconds per 1000 samples, and both loaders' peak "
                           "RSS; largest_over_smallest = the figure at the largest size / at the smallest: 1 = "
                           "linear time / flat memory",
        },
        "corpora": corpora,
        **throughput,
        "memory": memory,
        "cost_growth": growth,
        "runtime_s": round(time.perf_counter() - started, 1),
    }


def _num(value, width: int, digits: int = 0) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def summary_table(result: dict) -> str:
    lines = [f"throughput on the {result['settings']['throughput_corpus_samples']}-sample corpus (samples/s, median):",
             f"  {'loader':<20}{'workers':>8}{'epoch':>10}{'steady':>10}{'MB/s':>9}"]
    for name in ("streaming", "baseline_published"):
        for key, fig in result[name].items():
            lines.append(f"  {name:<20}{key.split('_')[1]:>8}{_num(fig['samples_per_s'], 10)}"
                         f"{_num(fig['steady_samples_per_s'], 10)}{_num(fig['mb_per_s'], 9, 1)}")
    ceiling = result["decode_ceiling"]
    lines.append(f"  {'decode_ceiling':<20}{'-':>8}{ceiling['samples_per_s']:>10.0f}{'':>10}{ceiling['mb_per_s']:>9.1f}")
    if "ratio_streaming_workers_0" in ceiling:
        lines.append(f"  streaming(0 workers) / ceiling = {_num(ceiling['ratio_streaming_workers_0'], 0, 2)} "
                     f"(steady {_num(ceiling['ratio_streaming_workers_0_steady'], 0, 2)})")
    lines += ["peak RSS, num_workers=0 (MiB):", f"  {'samples':>8}{'on disk MB':>12}{'streaming':>11}{'baseline':>10}"]
    for size, mem in result["memory"].items():
        lines.append(f"  {size:>8}{result['corpora'][size]['bytes_on_disk'] / 1e6:>12.0f}"
                     f"{mem['streaming_peak_rss_mib']:>11.0f}{mem['baseline_peak_rss_mib']:>10.0f}")
    lines.append("synthesis (samples/s): " + ", ".join(
        f"{size}: {c['synthesis_samples_per_s']}{' (reused)' if c['reused'] else ''}" for size, c in result["corpora"].items()))
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON file for the results (required unless --child)")
    parser.add_argument("--sizes", type=_int_list, help="corpus sizes for the memory and cost-growth figures; the "
                        "smallest also gives the throughput figures (default 2000,6000,20000)")
    parser.add_argument("--workers", type=_int_list, default=[0, 1, 2], help="num_workers to measure (default 0,1,2)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench/loader"),
                        help="where corpora are written once and reused")
    parser.add_argument("--max-batches", type=int, help="cap on batches per timed pass (default: one full epoch)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: small corpora, small samples, few batches")
    parser.add_argument("--child", type=json.loads, help=argparse.SUPPRESS)  # JSON spec, see measure_memory
    args = parser.parse_args(argv)
    torch.set_num_threads(TORCH_THREADS)

    if args.child:
        print(json.dumps(run_child(args.child)))
        return 0
    if args.out is None:
        parser.error("--out is required")
    if args.quick:
        bench = Bench(sizes=args.sizes or [200, 300, 400], workers=args.workers, work_dir=args.work_dir, channels=16,
                      time_points=64, image_size=32, samples_per_shard=50, batch_size=16, shuffle_buffer=64,
                      max_batches=args.max_batches or 4, warmup_batches=1, repeats=1, synth_workers=1)
    else:
        bench = Bench(sizes=args.sizes or [2000, 6000, 20000], workers=args.workers, work_dir=args.work_dir,
                      max_batches=args.max_batches or 0)
    result = run(bench, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary_table(result))
    print(f"wrote {args.out} ({result['runtime_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
