"""``eeg2im``: the command-line entry point, one subcommand per job.

Every subcommand that reads a config takes ``--config FILE`` plus ``key.sub=value`` overrides
and ``--dry-run``, which prints the resolved config and exits (as edm's ``--dry-run`` does);
``eeg2im protocol --dry-run`` prints the protocol's plan instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
import typing
from pathlib import Path

import yaml
from tqdm import tqdm

from ..config import ConfigError, Sampler, SynthConfig, dump_config, given_keys, load_config, to_dict
from ..data.remote import RemoteError
from ..eval.report import add_arguments as report_args
from ..eval.report import cmd_report
from ..protocols import PROTOCOLS
from ..train import command as train_command


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def _synth_parser(sub) -> None:
    parser = sub.add_parser("synth", help="write the synthetic EEG/image corpus (shards + manifest)")
    parser.add_argument("--out", required=True, help="output directory")
    hints = typing.get_type_hints(SynthConfig)
    for f in dataclasses.fields(SynthConfig):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        if typing.get_origin(tp) is tuple:
            parser.add_argument(flag, type=lambda s: [float(x) for x in s.split(",")], default=None,
                                help=f"comma-separated (default {','.join(map(str, f.default))})")
        elif typing.get_origin(tp) is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(tp), default=None, help=f"default {f.default}")
        else:
            parser.add_argument(flag, type=tp, default=None, help=f"default {f.default}")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing corpus in --out")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved synth config and exit")


def cmd_synth(args) -> int:
    from ..data.corpus import write_synthetic

    overrides = [f"synth.{f.name}={json.dumps(getattr(args, f.name))}" for f in dataclasses.fields(SynthConfig)
                 if getattr(args, f.name) is not None]
    cfg = load_config(None, overrides)
    if args.dry_run:
        print(yaml.safe_dump({"out": args.out, "synth": to_dict(cfg.synth)}, sort_keys=False))
        return 0
    start = time.perf_counter()
    manifest = write_synthetic(cfg.synth, args.out, overwrite=args.overwrite)
    elapsed = time.perf_counter() - start
    print(f"wrote {cfg.synth.num_samples} samples to {manifest.parent} in {elapsed:.1f} s "
          f"({cfg.synth.num_samples / elapsed:.0f} samples/s)")
    return 0


def _convert_parser(sub) -> None:
    parser = sub.add_parser("convert", help="convert a published EEG/image release to shards + manifest "
                                            "(docs/converters.md)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output corpus directory")
    common.add_argument("--overwrite", action="store_true", help="replace an existing corpus in --out")
    common.add_argument("--workers", type=int, default=1, help="processes writing shards")
    common.add_argument("--samples-per-shard", type=int, default=256)
    common.add_argument("--image-size", type=int, default=None,
                        help="resize images to SIZE x SIZE when writing (default: keep the originals)")
    common.add_argument("--image-format", choices=["jpg", "png"], default="jpg",
                        help="stored format; original files already in it pass through untouched unless resized")
    common.add_argument("--classes", type=lambda s: [c.strip() for c in s.split(",") if c.strip()], default=None,
                        help="comma-separated class names to keep, relabelled 0..k-1 in this order")
    common.add_argument("--seed", type=int, default=0,
                        help="seed of the image/subject/block splits (and of the val concepts/images of "
                             "things-eeg2 and eeg-imagenet-2024)")
    common.add_argument("--split-fractions", type=lambda s: [float(x) for x in s.split(",")], default=[0.8, 0.1, 0.1],
                        help="train,val,test fractions of the image/subject/block schemes (default 0.8,0.1,0.1)")
    kinds = parser.add_subparsers(dest="converter", required=True)
    imagenet = kinds.add_parser("eeg-imagenet", parents=[common], help="Spampinato et al. 2017 (.pth release)")
    imagenet.add_argument("--eeg", required=True, help="release file, e.g. eeg_5_95_std.pth")
    imagenet.add_argument("--splits", required=True, help="splits file, e.g. block_splits_by_image_all.pth")
    imagenet.add_argument("--images", required=True, help="ImageNet images: DIR/<wnid>/<name>.JPEG or DIR/<name>.JPEG")
    imagenet.add_argument("--split-index", type=int, default=0, help="which of the release's splits (default 0)")
    imagenet.add_argument("--window", default="20:460", help="samples START:STOP kept (default 20:460)")
    zhu = kinds.add_parser("eeg-imagenet-2024", parents=[common], help="Zhu et al. 2024 (EEG-ImageNet_*.pth)")
    zhu.add_argument("--eeg", required=True, nargs="+", help="release file(s): EEG-ImageNet_1.pth EEG-ImageNet_2.pth")
    zhu.add_argument("--images", required=True, help="ImageNet images: DIR/<wnid>/<name> (imageNet_images/)")
    zhu.add_argument("--granularity", choices=["coarse", "fine", "all"], default="all",
                     help="keep the 40 coarse, the 40 fine or all 80 classes (default all)")
    zhu.add_argument("--window", default="40:440", help="samples START:STOP kept (default 40:440, as the loaders)")
    zhu.add_argument("--val-fraction", type=float, default=0.1,
                     help="fraction of each class's training images put in the release split's val (default 0.1)")
    things = kinds.add_parser("things-eeg2", parents=[common], help="Gifford et al. 2022 (preprocessed release)")
    things.add_argument("--eeg-dir", required=True, help="folder of sub-XX/preprocessed_eeg_{training,test}.npy")
    things.add_argument("--images", required=True, help="image set folder: training_images/, test_images/")
    things.add_argument("--average-repetitions", action="store_true", help="one sample per (subject, image)")
    things.add_argument("--allow-pickle", action="store_true",
                        help="load the release's pickled .npy dicts (unpickling can execute code: trusted files only)")
    things.add_argument("--val-fraction", type=float, default=0.01,
                        help="fraction of training concepts put in the release split's val (default 0.01)")
    arrays = kinds.add_parser("arrays", parents=[common], help="an [N, C, T] .npy/.npz plus a CSV/Parquet table")
    arrays.add_argument("--eeg", required=True, help=".npy [N, C, T] or .npz with key eeg (+ ch_names, sfreq)")
    arrays.add_argument("--table", required=True, help=".csv/.parquet: image, label, subject[, block, session, split]")
    arrays.add_argument("--images", required=True, help="folder the table's image paths are relative to")
    arrays.add_argument("--sfreq", type=float, default=None, help="sampling rate, when the array carries none")
    arrays.add_argument("--channels", type=lambda s: s.split(","), default=None, help="comma-separated channel names")


def cmd_convert(args) -> int:
    from ..data import convert

    opts = convert.ConvertOptions(out=args.out, overwrite=args.overwrite, workers=args.workers,
                                  samples_per_shard=args.samples_per_shard, image_size=args.image_size,
                                  image_format=args.image_format, classes=args.classes, seed=args.seed,
                                  split_fractions=args.split_fractions)
    if args.converter == "eeg-imagenet":
        manifest = convert.convert_eeg_imagenet(args.eeg, args.splits, args.images, opts, split_index=args.split_index,
                                                window=convert.parse_window(args.window))
    elif args.converter == "eeg-imagenet-2024":
        manifest = convert.convert_eeg_imagenet_2024(args.eeg, args.images, opts, granularity=args.granularity,
                                                     window=convert.parse_window(args.window),
                                                     val_fraction=args.val_fraction)
    elif args.converter == "things-eeg2":
        manifest = convert.convert_things_eeg2(args.eeg_dir, args.images, opts, allow_pickle=args.allow_pickle,
                                               average_repetitions=args.average_repetitions,
                                               val_fraction=args.val_fraction)
    else:
        manifest = convert.convert_arrays(args.eeg, args.table, args.images, opts, sfreq=args.sfreq,
                                          channels=args.channels)
    print(convert.summary(manifest.parent))
    return 0


def cmd_stream(args) -> int:
    """Stream one epoch of a split through the loader and print its throughput."""
    from ..data.corpus import ensure_corpus_on_rank
    from ..data.loader import EEGImageLoader, samples_lost

    cfg = args.cfg
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    ensure_corpus_on_rank(cfg, rank)
    loader = EEGImageLoader(cfg.data, args.split, train=args.split == "train", rank=rank, world_size=world)
    start = time.perf_counter()
    samples = nbytes = batches = 0
    for batch in loader:
        samples += len(batch["key"])
        nbytes += batch["eeg"].nbytes + batch["image"].nbytes
        batches += 1
    elapsed = time.perf_counter() - start
    report = {"rank": rank, "world_size": world, "split": args.split, "batches": batches, "samples": samples,
              "seconds": round(elapsed, 3), "samples_per_s": round(samples / elapsed, 1),
              "MB_per_s": round(nbytes / elapsed / 1e6, 1), "num_workers": cfg.data.num_workers,
              "dropped": sum(map(samples_lost, loader.dropped))}
    print(json.dumps(report))
    return 0


def cmd_generate(args) -> int:
    """EEG trial(s) → PNG images with a released model directory."""
    from PIL import Image

    from ..data.remote import download, is_url
    from ..models.pipeline import EEG2IMPipeline, load_trials, read_corpus_info

    corpus = read_corpus_info(args.model)
    with tempfile.TemporaryDirectory() as fetched:
        eeg = args.eeg
        if is_url(eeg):  # a trial file at a URL: fetched first, then checked as a local one
            eeg = download(eeg, Path(fetched) / Path(eeg.split("?")[0]).name)
        try:
            trials = load_trials(eeg, len(corpus["channel_names"]), int(corpus["time_points"]))
        except ValueError as exc:  # name what the user gave, not the temporary copy
            raise ValueError(str(exc).replace(str(eeg), args.eeg)) from None
    device = _device(args.device)
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()):
        if not args.overwrite:
            raise FileExistsError(f"{out} is not empty; choose another --out or pass --overwrite (which deletes its "
                                  f"trial*_image*.png first, so no images of an earlier run remain)")
        for stale in out.glob("trial*_image*.png"):
            stale.unlink()
    pipeline = EEG2IMPipeline(args.model, device=device)
    out.mkdir(parents=True, exist_ok=True)
    for t, trial in enumerate(tqdm(trials, desc="generating", unit="trial", disable=None)):
        images = pipeline.generate(trial, args.num_images, args.guidance, args.steps, args.sampler, args.seed + t)
        for i, image in enumerate(images):
            Image.fromarray(image).save(out / f"trial{t:04d}_image{i:02d}.png")
    print(f"wrote {len(trials) * args.num_images} images ({len(trials)} trials x {args.num_images}) to {out}")
    return 0


def _device(name: str):
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible to this process; use --device cpu")
    return device


def cmd_export_trial(args) -> int:
    from ..data.export import export_trial

    paths = export_trial(args.root, args.out, key=args.key, index=args.index)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def cmd_export_diffusers(args) -> int:
    from ..models.diffusers_pipeline import export_diffusers

    out = export_diffusers(args.model, args.out, args.sampler)
    print(f"wrote a diffusers pipeline to {out}: DiffusionPipeline.from_pretrained('{out}', trust_remote_code=True)")
    return 0


def cmd_evaluate(args) -> int:
    from ..eval.evaluator import evaluate

    cfg = args.cfg
    run_dir = Path(cfg.run_dir)
    out = Path(args.out) if args.out else run_dir / "eval"
    if (out / "metrics.json").exists() and not args.overwrite:
        raise FileExistsError(f"{out} already holds an evaluation (metrics.json); choose another --out or pass "
                              f"--overwrite to replace it")
    metrics = evaluate(cfg, args.checkpoint or run_dir / "model", out, given=given_keys(args.config, args.overrides))
    print(json.dumps({k: v["value"] for k, v in metrics["metrics"].items()}))
    print(evaluation_summary(metrics, out))
    return 0


def evaluation_summary(metrics: dict, out: Path) -> str:
    """One line a person reads: what was evaluated, the headline numbers beside their chance."""
    protocol = metrics["protocol"]
    trials = f"{protocol['trials']} {protocol['split']} trials"
    if protocol.get("partial"):
        trials += f" (partial: of {protocol['split_trials']})"
    shown = []
    for key in ("eeg_top1", "generated_n_way_top_k", "hue_error", "fid"):
        entry = metrics["metrics"].get(key)
        if entry is None:
            continue
        value = entry["value"]["mean"] if isinstance(entry["value"], dict) else entry["value"]
        chance = f" (chance {entry['chance']:.3g})" if entry.get("chance") is not None else ""
        shown.append(f"{entry.get('name', key)} {value:.3g}{chance}")
    return f"evaluated {trials} x {protocol['images_per_trial']} images: {'; '.join(shown)}; details in {out}"


def cmd_tune(args) -> int:
    """Sweep sampler settings on val; the choice goes into the release for ``eeg2im evaluate``."""
    from ..eval.selection import tune

    # a config file's eval.split is evaluate's (test); tune runs on val and refuses only an override of it
    cfg = args.cfg if "eval.split" in given_keys(None, args.overrides) else dataclasses.replace(
        args.cfg, eval=dataclasses.replace(args.cfg.eval, split="val"))
    selection = tune(cfg, args.checkpoint or Path(cfg.run_dir) / "model", given_keys(args.config, args.overrides))
    print(json.dumps({"selected": selection["selected"], selection["criterion"]: selection["score"],
                      "better": selection["better"], "split": selection["split"], "trials": selection["trials"]}))
    return 0


def cmd_protocol(args) -> int:
    """Train and evaluate what one evaluation protocol needs; merge its rows into RUN_DIR/protocols.json."""
    from ..protocols.runner import run_protocol
    from ..protocols.table import TABLE

    table = run_protocol(args.protocol, args.config, args.overrides, launcher=args.launcher, dry_run=args.dry_run)
    if table is None:
        return 0
    for row in (r for r in table["rows"] if r["protocol"] == args.protocol):
        spread = f" ± {row['spread']:.3f}" if row.get("spread") is not None else ""
        p_value = f", p = {row['p_value']:.2g}" if row["p_value"] is not None else ""
        print(f"{row['variant']}: {row['metric']} = {row['value']:.3f}{spread} (chance {row['chance']:.3f}, "
              f"{row['trials']} trials{p_value}): {row['verdict']}")
    print(f"wrote {Path(args.cfg.run_dir) / TABLE}")
    return 0


def cmd_preview(args) -> int:
    from ..data.preview import render_preview

    print(f"wrote {render_preview(args.root, args.out, args.split, args.classes)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eeg2im", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _synth_parser(sub)
    _convert_parser(sub)
    report_args(sub.add_parser("report", help="self-contained HTML report of a run (RUN_DIR/report.html)"))
    stream = sub.add_parser("stream", help="stream one epoch of a split and print throughput")
    _add_config_args(stream)
    stream.add_argument("--split", default="train", choices=["train", "val", "test"])
    train_command.add_arguments(sub.add_parser("train", help="train EEG2IM stages (single process; use "
                                                             "launchers/train.py under deepspeed/torchrun for several "
                                                             "ranks)"))
    evaluate = sub.add_parser("evaluate", help="accuracy, IS, FID, KID and fine-grained fidelity of a released "
                                               "model (several processes: accelerate launch launchers/evaluate.py)")
    _add_config_args(evaluate)
    evaluate.add_argument("--checkpoint", default=None, help="release directory (default: RUN_DIR/model of the config)")
    evaluate.add_argument("--out", default=None, help="where metrics.json, per_subject.csv and grid.png go "
                                                      "(default: RUN_DIR/eval); the release's model card is updated "
                                                      "only by a complete test evaluation into RUN_DIR/eval")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    tune = sub.add_parser("tune", help="select sampler, steps and guidance on the val split (tune: section); the "
                                       "choice goes into the release for evaluate (several processes: accelerate "
                                       "launch launchers/tune.py)")
    _add_config_args(tune)
    tune.add_argument("--checkpoint", default=None, help="release directory (default: RUN_DIR/model of the config)")
    protocol = sub.add_parser("protocol", help="evaluation protocols that rule out leakage: by-image, leave-one-"
                                               "subject-out, held-out classes, controls, zero-shot retrieval "
                                               "(docs/protocols.md)")
    names = protocol.add_subparsers(dest="protocol", required=True)
    for name in PROTOCOLS:
        one = names.add_parser(name, help=PROTOCOL_HELP[name])
        one.add_argument("--config", help="YAML config (configs/*.yaml)")
        one.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
        one.add_argument("--dry-run", action="store_true",
                         help="print the plan (each run's directory and train commands) and exit; trains nothing")
        one.add_argument("--launcher", default=None,
                         help="run each training under this launcher, e.g. 'deepspeed --num_gpus 8' or 'torchrun "
                              "--nproc_per_node 8' (default: in this process, one rank)")
    preview = sub.add_parser("preview", help="PNG of one stimulus per class with its EEG")
    preview.add_argument("--root", required=True, help="corpus directory (manifest.parquet + shards/)")
    preview.add_argument("--out", required=True, help="output PNG")
    preview.add_argument("--split", default="train", choices=["train", "val", "test"])
    preview.add_argument("--classes", type=int, default=6)
    generate = sub.add_parser(
        "generate", help="generate images from EEG trials with a released model",
        description="Generate images from raw EEG trials with a released model directory. The input is what the "
                    "corpus stores: raw EEG in µV (not z-scored, not band-passed: the release applies its own "
                    "window, band-pass and z-scoring), channels x time in the order and length of the release's "
                    "corpus.json (channel_names, time_points). `eeg2im export-trial` writes such a trial from a "
                    "corpus.")
    generate.add_argument("--model", required=True, help="release directory (RUN_DIR/model)")
    generate.add_argument("--eeg", required=True, help="(a path or a URL) .npy trial [channels, time] or trials [N, "
                                                       "channels, time], or "
                                                       ".npz with key eeg; raw µV as stored in the corpus")
    generate.add_argument("--out", required=True, help="output directory for PNGs (new or empty)")
    generate.add_argument("--overwrite", action="store_true",
                          help="write into a non-empty --out, deleting its trial*_image*.png first")
    generate.add_argument("--num-images", type=int, default=4)
    generate.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    generate.add_argument("--steps", type=int, default=None, help="sampler steps")
    generate.add_argument("--sampler", choices=typing.get_args(Sampler), default=None)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--device", default="cuda" if _cuda() else "cpu")
    diffusers_export = sub.add_parser("export-diffusers", help="write a release as a diffusers pipeline folder "
                                                               "(model_index.json, component folders, Hub model card)")
    diffusers_export.add_argument("--model", required=True, help="release directory (RUN_DIR/model)")
    diffusers_export.add_argument("--out", required=True, help="output folder (new or empty)")
    diffusers_export.add_argument("--sampler", choices=typing.get_args(Sampler), default=None,
                                  help="the pipeline's scheduler (default: the release's model.diffusion.sampler)")
    export = sub.add_parser("export-trial", help="write one trial's raw EEG (.npy) and stimulus from a corpus, "
                                                 "the input `eeg2im generate` takes")
    export.add_argument("--root", required=True, help="corpus directory (manifest.parquet + shards/)")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", help="sample key, e.g. 000000042 (the manifest's key column)")
    which.add_argument("--index", type=int, help="sample index (the manifest's index column)")
    export.add_argument("--out", required=True, help="output directory: KEY.eeg.npy, KEY.png|jpg, KEY.json")
    return parser


PROTOCOL_HELP = {
    "by-image": "check that no test image is trained on, then train and evaluate the whole pipeline",
    "loso": "leave one subject out: a fresh run per subject; accuracy per fold and mean ± std",
    "held-out-classes": "classes never trained on, classified zero-shot by the nearest teacher-feature prototype",
    "controls": "shuffled labels, and drift (< 1 Hz or pre-stimulus EEG): above chance means the corpus leaks",
    "retrieval": "zero-shot retrieval of unseen test concepts' images (THINGS-EEG2 200-way style): top-1/top-5 "
                 "per subject, intra- and inter-subject",
}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


COMMANDS = {"synth": cmd_synth, "stream": cmd_stream, "train": train_command.execute, "generate": cmd_generate,
            "preview": cmd_preview, "evaluate": cmd_evaluate, "tune": cmd_tune, "convert": cmd_convert,
            "report": cmd_report, "protocol": cmd_protocol, "export-trial": cmd_export_trial,
            "export-diffusers": cmd_export_diffusers}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if hasattr(args, "overrides") and args.command != "train":  # train has its own error policy
            args.cfg = load_config(args.config, args.overrides)
            if args.dry_run and args.command != "protocol":  # a protocol's dry run prints its plan
                print(dump_config(args.cfg))
                return 0
        return COMMANDS[args.command](args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, RemoteError) as exc:
        print(f"eeg2im {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
