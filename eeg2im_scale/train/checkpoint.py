"""Resumable checkpoints (DeepSpeed engine state + per-rank loader/RNG state) and fp32 exports.

Layout of ``<stage dir>/checkpoints``: one folder per tag (``step00000100``) holding DeepSpeed's
files and ``client_rank<r>.pt`` per rank, and a ``latest`` file naming the newest *complete*
tag. ``latest`` is written by rank 0 only after every rank has finished its part (a barrier), and
atomically (write + rename), so a save killed half-way leaves it on the previous checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .distributed import barrier

LATEST = "latest"


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


def latest_tag(ckpt_dir: Path) -> str | None:
    path = Path(ckpt_dir) / LATEST
    return path.read_text().strip() if path.is_file() else None


def save(engine, ckpt_dir: Path, step: int, rank: int, client: dict, keep: int) -> str:
    """Collective: every rank must call it (DeepSpeed's save hangs if only rank 0 does)."""
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step}, save_latest=False)
    torch.save({**client, "rng": rng_state()}, Path(ckpt_dir) / tag / f"client_rank{rank:04d}.pt")
    barrier()
    if rank == 0:
        tmp = Path(ckpt_dir) / (LATEST + ".tmp")
        tmp.write_text(tag)
        os.replace(tmp, Path(ckpt_dir) / LATEST)
        _prune(Path(ckpt_dir), keep, tag)
    barrier()
    return tag


def _prune(ckpt_dir: Path, keep: int, current: str) -> None:
    tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step"))
    for name in tags[: max(0, len(tags) - keep)]:
        if name != current:
            shutil.rmtree(ckpt_dir / name, ignore_errors=True)


def load(engine, ckpt_dir: Path, rank: int) -> tuple[int, dict] | None:
    """Restore the engine and this rank's client state from ``latest``; None if there is none."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    client_path = Path(ckpt_dir) / tag / f"client_rank{rank:04d}.pt"
    if not client_path.is_file():
        raise FileNotFoundError(f"{client_path} is missing: checkpoint {tag} was written by a run with fewer "
                                f"ranks; resume with the same world size")
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_dir}/{tag}")
    client = torch.load(client_path, weights_only=True)
    set_rng_state(client.pop("rng"))
    return int(client_state["step"]), client


def consolidated_state_dict(engine, ckpt_dir: Path, tag: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 weights on rank 0: straight from the module without ZeRO partitioning, else
    reassembled from the ZeRO checkpoint with DeepSpeed's zero_to_fp32."""
    if zero_stage == 0:
        return {k: v.detach().float().cpu() for k, v in engine.module.state_dict().items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    return {k: v.float().contiguous() for k, v in state.items()}
