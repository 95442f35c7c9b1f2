"""The training loop of one stage: DeepSpeed engine, streaming data, checkpoints, telemetry.

It orchestrates and does not compute: the stage object (``stages.py``) owns the model and its
loss; the loader owns data order and position; ``checkpoint`` owns persistence.

Besides ``stats.jsonl``, a stage directory holds the sample logs and ``dropped.json`` of
``records.py``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from functools import partial
from pathlib import Path

import deepspeed
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ..config import Config, DataConfig, TrainConfig
from ..data.loader import EEGImageLoader
from ..models.precision import cast_for_training
from . import checkpoint
from .distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    bound_every_group,
)
from .ds_config import build_deepspeed_config
from .metrics import (
    MetricsWriter,
    peak_memory_mib,
    reset_peak_memory,
    training_flops_per_sample,
)
from .records import SampleLog, cut_jsonl, report_dropped
from .stages import Stage, build_stage, stage_dir

log = logging.getLogger(__name__)


def move_batch(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Tensors to the device; floating tensors (the EEG) to the engine's compute dtype."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out


def compute_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _epochs(loader: EEGImageLoader):
    """Endless batches; each pass over ``loader`` is one epoch (its position is resumable)."""
    while True:
        yield from loader


def train_stage(cfg: Config, name: str, dist: DistInfo, resume: bool = False) -> Path | None:
    """Train stage ``name`` to ``train.<name>.steps`` optimizer steps and export its fp32 weights.

    Returns the exported weights (``stages/<name>/final.safetensors``), or None when the run
    halted early (``train.halt_after``) and the stage is to be resumed.
    """
    out = stage_dir(cfg, name)
    final = out / "final.safetensors"
    if resume and final.is_file():
        log.info("stage %s already finished (%s); skipping", name, final)
        return final
    stage_cfg = cfg.train.stage_config(name)
    ckpt_dir = out / "checkpoints"
    point = checkpoint.agreed_resume_point(ckpt_dir, dist) if resume else None
    if point is None and dist.is_main:
        if resume:
            log.warning("--resume, but %s holds no checkpoint: training stage %s from its start", ckpt_dir, name)
        elif out.exists():
            log.warning("%s exists: training stage %s afresh (pass --resume to continue it instead)", out, name)
        shutil.rmtree(out, ignore_errors=True)  # no stale checkpoints, stats or exports mixed into the new run
    barrier()
    dtype = compute_dtype(cfg.train.precision)
    stage, engine = _build_engine(cfg, name, dist, dtype, universal=point is not None and
                                  checkpoint.needs_universal(point, dist.world_size))
    loader = EEGImageLoader(cfg.data, "train", rank=dist.rank, world_size=dist.world_size)
    torch.manual_seed(cfg.train.seed + 1 + dist.rank)  # per-rank noise, dropout and CFG masks
    streams = checkpoint.RandomStreams(cfg.train.seed, dist.rank, dist.world_size, step=lambda: engine.global_steps)
    ckpt = checkpoint.Checkpointer(ckpt_dir, engine, dist, cfg.train.keep_checkpoints,
                                   per_rank={"loader": loader, "rng": streams}, shared=stage.stateful())
    step = 0
    if point is not None:
        step = ckpt.load(point)
        if dist.is_main:
            for path in [out / "stats.jsonl", *sorted((out / "samples").glob("rank*.jsonl"))]:
                cut_jsonl(path, step)  # steps after the checkpoint are about to be redone
        log.info("stage %s resumed at step %d (epoch %d, batch %d)", name, step, loader.state.epoch,
                 loader.state.batches_done)
    barrier()
    if dist.is_main:
        log.info("stage %s: %d steps, global batch %d, %d samples/epoch, ZeRO-%s, %s", name, stage_cfg.steps,
                 engine.train_batch_size(), loader.samples_per_epoch, engine.zero_optimization_stage(),
                 cfg.train.precision)
    step = _optimizer_steps(cfg.train, stage, engine, loader, ckpt, dist, dtype, out, step)
    if step < stage_cfg.steps:
        log.info("stage %s halted at step %d of %d (train.halt_after); continue with --resume", name, step,
                 stage_cfg.steps)
        return None
    validation, val_dropped = validate(cfg.data, engine, dist, dtype)
    if dist.is_main:
        (out / "validation.json").write_text(json.dumps(validation, indent=1))
        log.info("stage %s validation: %s", name, validation)
    report_dropped(out, dist, val_dropped)
    _export(stage, engine, ckpt_dir, dist, final)
    return final


def _build_engine(cfg: Config, name: str, dist: DistInfo, dtype: torch.dtype,
                  universal: bool) -> tuple[Stage, deepspeed.DeepSpeedEngine]:
    """The stage's module under a DeepSpeed engine, with identical initial weights on every rank."""
    torch.manual_seed(cfg.train.seed)  # ZeRO-3 partitions each rank's local copy
    stage: Stage = build_stage(name, cfg, dist.device, dtype)
    cast_for_training(stage.module, dtype)  # ZeRO-3 casts only parameters; BatchNorm statistics stay float32
    ds_config = build_deepspeed_config(cfg.train, cfg.train.stage_config(name), cfg.data.batch_size,
                                       dist.world_size, dist.device.type == "cuda")
    if universal:
        ds_config["checkpoint"] = {"load_universal": True}
    engine, _, _, _ = deepspeed.initialize(model=stage.module, config=ds_config,
                                           model_parameters=[p for p in stage.module.parameters() if p.requires_grad])
    bound_every_group(cfg.train.collective_timeout_s)
    stage.attach(engine)
    return stage, engine


