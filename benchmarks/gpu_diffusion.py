"""GPU benchmark of the diffusion stage's FiLM UNet: attention kernels, torch.compile, ZeRO vs DDP.

Why: the diffusion UNet dominates training FLOPs, and three knobs decide its speed on a GPU:
the attention kernel (``model.attention``: xformers or PyTorch SDPA; diffusers' naive
bmm-softmax-bmm ``AttnProcessor`` as the reference), ``torch.compile``, and the engine
(DeepSpeed ZeRO-1/2/3 as ``launchers/train.py`` runs it, or plain PyTorch DDP). This script
times one training step of the UNet alone under each, so the defaults can be chosen from numbers.

Method: the model is the package's ``models.build.build_unet`` at ``configs/synthetic.yaml``'s
geometry, and the step is the package's own ``train.stages.DiffusionModule.forward`` (float32 noise
schedule and target, only the UNet input in the compute dtype, CFG drop mask) with the frozen EEG
encoders' output given as an input (``UNetStep``): the UNet is timed, not the encoders. Grad
clipping 1.0, AdamW. Inputs are synthetic uint8 images and conditioning vectors made on the device
beforehand (4 batches in rotation), so every number is compute only, with no data wait. Per configuration: a fresh model (seed 0), warm-up
steps discarded (they include torch.compile's compilation, reported as ``warmup_s``), then timed
steps between two ``torch.cuda.synchronize``; samples/s = timed samples / wall time, with the
per-step median from CUDA events beside it. TFLOP/s = samples/s x training FLOPs per sample
(``train.metrics.training_flops_per_sample``: 3 x the forward's FLOPs counted by
``FlopCounterMode`` with the naive attention processor, whose matmuls it sees; the same count is
used for every backend); MFU divides by the GPU's dense bf16 peak from a table (recorded), and
``mfu_vs_matmul`` by a measured 8192^3 bf16 matmul. Peak memory is ``max_memory_allocated`` since
the model was built (weights + optimizer state + activations). Precision: plain-PyTorch rows
(attention, compile, DDP) keep fp32 weights and run the step under bf16 autocast with
``torch.optim.AdamW``; DeepSpeed rows use the repo's ``build_deepspeed_config`` (bf16 weights,
fp32 master copy, ``torch_adam`` AdamW, WarmupCosineLR), as training does. DDP and ZeRO run in
this process as a 1-rank group (nccl on GPU). A configuration that fails (an OOM is retried at
half the batch, at most 3 times) records its error instead of ending the run.

``python benchmarks/gpu_diffusion.py --out DIR`` writes DIR/gpu_diffusion.json and .png;
``--quick`` is a CPU smoke run (16 px, tiny channels, 2 steps; xformers skipped, compile with the
``aot_eager`` backend; under a minute on an idle 2-core machine). ``--append FILE`` extends an
earlier result file (rows carry ``run``; ``runs`` lists each call's argv and environment), so the
grid can be split over several time-limited GPU calls; ``--engines``/``--compile-engines`` pick
the engine rows (``--compile-engines zero2`` times a compiled UNet inside DeepSpeed);
``--profile N`` adds each row's top host and device ops over N profiled steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import socket
import sys
import time
import traceback
import types
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eeg2im_scale.bench.environment import machine_info  # noqa: E402 - after the repo is on the path
from eeg2im_scale.config import load_config  # noqa: E402
from eeg2im_scale.models.attention import select_attention_backend  # noqa: E402
from eeg2im_scale.models.build import Geometry, build_unet, condition_dim  # noqa: E402
from eeg2im_scale.models.precision import cast_for_training  # noqa: E402
from eeg2im_scale.train.ds_config import build_deepspeed_config  # noqa: E402
from eeg2im_scale.train.metrics import peak_memory_mib, reset_peak_memory, training_flops_per_sample  # noqa: E402
from eeg2im_scale.train.stages import DiffusionModule  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "synthetic.yaml"
DEFAULT_BATCH = {64: 128, 128: 64}
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' datasheets; first match wins.
BF16_PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
                    ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
                    ("A10G", 70.0), ("L4", 121.0)]
OOM_RETRIES = 3


# ---- the step ---------------------------------------------------------------------------------------

class UNetStep(DiffusionModule):
    """The diffusion stage's training step with the frozen encoders' output given in the batch
    (``cond``): everything else is ``DiffusionModule.forward`` itself."""

    def __init__(self, unet: nn.Module, diffusion_cfg, dtype: torch.dtype, compile_backend: str | None = None):
        super().__init__(unet, None, None, diffusion_cfg, dtype, compile_backend)

    def frozen_forward(self, batch: dict) -> torch.Tensor:
        return batch["cond"].to(self.dtype)


def film_unet(ctx, size: int, backend: str) -> nn.Module:
    """The training UNet at image size ``size``; ``backend`` "naive" installs diffusers' reference
    bmm-softmax-bmm ``AttnProcessor`` (FLOP counting, and the baseline row)."""
    torch.manual_seed(0)
    model_cfg = dataclasses.replace(ctx.cfg.model, diffusion=ctx.dcfg,
                                    attention="sdpa" if backend == "naive" else backend)
    unet = build_unet(model_cfg, Geometry.of_synth(ctx.cfg.synth, dataclasses.replace(ctx.cfg.data, image_size=size)))
    if backend == "naive":
        from diffusers.models.attention_processor import Attention, AttnProcessor

        for layer in (m for m in unet.modules() if isinstance(m, Attention)):
            layer.set_processor(AttnProcessor())
    return unet


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(ctx, size: int, batch: int, n: int = 4) -> list[dict]:
    g = torch.Generator(device=ctx.device).manual_seed(1)
    return [{"image": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=ctx.device, generator=g),
             "cond": torch.randn(batch, ctx.cond_dim, device=ctx.device, generator=g)} for _ in range(n)]


def profile_steps(step, batches, steps: int, device: torch.device, top: int = 12) -> dict:
    """``steps`` more steps under ``torch.profiler``: the ops with the most self time per step, on
    the device and on the host. Why: the throughput rows say *that* an engine is slower, these
    say where its time goes (kernels, copies, host-side hooks, synchronisations)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(batches[i % len(batches)])
        sync(device)
    events = prof.key_averages()

    def table(attr: str) -> list[dict]:
        ranked = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:top]
        return [{"op": e.key, "calls_per_step": round(e.count / steps, 1),
                 "self_ms_per_step": round(getattr(e, attr, 0) / 1e3 / steps, 3)} for e in ranked if getattr(e, attr, 0)]

    return {"steps": steps, "self_cpu_total_ms_per_step": round(sum(e.self_cpu_time_total for e in events) / 1e3 / steps, 3),
            "top_host": table("self_cpu_time_total"),
            **({"top_device": table("self_device_time_total")} if device.type == "cuda" else {})}


