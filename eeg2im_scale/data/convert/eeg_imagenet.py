"""EEG-ImageNet (Spampinato et al., CVPR 2017): 40 ImageNet classes, 6 subjects, 128 channels, 1 kHz.

The release is a torch file (``eeg_5_95_std.pth``, ``eeg_55_95_std.pth``, ``eeg_14_70_std.pth``,
or the raw one that adds ``means``/``stddevs``) holding ``dataset`` (dicts with ``eeg`` [128, T],
``image``, ``label``, ``subject``), ``labels`` (WordNet ids) and ``images`` (names), plus a splits
file holding ``splits``: six {train, val, test} lists of dataset indices.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..splits import SPLITS
from ..writer import CorpusInfo
from .common import (ConvertError, ConvertOptions, TorchTrialReader, Trial, as_int, drop_reason,
                     load_cached, load_torch, placeholder_channels, require_keys, resolve_images, select_classes,
                     write_trials)

SFREQ = 1000.0
LENGTH_BOUNDS = (450, 600)  # what the release's own loaders keep


def _check_trial(path, i: int, entry, n_labels: int, n_images: int, channels: int | None) -> tuple[int, int, int, int]:
    """(label, image, subject, length) of ``dataset[i]``, or a ConvertError naming the field."""
    where = f"dataset[{i}]"
    require_keys(path, entry, ("eeg", "image", "label", "subject"), where)
    eeg = entry["eeg"]
    if not isinstance(eeg, torch.Tensor) or eeg.ndim != 2:
        raise ConvertError(path, f"expected a 2-D tensor [channels, time], found "
                                 f"{getattr(eeg, 'shape', type(eeg).__name__)}", where, "eeg")
    if not eeg.is_floating_point():
        raise ConvertError(path, f"dtype {eeg.dtype}, expected a float tensor", where, "eeg")
    if channels is not None and eeg.shape[0] != channels:
        raise ConvertError(path, f"shape {tuple(eeg.shape)}: {eeg.shape[0]} channels, expected {channels} "
                                 f"like dataset[0]", where, "eeg")
    values = {}
    for field, limit in (("label", n_labels), ("image", n_images), ("subject", None)):
        value = as_int(entry[field])
        if value is None or value < 0 or (limit is not None and value >= limit):
            bound = f"an integer index into the {limit} {field}s" if limit is not None else "a non-negative integer"
            raise ConvertError(path, f"{entry[field]!r} is not {bound}", where, field)
        values[field] = value
    return values["label"], values["image"], values["subject"], int(eeg.shape[1])


def release_band(path: str | Path) -> list[float] | None:
    """The band-pass the release applied, from its file name (``eeg_5_95_std.pth``: [5, 95]), or
    None for the raw release: the drift control needs to know whether any power below 1 Hz is left."""
    match = re.fullmatch(r"eeg_(\d+)_(\d+)_std\.pth", Path(path).name)
    return [float(match[1]), float(match[2])] if match else None


def _release_splits(path, split_index: int, n_trials: int) -> dict[int, str]:
    """dataset index → "train"/"val"/"test" for split ``split_index`` of the splits file."""
    data = load_torch(path)
    require_keys(path, data, ("splits",))
    splits = data["splits"]
    if not isinstance(splits, list):
        raise ConvertError(path, f"expected a list of {{train, val, test}} dicts, found {type(splits).__name__}",
                           field="splits")
    if not 0 <= split_index < len(splits):
        raise ConvertError(path, f"--split-index {split_index} is not one of the {len(splits)} splits", "splits")
    where = f"splits[{split_index}]"
    require_keys(path, splits[split_index], SPLITS, where)
    split_of: dict[int, str] = {}
    for name in SPLITS:
        for pos, value in enumerate(splits[split_index][name]):
            i, at = as_int(value), f"{where}[{name!r}][{pos}]"
            if i is None or not 0 <= i < n_trials:
                raise ConvertError(path, f"{value!r} is not an index into the {n_trials} trials", at)
            if split_of.setdefault(i, name) != name:
                raise ConvertError(path, f"trial {i} is in both {split_of[i]!r} and {name!r}", at)
    return split_of



def convert_eeg_imagenet(eeg: str | Path, splits: str | Path, images: str | Path, opts: ConvertOptions, *,
                         split_index: int = 0, window: tuple[int, int] = (20, 460)) -> Path:
    """Validate the whole release, then write it; returns the manifest path."""
    opts.check_out()
    data = load_cached(load_torch, eeg)  # workers forked later inherit this copy
    require_keys(eeg, data, ("dataset", "labels", "images"))
    dataset, wnids, names = data["dataset"], list(data["labels"]), list(data["images"])
    if not isinstance(dataset, list) or not dataset:
        raise ConvertError(eeg, f"expected a non-empty list of trials, found {type(dataset).__name__}", field="dataset")
    split_of = _release_splits(splits, split_index, len(dataset))

    trials, dropped, channels = [], {}, None
    for i, entry in enumerate(dataset):
        label, image, subject, length = _check_trial(eeg, i, entry, len(wnids), len(names), channels)
        channels = channels or int(entry["eeg"].shape[0])
        reason = drop_reason(length, window, LENGTH_BOUNDS)
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        # One contiguous block per class per subject in the protocol: (subject, class) is the block.
        meta = {"label": label, "subject": subject, "image_id": str(names[image]), "session": 0,
                "block": subject * len(wnids) + label, "release_split": split_of.get(i), "source_index": i}
        trials.append(Trial((str(eeg), i), str(names[image]), meta))
    class_names = [str(w) for w in wnids]
    trials, class_names, subset = select_classes(trials, class_names, opts.classes)
    source_label = subset["source_labels"] if subset else range(len(wnids))

    trials = resolve_images(
        trials, images,
        lambda t: [f"{wnids[source_label[t.meta['label']]]}/{t.image}.JPEG", f"{t.image.split('_')[0]}/{t.image}.JPEG",
                   f"{t.image}.JPEG"],
        lambda t: f"dataset[{t.ref[1]}]")

    info = CorpusInfo(
        channel_names=placeholder_channels(channels), sfreq=SFREQ, time_points=window[1] - window[0],
        class_names=class_names, source="eeg-imagenet",
        extra={"converter": "eeg-imagenet",
               "source_files": {"eeg": str(eeg), "splits": str(splits), "images": str(images)},
               "split_index": split_index, "window": list(window), "length_bounds": list(LENGTH_BOUNDS),
               "dropped": dropped, "trials_in_release": len(dataset),
               "written_without_release_split": sum(t.meta["release_split"] is None for t in trials),
               "has_means_stddevs": "means" in data and "stddevs" in data,
               "bandpass_hz": release_band(eeg),
               "channel_names": "placeholders: the release publishes no channel names",
               "block": "subject * num_source_classes + source label: the protocol shows each class in one "
                        "contiguous block per subject; session is unknown (0)"},
    )
    if subset:
        info.extra["class_subset"] = subset
    return write_trials(trials, info, TorchTrialReader("eeg", window), opts)
