"""A procedural EEG/image corpus with ground truth, for testing the whole pipeline offline.

Like EEG-ImageNet, every subject sees every image once: sample ``i`` is image
``i // num_subjects`` shown to subject ``i % num_subjects``, and the image's class is
``image_id % num_classes``. Each subject sees its images in ``sessions_per_subject`` sessions
(an exactly balanced, seeded permutation per subject); ``block = subject * sessions + session``.

Knobs (:class:`~eeg2im_scale.config.SynthConfig`) and what they do:

* ``num_samples``, ``num_classes``, ``num_subjects``, ``sessions_per_subject``: the layout above.
* ``image_size``: side of the RGB images (one textured shape on a grey background, see
  :mod:`.synth_images`; class = shape x texture).
* ``channels``: electrodes of the BioSemi 128 cap, an evenly spread subset when fewer.
  ``time_points`` / ``sfreq``: the epoch, starting at stimulus onset (440 at 1000 Hz = 440 ms).
* ``class_snr``: scales the class-specific components (three per class, peak 12 uV x 0.6-1.0
  each, against a ~11 uV RMS background). 0 makes the class undecodable from EEG.
* ``attribute_snr``: scales the hue, brightness and saturation components. 0 makes them
  undecodable. Attributes are drawn independently of the class, so neither leaks into the other.
* ``subject_variability``: spread of per-subject gain (lognormal, sigma 0.25), latency shift
  (sigma 8 ms, capped at 20 ms) and cap rotation (sigma 0.08 rad). 0 makes subjects identical
  apart from their alpha and line-noise levels.
* ``drift``: per-block slow drift in units of the 10 uV background RMS: a per-channel DC offset
  that also moves over the block, plus a within-trial ramp. Any ``drift > 0`` makes the *block*
  decodable, imitating the block-design confound of EEG-ImageNet; split by block to measure it.
* ``line_freq``: mains frequency of the line noise. ``seed``: everything else.

Expected decodability is measured in ``docs/synthetic_corpus.md``. Every sample is a pure
function of (config, index) drawn from its own ``default_rng([seed, stream, key])`` generators
(:class:`.synth_eeg.Stream`), so any number of processes can produce any subset in any order;
the only tables are per class, subject and block.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from ..config import SynthConfig
from .synth_eeg import EEGSimulator, Stream, generator
from .synth_images import class_name, draw_image_spec, render_image


class SyntheticCorpus:
    """``len(corpus)`` samples; ``sample(i)`` draws one, ``layout(i)`` says where it sits, cheaply."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        self.eeg = EEGSimulator(cfg)
        self.channel_names: list[str] = self.eeg.channel_names
        self.class_names: list[str] = [class_name(label) for label in range(cfg.num_classes)]
        self.num_images: int = math.ceil(cfg.num_samples / cfg.num_subjects)
        self._session_orders = [self._session_order(subject) for subject in range(cfg.num_subjects)]
        self._last_image: tuple[int, dict, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.cfg.num_samples

    def _session_order(self, subject: int) -> tuple[int, int]:
        """(a, b) of the subject's viewing order ``rank = (a * image_id + b) mod num_images``: a
        seeded permutation that needs no per-image table (a is coprime with num_images)."""
        rng = generator(self.cfg.seed, Stream.SESSIONS, subject)
        a = int(rng.integers(1, max(self.num_images, 2)))
        while math.gcd(a, self.num_images) != 1:
            a = int(rng.integers(1, self.num_images))
        return a, int(rng.integers(self.num_images))

    def _place(self, index: int) -> tuple[dict, float]:
        """The layout of sample ``index`` and its progress in [0, 1] through its session."""
        index = operator.index(index)  # numpy integers too, but meta values stay python ints
        if not 0 <= index < self.cfg.num_samples:
            raise IndexError(f"sample index {index} out of range [0, {self.cfg.num_samples})")
        sessions, images = self.cfg.sessions_per_subject, self.num_images
        image_id, subject = divmod(index, self.cfg.num_subjects)
        a, b = self._session_orders[subject]
        rank = (a * image_id + b) % images
        session = rank * sessions // images
        start, stop = -(-session * images // sessions), -(-(session + 1) * images // sessions)
        layout = {"subject": subject, "image_id": image_id, "label": image_id % self.cfg.num_classes,
                  "session": session, "block": subject * sessions + session}
        return layout, (rank - start + 0.5) / (stop - start)

    def layout(self, index: int) -> dict:
        """subject, image_id, label, session and block of sample ``index``, without rendering."""
        return self._place(index)[0]

    def image(self, image_id: int) -> tuple[dict, np.ndarray]:
        """Attributes and pixels of one image (the same for every subject). The last image is
        kept: sequential readers meet each image ``num_subjects`` times in a row."""
        cached = self._last_image  # one read: safe when threads share the corpus
        if cached is None or cached[0] != image_id:
            attributes, background = draw_image_spec(generator(self.cfg.seed, Stream.IMAGE, image_id))
            pixels = render_image(image_id % self.cfg.num_classes, attributes, background, self.cfg.image_size)
            cached = self._last_image = (image_id, attributes, pixels)
        _, attributes, pixels = cached
        return dict(attributes), pixels.copy()

    def sample(self, index: int) -> dict:
        """EEG (channels, time_points) float32 uV, image (size, size, 3) uint8, and meta."""
        layout, progress = self._place(index)
        attributes, pixels = self.image(layout["image_id"])
        eeg = self.eeg.trial(generator(self.cfg.seed, Stream.TRIAL, index), layout["label"], layout["subject"],
                             layout["block"], progress, attributes)
        meta = {**layout, "class_name": self.class_names[layout["label"]], "attributes": attributes}
        return {"eeg": eeg, "image": pixels, "meta": meta}