def _optimizer_steps(train_cfg: TrainConfig, stage: Stage, engine, loader: EEGImageLoader,
                     ckpt: checkpoint.Checkpointer, dist: DistInfo, dtype: torch.dtype, out: Path, step: int) -> int:
    """Train from ``step`` until the stage's last step or ``train.halt_after``; returns the step
    reached. Logs a stats window every ``log_every`` steps and checkpoints every
    ``checkpoint_every``, at the end and where it halts."""
    total = train_cfg.stage_config(stage.name).steps
    halt_at = step + train_cfg.halt_after if train_cfg.halt_after else None
    samples = SampleLog(out / "samples" / f"rank{dist.rank:04d}.jsonl", loader)
    metrics = MetricsWriter(out, dist.is_main, append=step > 0)
    reset_peak_memory(dist.device)  # each stage reports its own high-water mark
    flops_per_sample = None
    window = _new_window()
    batches = _epochs(loader)
    # rank 0 only; `disable=None` also hides it when output is not a terminal (logs, CI)
    progress = tqdm(total=total, initial=step, desc=f"stage {stage.name}", unit="step",
                    disable=None if dist.is_main else True)
    engine.train()
    while step < total and step != halt_at:
        tick = time.perf_counter()
        batch = next(batches)
        samples.write(engine.global_steps + 1, batch["key"])
        batch = move_batch(batch, dist.device, dtype)
        fetched = time.perf_counter()
        if flops_per_sample is None:
            flops_per_sample = training_flops_per_sample(partial(engine, batch),
                                                         partial(stage.module.frozen_forward, batch),
                                                         len(batch["key"]))
        loss, terms = engine(batch)
        engine.backward(loss)
        engine.step()
        if dist.device.type == "cuda":
            torch.cuda.synchronize(dist.device)
        _accumulate(window, {"loss": loss.detach(), **terms}, len(batch["key"]), fetched - tick, time.perf_counter() - fetched)
        if engine.global_steps == step:
            continue  # inside a gradient-accumulation cycle
        step = engine.global_steps
        progress.update(1)
        stage.after_step(engine.train_batch_size())
        if step % train_cfg.log_every == 0 or step == total:
            _log_window(metrics, step, window, engine, flops_per_sample, dist, loader)
            window = _new_window()
        if step % train_cfg.checkpoint_every == 0 or step in (total, halt_at):
            ckpt.save(step)
    progress.close()
    metrics.close()
    samples.close()
    return step


def _new_window() -> dict:
    return {"loss_sum": {}, "count": 0, "data_s": 0.0, "compute_s": 0.0, "samples": 0}


