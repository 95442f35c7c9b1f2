"""EEG encoder benchmark: classic braindecode backbones against EEG foundation models as the high-level encoder.

Why: ``model.highlevel.backbone`` may be any braindecode model, the foundation models (LaBraM,
CBraMod, EEGPT, BIOT) included behind their input adapter (``models/foundation.py``). This script
compares them as the package trains them, on equal terms: EEG top-1 of the high-level encoder's
class head on the test split, with its chance level and one-sided binomial p-value, the encoder's
parameter count, the highlevel stage's training samples/s, and what the input adapter did.

Method: one synthetic corpus (the config's ``synth`` section after overrides), written once under
``--work-dir`` and reused, split ``data.split_by=image`` (no test image is trained on;
:func:`check_images_disjoint` is asserted before training). The teacher stage is trained once;
every backbone gets its own run directory holding a copy of the teacher's export
(``stages/teacher/final.safetensors``, all the highlevel stage loads: ``DEPENDENCIES``) and trains
``train.stage=highlevel`` with the same seed, steps and corpus at each learning rate of ``--lrs``.
One learning rate cannot suit both families (at 3e-3 the small transformers collapsed to one
class in a trial run), so each backbone keeps the one with the best val top-1 (val images are
neither trained on nor tested) and only that run is scored on test. Training runs in this process with
one rank (:func:`eeg2im_scale.train.run.run`, as the protocol runner does by default): the same
DeepSpeed loop a launcher would start, without a launcher start-up (~16 s here) per backbone, and
the figures compared are per-backbone, not multi-rank. Accuracy:
:func:`eeg2im_scale.protocols.evaluate.classifier_scores` on the trained run; samples/s: the
loop's ``stats.jsonl`` with the first of three logging windows discarded (as
``train_throughput.py``).

Foundation models are built at a small size (:data:`FOUNDATION`, two transformer layers) from
random initialisation: no weights can be fetched here. ``--weights NAME=DIR`` adds a row that
starts NAME from a local ``save_pretrained`` directory (its size arguments read from
``DIR/config.json``). LaBraM takes channels by name: the synthetic corpus's BioSemi labels are
mapped with ``backbone_channel_map: nearest:biosemi128``.

Default: ``tests/configs/tiny_train.yaml`` (16 channels x 128 samples at 250 Hz) with 1536 samples
of 8 classes at ``class_snr`` 1, teacher 100 steps, 1000 highlevel steps (~8 epochs) per backbone
and learning rate, lrs 3e-3, 1e-3, 3e-4. Cost on the 2-core CPU: ~55 s per run (the teacher sees
32 px images), so ~30 min for 9 backbones x 3 learning rates (``runtime_s`` in the JSON).
Run ``python benchmarks/encoders.py --out results.json [--backbones A B ...] [--weights NAME=DIR]
[key=value ...]``; ``--quick`` is a smoke run (EEGNet and LaBraM, tiny corpus, 6 steps).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eeg2im_scale.bench.environment import machine_info, synthetic_corpus  # noqa: E402 - after the repo path
from eeg2im_scale.bench.summaries import read_stats, summarize  # noqa: E402
from eeg2im_scale.config import load_config, to_dict  # noqa: E402
from eeg2im_scale.data.manifest import Manifest  # noqa: E402
from eeg2im_scale.models.build import Geometry, build_highlevel, encoder_inputs  # noqa: E402
from eeg2im_scale.protocols.evaluate import check_images_disjoint, classifier_scores  # noqa: E402
from eeg2im_scale.protocols.stats import binomial_p_value, chance_level  # noqa: E402
from eeg2im_scale.train.run import run as train  # noqa: E402
from eeg2im_scale.train.stages import DEPENDENCIES  # noqa: E402

DEFAULT_CONFIG = REPO / "tests" / "configs" / "tiny_train.yaml"
CLASSIC = ("EEGNet", "ShallowFBCSPNet", "Deep4Net", "EEGConformer", "ATCNet")  # braindecode's defaults
FOUNDATION = {  # two transformer layers, width 64, patches short enough for several per 0.5 s trial
    # mean-pooled tokens as LaBraM's own fine-tuning (braindecode's default reads the CLS token, which at random
    # init barely depends on the input: the class head collapsed to one class in a trial run)
    "Labram": {"patch_size": 25, "num_layers": 2, "num_heads": 4, "embed_dim": 64, "conv_out_channels": 4,
               "use_mean_pooling": True},
    "CBraMod": {"n_layer": 2, "nhead": 4, "dim_feedforward": 128, "emb_dim": 64},  # patch_size stays 200
    "EEGPT": {"patch_size": 16, "patch_stride": 16, "depth": 2, "embed_dim": 64, "num_heads": 4, "embed_num": 1},
    "BIOT": {"embed_dim": 64, "num_heads": 4, "num_layers": 2, "hop_length": 25},
}
CHANNEL_MAP = {"Labram": "nearest:biosemi128"}  # by-name models: the synthetic corpus's BioSemi labels
FULL = {"overrides": ["synth.num_samples=1536", "synth.num_classes=8", "synth.class_snr=1.0",
                      "synth.samples_per_shard=64"], "teacher_steps": 100, "steps": 1000, "lrs": [3e-3, 1e-3, 3e-4]}
QUICK = {"overrides": ["synth.num_samples=96", "data.batch_size=4"], "teacher_steps": 2, "steps": 6, "lrs": [3e-3, 1e-3],
         "backbones": ["EEGNet", "Labram"]}
WINDOWS = 3  # logging windows per highlevel stage; the first is discarded


def drop_checkpoints(run_dir: Path) -> None:
    """Only the stage exports are read here; the ZeRO checkpoints (the teacher's ~360 MB) are not."""
    for path in run_dir.glob("stages/*/checkpoints"):
        shutil.rmtree(path)


def row_overrides(name: str, weights: str | None) -> list[str]:
    """The highlevel encoder of one row; a weights row takes its size arguments from the directory."""
    kwargs = dict(FOUNDATION.get(name, {}))
    if weights:
        saved = json.loads((Path(weights) / "config.json").read_text())
        kwargs = {key: saved[key] for key in kwargs if key in saved}
    return [f"model.highlevel.backbone={name}", f"model.highlevel.backbone_kwargs={json.dumps(kwargs)}",
            f"model.highlevel.backbone_channel_map={CHANNEL_MAP.get(name, 'null')}",
            f"model.highlevel.backbone_weights={weights or 'null'}"]


def train_run(config: Path, common: list[str], work: Path, key: str, name: str, weights: str | None, lr: float,
              log) -> dict:
    """One backbone at one learning rate, scored on val only (the sweep's selection split)."""
    run_dir = work / "runs" / key / f"lr{lr:g}"
    shutil.rmtree(run_dir, ignore_errors=True)
    for dep in DEPENDENCIES["highlevel"]:  # the teacher trained once, reused by every row
        target = run_dir / "stages" / dep / "final.safetensors"
        target.parent.mkdir(parents=True)
        shutil.copy2(work / "runs" / "teacher" / "stages" / dep / "final.safetensors", target)
    overrides = [*common, f"run_dir={run_dir}", "train.stage=highlevel", f"train.highlevel.lr={lr}",
                 *row_overrides(name, weights)]
    cfg = load_config(config, overrides)
    log(f"{key} at lr {lr:g}: training the highlevel stage ...")
    started = time.perf_counter()
    try:
        train(cfg)
    except Exception as exc:  # one run failing must not lose the others
        log(f"{key} at lr {lr:g}: FAILED: {type(exc).__name__}: {exc}")
        return {"lr": lr, "error": f"{type(exc).__name__}: {exc}"}
    seconds = time.perf_counter() - started
    drop_checkpoints(run_dir)
    val = classifier_scores(cfg, "val")
    return {"lr": lr, "cfg": cfg, "overrides": overrides[len(common):], "val_top1": val.correct / val.trials,
            "val_correct": val.correct, "val_trials": val.trials, "train_wall_s": round(seconds, 1),
            "throughput": summarize(read_stats(run_dir, "highlevel"), cfg.data.batch_size * cfg.train.grad_accum)}


def train_backbone(config: Path, common: list[str], work: Path, key: str, name: str, weights: str | None,
                   lrs: list[float], log) -> dict:
    """A row: the backbone trained at every learning rate, the one with the best val top-1 (the first
    of a tie) scored once on test."""
    row = {"backbone": name, "family": "foundation" if name in FOUNDATION else "classic",
           "init": f"pretrained: {weights}" if weights else "random"}
    runs = [train_run(config, common, work, key, name, weights, lr, log) for lr in lrs]
    sweep = {f"{run['lr']:g}": ({"error": run["error"]} if "error" in run else
                                {k: run[k] for k in ("val_top1", "val_correct", "val_trials", "train_wall_s")})
             for run in runs}
    trained = [run for run in runs if "error" not in run]
    if not trained:
        return {**row, "lr_sweep": sweep, "error": runs[0]["error"]}
    best = max(trained, key=lambda run: run["val_top1"])  # max keeps the first of equals
    cfg = best["cfg"]
    geo = Geometry(cfg.data, Manifest.for_data(cfg.data).selected_info)
    encoder = build_highlevel(cfg.model, geo)
    scores = classifier_scores(cfg)
    chance = chance_level(scores.label_counts, scores.choices)
    return {**row, "overrides": best["overrides"], "lr_sweep": sweep, "selected_lr": best["lr"],
            "params": sum(p.numel() for p in encoder.parameters()),
            "backbone_params": sum(p.numel() for p in encoder.backbone.parameters()),
            "eeg_top1": scores.correct / scores.trials, "correct": scores.correct, "trials": scores.trials,
            "test_label_counts": scores.label_counts, "chance": chance,
            "p_value": binomial_p_value(scores.correct, scores.trials, chance),
            "samples_per_s": best["throughput"]["samples_per_s"], "throughput": best["throughput"],
            "train_wall_s": best["train_wall_s"], "input": encoder_inputs(cfg.model, geo)["highlevel"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training config (default: the tiny one)")
    parser.add_argument("--backbones", nargs="+", default=[*CLASSIC, *FOUNDATION], help="braindecode model names")
    parser.add_argument("--weights", nargs="+", default=[], metavar="NAME=DIR",
                        help="extra rows: NAME started from a local save_pretrained directory")
    parser.add_argument("--steps", type=int, help=f"highlevel steps per backbone (default {FULL['steps']})")
    parser.add_argument("--lrs", type=float, nargs="+", help=f"highlevel learning rates swept per backbone, "
                        f"selected on val top-1 (default {' '.join(map(str, FULL['lrs']))})")
    parser.add_argument("--teacher-steps", type=int, help=f"teacher steps, once (default {FULL['teacher_steps']})")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench" / "encoders",
                        help="corpus (written once, reused), the teacher's run and one run per backbone")
    parser.add_argument("--quick", action="store_true", help="smoke run: EEGNet and Labram, 96 samples, batch 4, 6 steps")
    parser.add_argument("overrides", nargs="*", help="key=value for every run (after the script's own settings)")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    steps, teacher_steps = args.steps or mode["steps"], args.teacher_steps or mode["teacher_steps"]
    backbones = mode["backbones"] if args.quick else args.backbones
    lrs = args.lrs or mode["lrs"]
    if steps < 2 * WINDOWS:
        parser.error(f"--steps must be at least {2 * WINDOWS}: {WINDOWS} logging windows of at least 2 steps")
    weights = dict(item.split("=", 1) for item in args.weights)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    config, work = args.config.resolve(), args.work_dir.resolve()
    settings = [*mode["overrides"], *args.overrides]
    started, machine = time.perf_counter(), machine_info("deepspeed", "braindecode")
    root, reused = synthetic_corpus(load_config(config, settings).synth, work / "corpus", config.stem)
    common = [*settings, f"data.root={root}", "data.split_by=image", f"train.teacher.steps={teacher_steps}",
              f"train.highlevel.steps={steps}", f"train.log_every={steps // WINDOWS}",
              f"train.checkpoint_every={max(steps, teacher_steps)}"]
    seen, tested = check_images_disjoint(Manifest(root), "image")
    log(f"teacher: training once ({teacher_steps} steps) ...")
    shutil.rmtree(work / "runs", ignore_errors=True)
    teacher_started = time.perf_counter()
    train(load_config(config, [*common, f"run_dir={work / 'runs' / 'teacher'}", "train.stage=teacher"]))
    teacher_s = time.perf_counter() - teacher_started
    drop_checkpoints(work / "runs" / "teacher")
    rows = {}
    for key, name, path in [*((b, b, None) for b in backbones), *((f"{n}_pretrained", n, d) for n, d in weights.items())]:
        rows[key] = train_backbone(config, common, work, key, name, path, lrs, log)
    cfg = load_config(config, common)
    report = {
        "benchmark": "encoders", "mode": "quick" if args.quick else "full", "date": machine["date"],
        "machine": {**machine, "torch_threads": torch.get_num_threads(),
                    "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "settings": {"config": str(config.relative_to(REPO) if config.is_relative_to(REPO) else config),
                     "overrides_common": common, "split_by": "image", "seed": cfg.train.seed,
                     "teacher_steps": teacher_steps, "highlevel_steps": steps, "batch_size": cfg.data.batch_size,
                     "lrs": lrs, "selection": "per backbone, the learning rate with the highest val top-1 (the first "
                                              "of a tie); test scored once, for that one",
                     "ranks": 1, "training": "eeg2im_scale.train.run.run in this process, one rank",
                     "foundation_kwargs": FOUNDATION, "channel_map": CHANNEL_MAP,
                     "weights": "random initialisation unless a row's init names a directory: pretrained weights "
                                "cannot be fetched here (--weights NAME=DIR adds local save_pretrained rows)",
                     "corpus": {"root": str(root), "reused": reused, "num_samples": cfg.synth.num_samples,
                                "num_classes": cfg.synth.num_classes, "channels": cfg.synth.channels,
                                "time_points": cfg.synth.time_points, "sfreq": cfg.synth.sfreq,
                                "class_snr": cfg.synth.class_snr, "train_val_images": seen, "test_images": tested,
                                "images_disjoint": True},
                     "teacher_train_s": round(teacher_s, 1), "resolved": to_dict(cfg)},
        "method": "teacher stage trained once and its export copied into every backbone's run; train.stage=highlevel "
                  "with the same seed, steps and corpus at each learning rate of the sweep, the one with the best "
                  "val top-1 kept (val images are neither trained on nor tested); EEG top-1 of its class head on the "
                  "test split of "
                  "data.split_by=image (no test image trained on), chance = share of the most frequent test class "
                  "(at least 1/classes), one-sided binomial p; samples/s from stats.jsonl, first of 3 windows "
                  "discarded",
        "rows": rows,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for key, row in rows.items():
        print(f"{key:<22}" + (row["error"] if "error" in row else
                              f"{row['params']:>9} params  top-1 {row['eeg_top1']:.3f} (chance {row['chance']:.3f}, "
                              f"p {row['p_value']:.3g}) at lr {row['selected_lr']:g}  {row['samples_per_s']:.1f} samples/s"))
    print(f"wrote {args.out} ({report['runtime_s']} s)")
    return 1 if any("error" in row for row in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
