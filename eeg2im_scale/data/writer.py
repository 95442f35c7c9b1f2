"""Write EEG/image samples to WebDataset tar shards plus a Parquet manifest, in bounded memory.

Shards are written whole, one per task, so a pool of processes can write them in parallel; each
task returns its manifest rows and per-group EEG sums. Group sums (per image split, subject and
block) let the training-split channel statistics of *every* split scheme be computed once the
subject/block assignment is known, without a second pass over the EEG.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from tqdm import tqdm

from .format import encode_image, encode_sample, sample_key
from .splits import SCHEMES, assign_blocks, assign_groups, split_of_image

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
META_KEY = b"eeg2im"
FORMAT_VERSION = 1


@dataclass
class CorpusInfo:
    """What a reader must know about a corpus; stored in the manifest's Parquet metadata."""

    channel_names: list[str]
    sfreq: float
    time_points: int
    class_names: list[str]
    image_format: str = "png"
    image_size: int | None = None  # pre-resize images to this size when writing
    source: str = "unknown"
    attribute_names: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


@dataclass
class RawSample:
    """One trial before encoding. ``meta`` needs ``label``, ``subject`` and ``image_id``; it may
    carry ``session``, ``block`` (defaults: 0 and the subject), ``attributes`` and
    ``release_split`` (a corpus's published split)."""

    index: int
    eeg: np.ndarray
    image: np.ndarray | bytes  # an RGB array, or already-encoded bytes in ``image_format``
    meta: dict


