"""Any corpus given as an EEG array [N, channels, time] plus a table of N rows (row i: trial i).

The array is a ``.npy`` (memory-mapped) or a ``.npz`` with key ``eeg`` and optionally
``ch_names`` and ``sfreq`` (loaded whole: a zip member cannot be memory-mapped). Table columns:
``image`` (path relative to --images), ``label`` (integer or class name), ``subject`` (integer),
and optionally ``block``, ``session`` (integers) and ``split`` (train/val/test: the release split).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..splits import SPLITS
from ..writer import CorpusInfo
from .common import (ConvertError, ConvertOptions, Trial, check_eeg_array, load_cached, load_npy,
                     placeholder_channels, select_classes, write_trials)

NPZ_KEY = "eeg"
REQUIRED = ("image", "label", "subject")
INTEGER_COLUMNS = ("subject", "block", "session")


def _npz(path, keys: tuple[str, ...]) -> dict:
    """Those of ``keys`` a .npz holds (never pickles; members are read only when asked for)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if NPZ_KEY not in npz.files:
                raise ConvertError(path, f"missing key {NPZ_KEY!r} (present: {npz.files})")
            return {k: npz[k] for k in keys if k in npz.files}
    except ConvertError:
        raise
    except ValueError as exc:  # object arrays: a pickle inside the zip
        raise ConvertError(path, f"holds pickled objects, which are never loaded (unpickling can execute code); "
                                 f"store plain numeric/string arrays ({exc})") from None
    except Exception as exc:
        raise ConvertError(path, f"not a readable .npz file ({type(exc).__name__}: {exc})") from None


def _eeg(path) -> np.ndarray:
    if Path(path).suffix == ".npz":
        return _npz(path, (NPZ_KEY,))[NPZ_KEY]
    return load_npy(path, refusal="the arrays converter reads plain numeric arrays only")


def read_table(path: Path) -> pa.Table:
    try:
        if path.suffix == ".csv":
            import pyarrow.csv as pacsv

            types = {"image": pa.string(), "split": pa.string()}
            return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
        if path.suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ConvertError(path, f"not a readable table ({exc})") from None
    raise ConvertError(path, "expected a .csv or .parquet table")


def _is_string(column) -> bool:
    return pa.types.is_string(column.type) or pa.types.is_large_string(column.type)


def _column(path, table: pa.Table, name: str, integer: bool) -> list:
    """A column's values: integers or strings, none missing."""
    column = table.column(name)
    if not (pa.types.is_integer(column.type) if integer else _is_string(column)):
        raise ConvertError(path, f"type {column.type}, expected {'integers' if integer else 'strings'}", field=name)
    values = column.to_pylist()
    if None in values:
        raise ConvertError(path, "empty value", f"row {values.index(None)}", name)
    return values


def _labels(path, table: pa.Table) -> tuple[list[int], list[str]]:
    """Integer labels (class names "0".."max") or class-name strings (sorted names → 0..k-1)."""
    column = table.column("label")
    if pa.types.is_integer(column.type):
        labels = _column(path, table, "label", True)
        bad = next((r for r, v in enumerate(labels) if v < 0), None)
        if bad is not None:
            raise ConvertError(path, f"label {labels[bad]} out of range (labels are >= 0)", f"row {bad}", "label")
        return labels, [str(i) for i in range(max(labels) + 1)]
    if _is_string(column):
        names = _column(path, table, "label", False)
        class_names = sorted(set(names))
        index = {n: i for i, n in enumerate(class_names)}
        return [index[n] for n in names], class_names
    raise ConvertError(path, f"type {column.type}, expected integers or class-name strings", field="label")


@dataclass(frozen=True)
class _Reader:
    def __call__(self, ref: tuple) -> np.ndarray:
        path, i = ref
        return np.asarray(load_cached(_eeg, path)[i], dtype=np.float32)


