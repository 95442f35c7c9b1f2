"""Run the training stages a config asks for, under whatever launcher started the processes
(the command line is ``command.py``).

Everything that can be checked is checked before any work starts (no corpus written, no process
group formed): the config, the stages' dependencies, the DeepSpeed batch arithmetic at the
launcher's world size, and that every rank gets a validation shard. ``--resume`` without a
checkpoint trains from the start (with a warning), so a job script may always pass it.
"""

from __future__ import annotations

import os
from pathlib import Path

import deepspeed
import torch

from ..config import STAGES, Config, ConfigError, dump_config
from ..data.corpus import ensure_corpus_on_rank
from ..data.manifest import MANIFEST, Manifest
from ..data.remote import is_url
from .distributed import barrier, init_distributed
from .ds_config import build_deepspeed_config
from .loop import train_stage
from .release import export_release
from .stages import missing_dependencies, stage_weights


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
    if is_url(cfg.data.root) or (Path(cfg.data.root) / MANIFEST).is_file():
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
