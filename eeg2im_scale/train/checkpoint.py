"""Resumable checkpoints: one :class:`Checkpointer` over the DeepSpeed engine and ``Stateful`` parts.

A part is anything with ``state_dict()`` / ``load_state_dict(state)`` (the torchtitan contract).
*Per-rank* parts (the loader's position, the random streams) are written by every rank into
``client_rank<r>.pt``; *shared* parts (the EMA) are written once, by rank 0, as
``<name>.safetensors``. A new stateful part is one entry in one of the two dicts.

Layout of ``<stage dir>/checkpoints``: one folder per tag (``step00000100``) holding DeepSpeed's
files, the parts' files and ``complete.json``, and a ``latest`` file naming the newest complete
tag.

A save commits only after every rank has written its part (a barrier): rank 0 records the
folder's files and sizes in ``complete.json``, then points ``latest`` at the tag (write + rename).
A save killed at any point before that leaves ``latest`` on the previous checkpoint. A tag whose
files no longer match its ``complete.json`` (deleted, truncated, half-copied) is never loaded:
resuming falls back to the newest complete tag before it, with a warning.

A checkpoint written by another number of ranks is loaded through DeepSpeed's universal
checkpoint: rank 0 converts the ZeRO-partitioned tag (``ds_to_universal``) into
``checkpoints/universal/<tag>``, every rank loads it with ``checkpoint.load_universal``, and the
conversion is deleted. The data loader then restarts the interrupted epoch and the per-rank
random streams are reseeded (see docs/reliability.md).

Fault injection (docs/reliability.md): ``EEG2IM_FAULT_KILL_BEFORE_COMMIT=<step>`` makes rank 0
SIGKILL itself inside the save of that step, after every rank's files are written and before the
commit, to prove on a given filesystem that an interrupted save is never resumed from.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .distributed import DistInfo, barrier, broadcast_object

log = logging.getLogger(__name__)

LATEST = "latest"
COMPLETE = "complete.json"
UNIVERSAL = "universal"
TAG = re.compile(r"step\d{8}")
FAULT_KILL_BEFORE_COMMIT = "EEG2IM_FAULT_KILL_BEFORE_COMMIT"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed, with what to do about it."""


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def rng_state() -> dict:
    """Every RNG's state in types that ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def reseed(*parts: int) -> None:
    """Fresh python/numpy/torch streams derived from ``parts`` (e.g. seed, step, rank)."""
    seed = int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def latest_tag(ckpt_dir: Path) -> str | None:
    path = Path(ckpt_dir) / LATEST
    return path.read_text().strip() if path.is_file() else None


def read_client(path: Path) -> dict:
    """A rank's client state: tensors and plain containers only, never arbitrary pickles."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _tags(ckpt_dir: Path) -> list[str]:
    return sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and TAG.fullmatch(p.name))


def _prune(ckpt_dir: Path, keep: int, current: str) -> None:
    """Keep the ``keep`` newest tags up to ``current``; later ones are leftovers of an interrupted
    run that resumed from an earlier checkpoint."""
    tags = _tags(ckpt_dir)
    older = [t for t in tags if t <= current]
    for name in older[: max(0, len(older) - keep)] + [t for t in tags if t > current]:
        if name != current:
            shutil.rmtree(ckpt_dir / name, ignore_errors=True)


