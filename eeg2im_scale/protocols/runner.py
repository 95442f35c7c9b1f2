"""Run a protocol: train each variant of its plan through the package's own training code, evaluate
it, and merge the rows into ``RUN_DIR/protocols.json``.

Training runs in this process by default (``train.run.run``, one rank, as ``python
launchers/train.py`` would); ``launcher`` (e.g. ``"deepspeed --num_gpus 8"`` or ``"torchrun
--nproc_per_node 8"``) runs each stage as ``<launcher> launchers/train.py --config ... <overrides>``
instead. Evaluation runs here, in one process.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np

from ..config import load_config, parse_scheme
from ..data.corpus import ensure_corpus
from ..data.manifest import MANIFEST, Manifest
from ..data.remote import is_url
from ..models.build import Geometry, build_highlevel
from ..models.teacher import image_encoder
from .evaluate import (check_concepts_disjoint, check_images_disjoint, classifier_scores, trained_retrieval_scores,
                       zero_shot_scores)
from .plans import Plan, ProtocolError, Variant, layout_of, make_plan
from .probe import drift_untestable, run_probes, split_features
from .stats import chance_level
from .table import TABLE, accuracy_row, learned, update_table, value_row

log = logging.getLogger(__name__)
DISJOINT = {"by-image": (check_images_disjoint, "images"), "retrieval": (check_concepts_disjoint, "classes")}
TRAIN_LAUNCHER = Path(__file__).resolve().parents[2] / "launchers" / "train.py"
# Each launched job forms its own process group: the rendezvous of this process (left by an
# in-process run, or by whatever started it) must not leak into it.
RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
EVALUATIONS = {"pipeline": "the whole pipeline with `eeg2im evaluate` (eval.split)",
               "classifier": "EEG classifier top-1 on the test split",
               "zero-shot": "zero-shot nearest-prototype top-1 over the held-out classes",
               "retrieval": "zero-shot retrieval top-k of the test images (cosine, EEG projection vs teacher features)",
               "probe": "linear drift probes on slow features: fitted on the training split, top-1 on the test split"}


def train_commands(variant: Variant, config: str | None, overrides: list[str], launcher: str | None,
                   script: str = "launchers/train.py") -> list[list[str]]:
    """One ``launchers/train.py`` command per stage: what the launcher runs, and what to submit on a cluster."""
    prefix = shlex.split(launcher) if launcher else ["python"]
    return [[*prefix, script, *(["--config", config] if config else []), *overrides, *variant.stage_overrides(stage)]
            for stage in variant.stages]


def describe(plan: Plan, config: str | None, overrides: list[str], launcher: str | None, check: str | None) -> str:
    """The plan as ``--dry-run`` prints it."""
    lines = [f"protocol {plan.protocol}: {len(plan.variants)} run(s)"] + ([f"check: {check}"] if check else [])
    for variant in plan.variants:
        lines += [f"- {variant.name}: run_dir {variant.run_dir}"]
        lines += [f"    train:    {shlex.join(c)}" for c in train_commands(variant, config, overrides, launcher)]
        lines += [f"    evaluate: {EVALUATIONS[variant.evaluation]}"]
    return "\n".join(lines + [f"note: {note}" for note in plan.notes])


def run_protocol(protocol: str, config: str | None, overrides: list[str], *, launcher: str | None = None,
                 dry_run: bool = False) -> dict | None:
    """Run ``protocol`` on the configured corpus and return the updated table (None for a dry run,
    which prints the plan, writes nothing and trains nothing)."""
    cfg = load_config(config, overrides)
    if dry_run:
        plan = make_plan(protocol, cfg, layout_of(cfg))
        check = None
        if protocol in DISJOINT and (is_url(cfg.data.root) or (Path(cfg.data.root) / MANIFEST).is_file()):
            check = _disjoint_text(protocol, Manifest.for_data(cfg.data), cfg.data.split_by)
        print(describe(plan, config, overrides, launcher, check))
        return None
    ensure_corpus(cfg)
    plan = make_plan(protocol, cfg, layout_of(cfg))
    if protocol in DISJOINT:
        log.info("%s: %s", protocol, _disjoint_text(protocol, Manifest.for_data(cfg.data), cfg.data.split_by))
    variant_cfgs = [_prepare(variant, load_config(config, [*overrides, *variant.overrides])) for variant in plan.variants]
    rows = []
    for variant, variant_cfg in zip(plan.variants, variant_cfgs):
        log.info("protocol %s, %s: training in %s", protocol, variant.name, variant.run_dir)
        _train(variant, config, overrides, launcher)
        rows += _rows(variant, variant_cfg)
    table = update_table(cfg.run_dir, protocol, rows, plan.notes, cfg.protocol.alpha)
    log.info("protocol %s: %d rows written to %s", protocol, len(rows), Path(cfg.run_dir) / TABLE)
    return table


def _prepare(variant: Variant, cfg):
    """Before the first run trains: every run's EEG encoder builds (a window too short for the
    backbone fails now, not after the other runs), and a protocol scheme's EEG statistics are
    computed once, here, instead of by every rank."""
    manifest = Manifest.for_data(cfg.data)
    try:
        build_highlevel(cfg.model, Geometry(cfg.data, manifest.selected_info))
    except ValueError as exc:
        raise ProtocolError(f"{variant.protocol}, {variant.name}: {exc}") from None
    if cfg.data.normalize:
        manifest.eeg_stats(cfg.data.split_by)
    return cfg


def _disjoint_text(protocol: str, manifest: Manifest, scheme: str) -> str:
    """The protocol's premise checked before anything trains (ProtocolError when it fails)."""
    check, what = DISJOINT[protocol]
    seen, tested = check(manifest, scheme)
    return f"data.split_by={scheme}: {seen} training/validation {what} and {tested} test {what}, none shared"


