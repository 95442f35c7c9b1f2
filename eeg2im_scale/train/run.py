"""Run the training stages a config asks for, under whatever launcher started the processes.

``deepspeed launchers/train.py --config configs/X.yaml [key=value ...] [--resume] [--dry-run]``
(or ``torchrun``, or plain ``python``). Everything that can be checked is checked before any
work starts: the config, the stages' dependencies, the DeepSpeed batch arithmetic.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import deepspeed

from ..config import STAGES, Config, ConfigError, dump_config, load_config
from ..data.corpus import ensure_corpus_on_rank
from .distributed import barrier, init_distributed
from .loop import train_stage
from .stages import missing_dependencies, stage_weights

log = logging.getLogger(__name__)


def planned_stages(cfg: Config) -> list[str]:
    return list(STAGES) if cfg.train.stage == "all" else [cfg.train.stage]


def check_before_work(cfg: Config) -> list[str]:
    stages = planned_stages(cfg)
    missing = missing_dependencies(cfg, stages)
    if missing:
        raise ConfigError(f"train.stage={cfg.train.stage} needs the exports of earlier stages, missing: "
                          f"{', '.join(str(stage_weights(cfg, m)) for m in missing)}. Run train.stage=all, or "
                          f"train.stage={missing[0]} first with the same run_dir")
    return stages


def run(cfg: Config, resume: bool = False) -> Path:
    """Train the planned stages; when the run holds every stage's export, write the release."""
    stages = check_before_work(cfg)
    rank = int(os.environ.get("RANK", 0))
    ensure_corpus_on_rank(cfg, rank)
    dist = init_distributed(cfg.train.collective_timeout_s)
    run_dir = Path(cfg.run_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    for name in stages:
        if train_stage(cfg, name, dist, resume=resume) is None:
            break  # halted early (train.halt_after): later stages wait for --resume
    release = run_dir / "model"
    if dist.is_main and all(stage_weights(cfg, s).is_file() for s in STAGES):
        from ..models.pipeline import export_release

        export_release(cfg, release)
    barrier()
    # DeepSpeed's own destroy also drops its cached groups, so a later run in this process starts clean
    deepspeed.comm.destroy_process_group()
    return release


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
    except (ConfigError, FileNotFoundError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    return 0
