"""Process-group set-up for every launcher: deepspeed, torchrun, or a plain single process."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_s: int = 600) -> DistInfo:
    """Join the process group the launcher describes (RANK/WORLD_SIZE/MASTER_ADDR), or form a
    one-process group so DeepSpeed runs unchanged without a launcher. gloo on CPU, NCCL on GPU;
    ``timeout_s`` bounds every collective, so a dead peer becomes an error instead of a hang."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    if not cuda and "OMP_NUM_THREADS" not in os.environ:
        # CPU ranks on one machine share its cores; oversubscribed intra-op threads slow every rank down
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        import deepspeed

        _skip_inference_allreduce_build()
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s),
                                   verbose=False)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank,
                    torch.device("cuda", local_rank) if cuda else torch.device("cpu"))
    log.info("rank %d/%d on %s (backend %s)", info.rank, info.world_size, info.device, dist.get_backend())
    return info


def _skip_inference_allreduce_build() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce at init that only
    tensor-parallel inference (``inference_all_reduce``) uses; training never calls it.
    ``build_shm_op`` skips ops marked incompatible in ``deepspeed.ops.__compatible_ops__`` (a
    private API: docs/performance.md "Private APIs")."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def bound_every_group(timeout_s: int) -> None:
    """Give every process group formed so far the collective timeout. DeepSpeed forms its own
    groups (ZeRO's data-parallel copy of the world) with torch's default, 30 minutes on gloo, so a
    hung peer would stall them that long; call this after ``deepspeed.initialize``."""
    for group in list(dist.distributed_c10d._world.pg_map):  # private: docs/performance.md "Private APIs"
        dist.set_timeout(timedelta(seconds=timeout_s), group)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (one decision, e.g. which checkpoint to resume, for all)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum across ranks (float64 on the CPU for gloo; in place on the device for NCCL)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values


def all_reduce_max(value: float) -> float:
    """The largest ``value`` over all ranks (e.g. peak memory: the rank that limits the run)."""
    tensor = torch.tensor([value], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor[0])
