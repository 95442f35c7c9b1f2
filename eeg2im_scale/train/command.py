"""The ``train`` command, one parser and one error policy for both ways in:

    eeg2im train --config configs/X.yaml [key=value ...] [--resume] [--dry-run]     # one process
    deepspeed --num_gpus 2 launchers/train.py --config configs/X.yaml [...]           # several ranks

(``torchrun`` or plain ``python`` also launch ``launchers/train.py``.) Failures end in one
``eeg2im train: error:`` line that says the fix; exit code 2 for what the user can fix (config,
missing input, damaged checkpoint, bad sample), 3 when a rank lost its peers (relaunch with
``--resume``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..config import ConfigError, dump_config, load_config

PROG = "eeg2im train"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint of each stage (from the start, with a warning, "
                             "if there is none)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's


def execute(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            print(dump_config(cfg))
            return 0
        from .run import run  # deepspeed and the models load only when there is work to do

        run(cfg, resume=args.resume)
    except Exception as exc:
        return _failure(exc)
    return 0


def _failure(exc: Exception) -> int:
    """Print the one line for a failure the user can act on and return its exit code; re-raise
    anything else (a bug shows its traceback)."""
    from ..data.format import SampleError
    from .checkpoint import CheckpointError

    rank, text = os.environ.get("RANK", "0"), str(exc)
    if isinstance(exc, (ConfigError, FileNotFoundError, CheckpointError)):
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, SampleError) or (isinstance(exc, RuntimeError) and "SampleError: " in text):
        sample = text.rsplit("SampleError: ", 1)[-1].strip()  # a DataLoader worker re-raises it wrapped
        print(f"{PROG}: error: rank {rank} met a bad sample: {sample}. Fix or remove it, or set "
              f"data.on_error=skip to leave bad samples out (listed in stages/<stage>/dropped.json)", file=sys.stderr)
        return 2
    if isinstance(exc, RuntimeError) and _peer_failure(exc):
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        print(f"{PROG}: error: rank {rank} lost its peers ({first}): another rank died or hung, see its log. "
              f"Relaunch with --resume to continue from the last complete checkpoint", file=sys.stderr)
        return 3
    raise exc


def _peer_failure(exc: BaseException) -> bool:
    """A collective that failed because another rank died or hung (gloo raises plain RuntimeErrors)."""
    import torch

    return isinstance(exc, torch.distributed.DistError) or any(
        s in str(exc) for s in ("gloo", "NCCL", "Connection reset", "Connection closed", "Timed out"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [rank {os.environ.get('RANK', 0)}] "
                                                   "%(levelname)s %(name)s: %(message)s")
    return execute(args)