def _train(variant: Variant, config: str | None, overrides: list[str], launcher: str | None) -> None:
    if launcher is None:
        from ..train.run import run

        for stage in variant.stages:
            run(load_config(config, [*overrides, *variant.stage_overrides(stage)]))
        return
    if not TRAIN_LAUNCHER.is_file():
        raise ProtocolError(f"--launcher runs {TRAIN_LAUNCHER}, which this installation lacks (a source checkout has it)")
    env = {key: value for key, value in os.environ.items() if key not in RENDEZVOUS}
    for command in train_commands(variant, config, overrides, launcher, str(TRAIN_LAUNCHER)):
        result = subprocess.run(command, env=env, check=False)
        if result.returncode != 0:
            raise ProtocolError(f"training failed (exit code {result.returncode}): {shlex.join(command)}")


def _rows(variant: Variant, cfg) -> list[dict]:
    """The table rows of one trained variant."""
    alpha = cfg.protocol.alpha
    where = {"split_by": cfg.data.split_by, "run_dir": variant.run_dir}
    if variant.evaluation == "probe":
        return [_probe_row(variant, cfg, where)]
    if variant.evaluation == "retrieval":
        return _retrieval_rows(variant, cfg, where)
    untestable = None
    if variant.evaluation == "classifier":
        scores = classifier_scores(cfg)
        metric = "eeg_top1"
        if variant.control is not None:
            untestable = drift_untestable(Manifest.for_data(cfg.data).info, cfg.protocol.lowpass_hz)
    elif variant.evaluation == "zero-shot":
        scores = zero_shot_scores(cfg, list(variant.heldout))
        metric = "zero_shot_top1"
    else:
        return _pipeline_rows(variant, cfg, where)
    fit = None
    if variant.control is not None:
        train = classifier_scores(cfg, "train")
        train_chance = chance_level(train.label_counts, train.choices)
        fit = {"train_accuracy": train.correct / train.trials, "train_chance": train_chance,
               "learned": learned(train.correct, train.trials, train_chance, alpha, cfg.protocol.min_train_margin)}
    return [accuracy_row(variant.protocol, variant.name, metric, scores.correct, scores.trials,
                         chance_level(scores.label_counts, scores.choices), alpha, control=variant.control, fit=fit,
                         untestable=untestable, **where)]


def _probe_row(variant: Variant, cfg, where: dict) -> dict:
    """The drift probe on the scheme's training and test splits (raw stored EEG: the probes
    standardise their own features)."""
    manifest = Manifest.for_data(cfg.data)
    sfreq, lowpass = float(manifest.info["sfreq"]), cfg.protocol.lowpass_hz
    train, test = (split_features(manifest, cfg.data.split_by, split, sfreq, lowpass, variant.window)
                   for split in ("train", "test"))
    best = run_probes(train, test, len(manifest.class_names))
    train_trials = len(train[1])
    fit = {"train_accuracy": best.train_accuracy, "train_chance": best.train_chance,
           "learned": learned(round(best.train_accuracy * train_trials), train_trials, best.train_chance,
                              cfg.protocol.alpha, cfg.protocol.min_train_margin)}
    return accuracy_row(variant.protocol, variant.name, "probe_top1", best.correct, best.trials, best.chance,
                        cfg.protocol.alpha, control="drift", p_value=best.p_value, fit=fit, probe=best.probe,
                        untestable=drift_untestable(manifest.info, lowpass), **where)


def _retrieval_rows(variant: Variant, cfg, where: dict) -> list[dict]:
    """Top-k retrieval rows of one subject's run, chance k / candidates."""
    scores = trained_retrieval_scores(cfg)
    extra = {"mode": variant.mode, "subject": parse_scheme(cfg.data.split_by).subject, "candidates": scores.candidates,
             "averaged_repetitions": cfg.protocol.average_repetitions,
             "image_encoder": image_encoder(cfg.model.teacher)}
    return [{**accuracy_row(variant.protocol, variant.name, f"retrieval_top{k}", hits, scores.queries,
                            k / scores.candidates, cfg.protocol.alpha, **where), **extra}
            for k, hits in scores.hits.items()]


def _pipeline_rows(variant: Variant, cfg, where: dict) -> list[dict]:
    """EEG accuracy and generated-image accuracy of the whole pipeline, from ``eeg2im evaluate``."""
    from ..eval.evaluator import evaluate

    run_dir = Path(variant.run_dir)
    metrics = evaluate(cfg, run_dir / "model", run_dir / "eval")
    values = {name: entry["value"] for name, entry in metrics["metrics"].items()}
    protocol = metrics["protocol"]
    manifest = Manifest.for_data(cfg.data)
    counts = np.bincount(manifest.labels(cfg.data.split_by, cfg.eval.split), minlength=len(manifest.class_names))
    trials = protocol["trials"]
    return [
        accuracy_row(variant.protocol, variant.name, "eeg_top1", round(values["eeg_top1"] * trials), trials,
                     chance_level(counts.tolist(), len(manifest.class_names)), cfg.protocol.alpha, **where),
        value_row(variant.protocol, variant.name, "generated_n_way_top_k", values["generated_n_way_top_k"],
                  protocol["top_k"] / protocol["n_way"], protocol["generated_images"], **where),
    ]
