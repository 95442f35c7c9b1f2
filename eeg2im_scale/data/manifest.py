"""Read a corpus manifest: which samples and shards belong to a split, and the EEG statistics."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .format import load_npy, read_shard
from .remote import RemoteOptions, is_url, join, local_copy
from .splits import SCHEMES, SPLITS, Scheme, parse_scheme
from .writer import MANIFEST, META_KEY, GroupSums

log = logging.getLogger(__name__)
STATS_CACHE = "eeg_stats"  # <corpus>/eeg_stats/: statistics of protocol schemes, computed on first use
REWRITE = "re-write the corpus (`eeg2im synth --out DIR --overwrite` or `eeg2im convert ... --overwrite`)"


@dataclass(frozen=True)
class ShardEntry:
    path: str
    in_split: int  # samples of the requested split in this shard
    total: int  # all samples in this shard (to detect truncation)


def remote_options(data) -> RemoteOptions:
    """A ``DataConfig``'s settings for a corpus at a URL."""
    return RemoteOptions(data.cache_dir, data.cache_max_gb, data.retries)


def read_info(path: Path) -> dict:
    """The corpus metadata stored in a manifest's Parquet schema (read without any column)."""
    try:
        raw_meta = (pq.read_schema(path).metadata or {}).get(META_KEY)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path}: not a readable Parquet file, truncated or corrupt ({type(exc).__name__}); "
                         f"{REWRITE}") from None
    if raw_meta is None:
        raise ValueError(f"{path}: not an eeg2im manifest (no '{META_KEY.decode()}' metadata)")
    return json.loads(raw_meta)


