"""Which training runs each protocol makes. A plan is plain data: ``--dry-run`` prints it, and each
variant's overrides reproduce its training with ``launchers/train.py`` under any launcher."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import Config
from ..data.manifest import MANIFEST, Manifest
from ..data.remote import is_url
from ..data.splits import SCHEMES, heldout_scheme, loso_scheme, subject_scheme
from ..data.synth_images import class_name
from ..models.teacher import image_encoder
from . import PROTOCOLS

CLASSIFIER_STAGES = ("teacher", "highlevel")  # what the EEG classifier needs: no autoencoder, no UNet


class ProtocolError(ValueError):
    """A protocol that cannot run on this configuration or corpus, or whose check failed."""


@dataclass(frozen=True)
class Variant:
    """One training run of a protocol and how it is evaluated."""

    protocol: str
    name: str  # the table's "variant"
    run_dir: str
    overrides: tuple[str, ...]  # on top of the user's config and overrides
    stages: tuple[str, ...]  # train.stage values, run in this order
    evaluation: str  # "pipeline" (eeg2im evaluate) | "classifier" | "zero-shot" | "retrieval" | "probe" (trains nothing)
    control: str | None = None  # "shuffled" | "drift"
    heldout: tuple[str, ...] = ()  # zero-shot: the unseen classes
    window: tuple[int, int] | None = None  # probe: [start, stop) samples of each trial; None: all
    mode: str | None = None  # retrieval: "intra" | "inter" (subject)

    def stage_overrides(self, stage: str) -> list[str]:
        return [*self.overrides, f"train.stage={stage}"]


@dataclass
class Plan:
    protocol: str
    variants: list[Variant]
    notes: list[str]  # what the table cannot say: how the splits were formed, skipped controls


@dataclass(frozen=True)
class Layout:
    """What planning needs to know about the corpus."""

    subjects: list[int]
    class_names: list[str]  # every class of the corpus


def layout_of(cfg: Config) -> Layout:
    """From the manifest; before a synthetic corpus is written (a dry run), from ``synth``."""
    if is_url(cfg.data.root) or (Path(cfg.data.root) / MANIFEST).is_file():
        manifest = Manifest.for_data(replace(cfg.data, classes=None))
        return Layout(manifest.subjects, list(manifest.info["class_names"]))
    if cfg.data.synthesize:
        return Layout(list(range(cfg.synth.num_subjects)), [class_name(c) for c in range(cfg.synth.num_classes)])
    raise ProtocolError(f"no corpus at {cfg.data.root} ({MANIFEST} missing) and data.synthesize is false")


def override(key: str, value) -> str:
    """``key=value`` with the value as JSON (valid YAML): strings stay strings, e.g. class names like '1'."""
    return f"{key}={json.dumps(value)}"


def make_plan(protocol: str, cfg: Config, layout: Layout) -> Plan:
    if protocol not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {protocol!r}; protocols are {', '.join(PROTOCOLS)}")
    root = Path(cfg.run_dir) / "protocols" / protocol

    def variant(slug: str, name: str, *overrides: str, **kw) -> Variant:
        run_dir = str(root / slug)
        kw.setdefault("stages", CLASSIFIER_STAGES)
        kw.setdefault("evaluation", "classifier")
        return Variant(protocol, name, run_dir, (override("run_dir", run_dir), *overrides), **kw)

    return {"by-image": _by_image, "loso": _loso, "held-out-classes": _held_out_classes,
            "controls": _controls, "retrieval": _retrieval}[protocol](cfg, layout, variant)


def _by_image(cfg: Config, layout: Layout, variant) -> Plan:
    return Plan("by-image", [variant(cfg.data.split_by, f"split by {cfg.data.split_by}", stages=("all",),
                                     evaluation="pipeline")],
                [(f"Training + validation and test images are disjoint under data.split_by={cfg.data.split_by} "
                  f"(checked before training); the whole pipeline was trained and evaluated with `eeg2im evaluate` "
                  f"on the {cfg.eval.split} split.")])


def _loso(cfg: Config, layout: Layout, variant) -> Plan:
    subjects = cfg.protocol.subjects if cfg.protocol.subjects is not None else layout.subjects
    unknown = sorted(set(subjects) - set(layout.subjects))
    if len(layout.subjects) < 2 or unknown or not subjects:
        raise ProtocolError(f"loso needs at least 2 subjects and folds among them: the corpus has subjects "
                            f"{layout.subjects}, protocol.subjects asks for {subjects}")
    variants = [variant(f"subject-{s}", f"subject {s}", override("data.split_by", loso_scheme(s))) for s in subjects]
    return Plan("loso", variants, [
        ("Each fold is a fresh run in its own run_dir (same seed, no weights carried over between folds). Test: "
         "every trial of one subject; validation: the other subjects' trials of the image scheme's validation "
         "images; training: their other trials. EEG is z-scored with the statistics of the fold's training trials."),
        ("As in the usual LOSO protocol, images are shared across subjects: a fold measures generalisation to an "
         "unseen person, not to unseen images.")])


def _held_out_classes(cfg: Config, layout: Layout, variant) -> Plan:
    universe = list(cfg.data.classes or layout.class_names)
    protocol_cfg = cfg.protocol
    if protocol_cfg.heldout_classes is not None:
        heldout = list(protocol_cfg.heldout_classes)
        outside = [c for c in heldout if c not in universe]
        if outside:
            raise ProtocolError(f"protocol.heldout_classes {outside} are not among the classes in play: {universe}")
    else:
        count = max(2, round(protocol_cfg.heldout_fraction * len(universe)))
        drawn = np.random.default_rng(protocol_cfg.seed).choice(len(universe), count, replace=False)
        heldout = [universe[i] for i in sorted(drawn)]
    seen = [c for c in universe if c not in heldout]
    if len(heldout) < 2 or len(seen) < 2:
        raise ProtocolError(f"held-out-classes needs at least 2 held-out and 2 training classes; {len(universe)} "
                            f"classes in play, {len(heldout)} held out")
    return Plan("held-out-classes", [variant(
        "zero-shot", f"{len(heldout)} unseen classes", override("data.split_by", heldout_scheme(heldout)),
        override("data.classes", seen), evaluation="zero-shot", heldout=tuple(heldout))], [
        (f"Held out: {', '.join(heldout)}. The teacher and the EEG encoder were trained on the other "
         f"{len(seen)} classes only (their training and validation images; EEG z-scored with their training "
         f"trials' statistics). Test: every trial of the held-out classes, classified zero-shot: the class whose "
         f"prototype (mean L2-normalised teacher feature of its images, the trial's own image left out) is "
         f"nearest in cosine to the EEG encoder's projection into the teacher's feature space.")])


def _retrieval(cfg: Config, layout: Layout, variant) -> Plan:
    base, protocol_cfg = cfg.data.split_by, cfg.protocol
    if base not in SCHEMES:
        raise ProtocolError(f"retrieval restricts a stored split scheme ({', '.join(SCHEMES)}) to subjects; "
                            f"data.split_by is {base!r}")
    if cfg.model.highlevel.feature_kd_weight <= 0:
        raise ProtocolError("retrieval matches the EEG encoder's projection into the teacher's feature space, which "
                            "only feature KD trains: model.highlevel.feature_kd_weight must be > 0")
    subjects = protocol_cfg.subjects if protocol_cfg.subjects is not None else layout.subjects
    unknown = sorted(set(subjects) - set(layout.subjects))
    if unknown or not subjects or ("inter" in protocol_cfg.retrieval_modes and len(layout.subjects) < 2):
        raise ProtocolError(f"retrieval tests subjects among the corpus's {layout.subjects} (inter-subject needs at "
                            f"least 2); protocol.subjects asks for {subjects}")
    variants = [variant(f"{mode}-subject-{s}", f"{mode}-subject, subject {s}",
                        override("data.split_by", subject_scheme(mode, s, base)), evaluation="retrieval", mode=mode)
                for mode in protocol_cfg.retrieval_modes for s in subjects]
    top_k = "/".join(f"top-{k}" for k in protocol_cfg.retrieval_top_k)
    queries = ("the EEG of its repetitions averaged per (subject, image) before embedding" if
               protocol_cfg.average_repetitions else "every trial a query (no repetition averaging)")
    return Plan("retrieval", variants, [
        (f"Zero-shot retrieval on the test split of data.split_by={base}, whose concepts were never trained on "
         f"(checked before training): for each test image, {queries}; the EEG encoder's projection into the "
         f"teacher's feature space ranked by cosine against the fine-tuned teacher's pooled features of every "
         f"distinct test image; {top_k} accuracy, chance k / (test images)."),
        ("Intra-subject: one run per subject, trained and tested on that subject's trials (EEG z-scored with its "
         "training trials' statistics). Inter-subject: one run per subject, trained on the other subjects' "
         "training trials only and tested on that subject's test trials. The two modes are summarised apart and "
         "must not be compared with each other (published THINGS-EEG2 tables report them separately)."),
        (f"Image encoder: the run's teacher, {image_encoder(cfg.model.teacher)}; published THINGS-EEG2 rows mostly "
         f"retrieve against frozen CLIP features (model.teacher.arch=open_clip:<model>, model.teacher.freeze_trunk=true): "
         f"compare with rows that use the same image encoder.")])


def _controls(cfg: Config, layout: Layout, variant) -> Plan:
    protocol_cfg = cfg.protocol
    notes = [(f"Drift probe: L2-regularised logistic regressions on each trial's per-channel means, linear trends "
              f"and < {protocol_cfg.lowpass_hz:g} Hz power (and the pre-stimulus window's, when set), fitted on the scheme's "
              f"training split and tested on its test split; the row names the strongest probe, its p-value "
              f"Bonferroni-corrected over the probes, and the probe's training accuracy (its positive control). "
              f"No deep training: it runs in seconds.")]
    windows = [("drift-probe", "drift probe", None)]
    if protocol_cfg.prestimulus_window is not None:
        windows.append(("drift-probe-prestimulus", f"drift probe, pre-stimulus [{protocol_cfg.prestimulus_window[0]}, "
                        f"{protocol_cfg.prestimulus_window[1]})", tuple(protocol_cfg.prestimulus_window)))
    variants = [variant(slug, name, stages=(), evaluation="probe", control="drift", window=window)
                for slug, name, window in windows]
    if not protocol_cfg.deep_controls:
        notes.append("Deep controls not run (protocol.deep_controls is false): the drift probe only.")
        return Plan("controls", variants, notes)
    # Cross-entropy only: distilling a teacher that knows nothing about the EEG would spend the
    # control's capacity on the teacher instead of on fitting what the EEG carries.
    ce_only = ["model.highlevel.kd_weight=0", "model.highlevel.feature_kd_weight=0",
               *([f"train.highlevel.steps={protocol_cfg.control_steps}"] if protocol_cfg.control_steps is not None else [])]
    variants += [
        variant("shuffled-labels", "shuffled labels", "train.shuffle_labels=true", *ce_only, control="shuffled"),
        variant("lowpass", f"< {protocol_cfg.lowpass_hz:g} Hz only", override("data.bandpass", [0, protocol_cfg.lowpass_hz]), *ce_only,
                control="drift"),
    ]
    notes += [
        ("Deep controls: the EEG encoder retrained per control with cross-entropy only (no distillation from the "
         "image teacher), and its accuracy on its own training split reported beside the test accuracy: a control "
         f"whose classifier did not beat its training split's chance by protocol.min_train_margin "
         f"({protocol_cfg.min_train_margin:g}) is inconclusive, never 'no leakage'."),
        ("Shuffled labels: the training images' labels permuted (seed train.seed) for the teacher and the EEG "
         "encoder alike; the test keeps the true labels. Above chance means labels reach the model another way."),
        (f"Drift: the EEG classifier retrained and tested on content below {protocol_cfg.lowpass_hz:g} Hz only (a zero-phase "
         f"Butterworth low-pass). Slow drift identifies the recording block, and in a block design the block "
         f"identifies the class: above chance under a split that shares blocks between training and test "
         f"(release or image on EEG-ImageNet) means the corpus leaks. On a short epoch this band also holds the "
         f"mean of the evoked response, so check a leak against data.split_by=block (whole blocks held out)."),
    ]
    if protocol_cfg.prestimulus_window is not None:
        start, stop = protocol_cfg.prestimulus_window
        variants.append(variant("prestimulus", f"pre-stimulus [{start}, {stop})",
                                override("data.eeg_window", [start, stop]), *ce_only, control="drift"))
        notes.append(f"Pre-stimulus: the classifier retrained and tested on samples [{start}, {stop}) of each "
                     f"trial, recorded before the stimulus appeared: nothing there can depend on the image.")
    else:
        notes.append("No pre-stimulus control: protocol.prestimulus_window is not set (this corpus's trials start "
                     "at stimulus onset, as in EEG-ImageNet-40 and the synthetic corpus; THINGS-EEG2's start "
                     "200 ms before it).")
    return Plan("controls", variants, notes)
