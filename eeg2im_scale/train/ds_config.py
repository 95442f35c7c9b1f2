"""The DeepSpeed config of a stage, generated from the typed config (and optionally patched)."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import ConfigError, StageConfig, TrainConfig, merge_dicts


def _scheduler(train: TrainConfig, stage: StageConfig) -> dict:
    """DeepSpeed's warm-up schedulers refuse 0 warm-up steps and run the first two steps of any
    warm-up at their minimum. ``warmup_steps: 0`` therefore becomes one warm-up step whose minimum
    is the full rate: no warm-up, as the config documents; so does a stage of one or two steps,
    which a warm-up would leave untrained. WarmupCosineLR also sets a rate of 0 before its first
    step unless told that step 0 has begun (``last_batch_iteration: 0``)."""
    warmup = min(stage.warmup_steps, stage.steps - 1) if stage.steps > 2 else 0
    start = 0.0 if warmup else 1.0  # the rate warm-up starts from, as a fraction of stage.lr
    steps = max(warmup, 1)
    if train.lr_schedule == "cosine":
        return {"type": "WarmupCosineLR", "params": {"total_num_steps": stage.steps, "warmup_num_steps": steps,
                                                     "warmup_min_ratio": start, "cos_min_ratio": 0.1,
                                                     **({} if warmup else {"last_batch_iteration": 0})}}
    if train.lr_schedule == "linear":
        return {"type": "WarmupDecayLR", "params": {"total_num_steps": stage.steps, "warmup_num_steps": steps,
                                                    "warmup_min_lr": start * stage.lr, "warmup_max_lr": stage.lr}}
    return {"type": "WarmupLR", "params": {"warmup_num_steps": steps, "warmup_min_lr": start * stage.lr,
                                           "warmup_max_lr": stage.lr}}


def build_deepspeed_config(train: TrainConfig, stage: StageConfig, micro_batch: int, world_size: int,
                           on_gpu: bool) -> dict:
    """ZeRO stage, precision, accumulation, clipping, AdamW and warm-up/decay for one stage.

    AdamW is PyTorch's (``torch_adam``) so no C++/CUDA op is JIT-compiled, and its fused kernel
    (``fused``; CPU and CUDA): ZeRO-1/2 hand it one flat fp32 partition, on which the unfused
    update makes partition-sized temporaries every step (measured: docs/performance.md
    "Measured choices in the code"). A user JSON (``train.deepspeed_config``) may replace any of it, e.g. with
    DeepSpeed's FusedAdam.
    """
    if train.precision == "fp16" and not on_gpu:
        raise ConfigError("train.precision=fp16 needs a GPU; use bf16 or fp32 on the CPU")
    zero: dict = {"stage": train.zero_stage}
    if train.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": micro_batch * train.grad_accum * world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": {"lr": stage.lr, "weight_decay": stage.weight_decay,
                                                  "betas": [0.9, 0.999], "eps": 1e-8, "torch_adam": True,
                                                  "fused": True}},
        "scheduler": _scheduler(train, stage),
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train.deepspeed_config:
        path = Path(train.deepspeed_config)
        if not path.is_file():
            raise ConfigError(f"train.deepspeed_config: file not found: {path}")
        try:
            config = merge_dicts(config, json.loads(path.read_text()))
        except ValueError as exc:
            raise ConfigError(f"train.deepspeed_config: {path} is not valid JSON ({exc})") from None
        # the loader batches data.batch_size samples and the loop accumulates train.grad_accum of them:
        # the JSON may not say otherwise, or DeepSpeed would scale and log another batch than it gets
        for key, knob, value in (("train_micro_batch_size_per_gpu", "data.batch_size", micro_batch),
                                 ("gradient_accumulation_steps", "train.grad_accum", train.grad_accum)):
            if config[key] != value:
                raise ConfigError(f"{path}: {key} {config[key]} contradicts {knob}={value}; remove {key} from the "
                                  f"JSON and set {knob}={config[key]} instead")
        params = config.get("optimizer", {}).get("params", {})
        if not params.get("torch_adam") or "foreach" in params:
            params.pop("fused", None)  # DeepSpeed's own Adam takes no such argument; torch refuses it with foreach
        expected = micro_batch * train.grad_accum * world_size
        if config["train_batch_size"] != expected:
            raise ConfigError(f"{path}: train_batch_size {config['train_batch_size']} is impossible with "
                              f"data.batch_size={micro_batch} × train.grad_accum={train.grad_accum} × {world_size} "
                              f"ranks = {expected}; remove train_batch_size from the JSON (it is derived), or change "
                              f"data.batch_size / train.grad_accum / the number of ranks to match it")
    return config
