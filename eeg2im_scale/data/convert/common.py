"""What every converter shares: safe loaders, image lookup, the length/window rule, class subsets,
the sharding of a validated trial index into picklable shard sources, and the end-of-run summary.

A converter first builds the whole trial index (every key, shape, label and image path checked),
so a malformed release fails before any shard exists; only then are shards written.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image

from ..manifest import Manifest
from ..splits import SCHEMES, SPLITS
from ..writer import MANIFEST, CorpusInfo, RawSample, write_corpus

PIL_FORMAT = {"jpg": "JPEG", "png": "PNG"}


class ConvertError(ValueError):
    """A defect in a source file; the message names the file and, where known, the trial and field."""

    def __init__(self, path, problem: str, where: str | None = None, field: str | None = None):
        parts = [str(path)] + ([where] if where else []) + ([f"field {field}"] if field else [])
        super().__init__(": ".join(parts + [problem]))


@dataclass
class ConvertOptions:
    """The options every converter takes (``eeg2im convert ... --help``)."""

    out: str | Path
    overwrite: bool = False
    workers: int = 1
    samples_per_shard: int = 256
    image_size: int | None = None  # None keeps the original size (and JPEG bytes)
    image_format: str = "jpg"
    classes: list[str] | None = None
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self):
        if self.image_format not in PIL_FORMAT:
            raise ValueError(f"--image-format must be jpg or png, got {self.image_format!r}")
        if self.samples_per_shard < 1 or self.workers < 1 or (self.image_size or 1) < 1:
            raise ValueError("--samples-per-shard, --workers and --image-size must be at least 1")
        fractions = tuple(float(f) for f in self.split_fractions)
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"--split-fractions must be three non-negative numbers summing to 1, got {fractions}")
        self.split_fractions = fractions

    def check_out(self) -> None:
        """Fail before the (long) validation rather than after it."""
        manifest = Path(self.out) / MANIFEST
        if manifest.exists() and not self.overwrite:
            raise FileExistsError(f"{manifest} already exists; choose another --out or pass --overwrite")


class Trial(NamedTuple):
    """One sample to write: ``ref`` tells the converter's reader where its EEG is (``ref[0]`` is
    the source file, so shards never mix files); ``meta`` is the writer's (label, subject, ...)."""

    ref: tuple
    image: str
    meta: dict


# --- safe loading -----------------------------------------------------------------------------

def load_torch(path) -> object:
    """``torch.load`` restricted to tensors and plain containers: an arbitrary pickle can run code."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        raise ConvertError(path, "contains arbitrary Python objects (not only tensors, lists, dicts, strings and "
                                 f"numbers{'; found ' + found.group(1) if found else ''}); it is refused, because "
                                 "unpickling such objects can execute code. Re-save its plain contents from a "
                                 "trusted environment.") from None
    except Exception as exc:
        raise ConvertError(path, f"not a readable torch file ({type(exc).__name__}: {exc})") from None


def _npy_dtype(path) -> np.dtype:
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise ValueError(f"unsupported .npy version {version}")
            return read[version](f)[2]
        except ValueError as exc:
            raise ConvertError(path, f"not a .npy file ({exc})") from None


def load_npy(path, *, allow_pickle: bool = False, refusal: str = "pass --allow-pickle if you trust its source"):
    """A numeric .npy memory-mapped (nothing read until used); a pickled one (object dtype, e.g.
    ``np.save`` of a dict) fully loaded, and only when ``allow_pickle``: unpickling can execute code."""
    if _npy_dtype(path).hasobject:
        if not allow_pickle:
            raise ConvertError(path, f"holds pickled Python objects, and unpickling a file can execute arbitrary "
                                     f"code; it is read only on request: {refusal}")
        return np.load(path, allow_pickle=True)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def load_pickled_dict(path, allow_pickle: bool, keys: Sequence[str]) -> dict:
    """A file written by ``np.save(path, some_dict)``, checked to hold ``keys``."""
    array = load_npy(path, allow_pickle=allow_pickle)
    value = array.item() if array.dtype == object and array.shape == () else None
    if not isinstance(value, dict):
        raise ConvertError(path, f"expected a pickled dict (np.save of a dict), found an array of dtype "
                                 f"{array.dtype} and shape {array.shape}")
    require_keys(path, value, keys)
    return value


def require_keys(path, mapping, keys: Sequence[str], where: str | None = None) -> None:
    if not isinstance(mapping, dict):
        raise ConvertError(path, f"expected a dict, found {type(mapping).__name__}", where)
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise ConvertError(path, f"missing key(s) {missing} (present: {sorted(map(str, mapping))})", where)


@lru_cache(maxsize=1)
def _cached(loader: Callable, path: str, stamp: tuple, args: tuple):
    return loader(path, *args)


def load_cached(loader: Callable, path, *args):
    """``loader(path, *args)``, holding one file per process: shard sources reading trials one by
    one load it once, workers forked after validation inherit the parent's copy, and the file's
    (mtime, size) stamp keeps a rewritten file from being served stale."""
    stat = os.stat(path)
    return _cached(loader, str(path), (stat.st_mtime_ns, stat.st_size), args)


@dataclass(frozen=True)
class TorchTrialReader:
    """One trial's EEG, windowed, from a torch release file holding ``{"dataset": [{field: tensor}]}``
    (both EEG-ImageNet releases); picklable, so shard-writer processes can read trials themselves."""

    field: str
    window: tuple[int, int]

    def __call__(self, ref: tuple) -> np.ndarray:
        path, i = ref
        eeg = load_cached(load_torch, path)["dataset"][i][self.field]
        return eeg[:, self.window[0]:self.window[1]].float().numpy()


def as_int(value) -> int | None:
    """A Python int, or a one-element integer tensor (as some re-saved copies hold), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if hasattr(value, "numel") and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    return None


