"""Read a corpus manifest: which samples and shards belong to a split, and the EEG statistics."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .splits import SCHEMES, SPLITS
from .writer import MANIFEST, META_KEY


@dataclass(frozen=True)
class ShardEntry:
    path: str
    in_split: int  # samples of the requested split in this shard
    total: int  # all samples in this shard (to detect truncation)


def read_info(path: Path) -> dict:
    """The corpus metadata stored in a manifest's Parquet schema (read without any column)."""
    raw_meta = (pq.read_schema(path).metadata or {}).get(META_KEY)
    if raw_meta is None:
        raise ValueError(f"{path}: not an eeg2im manifest (no '{META_KEY.decode()}' metadata)")
    return json.loads(raw_meta)


class Manifest:
    """The manifest's metadata plus the few columns the loader needs, held as compact arrays.

    ``classes`` (``data.classes``) restricts every split to a class subset, relabelled 0..k-1 in
    the given order; ``class_names``, ``label_map`` and ``class_subset`` describe the result.
    """

    def __init__(self, root: str | Path, classes: list[str] | None = None):
        self.root = Path(root)
        self.path = self.root / MANIFEST
        if not self.path.is_file():
            raise FileNotFoundError(
                f"no corpus at {self.root}: {self.path} is missing. Write one with "
                f"`eeg2im synth --out {self.root}` (or a converter), or set data.synthesize: true")
        self.info: dict = read_info(self.path)
        split_columns = [f"split_{s}" for s in SCHEMES]
        self._columns = pq.read_table(self.path, columns=["index", "shard", "label", *split_columns],
                                      read_dictionary=["shard", *split_columns])
        self.num_samples = self._columns.num_rows
        index = self._columns.column("index").to_numpy()
        if index.min() < 0 or len(np.unique(index)) != len(index):
            raise ValueError(f"{self.path}: column 'index' must hold distinct non-negative integers")
        self._index = index
        self._select_classes(classes)

    @classmethod
    def for_data(cls, data) -> "Manifest":
        """The manifest as a ``DataConfig`` sees it (its root and class subset)."""
        return cls(data.root, data.classes)

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
        return [s for s in SCHEMES if self._columns.column(f"split_{s}").null_count < self.num_samples]

    def _check(self, scheme: str, split: str) -> None:
        if scheme not in self.available_schemes():
            raise ValueError(f"{self.path}: split scheme '{scheme}' is not recorded in this corpus; "
                             f"available: {', '.join(self.available_schemes())}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")

    def membership(self, scheme: str, split: str) -> np.ndarray:
        """Boolean mask indexed by sample index: True where the sample belongs to the split."""
        self._check(scheme, split)
        selected = pc.equal(self._columns.column(f"split_{scheme}"), split).fill_null(False).to_numpy(zero_copy_only=False)
        selected = selected & self._in_classes
        mask = np.zeros(int(self._index.max()) + 1, dtype=bool)
        mask[self._index] = selected
        return mask

    def shards(self, scheme: str, split: str) -> list[ShardEntry]:
        """Shards (sorted) that hold at least one sample of the split, with their counts."""
        mask = self.membership(scheme, split)
        shard_col = self._columns.column("shard").combine_chunks()
        codes = shard_col.indices.to_numpy(zero_copy_only=False)
        names = shard_col.dictionary.to_pylist()
        totals = np.bincount(codes, minlength=len(names))
        in_split = np.bincount(codes, weights=mask[self._index], minlength=len(names)).astype(int)
        entries = [ShardEntry(str(self.root / names[c]), int(in_split[c]), int(totals[c]))
                   for c in range(len(names)) if in_split[c] > 0]
        if not entries:
            raise ValueError(f"{self.path}: split '{split}' of scheme '{scheme}' is empty")
        return sorted(entries, key=lambda e: e.path)

    def count(self, scheme: str, split: str) -> int:
        return int(self.membership(scheme, split).sum())

    def eeg_stats(self, scheme: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean/std of the scheme's training split, for z-scoring."""
        stats = self.info.get("eeg_stats", {}).get(scheme)
        if stats is None:
            raise ValueError(f"{self.path}: no EEG statistics for split scheme '{scheme}'")
        return np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)

    def read(self, columns: list[str] | None = None):
        """The full manifest as a pyarrow Table (for evaluation and reports)."""
        return pq.read_table(self.path, columns=columns)
