"""Run the training stages a config asks for, under whatever launcher started the processes.

``deepspeed launchers/train.py --config configs/X.yaml [key=value ...] [--resume] [--dry-run]``
(or ``torchrun``, or plain ``python``). Everything that can be checked is checked before any
work starts (no corpus written, no process group formed): the config, the stages' dependencies,
the DeepSpeed batch arithmetic at the launcher's world size, and that every rank gets a
validation shard. ``--resume`` without a checkpoint trains from the start (with a warning), so
a job script may always pass it. Failures end in one ``train: error:`` line that says the fix.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import deepspeed
import torch

from ..config import STAGES, Config, ConfigError, dump_config, load_config
from ..data.corpus import ensure_corpus_on_rank
from ..data.format import SampleError
from ..data.manifest import MANIFEST, Manifest
from .checkpoint import CheckpointError
from .distributed import barrier, init_distributed
from .ds_config import build_deepspeed_config
from .loop import train_stage
from .release import export_release
from .stages import missing_dependencies, stage_weights

log = logging.getLogger(__name__)


def planned_stages(cfg: Config) -> list[str]:
    return list(STAGES) if cfg.train.stage == "all" else [cfg.train.stage]


def check_before_work(cfg: Config) -> list[str]:
    """The planned stages, once everything that can fail without doing work has been checked."""
    stages = planned_stages(cfg)
    missing = missing_dependencies(cfg, stages)
    if missing:
        raise ConfigError(f"train.stage={cfg.train.stage} needs the exports of earlier stages, missing: "
                          f"{', '.join(str(stage_weights(cfg, m)) for m in missing)}. Run train.stage=all, or "
                          f"train.stage={missing[0]} first with the same run_dir")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by every launcher before the processes start
    for name in stages:
        build_deepspeed_config(cfg.train, cfg.train.stage_config(name), cfg.data.batch_size, world_size,
                               torch.cuda.is_available())
    _check_validation_shards(cfg, world_size)
    return stages


def _check_validation_shards(cfg: Config, world_size: int) -> None:
    """Validation gives each rank whole shards, so there must be at least one per rank."""
    if (Path(cfg.data.root) / MANIFEST).is_file():
        try:
            shards = len(Manifest.for_data(cfg.data).shards(cfg.data.split_by, "val"))
        except ValueError as exc:  # data.split_by or data.classes that this corpus cannot serve
            raise ConfigError(str(exc)) from None
        where = f"the validation split of {cfg.data.root}"
    elif cfg.data.synthesize:
        shards = -(-cfg.synth.num_samples // cfg.synth.samples_per_shard)
        where = "the corpus synth: describes"
    else:
        return  # no corpus: ensure_corpus reports it
    if shards < world_size:
        raise ConfigError(f"{where} has {shards} shards for {world_size} ranks; validation needs one per rank: "
                          f"use at most {shards} ranks, or write the corpus with smaller shards "
                          f"(synth.samples_per_shard, or the converter's --samples-per-shard)")


def run(cfg: Config, resume: bool = False) -> Path:
    """Train the planned stages; when the run holds every stage's export, write the release."""
    stages = check_before_work(cfg)
    rank = int(os.environ.get("RANK", 0))
    ensure_corpus_on_rank(cfg, rank)
    dist = init_distributed(cfg.train.collective_timeout_s)
    try:
        run_dir = Path(cfg.run_dir)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(dump_config(cfg))
        for name in stages:
            if train_stage(cfg, name, dist, resume=resume) is None:
                break  # halted early (train.halt_after): later stages wait for --resume
        release = run_dir / "model"
        if dist.is_main and all(stage_weights(cfg, s).is_file() for s in STAGES):
            export_release(cfg, release)
        barrier()
    finally:
        # DeepSpeed's own destroy also drops its cached groups, so a later run in this process starts
        # clean, after a failure too
        deepspeed.comm.destroy_process_group()
    return release


def _peer_failure(exc: BaseException) -> bool:
    """A collective that failed because another rank died or hung (gloo raises plain RuntimeErrors)."""
    return isinstance(exc, torch.distributed.DistError) or any(
        s in str(exc) for s in ("gloo", "NCCL", "Connection reset", "Connection closed", "Timed out"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of each stage")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [rank {os.environ.get('RANK', 0)}] "
                                                   "%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            print(dump_config(cfg))
            return 0
        run(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError, CheckpointError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    except (SampleError, RuntimeError) as exc:
        rank, text = os.environ.get("RANK", "0"), str(exc)
        if isinstance(exc, SampleError) or "SampleError: " in text:  # a DataLoader worker re-raises it wrapped
            sample = text.rsplit("SampleError: ", 1)[-1].strip()
            print(f"train: error: rank {rank} met a bad sample: {sample}. Fix or remove it, or set "
                  f"data.on_error=skip to leave bad samples out (listed in stages/<stage>/dropped.json)",
                  file=sys.stderr)
            return 2
        if not _peer_failure(exc):
            raise
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        print(f"train: error: rank {rank} lost its peers ({first}): another rank died or hung, see its log. "
              f"Relaunch with --resume to continue from the last complete checkpoint", file=sys.stderr)
        return 3
    return 0