# --- EEG helpers --------------------------------------------------------------------------------

def placeholder_channels(n: int) -> list[str]:
    """Names for releases that publish none ("ch001", ...): positions, not electrode sites."""
    return [f"ch{i + 1:03d}" for i in range(n)]


def parse_window(text: str) -> tuple[int, int]:
    """``"20:460"`` → (20, 460), a [start, stop) sample range."""
    try:
        start, stop = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--window must be START:STOP in samples, e.g. 20:460, got {text!r}") from None
    if not 0 <= start < stop:
        raise ValueError(f"--window needs 0 <= START < STOP, got {text!r}")
    return start, stop


def drop_reason(length: int, window: tuple[int, int], bounds: tuple[int, int] | None = None) -> str | None:
    """Why a trial of ``length`` samples is not kept (None: kept). ``bounds`` is the accepted
    length range of the release's own loaders; the window must also fit."""
    if bounds and length < bounds[0]:
        return f"length < {bounds[0]}"
    if bounds and length > bounds[1]:
        return f"length > {bounds[1]}"
    if length < window[1]:
        return f"shorter than window end {window[1]}"
    return None


def check_eeg_array(path, array: np.ndarray, layout: str, field: str | None = None) -> None:
    """``array`` has one axis per name in ``layout`` (e.g. "trials, channels, time") and real values."""
    if array.ndim != len(layout.split(",")):
        raise ConvertError(path, f"shape {array.shape}, expected [{layout}]", field=field)
    if array.dtype.kind not in "fiu":
        raise ConvertError(path, f"dtype {array.dtype}, expected a real number type (float or int)", field=field)


# --- labels and images --------------------------------------------------------------------------

def select_classes(trials: list[Trial], class_names: list[str], subset: Sequence[str] | None
                   ) -> tuple[list[Trial], list[str], dict | None]:
    """Keep the trials of ``subset`` (class names, in the given order) and re-index labels 0..k-1;
    returns the ``class_subset`` record for the manifest (None when no subset is asked)."""
    if not subset:
        return trials, class_names, None
    position = {name: i for i, name in enumerate(class_names)}
    unknown = [c for c in subset if c not in position]
    if unknown or len(set(subset)) != len(subset):
        raise ValueError(f"--classes: {'unknown class(es) ' + str(unknown) if unknown else 'repeated names'}; "
                         f"the corpus has {len(class_names)} classes, e.g. {class_names[:5]}")
    source = [position[c] for c in subset]
    new = {old: k for k, old in enumerate(source)}
    kept = [t._replace(meta={**t.meta, "label": new[t.meta["label"]]}) for t in trials if t.meta["label"] in new]
    return kept, list(subset), {"source_labels": source, "class_names": list(subset)}


def find_image(root, candidates: Sequence[str]) -> Path | None:
    """The first of ``candidates`` (paths relative to ``root``) that exists."""
    return next((Path(root) / c for c in candidates if (Path(root) / c).is_file()), None)


