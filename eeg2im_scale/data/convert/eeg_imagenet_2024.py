"""EEG-ImageNet (Zhu et al. 2024, arXiv 2406.07151): 16 subjects, 80 ImageNet classes (40 coarse,
40 fine) × 50 images, 62 channels at 1 kHz, 63 850 trials.

Release layout, verified against the authors' repository (github.com/Promise-Z5Q2SQ/EEG-ImageNet-Dataset:
README.md, src/dataset.py, src/object_classification.py, src/blip_clip.py, src/model/rgnn.py,
data/mode/montage_ch_names.json):

- ``EEG-ImageNet_1.pth`` and ``EEG-ImageNet_2.pth``, 8 subjects each, each a dict of ``dataset``
  (a list of dicts: ``eeg_data`` [62, ~500] tensor, ``granularity`` "coarse"/"fine", ``subject``
  0..15, ``label`` a WordNet id, ``image`` a file name such as ``n02106662_13.JPEG``), ``labels``
  (the WordNet ids; a class's index is ``labels.index(label)``) and ``images`` (names);
- images are not distributed (ImageNet's licence): the loaders read
  ``imageNet_images/<name up to the first "_">/<name>``;
- the loaders crop ``eeg_data[:, 40:440]`` and, per subject, put the first 30 trials of every
  50-trial class block in training and the last 20 in test (``i % 50 < 30``);
- the 62 rows are named by the authors' RGNN code in the order used here (the cap's 64 sites
  less the mastoids M1/M2).

Assumed, not stated by the release: that each (subject, class) block lies in presentation order
(the loaders rely on it), and that the rows follow the RGNN order (its graph assumes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import torch

from ..writer import CorpusInfo
from .common import (
    ConvertError,
    ConvertOptions,
    TorchTrialReader,
    Trial,
    as_int,
    drop_reason,
    load_cached,
    load_torch,
    require_keys,
    resolve_images,
    select_classes,
    write_trials,
)

SFREQ = 1000.0
CHANNELS = ["FP1", "FPZ", "FP2", "AF3", "AF4", "F7", "F5", "F3", "F1", "FZ", "F2", "F4", "F6", "F8", "FT7", "FC5",
            "FC3", "FC1", "FCZ", "FC2", "FC4", "FC6", "FT8", "T7", "C5", "C3", "C1", "CZ", "C2", "C4", "C6", "T8",
            "TP7", "CP5", "CP3", "CP1", "CPZ", "CP2", "CP4", "CP6", "TP8", "P7", "P5", "P3", "P1", "PZ", "P2",
            "P4", "P6", "P8", "PO7", "PO5", "PO3", "POZ", "PO4", "PO6", "PO8", "CB1", "O1", "OZ", "O2", "CB2"]
GRANULARITIES = ("coarse", "fine")
TRAIN_PER_BLOCK = 30  # the published split: the first 30 trials of each (subject, class) block train
BLOCK_SIZE = 50


@dataclass(frozen=True)
class _Source:
    """What validation keeps of one trial: where it is and what it is."""

    path: str
    index: int
    label: int
    subject: int
    granularity: str
    image: str
    length: int


def _check_trial(path, i: int, entry, label_of: dict[str, int]) -> _Source:
    """One ``dataset[i]`` checked field by field, or a ConvertError naming the field."""
    where = f"dataset[{i}]"
    require_keys(path, entry, ("eeg_data", "granularity", "subject", "label", "image"), where)
    eeg = entry["eeg_data"]
    if not isinstance(eeg, torch.Tensor) or eeg.ndim != 2 or eeg.shape[0] != len(CHANNELS):
        raise ConvertError(path, f"shape {tuple(getattr(eeg, 'shape', ())) or type(eeg).__name__}, expected "
                                 f"[{len(CHANNELS)} channels, time]", where, "eeg_data")
    if eeg.dtype == torch.bool or eeg.is_complex():
        raise ConvertError(path, f"dtype {eeg.dtype}, expected real numbers", where, "eeg_data")
    granularity = entry["granularity"]
    if granularity not in GRANULARITIES:
        raise ConvertError(path, f"{granularity!r} is not one of {GRANULARITIES}", where, "granularity")
    subject = as_int(entry["subject"])
    if subject is None or subject < 0:
        raise ConvertError(path, f"{entry['subject']!r} is not a non-negative integer", where, "subject")
    label = entry["label"]
    if not isinstance(label, str) or label not in label_of:
        raise ConvertError(path, f"{label!r} is not one of the {len(label_of)} labels (WordNet ids)", where, "label")
    image = entry["image"]
    if not isinstance(image, str) or not image or PurePath(image).name != image:
        raise ConvertError(path, f"{image!r} is not an image file name", where, "image")
    return _Source(str(path), i, label_of[label], subject, granularity, image, int(eeg.shape[1]))


def _read_file(path, labels: list[str] | None) -> tuple[list[str], list[_Source]]:
    """The file's ``labels`` (equal to ``labels`` of an earlier file, when given) and its trials."""
    data = load_cached(load_torch, path)
    require_keys(path, data, ("dataset", "labels"))
    dataset, own = data["dataset"], data["labels"]
    if not isinstance(own, list) or not own or not all(isinstance(w, str) for w in own) or len(set(own)) != len(own):
        raise ConvertError(path, "expected a list of distinct WordNet id strings", field="labels")
    if labels is not None and own != labels:
        raise ConvertError(path, "differs from the labels of the first file: parts of one release share them",
                           field="labels")
    if not isinstance(dataset, list) or not dataset:
        raise ConvertError(path, f"expected a non-empty list of trials, found {type(dataset).__name__}",
                           field="dataset")
    label_of = {w: k for k, w in enumerate(own)}
    return own, [_check_trial(path, i, entry, label_of) for i, entry in enumerate(dataset)]