def _accumulate(window: dict, terms: dict, samples: int, data_s: float, compute_s: float) -> None:
    window["data_s"] += data_s
    window["compute_s"] += compute_s
    window["samples"] += samples
    window["count"] += 1
    for key, value in terms.items():  # device tensors: no host sync until the window is logged
        window["loss_sum"][key] = window["loss_sum"].get(key, 0.0) + value.detach().float()


@torch.no_grad()
def validate(data_cfg: DataConfig, engine, dist: DistInfo, dtype: torch.dtype) -> tuple[dict, list[dict]]:
    """Mean loss terms over the validation split, every sample once across ranks, and this rank's
    dropped validation samples.

    Ranks hold different numbers of validation batches; under ZeRO-3 every forward is a
    collective, so ranks that run out repeat their last batch with weight 0 until all are done.
    """
    loader = EEGImageLoader(data_cfg, "val", train=False, rank=dist.rank, world_size=dist.world_size)
    batches = [b for b in loader if b["key"]]
    counts = torch.zeros(dist.world_size, dtype=torch.float64)
    counts[dist.rank] = len(batches)
    most = int(all_reduce_sum(counts).max())
    engine.eval()
    sums: dict[str, float] = {}
    weight_total = 0.0
    for i in range(most):
        batch = batches[min(i, len(batches) - 1)] if batches else None
        if batch is None:
            raise RuntimeError(f"rank {dist.rank} holds no validation shard; use fewer ranks or more shards")
        weight = float(len(batch["key"])) if i < len(batches) else 0.0
        _, terms = engine(move_batch(batch, dist.device, dtype))
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + weight * float(value)
        weight_total += weight
    engine.train()
    names = sorted(sums)
    totals = all_reduce_sum(torch.tensor([sums[n] for n in names] + [weight_total], dtype=torch.float64)).tolist()
    return ({"samples": int(totals[-1]), **{n: totals[i] / max(totals[-1], 1) for i, n in enumerate(names)}},
            loader.dropped)


def _log_window(metrics: MetricsWriter, step: int, window: dict, engine, flops_per_sample: float,
                dist: DistInfo, loader: EEGImageLoader) -> None:
    """Average the window's losses over micro-steps and ranks; sum throughput over ranks."""
    names = sorted(window["loss_sum"])
    local = [float(window["loss_sum"][n]) / window["count"] for n in names]
    local += [window["samples"], window["data_s"], window["compute_s"]]
    totals = all_reduce_sum(torch.tensor(local, dtype=torch.float64)).tolist()
    ranks = dist.world_size
    losses = {n: totals[i] / ranks for i, n in enumerate(names)}
    samples, data_s, compute_s = totals[len(names)], totals[len(names) + 1] / ranks, totals[len(names) + 2] / ranks
    wall = data_s + compute_s
    values = {**{f"loss/{k}": round(v, 6) for k, v in losses.items()},
              "lr": engine.get_lr()[0], "samples_per_s": round(samples / wall, 2),
              "data_wait_fraction": round(data_s / wall, 4), "step_time_s": round(wall / window["count"], 4),
              "tflops_per_s": round(samples * flops_per_sample / wall / 1e12, 6),
              "peak_memory_mib": round(all_reduce_max(peak_memory_mib(dist.device)), 1),
              "kimg": round(step * engine.train_batch_size() / 1000, 3), "epoch": loader.state.epoch,
              "dropped_samples": loader.state.dropped}
    metrics.write(step, values)
    if dist.is_main:
        log.info("step %d %s", step, " ".join(f"{k}={v}" for k, v in values.items()))


def _export(stage: Stage, engine, ckpt_dir: Path, dist: DistInfo, final: Path) -> None:
    """Consolidated fp32 weights (zero_to_fp32) of the trained module, written by rank 0."""
    barrier()
    tag = checkpoint.latest_tag(ckpt_dir)
    zero_stage = engine.zero_optimization_stage()
    if dist.is_main:
        state = checkpoint.consolidated_state_dict(engine, ckpt_dir, tag, zero_stage)
        tensors = stage.export_tensors(state)
        tmp = final.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(final)
        log.info("stage %s exported %d tensors to %s", stage.name, len(tensors), final)
    barrier()