def resolve_images(trials: list[Trial], root, candidates: Callable[[Trial], list[str]],
                   where: Callable[[Trial], str]) -> list[Trial]:
    """``trials`` with each image name replaced by its path: the first of ``candidates(trial)``
    (relative to ``root``) that exists, else a ConvertError naming the trial (``where``)."""
    paths: dict[str, str] = {}
    resolved = []
    for t in trials:
        if t.image not in paths:
            tried = list(dict.fromkeys(candidates(t)))
            path = find_image(root, tried)
            if path is None:
                raise ConvertError(root, f"image {t.image!r} not found (looked for {', '.join(tried)})", where(t),
                                   "image")
            paths[t.image] = str(path)
        resolved.append(t._replace(image=paths[t.image]))
    return resolved


def check_images(paths) -> None:
    """Every distinct image opens (header only): a bad file fails before any shard is written."""
    for path in dict.fromkeys(paths):
        try:
            with Image.open(path):
                pass
        except Exception as exc:
            raise ConvertError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None


def load_image(path: str, image_format: str, size: int | None) -> bytes | np.ndarray:
    """The file's own bytes when they already are what the corpus stores (its format, no resize),
    so photographs are not recompressed; otherwise RGB pixels for the writer to encode."""
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as pil:
        if size is None and pil.format == PIL_FORMAT[image_format]:
            return data
        return np.asarray(pil.convert("RGB"))


# --- writing ------------------------------------------------------------------------------------

class TrialShard:
    """A picklable shard source: ``trials`` numbered from ``start``, EEG read by ``reader(ref)``."""

    def __init__(self, reader: Callable[[tuple], np.ndarray], start: int, trials: list[Trial],
                 image_format: str, image_size: int | None):
        self.reader, self.start, self.trials = reader, start, trials
        self.image_format, self.image_size = image_format, image_size

    def __call__(self) -> Iterator[RawSample]:
        for k, trial in enumerate(self.trials):
            image = load_image(trial.image, self.image_format, self.image_size)
            yield RawSample(self.start + k, self.reader(trial.ref), image, trial.meta)


def shard_ranges(trials: Sequence[Trial], per_shard: int) -> list[tuple[int, int]]:
    """Consecutive ranges of at most ``per_shard`` trials, cut where the source file changes, so a
    shard needs one loaded file (a worker then holds one subject's array at a time)."""
    ranges, start = [], 0
    for i in range(1, len(trials) + 1):
        if i == len(trials) or i - start == per_shard or trials[i].ref[0] != trials[start].ref[0]:
            ranges.append((start, i))
            start = i
    return ranges


def write_trials(trials: list[Trial], info: CorpusInfo, reader: Callable, opts: ConvertOptions) -> Path:
    """Check the images, then write ``trials`` (numbered 0..N-1 in order) as shards and manifest."""
    if not trials:
        raise ValueError("no trials left to write (all dropped or outside --classes)")
    check_images(t.image for t in trials)
    info.image_format, info.image_size = opts.image_format, opts.image_size
    sources = [TrialShard(reader, a, trials[a:b], opts.image_format, opts.image_size)
               for a, b in shard_ranges(trials, opts.samples_per_shard)]
    try:
        return write_corpus(opts.out, info, sources, split_fractions=opts.split_fractions, seed=opts.seed,
                            workers=opts.workers, num_shards=len(sources), num_samples=len(trials),
                            overwrite=opts.overwrite)
    finally:
        _cached.cache_clear()  # a release file can be gigabytes: do not keep it past the conversion


def summary(root) -> str:
    """What was written, read back from the manifest: counts, drops, classes, subjects, splits."""
    manifest = Manifest(root)
    info, extra = manifest.info, manifest.info.get("extra", {})
    table = manifest.read(["label", "subject", "shard", *(f"split_{s}" for s in SCHEMES)]).to_pydict()
    dropped = extra.get("dropped", {})
    subjects = sorted(set(table["subject"]))
    lines = [f"wrote {manifest.num_samples} samples in {len(set(table['shard']))} shards to {manifest.root} "
             f"({len(info['channel_names'])} channels x {info['time_points']} samples at {info['sfreq']:g} Hz)",
             f"dropped {sum(dropped.values())}" + (f": {', '.join(f'{k}: {v}' for k, v in dropped.items())}"
                                                   if dropped else ""),
             f"classes: {len(set(table['label']))} written of {len(info['class_names'])}; "
             f"subjects: {len(subjects)} ({', '.join(map(str, subjects))})"]
    for scheme in SCHEMES:
        counts = Counter(table[f"split_{scheme}"])
        if set(counts) != {None}:
            parts = [f"{s} {counts.get(s, 0)}" for s in SPLITS] + ([f"none {counts[None]}"] if counts[None] else [])
            lines.append(f"split {scheme}: {', '.join(parts)}")
    return "\n".join(lines)