def problems(tag_dir: Path) -> list[str]:
    """Why ``tag_dir`` is not a complete checkpoint (empty: it is)."""
    try:
        files = json.loads((tag_dir / COMPLETE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{COMPLETE} missing or unreadable (the save did not finish)"]
    found = []
    for name, size in files.items():
        path = tag_dir / name
        if not path.is_file():
            found.append(f"{name} missing")
        elif path.stat().st_size != size:
            found.append(f"{name} has {path.stat().st_size} bytes, {size} when saved")
    return found


@dataclass(frozen=True)
class ResumePoint:
    tag: str
    step: int
    world_size: int  # the number of ranks that wrote it
    partitioned: bool  # ZeRO-partitioned optimizer state: another world size needs the universal format


def resume_point(ckpt_dir: Path) -> ResumePoint | None:
    """The checkpoint to resume from: ``latest`` if it is complete, else the newest complete tag
    before it (warning); None when there is no checkpoint at all."""
    ckpt_dir = Path(ckpt_dir)
    latest = latest_tag(ckpt_dir)
    if latest is None:
        return None
    for tag in [latest] + [t for t in reversed(_tags(ckpt_dir)) if t < latest]:
        found = problems(ckpt_dir / tag)
        if not found:
            record = json.loads((ckpt_dir / tag / COMPLETE).read_text())
            partitioned = any(name.endswith("optim_states.pt") for name in record["files"])
            return ResumePoint(tag, int(record["step"]), int(record["world_size"]), partitioned)
        log.warning("checkpoint %s is incomplete (%s); trying the one before it", ckpt_dir / tag, "; ".join(found))
    raise CheckpointError(f"{ckpt_dir} holds no complete checkpoint (latest names {latest}); delete {ckpt_dir.parent} "
                          f"to train the stage afresh, or run without --resume")


def agreed_resume_point(ckpt_dir: Path, dist: DistInfo) -> ResumePoint | None:
    """Collective :func:`resume_point`: rank 0 picks the checkpoint and every rank follows it (or
    raises its error)."""
    found = None
    if dist.is_main:
        try:
            found = resume_point(ckpt_dir)
        except CheckpointError as exc:
            found = exc
    found = broadcast_object(found)
    if isinstance(found, Exception):
        raise found
    return found


def needs_universal(point: ResumePoint, world_size: int) -> bool:
    """Whether loading ``point`` at ``world_size`` ranks goes through DeepSpeed's universal format
    (the engine must then be built with ``checkpoint.load_universal``)."""
    return point.world_size != world_size and point.partitioned


def _to_universal(src: Path, dst: Path) -> None:
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    shutil.rmtree(dst, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # in-process and serial (no worker pool): the ranks already occupy the machine
    ds_to_universal(argparse.Namespace(input_folder=str(src), output_folder=str(dst), num_extract_workers=1,
                                       num_merge_workers=1, keep_temp_folder=False, strict=True,
                                       inject_missing_state=True))


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class RandomStreams:
    """This rank's python/numpy/torch(/cuda) random streams as a ``Stateful`` part. Restored
    exactly at the world size that saved them; at another one each rank's old stream has no
    heir, so the streams are reseeded from (seed, step, rank)."""

    def __init__(self, seed: int, rank: int, world_size: int, step: Callable[[], int]):
        self.seed, self.rank, self.world_size, self.step = seed, rank, world_size, step

    def state_dict(self) -> dict:
        return {**rng_state(), "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size", self.world_size) == self.world_size:
            set_rng_state(state)
        else:
            reseed(self.seed, self.step(), self.rank)


class Checkpointer:
    """Saves and restores one stage's training state: the DeepSpeed engine (model, optimizer,
    scheduler; its own sharded files), ``per_rank`` parts (every rank its own file) and
    ``shared`` parts (identical on every rank, written by rank 0)."""

    def __init__(self, ckpt_dir: Path, engine, dist: DistInfo, keep: int, per_rank: dict[str, Stateful],
                 shared: dict[str, Stateful] | None = None):
        self.dir, self.engine, self.dist, self.keep = Path(ckpt_dir), engine, dist, keep
        self.per_rank, self.shared = per_rank, shared or {}

    def _client_path(self, tag: str, rank: int) -> Path:
        return self.dir / tag / f"client_rank{rank:04d}.pt"

    def save(self, step: int) -> str:
        """Collective: every rank must call it (DeepSpeed's save hangs if only rank 0 does)."""
        tag, rank = tag_for(step), self.dist.rank
        tag_dir = self.dir / tag
        # re-saving a step (after resuming from an earlier checkpoint) uncommits it before any file changes
        (tag_dir / COMPLETE).unlink(missing_ok=True)
        self.engine.save_checkpoint(str(self.dir), tag=tag, client_state={"step": step}, save_latest=False)
        torch.save({name: part.state_dict() for name, part in self.per_rank.items()}, self._client_path(tag, rank))
        if self.dist.is_main:
            for name, part in self.shared.items():
                save_file(part.state_dict(), str(tag_dir / f"{name}.safetensors"))
        barrier()
        if self.dist.is_main:
            if os.environ.get(FAULT_KILL_BEFORE_COMMIT) == str(step):
                os.kill(os.getpid(), signal.SIGKILL)
            self._commit(tag_dir, step)
            _prune(self.dir, self.keep, tag)
        barrier()
        return tag

    def _commit(self, tag_dir: Path, step: int) -> None:
        files = {p.name: p.stat().st_size for p in sorted(tag_dir.iterdir()) if p.is_file() and p.name != COMPLETE}
        for r in range(self.dist.world_size):  # stat'ed by name: a shared filesystem may list other nodes' files late
            path = self._client_path(tag_dir.name, r)
            files[path.name] = path.stat().st_size
        record = {"step": step, "world_size": self.dist.world_size, "files": files}
        _write_atomic(tag_dir / COMPLETE, json.dumps(record, indent=1))
        _write_atomic(self.dir / LATEST, tag_dir.name)

    def load(self, point: ResumePoint) -> int:
        """Restore the engine and every part from ``point``; returns its step.

        At another world size the optimizer state comes through the universal format, and each
        rank reads rank 0's per-rank parts (the loader then restarts the epoch, the random
        streams are reseeded)."""
        rank, world_size = self.dist.rank, self.dist.world_size
        load_dir = self.dir
        if point.world_size != world_size:
            log.warning("checkpoint %s was written by %d ranks, resuming with %d: %s", point.tag, point.world_size,
                        world_size, "converting it to DeepSpeed's universal format" if point.partitioned else
                        "its optimizer state is not partitioned and loads as is")
            if needs_universal(point, world_size):
                load_dir = self.dir / UNIVERSAL
                if rank == 0:
                    _to_universal(self.dir / point.tag, load_dir / point.tag)
                barrier()
        path, client_state = self.engine.load_checkpoint(str(load_dir), tag=point.tag)
        if path is None or int(client_state["step"]) != point.step:
            raise CheckpointError(f"DeepSpeed could not load checkpoint {load_dir / point.tag}")
        barrier()
        if load_dir != self.dir and rank == 0:
            shutil.rmtree(load_dir, ignore_errors=True)
        own = self._client_path(point.tag, rank)
        client = read_client(own if own.is_file() else self._client_path(point.tag, 0))
        for name, part in self.per_rank.items():
            part.load_state_dict(client[name])
        for name, part in self.shared.items():
            part.load_state_dict(load_file(str(self.dir / point.tag / f"{name}.safetensors")))
        return point.step


def consolidated_state_dict(engine, ckpt_dir: Path, tag: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 weights on rank 0: straight from the module without ZeRO partitioning, else
    reassembled from the ZeRO checkpoint with DeepSpeed's zero_to_fp32."""
    if zero_stage == 0:
        return {k: v.detach().float().cpu() for k, v in engine.module.state_dict().items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    return {k: v.float().contiguous() for k, v in state.items()}