def _granularity_of_classes(sources: list[_Source], labels: list[str]) -> dict[str, str]:
    """wnid → coarse/fine; a class recorded with both is a defect of the release."""
    seen: dict[int, _Source] = {}
    for s in sources:
        first = seen.setdefault(s.label, s)
        if first.granularity != s.granularity:
            raise ConvertError(s.path, f"{s.granularity!r} for {labels[s.label]}, which {first.path} "
                                       f"dataset[{first.index}] gives as {first.granularity!r}",
                               f"dataset[{s.index}]", "granularity")
    return {labels[k]: seen[k].granularity for k in sorted(seen)}


def _class_subset(granularity_of: dict[str, str], labels: list[str], granularity: str,
                  classes: Sequence[str] | None) -> list[str] | None:
    """The class list ``--granularity`` and ``--classes`` leave (None: all 80, unchanged)."""
    kept = [w for w in labels if granularity == "all" or granularity_of.get(w) == granularity]
    if classes:
        other = [c for c in classes if c in granularity_of and c not in kept]
        if other:
            raise ValueError(f"--classes: {other} are not {granularity} classes; --granularity {granularity} "
                             f"keeps {len(kept)} classes, e.g. {kept[:5]}")
        return list(classes)
    return None if granularity == "all" else kept


def _val_images(sources: list[_Source], split_of: dict[tuple, str], fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of each class's training images (at least one when the fraction is
    positive, never all), so every class keeps training images and appears in validation."""
    by_class: dict[int, list[str]] = {}
    for s in sources:
        if split_of[s.path, s.index] == "train":
            by_class.setdefault(s.label, []).append(s.image)
    rng, chosen = np.random.default_rng(seed), set()
    for label in sorted(by_class):
        images = sorted(set(by_class[label]))
        n = min(max(1, round(fraction * len(images))), len(images) - 1) if fraction > 0 else 0
        chosen.update(images[j] for j in rng.permutation(len(images))[:n])
    return chosen



def convert_eeg_imagenet_2024(eeg: str | Path | Sequence[str | Path], images: str | Path, opts: ConvertOptions, *,
                              granularity: str = "all", window: tuple[int, int] = (40, 440),
                              val_fraction: float = 0.1) -> Path:
    """Validate every release file and image, then write; returns the manifest path."""
    opts.check_out()
    if granularity not in (*GRANULARITIES, "all"):
        raise ValueError(f"--granularity must be coarse, fine or all, got {granularity!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    files = [Path(eeg)] if isinstance(eeg, (str, Path)) else [Path(p) for p in eeg]
    if len({p.resolve() for p in files}) != len(files):
        raise ValueError(f"--eeg names a file twice: {[str(p) for p in files]}")

    labels, sources, subjects_of = None, [], {}
    for path in files:  # read in turn (each is gigabytes); only the trials' metadata is kept
        labels, found = _read_file(path, labels)
        for s in found:
            owner = subjects_of.setdefault(s.subject, s.path)
            if owner != s.path:
                raise ConvertError(path, f"subject {s.subject} is also in {owner}: the parts of the release "
                                         f"hold different subjects", f"dataset[{s.index}]", "subject")
        sources += found
    granularity_of = _granularity_of_classes(sources, labels)

    # The release split by position in each (subject, class) block, in release order and before
    # any trial is dropped, so a dropped trial does not move later ones from test to train.
    position, block_sizes, split_of = {}, {}, {}
    for s in sources:
        k = position[s.path, s.index] = block_sizes.get((s.subject, s.label), 0)
        block_sizes[s.subject, s.label] = k + 1
        split_of[s.path, s.index] = "train" if k < TRAIN_PER_BLOCK else "test"
    val = _val_images(sources, split_of, val_fraction, opts.seed)

    trials, dropped = [], {}
    for s in sources:
        reason = drop_reason(s.length, window)
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        split = split_of[s.path, s.index]
        meta = {"label": s.label, "subject": s.subject, "image_id": s.image, "session": 0,
                "block": s.subject * len(labels) + s.label, "granularity": s.granularity,
                "release_split": "val" if split == "train" and s.image in val else split,
                "block_position": position[s.path, s.index], "source_file": Path(s.path).name,
                "source_index": s.index}
        trials.append(Trial((s.path, s.index), s.image, meta))
    subset = _class_subset(granularity_of, labels, granularity, opts.classes)
    trials, class_names, subset_record = select_classes(trials, list(labels), subset)

    # only the images of the trials kept need to exist; the loaders' folder rule first, then the class
    trials = resolve_images(
        trials, images,
        lambda t: [*(f"{folder}/{t.image}" for folder in (t.image.split("_")[0], class_names[t.meta["label"]])),
                   t.image],
        lambda t: f"{t.ref[0]}: dataset[{t.ref[1]}]")

    info = CorpusInfo(
        channel_names=list(CHANNELS), sfreq=SFREQ, time_points=window[1] - window[0], class_names=class_names,
        source="eeg-imagenet-2024",
        extra={"converter": "eeg-imagenet-2024", "source_files": [str(p) for p in files], "images": str(images),
               "window": list(window), "granularity": granularity, "dropped": dropped,
               "trials_in_release": len(sources), "subjects_per_file": {
                   str(p): sorted({s.subject for s in sources if s.path == str(p)}) for p in files},
               "class_granularity": {w: granularity_of[w] for w in class_names if w in granularity_of},
               "val_fraction": val_fraction,
               "val_images": sorted({t.meta["image_id"] for t in trials if t.meta["release_split"] == "val"}),
               "blocks_not_50": [[subject, labels[label], n] for (subject, label), n in sorted(block_sizes.items())
                                 if n != BLOCK_SIZE],
               "channel_names": "the authors' 62-channel order (src/model/rgnn.py of the release's repository)",
               "release_split": f"per (subject, class) block in release order: the first {TRAIN_PER_BLOCK} "
                                f"trials train, the rest test; training trials of the val_images go to val",
               "block": "subject * num_source_classes + source label: each class is shown in one contiguous "
                        "block per subject; session is unknown (0)"},
    )
    if subset_record:
        info.extra["class_subset"] = subset_record
    return write_trials(trials, info, TorchTrialReader("eeg_data", window), opts)
