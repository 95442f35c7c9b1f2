"""Leakage-aware split assignment.

Three schemes, each recorded as its own manifest column so that a config can pick one without
rewriting shards:

* ``image``: every trial of an image lands in one split (no image seen in training is tested);
* ``subject``: whole subjects are held out (cross-subject generalisation);
* ``block``: whole recording blocks/sessions are held out within each subject, so slow drift
  shared by the trials of a block cannot be learned as a label cue (Li et al. 2020).

``release`` (a corpus's published split) is written by converters when one exists.

Two *protocol* schemes are computed from the manifest's columns instead of stored, because they
are parameterised (``eeg2im protocol``, docs/protocols.md):

* ``loso:<subject>``: leave one subject out. Test: every trial of that subject. Val: the other
  subjects' trials of the ``image`` scheme's val images; train: their other trials.
* ``heldout:<class>,<class>,...``: those classes never reach training. Test: every trial of
  them; train / val: the other classes' trials of the ``image`` scheme's train / val images.
* ``intra:<subject>:<scheme>``: one subject's trials, split as the stored ``<scheme>`` splits them
  (intra-subject retrieval trains one model per subject).
* ``inter:<subject>:<scheme>``: test = that subject's trials in ``<scheme>``'s test split; train /
  val = the *other* subjects' trials in its train / val splits (inter-subject: the model never
  sees the tested person, not even the EEG statistics).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable

import numpy as np

# the split_by grammar is the config's (config.py checks data.split_by with it); re-exported for the data layer
from ..config import SCHEME_FORMS, SCHEMES, SPLITS, Scheme, parse_scheme  # noqa: F401


def loso_scheme(subject: int) -> str:
    return f"loso:{subject}"


def heldout_scheme(classes: Iterable[str]) -> str:
    classes = list(classes)
    if any("," in c for c in classes):
        raise ValueError(f"class names with a comma cannot be held out by name: {[c for c in classes if ',' in c]}")
    return "heldout:" + ",".join(classes)


def subject_scheme(mode: str, subject: int, base: str) -> str:
    """``intra:<subject>:<base>`` or ``inter:<subject>:<base>``."""
    return f"{mode}:{subject}:{base}"


def split_of_image(image_id: str, fractions: tuple[float, float, float], seed: int) -> str:
    """Stable hash of the image id mapped onto the split fractions (known while streaming)."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return SPLITS[0] if u < fractions[0] else SPLITS[1] if u < fractions[0] + fractions[1] else SPLITS[2]


def group_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """How many of ``n`` groups go to train/val/test: at least one to train, and one to each
    held-out split with a non-zero fraction as long as enough groups exist."""
    n_val = max(1, round(fractions[1] * n)) if fractions[1] > 0 else 0
    n_test = max(1, round(fractions[2] * n)) if fractions[2] > 0 else 0
    while n_val + n_test > n - 1 and (n_val or n_test):
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def assign_groups(groups: Iterable[Hashable], fractions: tuple[float, float, float], seed: int) -> dict:
    """Seeded assignment of whole groups (subjects, blocks) to splits."""
    ordered = sorted(set(groups))
    n_train, n_val, _ = group_counts(len(ordered), fractions)
    order = np.random.default_rng(seed).permutation(len(ordered))
    result = {}
    for rank, i in enumerate(order):
        result[ordered[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return result


def assign_blocks(block_subject: dict, fractions: tuple[float, float, float], seed: int) -> dict:
    """Hold out blocks within each subject, so every subject still contributes training data."""
    by_subject: dict = {}
    for block, subject in block_subject.items():
        by_subject.setdefault(subject, []).append(block)
    result = {}
    for subject, blocks in sorted(by_subject.items()):
        result.update(assign_groups(blocks, fractions, seed * 1_000_003 + int(subject)))
    return result