def convert_arrays(eeg: str | Path, table: str | Path, images: str | Path, opts: ConvertOptions, *,
                   sfreq: float | None = None, channels: list[str] | None = None) -> Path:
    """Validate array, table and images, then write; returns the manifest path."""
    opts.check_out()
    eeg, table_path, images = Path(eeg), Path(table), Path(images)
    array = load_cached(_eeg, eeg)  # workers forked later inherit it
    check_eeg_array(eeg, array, "trials, channels, time", field=NPZ_KEY if eeg.suffix == ".npz" else None)
    carried = _npz(eeg, ("ch_names", "sfreq")) if eeg.suffix == ".npz" else {}
    channel_names = channels or [str(c) for c in carried.get("ch_names", [])] or placeholder_channels(array.shape[1])
    if len(channel_names) != array.shape[1]:
        raise ConvertError(eeg, f"{array.shape[1]} channels, but {len(channel_names)} channel names were given")
    sfreq = sfreq or (float(carried["sfreq"]) if carried.get("sfreq", np.empty(0)).size == 1 else None)
    if not sfreq or sfreq <= 0:
        raise ConvertError(eeg, "carries no sampling rate (npz key 'sfreq'); pass --sfreq")

    rows = read_table(table_path)
    missing = [c for c in REQUIRED if c not in rows.column_names]
    if missing:
        raise ConvertError(table_path, f"missing column(s) {missing} (present: {rows.column_names}); required: "
                                       f"{', '.join(REQUIRED)}; optional: block, session, split")
    if rows.num_rows != array.shape[0]:
        raise ConvertError(table_path, f"{rows.num_rows} rows, but {eeg} holds {array.shape[0]} trials")
    labels, class_names = _labels(table_path, rows)
    columns = {c: _column(table_path, rows, c, True) for c in INTEGER_COLUMNS if c in rows.column_names}
    splits = rows.column("split").to_pylist() if "split" in rows.column_names else [None] * rows.num_rows
    bad = next((r for r, s in enumerate(splits) if s not in (None, "", *SPLITS)), None)
    if bad is not None:
        raise ConvertError(table_path, f"{splits[bad]!r} is not one of {', '.join(SPLITS)} (or empty)",
                           f"row {bad}", "split")
    # Block values may repeat across subjects; the writer needs corpus-wide ids, so number the pairs.
    pairs = sorted(set(zip(columns["subject"], columns["block"], strict=True))) if "block" in columns else []
    block_id = {pair: i for i, pair in enumerate(pairs)}

    trials = []
    for r, (image, label) in enumerate(zip(_column(table_path, rows, "image", False), labels, strict=True)):
        meta = {"label": label, "subject": columns["subject"][r], "image_id": image,
                "session": columns["session"][r] if "session" in columns else 0, "release_split": splits[r] or None,
                "source_index": r}
        if pairs:
            meta["block"] = block_id[columns["subject"][r], columns["block"][r]]
        trials.append(Trial((str(eeg), r), image, meta))
    trials, class_names, subset = select_classes(trials, class_names, opts.classes)
    for k, t in enumerate(trials):
        if not (images / t.image).is_file():
            raise ConvertError(table_path, f"image {t.image!r} not found under {images}", f"row {t.ref[1]}", "image")
        trials[k] = t._replace(image=str(images / t.image))

    info = CorpusInfo(
        channel_names=channel_names, sfreq=float(sfreq), time_points=int(array.shape[2]), class_names=class_names,
        source="arrays",
        extra={"converter": "arrays",
               "source_files": {"eeg": str(eeg), "table": str(table_path), "images": str(images)},
               "dropped": {},
               "labels": "integers" if pa.types.is_integer(rows.column("label").type) else "class names, sorted",
               "channel_names": "--channels" if channels else "file" if "ch_names" in carried else "placeholders",
               "blocks": [list(p) for p in pairs], "block": "position of (subject, block) in 'blocks'"},
    )
    if subset:
        info.extra["class_subset"] = subset
    return write_trials(trials, info, _Reader(), opts)