class Manifest:
    """The manifest's metadata plus the few columns the loader needs, held as compact arrays.

    ``classes`` (``data.classes``) restricts every split to a class subset, relabelled 0..k-1 in
    the given order; ``class_names``, ``label_map`` and ``class_subset`` describe the result.
    """

    def __init__(self, root: str | Path, classes: list[str] | None = None, remote: RemoteOptions | None = None):
        self.remote = remote or RemoteOptions()
        if is_url(str(root)):  # read from a local copy; shards stay at the URL
            self.root = str(root)
            self.path = local_copy(self.root, MANIFEST, self.remote.cache_dir, self.remote.retries)
            self.cache_folder = self.path.parent
        else:
            self.root = Path(root)
            self.path = self.root / MANIFEST
            self.cache_folder = self.root
        if not self.path.is_file():
            raise FileNotFoundError(
                f"no corpus at {self.root}: {self.path} is missing. Write one with "
                f"`eeg2im synth --out {self.root}` (or a converter), or set data.synthesize: true")
        self.info: dict = read_info(self.path)
        split_columns = [f"split_{s}" for s in SCHEMES]
        self._columns = pq.read_table(self.path, columns=["index", "shard", "label", "subject", *split_columns],
                                      read_dictionary=["shard", *split_columns])
        self.num_samples = self._columns.num_rows
        index = self._columns.column("index").to_numpy()
        if index.min() < 0 or len(np.unique(index)) != len(index):
            raise ValueError(f"{self.path}: column 'index' must hold distinct non-negative integers")
        self._index = index
        self._select_classes(classes)

    @classmethod
    def for_data(cls, data) -> Manifest:
        """The manifest as a ``DataConfig`` sees it (its root, class subset and remote options)."""
        return cls(data.root, data.classes, remote_options(data))

    def _select_classes(self, classes: list[str] | None) -> None:
        all_names = list(self.info["class_names"])
        if classes is None:
            self.class_names, source = all_names, list(range(len(all_names)))
        else:
            unknown = [c for c in classes if c not in all_names]
            if unknown:
                raise ValueError(f"{self.path}: data.classes names {unknown}, which this corpus does not hold; "
                                 f"its classes are: {', '.join(all_names[:50])}{' ...' if len(all_names) > 50 else ''}")
            self.class_names, source = list(classes), [all_names.index(c) for c in classes]
        self.label_map = np.full(len(all_names), -1, dtype=np.int64)  # source label -> label, -1: excluded
        self.label_map[source] = np.arange(len(source))
        self.class_subset = None if classes is None else {"class_names": self.class_names, "source_labels": source}
        labels = self._columns.column("label").to_numpy()
        if labels.min() < 0 or labels.max() >= len(all_names):
            raise ValueError(f"{self.path}: column 'label' must index the {len(all_names)} class_names")
        self._in_classes = self.label_map[labels] >= 0

    @property
    def eeg_shape(self) -> tuple[int, int]:
        return len(self.info["channel_names"]), int(self.info["time_points"])

    @property
    def selected_info(self) -> dict:
        """The corpus metadata with ``class_names`` narrowed to the selected classes."""
        return {**self.info, "class_names": self.class_names}

    @property
    def attribute_names(self) -> list[str]:
        return list(self.info.get("attribute_names", []))

    def available_schemes(self) -> list[str]:
        """The stored schemes this corpus records (``loso:`` / ``heldout:`` are derived from them)."""
        return [s for s in SCHEMES if self._columns.column(f"split_{s}").null_count < self.num_samples]

    @property
    def subjects(self) -> list[int]:
        return sorted(int(s) for s in np.unique(self._columns.column("subject").to_numpy()))

    def _parse(self, scheme: str) -> Scheme:
        """``scheme`` parsed and checked against this corpus."""
        parsed = parse_scheme(scheme)
        needed = parsed.kind if parsed.column else parsed.base or "image"
        if needed not in self.available_schemes():
            problem = "is not recorded in this corpus" if parsed.column else f"needs the '{needed}' scheme, not recorded here"
            raise ValueError(f"{self.path}: split scheme '{scheme}' {problem}; "
                             f"available: {', '.join(self.available_schemes())}")
        if parsed.subject is not None and parsed.subject not in self.subjects:
            raise ValueError(f"{self.path}: split scheme '{scheme}' names subject {parsed.subject}; this corpus's "
                             f"subjects are {self.subjects}")
        unknown = [c for c in parsed.classes if c not in self.info["class_names"]]
        if unknown:
            raise ValueError(f"{self.path}: split scheme '{scheme}' names classes {unknown} this corpus does not hold")
        return parsed

    def _rows_in(self, scheme: str, split: str) -> np.ndarray:
        """Per manifest row: in ``split`` of ``scheme``, before any class subset."""
        parsed = self._parse(scheme)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if parsed.column is not None:
            return self._column_is(parsed.column, split)
        if parsed.kind in ("intra", "inter"):
            subject = self._columns.column("subject").to_numpy() == parsed.subject
            in_split = self._column_is(f"split_{parsed.base}", split)
            # inter: the subject's test trials against a model of the others' training and validation trials
            return in_split & (subject if parsed.kind == "intra" or split == "test" else ~subject)
        if parsed.kind == "loso":
            held_out = self._columns.column("subject").to_numpy() == parsed.subject
        else:
            names = list(self.info["class_names"])
            held_out = np.isin(self._columns.column("label").to_numpy(), [names.index(c) for c in parsed.classes])
        if split == "test":
            return held_out
        image_val = self._column_is("split_image", "val")
        if parsed.kind == "loso":  # the other subjects' trials: val images to val, the rest to train
            return ~held_out & (image_val if split == "val" else ~image_val)
        return ~held_out & self._column_is("split_image", split)  # their test images stay out

    def _column_is(self, column: str, split: str) -> np.ndarray:
        return pc.equal(self._columns.column(column), split).fill_null(False).to_numpy(zero_copy_only=False)

    def _mask(self, rows: np.ndarray) -> np.ndarray:
        """A per-row selection as a boolean mask indexed by sample index."""
        mask = np.zeros(int(self._index.max()) + 1, dtype=bool)
        mask[self._index] = rows
        return mask

    def membership(self, scheme: str, split: str) -> np.ndarray:
        """Boolean mask indexed by sample index: True where the sample belongs to the split."""
        return self._mask(self._rows_in(scheme, split) & self._in_classes)

    def _shards_of(self, mask: np.ndarray) -> list[ShardEntry]:
        shard_col = self._columns.column("shard").combine_chunks()
        codes = shard_col.indices.to_numpy(zero_copy_only=False)
        names = shard_col.dictionary.to_pylist()
        totals = np.bincount(codes, minlength=len(names))
        in_split = np.bincount(codes, weights=mask[self._index], minlength=len(names)).astype(int)
        entries = [ShardEntry(join(str(self.root), names[c]), int(in_split[c]), int(totals[c]))
                   for c in range(len(names)) if in_split[c] > 0]
        return sorted(entries, key=lambda e: e.path)

    def shards(self, scheme: str, split: str) -> list[ShardEntry]:
        """Shards (sorted) that hold at least one sample of the split, with their counts."""
        entries = self._shards_of(self.membership(scheme, split))
        if not entries:
            raise ValueError(f"{self.path}: split '{split}' of scheme '{scheme}' is empty")
        # a URL's shards are checked when streamed (a listing per shard would cost a request each)
        missing = [] if is_url(str(self.root)) else [e.path for e in entries if not os.path.isfile(e.path)]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: shard listed in {self.path} is missing"
                                    f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; {REWRITE}")
        return entries

    def count(self, scheme: str, split: str) -> int:
        return int(self.membership(scheme, split).sum())

    @cached_property
    def _image_ids(self) -> np.ndarray:
        return np.asarray(pq.read_table(self.path, columns=["image_id"]).column("image_id").to_pylist(), dtype=object)

    def image_ids(self, scheme: str, split: str) -> set[str]:
        """The distinct images whose trials are in the split."""
        return set(self._image_ids[self._rows_in(scheme, split) & self._in_classes])

    def labels(self, scheme: str, split: str) -> np.ndarray:
        """The split's labels as training sees them (0..k-1 under ``data.classes``)."""
        rows = self._rows_in(scheme, split) & self._in_classes
        return self.label_map[self._columns.column("label").to_numpy()[rows]]

    def shuffled_image_labels(self, scheme: str, seed: int) -> dict[str, int]:
        """The training images' labels, permuted across those images (seeded): the shuffled-label
        control. Per image, not per trial, so every trial of an image keeps one (wrong) label and
        the image teacher can still be fitted; class frequencies are kept."""
        rows = self._rows_in(scheme, "train") & self._in_classes
        images, first = np.unique(self._image_ids[rows], return_index=True)
        labels = self.label_map[self._columns.column("label").to_numpy()[rows][first]]
        permuted = np.random.default_rng(seed).permutation(labels)
        return dict(zip(images.tolist(), permuted.tolist()))

    def eeg_stats(self, scheme: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean/std of the scheme's training split (every class, also under
        ``data.classes``), for z-scoring. Stored schemes read them from the manifest, written with
        the corpus; protocol schemes compute them once from their training trials (never from
        their held-out subject or classes) and cache them in ``<corpus>/eeg_stats/``."""
        if parse_scheme(scheme).column is None:
            return self._protocol_stats(scheme)
        stats = self.info.get("eeg_stats", {}).get(scheme)
        if stats is None:
            raise ValueError(f"{self.path}: no EEG statistics for split scheme '{scheme}'")
        return np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)

    def _protocol_stats(self, scheme: str) -> tuple[np.ndarray, np.ndarray]:
        """One pass over the training trials' EEG (float64 sums of the stored float16 values, as
        the writer computes the stored statistics), cached with the manifest's size and mtime so a
        rewritten corpus is never normalised with stale numbers. An unwritable corpus directory
        only costs the cache."""
        stat = self.path.stat()
        fingerprint = [stat.st_size, stat.st_mtime_ns]
        cache = self.cache_folder / STATS_CACHE / f"{hashlib.sha256(scheme.encode()).hexdigest()[:16]}.json"
        if cache.is_file():
            cached = json.loads(cache.read_text())
            if cached["scheme"] == scheme and cached["manifest"] == fingerprint:
                return np.asarray(cached["mean"], np.float32), np.asarray(cached["std"], np.float32)
        mask = self._mask(self._rows_in(scheme, "train"))
        sums = GroupSums()
        for entry in self._shards_of(mask):
            for raw in read_shard(entry.path, entry.total, keep=lambda key: bool(mask[int(key)]),
                                  opener=self.remote.open):
                sums.add("train", load_npy(raw["eeg.npy"]))
        moments = sums.moments(["train"])
        if moments is None:
            raise ValueError(f"{self.path}: split scheme '{scheme}' has no training trials")
        try:
            cache.parent.mkdir(exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"scheme": scheme, "manifest": fingerprint, **moments}))
            tmp.replace(cache)
        except OSError as exc:
            log.warning("could not cache the EEG statistics of '%s' in %s (%s); they are recomputed next time",
                        scheme, cache.parent, exc)
        return np.asarray(moments["mean"], np.float32), np.asarray(moments["std"], np.float32)

    def read(self, columns: list[str] | None = None):
        """The full manifest as a pyarrow Table (for evaluation and reports)."""
        return pq.read_table(self.path, columns=columns)