def time_steps(step, batches, warmup: int, steps: int, device: torch.device, profile: int = 0) -> dict:
    """Warm-up (discarded), then ``steps`` timed steps between two synchronizations, then
    ``profile`` profiled steps (not timed)."""
    t0 = time.perf_counter()
    loss = None
    for i in range(warmup):
        loss = step(batches[i % len(batches)])
    sync(device)
    warmup_s = time.perf_counter() - t0
    cuda = device.type == "cuda"
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)] if cuda else []
    host = []
    start = time.perf_counter()
    marks[0].record() if cuda else host.append(start)
    for i in range(steps):
        loss = step(batches[i % len(batches)])
        marks[i + 1].record() if cuda else host.append(time.perf_counter())
    sync(device)
    wall = time.perf_counter() - start
    per_step = ([marks[i].elapsed_time(marks[i + 1]) for i in range(steps)] if cuda
                else [1e3 * (host[i + 1] - host[i]) for i in range(steps)])
    per_step.sort()
    return {"warmup_s": round(warmup_s, 3), "timed_s": round(wall, 4), "step_ms_median": round(per_step[len(per_step) // 2], 3),
            "step_ms_min": round(per_step[0], 3), "step_ms_max": round(per_step[-1], 3),
            "loss_last": float(loss.detach().float()) if loss is not None else None,
            **({"profile": profile_steps(step, batches, profile, device)} if profile else {})}


# ---- one configuration -----------------------------------------------------------------------------

def run_plain(ctx, size: int, batch: int, backend: str, compiled: bool, ddp: bool) -> dict:
    """fp32 weights, bf16 autocast, torch AdamW; optionally torch.compile'd UNet or a DDP wrapper."""
    device = ctx.device
    unet = film_unet(ctx, size, backend)
    info = {"compile_backend": ctx.compile_backend} if compiled else {}
    module = UNetStep(unet, ctx.dcfg, torch.float32, ctx.compile_backend if compiled else None).to(device)
    params = [p for p in module.parameters() if p.requires_grad]
    model = module
    if ddp:
        model = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(params, lr=ctx.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = model(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return {**info, **time_steps(step, make_batches(ctx, size, batch), ctx.warmup, ctx.steps, device, ctx.profile)}


def run_deepspeed(ctx, size: int, batch: int, backend: str, zero: int, compiled: bool = False) -> dict:
    """The engine ``train_stage`` builds: module cast to bf16, the repo's DeepSpeed config at this ZeRO stage."""
    import deepspeed

    device = ctx.device
    unet = film_unet(ctx, size, backend)
    module = cast_for_training(UNetStep(unet, ctx.dcfg, torch.bfloat16, ctx.compile_backend if compiled else None),
                               torch.bfloat16)
    train_cfg = dataclasses.replace(ctx.cfg.train, zero_stage=zero, precision="bf16", grad_accum=1,
                                    deepspeed_config=None, grad_clip=1.0)
    ds_config = build_deepspeed_config(train_cfg, ctx.cfg.train.diffusion, batch, 1, device.type == "cuda")
    engine, _, _, _ = deepspeed.initialize(model=module, config=ds_config,
                                           model_parameters=[p for p in module.parameters() if p.requires_grad])

    def step(batch):
        loss, _ = engine(batch)
        engine.backward(loss)
        engine.step()
        return loss

    try:
        basic = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO wraps torch's AdamW
        return {"ds_optimizer": type(engine.optimizer).__name__, "adamw_fused": bool(basic.defaults.get("fused")),
                **time_steps(step, make_batches(ctx, size, batch), ctx.warmup, ctx.steps, device, ctx.profile)}
    finally:
        if hasattr(engine, "destroy"):
            engine.destroy()


def cleanup(ctx) -> None:
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def measure(ctx, row: dict, fn) -> dict:
    """Run ``fn(batch)`` with OOM retries at half the batch; fill ``row`` with the numbers or the error."""
    size, batch = row["image_size"], row["batch_size"]
    if ctx.budget_s and time.perf_counter() - ctx.t_start > ctx.budget_s:
        return {**row, "status": "skipped", "error": f"time budget of {ctx.budget_s:.0f} s spent before this row"}
    oom = []
    while True:
        cleanup(ctx)
        reset_peak_memory(ctx.device)
        error = None
        try:
            out = fn(batch)
        except torch.OutOfMemoryError as exc:
            error = f"OutOfMemoryError: {str(exc).splitlines()[0]}"
            out = None
        except Exception as exc:  # noqa: BLE001 - one configuration's failure must not end the run
            error = f"{type(exc).__name__}: {exc}"
            ctx.log(traceback.format_exc(limit=6))
            out = None
        finally:
            if ctx.compile_used:
                torch._dynamo.reset()
                ctx.compile_used = False
        peak = peak_memory_mib(ctx.device)
        cleanup(ctx)
        if out is not None:
            break
        if error.startswith("OutOfMemoryError") and len(oom) < OOM_RETRIES and batch > 1:
            oom.append(batch)
            batch //= 2
            continue
        return {**row, "status": "error", "error": error[:2000], **({"oom_at_batch": oom} if oom else {})}
    samples_per_s = ctx.steps * batch / out["timed_s"]
    fps = ctx.flops[size]["training_flops_per_sample"]
    tflops = samples_per_s * fps / 1e12
    result = {**row, "batch_size": batch, "status": "ok" if math.isfinite(out["loss_last"]) else "nan_loss",
              "samples_per_s": round(samples_per_s, 2), "tflops": round(tflops, 3),
              "mfu": round(tflops / ctx.peak_tflops, 4) if ctx.peak_tflops else None,
              "mfu_vs_matmul": round(tflops / ctx.matmul_tflops, 4) if ctx.matmul_tflops else None,
              "peak_mem_mib": round(peak, 1), **out}
    if oom:
        result["oom_at_batch"] = oom
    if ctx.device.type == "cuda":
        result["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved(ctx.device) / 2**20, 1)
    return result


# ---- environment ------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict:
    env = {**machine_info("deepspeed", "diffusers", "xformers", "triton"), "torch_cuda": torch.version.cuda,
           "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_capability=f"{p.major}.{p.minor}", gpu_sms=p.multi_processor_count,
                   gpu_memory_gib=round(p.total_memory / 2**30, 1))
        try:
            import xformers

            env["xformers_cpp_library"] = bool(getattr(xformers, "_has_cpp_library", False))
        except Exception as exc:  # noqa: BLE001
            env["xformers_import_error"] = f"{type(exc).__name__}: {exc}"
    return env


def bf16_peak(name: str) -> float | None:
    return next((tf for key, tf in BF16_PEAK_TFLOPS if key.lower() in name.lower()), None)


def matmul_tflops(device: torch.device, n: int = 8192) -> float:
    """Measured ceiling: median of 10 n^3 bf16 matmuls on random data, after 3 warm-ups."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    times = []
    for i in range(13):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        torch.mm(a, b)
        e1.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(e0.elapsed_time(e1) / 1e3)
    del a, b
    return 2 * n**3 / sorted(times)[len(times) // 2] / 1e12


def count_flops(ctx, size: int) -> dict:
    """Training FLOPs per sample: 3 x forward (naive attention so every matmul is counted), batch 2, fp32."""
    unet = film_unet(ctx, size, "naive").to(ctx.device)
    b = 2
    x = torch.randn(b, 3, size, size, device=ctx.device)
    t = torch.randint(0, 1000, (b,), device=ctx.device)
    c = torch.randn(b, ctx.cond_dim, device=ctx.device)
    fps = training_flops_per_sample(lambda: unet(x, t, c, None), lambda: None, b)
    params = sum(p.numel() for p in unet.parameters())
    ctx.head_dim = unet.unet.config.attention_head_dim
    return {"forward_gflops_per_sample": round(fps / 3 / 1e9, 3), "training_flops_per_sample": fps,
            "training_gflops_per_sample": round(fps / 1e9, 3), "parameters": params}


def init_process_group(device: torch.device) -> str:
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_backend()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                      LOCAL_WORLD_SIZE="1")
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, rank=0, world_size=1, **kwargs)
    return backend


# ---- output -------------------------------------------------------------------------------------------

def label(row: dict) -> str:
    name = row["attention"] if row["engine"] == "plain" else f"{row['engine']} ({row['attention']})"
    return name + (" +compile" if row["compile"] else "") + (f" [run {row['run']}]" if row.get("run") else "")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["image_size"] for r in report["results"]})
    fig, axes = plt.subplots(1, max(len(sizes), 1), figsize=(6.5 * max(len(sizes), 1), 5), squeeze=False)
    colors = {"attention": "tab:blue", "compile": "tab:orange", "engine": "tab:green"}
    for ax, size in zip(axes[0], sizes):
        rows = [r for r in report["results"] if r["image_size"] == size]
        names = [label(r) for r in rows]
        values = [r.get("samples_per_s") or 0.0 for r in rows]
        ax.barh(range(len(rows)), values, color=[colors[r["section"]] for r in rows])
        ax.set_yticks(range(len(rows)), names)
        ax.invert_yaxis()
        top = max(values + [1.0])
        for i, r in enumerate(rows):
            mfu = f" ({r['mfu']:.0%})" if r.get("mfu") is not None else ""
            text = (f"{r['samples_per_s']:.0f}/s · {r['tflops']:.0f} TF/s{mfu} · {r['peak_mem_mib'] / 1024:.1f} GiB"
                    + (f" (b{r['batch_size']})" if r.get("oom_at_batch") else "")
                    if r["status"] == "ok" else r["status"])
            ax.text(values[i] + top * 0.01, i, text, va="center", fontsize=8)
        ax.set_xlim(0, top * 1.7)
        ax.set_title(f"{size}×{size}, batch {report['method']['batch_sizes'].get(str(size))}")
        ax.set_xlabel("training samples/s (bf16)")
    env = report["environment"]
    fig.suptitle(f"FiLM UNet training step, bf16, on {env.get('gpu', env['device'])}\n"
                 f"blue: attention backends (eager) · orange: torch.compile · green: DDP / DeepSpeed ZeRO (sdpa)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(report: dict, out: Path, with_plot: bool = True) -> None:
    (out / "gpu_diffusion.json").write_text(json.dumps(report, indent=2) + "\n")
    if with_plot:
        try:
            plot(report, out / "gpu_diffusion.png")
        except Exception as exc:  # noqa: BLE001
            print(f"plot failed: {exc}", file=sys.stderr)


# ---- main ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_diffusion.json and gpu_diffusion.png")
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: 16 px, tiny model, 2 steps")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="image sizes (default 64 128)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="one per size (default 128 64)")
    ap.add_argument("--warmup", type=int, default=None, help="discarded steps (default 5)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20)")
    ap.add_argument("--sections", default="attention,engine,compile", help="any of attention,engine,compile")
    ap.add_argument("--compile-backends", default="sdpa", help="attention backends timed under torch.compile")
    ap.add_argument("--engines", default="ddp,zero1,zero2,zero3", help="engine rows: ddp and/or zeroN")
    ap.add_argument("--compile-engines", default="", help="engines also timed with a compiled UNet (sdpa), e.g. zero2")
    ap.add_argument("--append", type=Path, default=None,
                    help="an earlier gpu_diffusion.json whose rows this run extends (same model; rows get 'run')")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="after each row's timed steps, profile this many more and store the top ops (0: off)")
    ap.add_argument("--time-budget-s", type=float, default=0, help="skip the remaining rows after this (0: none)")
    args = ap.parse_args(argv)
    args.sizes = args.sizes or ([16] if args.quick else [64, 128])
    args.batch_sizes = args.batch_sizes or ([4] * len(args.sizes) if args.quick else
                                            [DEFAULT_BATCH.get(size, 32) for size in args.sizes])
    if len(args.batch_sizes) != len(args.sizes):
        ap.error("--batch-sizes needs one value per --sizes entry")
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    args.steps = args.steps if args.steps is not None else (2 if args.quick else 20)
    for option in ("engines", "compile_engines"):
        names = [n.strip() for n in getattr(args, option).split(",") if n.strip()]
        bad = [n for n in names if n != "ddp" and not (n.startswith("zero") and n[4:] in ("0", "1", "2", "3"))]
        if bad:
            ap.error(f"unknown engine(s) {bad}: use ddp, zero0..zero3")
        setattr(args, option, names)
    return ap, args


def make_context(args: argparse.Namespace) -> types.SimpleNamespace:
    """The device, the (--quick: shrunk) model config and the run's settings every row reads."""
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = load_config(args.config)
    dcfg = cfg.model.diffusion
    if args.quick:
        dcfg = dataclasses.replace(dcfg, block_channels=tuple(32 for _ in dcfg.block_channels), layers_per_block=1)
    ctx = types.SimpleNamespace(device=device, cfg=cfg, dcfg=dcfg, cond_dim=condition_dim(cfg.model),
                                lr=cfg.train.diffusion.lr, warmup=args.warmup, steps=args.steps,
                                compile_backend="inductor" if device.type == "cuda" else "aot_eager",
                                compile_used=False, profile=args.profile, budget_s=args.time_budget_s,
                                t_start=time.perf_counter(), flops={}, log=lambda s: print(s, file=sys.stderr, flush=True))
    ctx.env = environment(device)
    gpu = ctx.env.get("gpu", "")
    ctx.peak_tflops = bf16_peak(gpu) if gpu else None
    ctx.matmul_tflops = None
    if device.type == "cuda":
        try:
            ctx.matmul_tflops = round(matmul_tflops(device), 1)
        except Exception as exc:  # noqa: BLE001
            ctx.env["matmul_error"] = str(exc)
    ctx.env["bf16_dense_peak_tflops"] = ctx.peak_tflops
    ctx.env["bf16_peak_source"] = (f"datasheet table entry matching {gpu!r}" if ctx.peak_tflops else "no table entry")
    ctx.env["measured_bf16_matmul_tflops"] = ctx.matmul_tflops
    return ctx


def new_report(ctx, args: argparse.Namespace) -> dict:
    dcfg, device = ctx.dcfg, ctx.device
    config = args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config
    return {
        "benchmark": "gpu_diffusion",
        "environment": ctx.env,
        "model": {"config": str(config), "block_channels": list(dcfg.block_channels),
                  "attention_levels": list(dcfg.attention_levels), "layers_per_block": dcfg.layers_per_block,
                  "cond_dim": ctx.cond_dim, "attention_head_dim": None, "prediction_type": dcfg.prediction_type,
                  "quick_override": "block_channels 32 per level, layers_per_block 1" if args.quick else None},
        "method": {"quick": args.quick, "image_sizes": args.sizes,
                   "batch_sizes": {str(s): b for s, b in zip(args.sizes, args.batch_sizes)},
                   "warmup_steps_discarded": args.warmup, "timed_steps": args.steps,
                   "data": "synthetic tensors pre-made on the device (4 batches in rotation): compute only, no data wait",
                   "step": "train.stages.DiffusionModule.forward with the conditioning vector given (UNetStep): "
                           "float32 noise schedule and target, the UNet input in the compute dtype",
                   "precision_plain": "fp32 weights + torch.autocast(bfloat16); torch.optim.AdamW (foreach); grad clip 1.0",
                   "precision_deepspeed": "repo build_deepspeed_config: bf16 weights, fp32 master, torch_adam AdamW (fused), "
                                          "WarmupCosineLR, grad clip 1.0",
                   "flops": "train.metrics.training_flops_per_sample: 3 x forward FLOPs (FlopCounterMode, naive "
                            "attention processor, batch 2, fp32), same count for every backend",
                   "samples_per_s": "timed_steps x batch / wall time between torch.cuda.synchronize calls",
                   "peak_mem": "torch.cuda.max_memory_allocated since the row's model was built",
                   "compile": f"the package's DiffusionModule compile (FiLMUNet.compile, backend={ctx.compile_backend!r}), "
                              "default mode; compilation is inside warmup_s",
                   "engines": "1-rank process group in this process; DDP = DistributedDataParallel + plain step",
                   "oom_policy": f"retry at half the batch, at most {OOM_RETRIES} times (oom_at_batch lists failures)",
                   "tf32": device.type == "cuda",
                   "profile": (f"{args.profile} more steps per row under torch.profiler; top ops by self time per "
                               "step, host (CPU) and device (CUDA)") if args.profile else None},
        "flops": {},
        "results": [],
    }


def extend_report(report: dict, previous: dict, source: Path, ap: argparse.ArgumentParser) -> list[dict]:
    """``--append``: carry ``previous``'s rows, FLOP counts and batch sizes into ``report``; → its runs."""
    for key in ("block_channels", "attention_levels", "layers_per_block", "cond_dim"):
        if previous["model"].get(key) != report["model"][key]:
            ap.error(f"--append {source}: model.{key} differs ({previous['model'].get(key)} vs {report['model'][key]})")
    runs = previous.get("runs") or [{"run": 0, "argv": None, "date": previous["environment"]["date"],
                                     "gpu": previous["environment"].get("gpu"), "total_wall_s": previous.get("total_wall_s"),
                                     "environment": previous["environment"]}]
    report["results"] = [{**r, "run": r.get("run", 0)} for r in previous["results"]]
    report["flops"] = previous.get("flops", {})
    report["method"]["batch_sizes"] = {**previous["method"].get("batch_sizes", {}), **report["method"]["batch_sizes"]}
    return runs


def xformers_skip(device: torch.device) -> str | None:
    """Why xformers cannot run here, or None."""
    try:
        select_attention_backend("xformers", device)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def measure_sections(ctx, args: argparse.Namespace, report: dict, add) -> None:
    """Every requested row, each through ``measure`` and handed to ``add``: attention backends,
    then engines (size-major), then compiled rows last (compilation is the slowest)."""
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    pairs = list(zip(args.sizes, args.batch_sizes))
    base = {"compile": False, "engine": "plain", "zero_stage": None}

    def plain_rows(section: str, backends: list[str], compiled: bool, pairs: list[tuple[int, int]]) -> None:
        for backend in backends:
            for size, batch in pairs:
                row = {"section": section, "image_size": size, "batch_size": batch, "attention": backend,
                       **base, "compile": compiled}
                if backend == "xformers" and (why := xformers_skip(ctx.device)):
                    add({**row, "status": "skipped", "error": why})
                    continue

                def fn(b, s=size, k=backend):
                    ctx.compile_used = compiled
                    return run_plain(ctx, s, b, k, compiled, False)
                add(measure(ctx, row, fn))

    process_group = {}

    def process_group_error() -> str | None:
        if not process_group:
            try:
                process_group["backend"] = report["method"]["process_group_backend"] = init_process_group(ctx.device)
            except Exception as exc:  # noqa: BLE001
                process_group["error"] = f"process group: {type(exc).__name__}: {exc}"
        return process_group.get("error")

    def engine_rows(section: str, names: list[str], compiled: bool, pairs: list[tuple[int, int]]) -> None:
        for name in names:
            zero = None if name == "ddp" else int(name.removeprefix("zero"))
            for size, batch in pairs:
                row = {"section": section, "image_size": size, "batch_size": batch, "attention": "sdpa",
                       "compile": compiled, "engine": name, "zero_stage": zero}
                if why := process_group_error():
                    add({**row, "status": "error", "error": why})
                    continue

                def fn(b, s=size, z=zero):
                    ctx.compile_used = compiled
                    if z is None:
                        return run_plain(ctx, s, b, "sdpa", compiled, True)
                    return run_deepspeed(ctx, s, b, "sdpa", z, compiled)
                add(measure(ctx, row, fn))

    if "attention" in sections:  # size-major
        for pair in pairs:
            plain_rows("attention", ["xformers", "sdpa", "naive"], False, [pair])
    if "engine" in sections:  # size-major like the attention rows
        for pair in pairs:
            engine_rows("engine", args.engines, False, [pair])
    if "compile" in sections:  # backend-major, so the first backend covers every size
        plain_rows("compile", [b.strip() for b in args.compile_backends.split(",") if b.strip()], True, pairs)
        engine_rows("compile", args.compile_engines, True, pairs)


def main(argv: list[str] | None = None) -> int:
    ap, args = parse_args(argv)
    ctx = make_context(args)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report = new_report(ctx, args)
    this_run = {"argv": sys.argv[1:] if argv is None else argv, "date": ctx.env["date"], "gpu": ctx.env.get("gpu"),
                "environment": ctx.env}
    runs = extend_report(report, json.loads(args.append.read_text()), args.append, ap) if args.append else []
    this_run["run"] = len(runs)
    report["runs"] = runs + [this_run]

    def add(row: dict) -> None:
        row = {**row, "run": this_run["run"]}
        report["results"].append(row)
        brief = {k: row.get(k) for k in ("section", "image_size", "batch_size", "attention", "compile", "engine",
                                         "status", "samples_per_s", "tflops", "mfu", "peak_mem_mib", "warmup_s",
                                         "error")}
        print(json.dumps(brief), flush=True)
        save(report, out, with_plot=False)

    for size in args.sizes:
        try:
            ctx.flops[size] = count_flops(ctx, size)
        except Exception as exc:  # noqa: BLE001
            ctx.flops[size] = {"training_flops_per_sample": float("nan"), "error": f"{type(exc).__name__}: {exc}"}
        report["flops"][str(size)] = ctx.flops[size]
    report["model"]["attention_head_dim"] = getattr(ctx, "head_dim", None)
    print(json.dumps({"environment": ctx.env, "flops": report["flops"]}), flush=True)
    measure_sections(ctx, args, report, add)
    report["total_wall_s"] = this_run["total_wall_s"] = round(time.perf_counter() - ctx.t_start, 1)
    save(report, out)
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception as exc:  # noqa: BLE001
        print(f"destroy_process_group: {exc}", file=sys.stderr)
    print(f"wrote {out / 'gpu_diffusion.json'} and {out / 'gpu_diffusion.png'} ({report['total_wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