class GroupSums:
    """Float64 per-channel sum, sum of squares and count, per group key."""

    def __init__(self):
        self.groups: dict = {}

    def add(self, group, eeg: np.ndarray) -> None:
        x = eeg.astype(np.float64)
        acc = self.groups.get(group)
        if acc is None:
            acc = self.groups[group] = [np.zeros(x.shape[0]), np.zeros(x.shape[0]), 0]
        acc[0] += x.sum(axis=1)
        acc[1] += np.square(x).sum(axis=1)
        acc[2] += x.shape[1]

    def merge(self, other: "GroupSums") -> None:
        for group, (s, ss, n) in other.groups.items():
            acc = self.groups.setdefault(group, [np.zeros_like(s), np.zeros_like(ss), 0])
            acc[0] += s
            acc[1] += ss
            acc[2] += n

    def moments(self, groups: Iterable) -> dict | None:
        picked = [self.groups[g] for g in groups if g in self.groups]
        if not picked:
            return None
        s = sum(p[0] for p in picked)
        ss = sum(p[1] for p in picked)
        n = sum(p[2] for p in picked)
        mean = s / n
        std = np.sqrt(np.maximum(ss / n - mean**2, 0.0))
        return {"mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist(), "count": int(n)}


def _row(sample: RawSample, shard: str, info: CorpusInfo, fractions, seed) -> dict:
    meta = sample.meta
    image_id = str(meta["image_id"])
    row = {
        "index": sample.index,
        "key": sample_key(sample.index),
        "shard": shard,
        "label": int(meta["label"]),
        "class_name": meta.get("class_name", info.class_names[int(meta["label"])]),
        "subject": int(meta["subject"]),
        "image_id": image_id,
        "session": int(meta.get("session", 0)),
        "block": int(meta.get("block", meta["subject"])),
        "split_image": split_of_image(image_id, fractions, seed),
        "split_release": meta.get("release_split"),
    }
    for name in info.attribute_names:
        row[f"attr_{name}"] = float(meta.get("attributes", {}).get(name, np.nan))
    return row


def write_shard(path: Path, shard_name: str, samples: Iterable[RawSample], info: CorpusInfo,
                fractions, seed: int) -> tuple[list[dict], GroupSums]:
    """Write one shard atomically (``.tmp`` then rename); return its manifest rows and sums."""
    tmp = path.with_suffix(".tar.tmp")
    try:
        rows, sums = _write_tar(tmp, shard_name, samples, info, fractions, seed)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return rows, sums


def _write_tar(tmp: Path, shard_name: str, samples: Iterable[RawSample], info: CorpusInfo,
               fractions, seed: int) -> tuple[list[dict], GroupSums]:
    rows, sums = [], GroupSums()
    ext = "jpg" if info.image_format in ("jpg", "jpeg") else "png"
    # An integer mtime keeps tarfile from adding a PAX header per member (half the parsing on read)
    # and makes shards byte-reproducible.
    with wds.TarWriter(str(tmp), mtime=0) as sink:
        for sample in samples:
            if isinstance(sample.image, (bytes, bytearray)):
                image_bytes = bytes(sample.image)
            else:
                image_bytes = encode_image(sample.image, ext, info.image_size)
            row = _row(sample, shard_name, info, fractions, seed)
            meta = {**sample.meta, "image_id": row["image_id"], "class_name": row["class_name"],
                    "session": row["session"], "block": row["block"]}
            eeg16 = np.asarray(sample.eeg).astype(np.float16)  # cast once: stored bytes and statistics
            if eeg16.shape != (len(info.channel_names), info.time_points):
                raise ValueError(f"sample {sample.index}: EEG shape {eeg16.shape}, expected "
                                 f"({len(info.channel_names)}, {info.time_points})")
            try:
                record = encode_sample(sample.index, eeg16, image_bytes, ext, meta)
            except ValueError as exc:
                raise ValueError(f"sample {sample.index} (image {row['image_id']}, subject {row['subject']}): "
                                 f"{exc}") from None
            sink.write(record)
            rows.append(row)
            sums.add(("image", row["split_image"]), eeg16)
            sums.add(("subject", row["subject"]), eeg16)
            sums.add(("block", row["block"]), eeg16)
            if row["split_release"] is not None:
                sums.add(("release", row["split_release"]), eeg16)
    return rows, sums


ShardSource = Callable[[], Iterable[RawSample]]


def _run_task(task) -> tuple[list[dict], GroupSums]:
    path, shard_name, source, info, fractions, seed = task
    return write_shard(path, shard_name, source(), info, fractions, seed)


def write_corpus(out_dir: str | Path, info: CorpusInfo, sources: Iterable[ShardSource], *,
                 split_fractions=(0.8, 0.1, 0.1), seed: int = 0, workers: int = 1,
                 num_shards: int | None = None, num_samples: int | None = None, overwrite: bool = False) -> Path:
    """Write one shard per source (in parallel with ``workers`` > 1) and then the manifest. On a
    terminal a progress bar counts samples (with ETA) when ``num_samples`` is given, else shards.

    Refuses to touch an existing corpus unless ``overwrite``: nothing already written is lost.
    """
    out = Path(out_dir)
    manifest = out / MANIFEST
    if manifest.exists() and not overwrite:
        raise FileExistsError(f"{manifest} already exists; choose another --out or pass --overwrite")
    if overwrite and (out / "shards").exists():
        shutil.rmtree(out / "shards")
    created = not out.exists()
    (out / "shards").mkdir(parents=True, exist_ok=True)
    fractions = tuple(split_fractions)

    def tasks() -> Iterator:
        for k, source in enumerate(sources):
            name = f"shards/shard-{k:06d}.tar"
            yield out / name, name, source, info, fractions, seed

    partial_path = out / (MANIFEST + ".rows.tmp")
    sums = GroupSums()
    block_subject: dict = {}
    writer = None
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    failed = True
    try:
        results = pool.imap(_run_task, tasks()) if pool else map(_run_task, tasks())
        progress = tqdm(total=num_samples if num_samples else num_shards, desc="writing shards",
                        unit="sample" if num_samples else "shard", disable=None)
        for rows, shard_sums in results:
            progress.update(len(rows) if num_samples else 1)
            sums.merge(shard_sums)
            for row in rows:
                block_subject[row["block"]] = row["subject"]
            table = pa.Table.from_pylist(rows, schema=_schema(info))
            writer = writer or pq.ParquetWriter(partial_path, table.schema)
            writer.write_table(table)
        progress.close()
        failed = False
    finally:
        if pool:
            pool.close()
            pool.join()
        if writer:
            writer.close()
        if failed:  # a bad sample found while writing: leave no partial corpus behind
            partial_path.unlink(missing_ok=True)
            shutil.rmtree(out / "shards", ignore_errors=True)
            if created:
                shutil.rmtree(out, ignore_errors=True)
    if writer is None:
        raise ValueError("no samples were written")
    _finish_manifest(out, partial_path, info, sums, block_subject, fractions, seed)
    columns = [f"split_{scheme}" for scheme in ("image", "subject", "block")]
    for problem in empty_splits(pq.read_table(manifest, columns=columns).to_pydict()):
        log.warning("%s: %s; a run with that data.split_by will refuse it (more samples, images or subjects, "
                    "or other --split-fractions, fix it)", manifest, problem)
    return manifest


def empty_splits(split_columns: dict[str, list]) -> list[str]:
    """``split scheme 'X' has no Y samples`` for each empty split of the given ``split_<scheme>``
    columns: a tiny corpus can leave a split empty, which only the first run would otherwise find."""
    return [f"split scheme '{name.removeprefix('split_')}' has no {split} samples"
            for name, values in split_columns.items() for split in ("train", "val", "test") if split not in values]


def _schema(info: CorpusInfo) -> pa.Schema:
    columns = [("index", pa.int64()), ("key", pa.string()), ("shard", pa.string()), ("label", pa.int32()),
               ("class_name", pa.string()), ("subject", pa.int32()), ("image_id", pa.string()),
               ("session", pa.int32()), ("block", pa.int32()), ("split_image", pa.string()),
               ("split_release", pa.string())]
    columns += [(f"attr_{name}", pa.float32()) for name in info.attribute_names]
    return pa.schema(columns)


def _finish_manifest(out: Path, partial_path: Path, info: CorpusInfo, sums: GroupSums,
                     block_subject: dict, fractions, seed: int) -> None:
    """Add the subject/block split columns and the statistics, then publish atomically."""
    subject_split = assign_groups(set(block_subject.values()), fractions, seed)
    block_split = assign_blocks(block_subject, fractions, seed)
    groups = {
        "image": [("image", "train")],
        "subject": [("subject", s) for s, split in subject_split.items() if split == "train"],
        "block": [("block", b) for b, split in block_split.items() if split == "train"],
        "release": [("release", "train")],
    }
    stats = {scheme: sums.moments(groups[scheme]) for scheme in SCHEMES}
    meta = {"format_version": FORMAT_VERSION, **asdict(info),
            "eeg_stats": {k: v for k, v in stats.items() if v is not None},
            "split_fractions": list(fractions), "split_seed": seed}
    source = pq.ParquetFile(partial_path)
    schema = source.schema_arrow
    schema = schema.insert(schema.get_field_index("split_image") + 1, pa.field("split_subject", pa.string()))
    schema = schema.insert(schema.get_field_index("split_subject") + 1, pa.field("split_block", pa.string()))
    schema = schema.with_metadata({META_KEY: json.dumps(meta).encode()})
    final_tmp = out / (MANIFEST + ".tmp")
    with pq.ParquetWriter(final_tmp, schema) as writer:
        for i in range(source.num_row_groups):
            table = source.read_row_group(i)
            subjects = table.column("subject").to_pylist()
            blocks = table.column("block").to_pylist()
            columns = {name: table.column(name) for name in table.column_names}
            columns["split_subject"] = pa.array([subject_split[s] for s in subjects], pa.string())
            columns["split_block"] = pa.array([block_split[b] for b in blocks], pa.string())
            writer.write_table(pa.table([columns[name] for name in schema.names], schema=schema))
    os.replace(final_tmp, out / MANIFEST)
    partial_path.unlink()
