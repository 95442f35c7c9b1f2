"""THINGS-EEG2 (Gifford et al. 2022), preprocessed release: 10 subjects, 16540 training images
(1654 concepts × 10) seen 4 times, 200 test images (200 other concepts) seen 80 times.

Per subject, ``sub-XX/preprocessed_eeg_training.npy`` and ``preprocessed_eeg_test.npy`` are
``np.save``-d dicts (pickles) of ``preprocessed_eeg_data`` [images, repetitions, channels, time],
``ch_names`` and ``times``; image i is the i-th file in sorted concept-folder / file order of
``training_images`` / ``test_images``. A pickled dict cannot be memory-mapped: each file is loaded
whole, once to validate and once (per worker) to write the shards that hold its trials.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..writer import CorpusInfo
from .common import (ConvertError, ConvertOptions, Trial, check_eeg_array, load_cached, load_pickled_dict,
                     select_classes, write_trials)

KEYS = ("preprocessed_eeg_data", "ch_names", "times")
# partition → (EEG file, image folder, metadata prefix, release split)
PARTS = {"training": ("preprocessed_eeg_training.npy", "training_images", "train", "train"),
         "test": ("preprocessed_eeg_test.npy", "test_images", "test", "test")}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
BLOCK_STRIDE = 1000  # block = subject * BLOCK_STRIDE + repetition


def list_images(images: Path, folder: str) -> list[tuple[str, str]]:
    """(concept folder, file name) in the release's order: sorted folders, sorted files."""
    root = images / folder
    if not root.is_dir():
        raise ConvertError(root, "missing: expected concept folders such as 00001_aardvark/ inside it")
    found = [(concept.name, f.name) for concept in sorted(p for p in root.iterdir() if p.is_dir())
             for f in sorted(concept.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")]
    if not found:
        raise ConvertError(root, f"holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in concept folders")
    return found


def concept_name(folder: str) -> str:
    """"00001_aardvark" → "aardvark"."""
    return re.sub(r"^\d+_", "", folder)


def _check_metadata(path: Path, allow_pickle: bool, listed: dict[str, list[tuple[str, str]]]) -> None:
    """``image_metadata.npy`` must name the images in the order they were found."""
    keys = [f"{PARTS[p][2]}_img_{kind}" for p in PARTS for kind in ("concepts", "files")]
    meta = load_pickled_dict(path, allow_pickle, keys)
    for part, found in listed.items():
        prefix = PARTS[part][2]
        concepts, files = list(meta[f"{prefix}_img_concepts"]), list(meta[f"{prefix}_img_files"])
        if not len(concepts) == len(files) == len(found):
            raise ConvertError(path, f"names {len(concepts)} concepts and {len(files)} files for the {part} images, "
                                     f"{PARTS[part][1]}/ holds {len(found)}", field=f"{prefix}_img_files")
        for i, named in enumerate(zip(map(str, concepts), map(str, files), strict=True)):
            if named != found[i]:
                raise ConvertError(path, f"names {'/'.join(named)}, but the {i}-th image found is "
                                         f"{'/'.join(found[i])}", f"image {i}", f"{prefix}_img_files")


def _sfreq(path, times: np.ndarray) -> float:
    """The release states no sampling rate: 100 Hz and 250 Hz variants differ only in ``times``."""
    if times.ndim != 1 or len(times) < 2 or not (np.diff(times) > 0).all():
        raise ConvertError(path, f"expected increasing time points in seconds, found shape {times.shape}",
                           field="times")
    return round(float(1.0 / np.median(np.diff(times))), 3)


def _check_file(path: Path, allow_pickle: bool, n_images: int) -> tuple[int, list[str], np.ndarray]:
    """(repetitions, channel names, times) of one subject file, its array and times checked."""
    data = load_pickled_dict(path, allow_pickle, KEYS)
    eeg = data["preprocessed_eeg_data"]
    if not isinstance(eeg, np.ndarray):
        raise ConvertError(path, f"expected an array, found {type(eeg).__name__}", field=KEYS[0])
    check_eeg_array(path, eeg, "images, repetitions, channels, time", field=KEYS[0])
    names, times = [str(c) for c in data["ch_names"]], np.asarray(data["times"], dtype=np.float64)
    _sfreq(path, times)
    expected = (n_images, eeg.shape[1], len(names), len(times))
    if eeg.shape != expected:
        raise ConvertError(path, f"shape {eeg.shape}, expected {expected}: images found in the image folder, "
                                 f"repetitions, len(ch_names), len(times)", field=KEYS[0])
    return eeg.shape[1], names, times


@dataclass(frozen=True)
class _Reader:
    average: bool

    def __call__(self, ref: tuple) -> np.ndarray:
        path, image, repetition = ref
        # allow_pickle: validation already refused these files unless --allow-pickle was given
        eeg = load_cached(load_pickled_dict, path, True, KEYS)["preprocessed_eeg_data"]
        return eeg[image].mean(axis=0) if self.average else eeg[image, repetition]


def convert_things_eeg2(eeg_dir: str | Path, images: str | Path, opts: ConvertOptions, *,
                        average_repetitions: bool = False, allow_pickle: bool = False,
                        val_fraction: float = 0.01) -> Path:
    """Validate every subject file and image, then write; returns the manifest path."""
    opts.check_out()
    if not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    eeg_dir, images = Path(eeg_dir), Path(images)
    listed = {part: list_images(images, PARTS[part][1]) for part in PARTS}
    metadata = images / "image_metadata.npy"
    if metadata.is_file():
        _check_metadata(metadata, allow_pickle, listed)

    subjects = sorted((int(m.group(1)), p) for p in eeg_dir.glob("sub-*")
                      if p.is_dir() and (m := re.fullmatch(r"sub-(\d+)", p.name)))
    if not subjects:
        raise ConvertError(eeg_dir, "no subject folders (sub-01/, sub-02/, ...) found")
    files, repetitions, reference = [], {}, None  # reference: (file, channel names, times) of the first file
    for subject, folder in subjects:
        present = [(part, folder / PARTS[part][0]) for part in PARTS if (folder / PARTS[part][0]).is_file()]
        if not present:
            raise ConvertError(folder, f"holds neither {' nor '.join(p[0] for p in PARTS.values())}")
        for part, path in present:
            reps, names, times = _check_file(path, allow_pickle, len(listed[part]))
            if reference is None:
                reference = (path, names, times)
            elif names != reference[1] or times.shape != reference[2].shape or not np.allclose(times, reference[2]):
                raise ConvertError(path, f"ch_names/times differ from those of {reference[0]}: mixed variants",
                                   field="ch_names" if names != reference[1] else "times")
            files.append((subject, part, path))
            repetitions[subject, part] = reps

    concepts = list(dict.fromkeys(concept_name(c) for part in PARTS for c, _ in listed[part]))
    label_of = {name: i for i, name in enumerate(concepts)}
    training = list(dict.fromkeys(concept_name(c) for c, _ in listed["training"]))
    n_val = min(max(1, round(val_fraction * len(training))) if val_fraction > 0 else 0, len(training) - 1)
    val_concepts = sorted(training[j] for j in np.random.default_rng(opts.seed).permutation(len(training))[:n_val])
    val = set(val_concepts)

    trials = []
    for subject, part, path in files:
        folder = PARTS[part][1]
        for i, (concept, name) in enumerate(listed[part]):
            label = label_of[concept_name(concept)]
            split = "val" if concept_name(concept) in val else PARTS[part][3]
            image = str(images / folder / concept / name)
            meta = {"label": label, "subject": subject, "image_id": f"{folder}/{concept}/{name}", "session": 0,
                    "release_split": split, "image_index": i}
            if average_repetitions:
                trials.append(Trial((str(path), i, None), image, meta))
            else:
                trials.extend(Trial((str(path), i, r), image,
                                    {**meta, "repetition": r, "block": subject * BLOCK_STRIDE + r})
                              for r in range(repetitions[subject, part]))
    trials, class_names, subset = select_classes(trials, concepts, opts.classes)

    path, channel_names, times = reference
    info = CorpusInfo(
        channel_names=channel_names, sfreq=_sfreq(path, times), time_points=len(times), class_names=class_names,
        source="things-eeg2",
        extra={"converter": "things-eeg2", "source_files": [str(f[2]) for f in files], "images": str(images),
               "image_metadata_checked": metadata.is_file(), "times_s": [float(times[0]), float(times[-1])],
               "sfreq": "derived from times", "dropped": {},
               "repetitions": {f"sub-{s:02d}/{p}": n for (s, p), n in repetitions.items()},
               "averaged_repetitions": average_repetitions,
               "concepts": {p: len({concept_name(c) for c, _ in listed[p]}) for p in PARTS},
               "val_fraction": val_fraction, "val_concepts": val_concepts,
               "block": "subject (one block per subject)" if average_repetitions else
                        f"subject * {BLOCK_STRIDE} + repetition index; the release shuffled repetitions "
                        f"across its 4 sessions, so a repetition is not a recording session"},
    )
    if subset:
        info.extra["class_subset"] = subset
    return write_trials(trials, info, _Reader(average_repetitions), opts)
