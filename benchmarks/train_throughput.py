"""Training benchmark: throughput, data wait vs compute, TFLOP/s and peak memory of every stage.

Why: the training loop already measures itself (``stages/<stage>/stats.jsonl``); this script
runs it under controlled settings so the numbers compare: 1 vs 2 ranks, ZeRO stages 1/2/3,
and on a GPU bf16 vs fp32 and xformers vs SDPA attention in the UNet.

Method: one real ``torchrun`` launch of ``launchers/train.py`` per (ranks, ZeRO stage[, precision])
with ``train.stage=all`` and the same number of steps for every stage. ``train.log_every`` is
a third of the steps, so each stage logs about three windows; the first (engine start-up, the
loop's FLOP-counting forward, allocator warm-up) is discarded and the others are pooled. CPU
ranks share the machine's cores: ``OMP_NUM_THREADS`` = usable cores / ranks (recorded per run).
The synthetic corpus is written once under ``--work-dir`` (named by a hash of its settings) and
reused; every run gets a fresh run directory there. On a GPU the grid is repeated in bf16, and
the diffusion stage alone is trained (on the bf16 run's exports) with ``model.attention=sdpa``
and ``xformers`` (skipped, with the reason, when xformers does not import).

On a CPU, 1-rank runs are repeated at ``OMP_NUM_THREADS=1`` (``_omp1``): on a shared machine a
two-thread process can stall waiting for its second thread, and the equal-threads-per-rank
comparison separates that from data-parallel overhead.

Default config: ``tests/configs/tiny_train.yaml``, 12 steps per stage (~7 min for the 9 runs on
the 2-core CPU here). ``configs/synthetic_tiny.yaml`` (128 x 440 EEG, 32 samples per rank) is not
affordable there: 6 steps per stage took 231 s for one 1-rank run, so the full grid would take
well over half an hour. Pass it with ``--config`` on a bigger machine.
Run ``python benchmarks/train_throughput.py --out results.json``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from eeg2im_scale.bench import environment
from eeg2im_scale.bench.proc import run_logged
from eeg2im_scale.bench.summaries import read_stats, summarize
from eeg2im_scale.config import STAGES, load_config, to_dict
from eeg2im_scale.data.manifest import Manifest
from eeg2im_scale.train.stages import DEPENDENCIES

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "launchers" / "train.py"
DEFAULT_CONFIG = REPO / "tests" / "configs" / "tiny_train.yaml"
WINDOWS = 3  # logging windows per stage; the first is discarded
RUN_TIMEOUT_S = 3600


@dataclasses.dataclass(frozen=True)
class Variant:
    """One training launch."""

    ranks: int
    zero: int
    precision: str = "fp32"
    attention: str | None = None  # model.attention override; None keeps the config's (auto)
    stage: str = "all"
    threads: int | None = None  # OMP_NUM_THREADS per rank; None: usable cores / ranks

    @property
    def omp_threads(self) -> int:
        """Ranks on one machine split its usable cores; oversubscription would measure contention."""
        return self.threads or max(1, len(os.sched_getaffinity(0)) // self.ranks)

    @property
    def key(self) -> str:
        key = f"ranks{self.ranks}_zero{self.zero}"
        if self.precision != "fp32":
            key += f"_{self.precision}"
        if self.attention:
            key += f"_{self.stage}_{self.attention}"
        if self.threads:
            key += f"_omp{self.threads}"
        return key

    @property
    def base_key(self) -> str:
        """The ``train.stage=all`` run whose exports a single-stage variant starts from."""
        return dataclasses.replace(self, attention=None, stage="all").key


@dataclasses.dataclass
class Plan:
    config: Path
    ranks: list[int]
    zeros: list[int]
    steps: int
    work_dir: Path
    gpus: int
    thread_control: bool  # also run 1 rank at OMP_NUM_THREADS=1 (CPU only)

    @property
    def log_every(self) -> int:
        return max(1, self.steps // WINDOWS)

    def precisions(self) -> list[str]:
        """bf16 is the GPU's training precision; on a CPU it only adds runtime."""
        return ["fp32", "bf16"] if self.gpus else ["fp32"]

    def common_overrides(self, corpus: Path) -> list[str]:
        """Same for every run: the shared corpus, equal steps per stage, one checkpoint at the end."""
        return [f"data.root={corpus}", *(f"train.{s}.steps={self.steps}" for s in STAGES),
                f"train.log_every={self.log_every}", f"train.checkpoint_every={self.steps}"]


# --------------------------------------------------------------------------------------------
# What to run


def xformers_unavailable() -> str | None:
    """Why xformers cannot be compared here, or None when it can."""
    try:
        importlib.import_module("xformers.ops")
    except ImportError as exc:
        return f"xformers not importable: {exc}"
    return None


def variants(plan: Plan) -> tuple[list[Variant], dict[str, str]]:
    """Every launch, plus the ones skipped with the reason (GPU path: bf16, attention backends)."""
    todo, skipped = [], {}
    for precision in plan.precisions():
        for ranks in plan.ranks:
            for zero in plan.zeros:
                todo.append(Variant(ranks, zero, precision))
    if plan.thread_control and not plan.gpus and 1 in plan.ranks and len(os.sched_getaffinity(0)) > 1:
        todo += [Variant(1, zero, threads=1) for zero in plan.zeros]
    if plan.gpus:
        zero = 2 if 2 in plan.zeros else plan.zeros[0]
        for attention in ("sdpa", "xformers"):
            variant = Variant(min(plan.ranks), zero, "bf16", attention, stage="diffusion")
            reason = xformers_unavailable() if attention == "xformers" else None
            if reason:
                skipped[variant.key] = reason
            else:
                todo.append(variant)
    for variant in [v for v in todo if plan.gpus and v.ranks > plan.gpus]:
        todo.remove(variant)
        skipped[variant.key] = f"{variant.ranks} ranks need {variant.ranks} GPUs; {plan.gpus} visible"
    return todo, skipped


def ensure_corpus(config: Path, work_dir: Path) -> dict:
    """The config's synthetic corpus under ``work_dir``, written unless one with the same settings exists."""
    cfg = load_config(config)
    synth = cfg.synth
    root, reused = environment.synthetic_corpus(synth, work_dir / "corpus", config.stem)
    return {"root": str(root), "reused": reused, "num_samples": synth.num_samples,
            "train_samples": Manifest(root).count(cfg.data.split_by, "train")}


# --------------------------------------------------------------------------------------------
# Running one launch and reading what the loop logged


def overrides(plan: Plan, variant: Variant, run_dir: Path, corpus: Path) -> list[str]:
    extra = [f"run_dir={run_dir}", f"train.stage={variant.stage}", f"train.zero_stage={variant.zero}",
             f"train.precision={variant.precision}"]
    if variant.attention:
        extra.append(f"model.attention={variant.attention}")
    return plan.common_overrides(corpus) + extra


def seed_dependencies(plan: Plan, variant: Variant, run_dir: Path) -> None:
    """A single-stage variant trains on the exports of its base run (as ``train.stage=<name>`` expects)."""
    for dep in DEPENDENCIES[variant.stage]:
        source = plan.work_dir / "runs" / variant.base_key / "stages" / dep / "final.safetensors"
        target = run_dir / "stages" / dep / "final.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def launch(plan: Plan, variant: Variant, args: list[str], log_path: Path) -> tuple[int, float]:
    """``torchrun --standalone`` (a free rendezvous port, so concurrent jobs do not collide), in
    its own session so that a run past ``RUN_TIMEOUT_S`` is killed with its ranks."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(variant.ranks), str(LAUNCHER), "--config", str(plan.config), *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(variant.omp_threads), "PYTHONUNBUFFERED": "1"}
    return run_logged(command, env, log_path, RUN_TIMEOUT_S, REPO)


def drop_unread_outputs(run_dir: Path) -> None:
    """Checkpoints and the release are not read here and take ~450 MB a run (the teacher's ZeRO
    checkpoint and weights); stats, logs and the stage exports (single-stage variants start from
    them) stay."""
    for path in [*run_dir.glob("stages/*/checkpoints"), run_dir / "model"]:
        shutil.rmtree(path, ignore_errors=True)


def attention_backend(log_path: Path) -> str | None:
    """The backend the UNet got (``auto`` resolves at build time; the loop logs the choice)."""
    found = re.search(r"attention backend: (\w+)", log_path.read_text(errors="replace"))
    return found.group(1) if found else None


def run_variant(plan: Plan, variant: Variant, corpus: Path, log=print) -> dict:
    run_dir = plan.work_dir / "runs" / variant.key
    shutil.rmtree(run_dir, ignore_errors=True)  # nothing of an earlier benchmark (exports, release) carries over
    run_dir.mkdir(parents=True)
    if variant.stage != "all":
        seed_dependencies(plan, variant, run_dir)
    args = overrides(plan, variant, run_dir, corpus)
    cfg = load_config(plan.config, args)
    log_path = run_dir / "launch.log"
    load_before = os.getloadavg()[0]
    log(f"{variant.key}: training ({plan.steps} steps per stage) ...")
    code, seconds = launch(plan, variant, args, log_path)
    settings = {"ranks": variant.ranks, "zero_stage": variant.zero, "precision": variant.precision,
                "attention": variant.attention or cfg.model.attention, "train_stage": variant.stage,
                "attention_backend": attention_backend(log_path), "omp_num_threads": variant.omp_threads,
                "global_batch": cfg.data.batch_size * cfg.train.grad_accum * variant.ranks,
                "wall_s": round(seconds, 1), "load_average_1min_before": round(load_before, 2),
                "load_average_1min_after": round(os.getloadavg()[0], 2), "overrides": args, "log": str(log_path)}
    if code != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        log(f"{variant.key}: FAILED (exit {code}), see {log_path}\n{tail}")
        return {"settings": settings, "error": f"exit code {code}", "log_tail": tail}
    stages = STAGES if variant.stage == "all" else (variant.stage,)
    figures = {s: summarize(read_stats(run_dir, s), settings["global_batch"]) for s in stages}
    drop_unread_outputs(run_dir)
    return {"settings": settings, **figures}


# --------------------------------------------------------------------------------------------
# Report


def scaling_efficiency(runs: dict, plan: Plan) -> dict:
    """samples/s at 2 ranks / (2 × samples/s at 1 rank), per ZeRO stage (and precision) and stage.

    ``zeroN_omp1`` divides by the 1-rank run at one thread: same threads per rank, so it isolates
    data-parallel overhead from how well one process uses two threads."""
    result = {}
    for precision in plan.precisions():
        for zero in plan.zeros:
            two = runs.get(Variant(2, zero, precision).key, {})
            for threads in (None, 1):
                one = runs.get(Variant(1, zero, precision, threads=threads).key, {})
                if all(s in one and s in two for s in STAGES):
                    name = Variant(1, zero, precision, threads=threads).key.replace("ranks1_", "")
                    result[name] = {s: round(two[s]["samples_per_s"] / (2 * one[s]["samples_per_s"]), 3)
                                    for s in STAGES}
    return result


def machine_info() -> dict:
    info = environment.machine_info("deepspeed")
    if info["gpus"]:
        info["xformers"] = xformers_unavailable() or importlib.import_module("xformers").__version__
    return info


MEASURED = {
    "source": "the training loop's stats.jsonl (rank 0 writes it; throughput figures are all-reduced over ranks)",
    "windows": "train.log_every = steps // 3; the first logging window of every stage is discarded (engine "
               "start-up, the loop's extra FLOP-counting forward), the rest pooled weighted by wall time",
    "samples_per_s": "global samples (all ranks) / mean per-rank time of data wait + compute over the kept steps",
    "step_time_s": "mean per-rank time of one optimizer step (data wait + forward/backward/step)",
    "data_wait_s": "data_wait_fraction x step_time_s: time in next(batch) + host-to-device copy",
    "compute_s": "step_time_s - data_wait_s: forward, backward and engine.step (GPU synchronised)",
    "tflops_per_s": "the loop's estimate: 3 x forward FLOPs (FlopCounterMode, first batch) x samples / time; "
                    "frozen networks inside the forward (teacher in highlevel, encoders in diffusion) are counted "
                    "x3 too, so those stages are overestimated",
    "peak_memory_mib": "rank 0: max_memory_allocated on GPU, peak RSS on CPU; never reset by the loop, so it is "
                       "the process high-water mark up to that stage (later stages include earlier ones)",
    "wall_samples_per_s": "global samples / time between the loop's log lines: also counts what the loop's "
                          "step timing leaves out (EMA update after diffusion steps, logging)",
    "scaling_efficiency": "samples_per_s at 2 ranks / (2 x samples_per_s at 1 rank), same ZeRO stage and "
                          "precision; zeroN: 1 rank at OMP_NUM_THREADS = usable cores, zeroN_omp1: 1 rank at "
                          "OMP_NUM_THREADS=1 (the 2-rank runs use cores / 2 threads per rank)",
}


def summary_table(result: dict) -> str:
    lines = [f"{'run':<28}{'stage':<10}{'samples/s':>10}{'step s':>9}{'data s':>9}{'compute s':>10}"
             f"{'wait %':>7}{'TFLOP/s':>9}{'peak MiB':>9}"]
    for key, run in result["runs"].items():
        if "error" in run:
            lines.append(f"{key:<28}{run['error']}")
            continue
        for stage in (s for s in STAGES if s in run):
            f = run[stage]
            lines.append(f"{key:<28}{stage:<10}{f['samples_per_s']:>10.2f}{f['step_time_s']:>9.3f}"
                         f"{f['data_wait_s']:>9.4f}{f['compute_s']:>10.3f}{100 * f['data_wait_fraction']:>7.1f}"
                         f"{f['tflops_per_s']:>9.4f}{f['peak_memory_mib']:>9.0f}")
    for name, per_stage in result["scaling_efficiency"].items():
        lines.append(f"scaling efficiency 2 vs 1 rank, {name}: "
                     + ", ".join(f"{s} {v:.2f}" for s, v in per_stage.items()))
    lines += [f"skipped {key}: {why}" for key, why in result["skipped"].items()]
    return "\n".join(lines)


def run(plan: Plan, log=print) -> dict:
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    log(f"corpus for {plan.config.name}: synthesizing or reusing ...")
    corpus = ensure_corpus(plan.config, plan.work_dir)
    todo, skipped = variants(plan)
    runs = {v.key: run_variant(plan, v, Path(corpus["root"]), log) for v in todo}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "load_average_1min_at_start": round(load_at_start, 2),
                    "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "config": {"file": str(plan.config.relative_to(REPO) if plan.config.is_relative_to(REPO) else plan.config),
                   "overrides_common": plan.common_overrides(Path(corpus["root"])),
                   "steps_per_stage": plan.steps, "log_every": plan.log_every, "windows_discarded": 1,
                   "ranks": plan.ranks, "zero_stages": plan.zeros, "precisions": plan.precisions(),
                   "launcher": "torchrun --standalone", "corpus": corpus,
                   "resolved": to_dict(load_config(plan.config))},
        "measured": MEASURED,
        "runs": runs,
        "scaling_efficiency": scaling_efficiency(runs, plan),
        "skipped": skipped,
        "runtime_s": round(time.perf_counter() - started, 1),
    }


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training config (default: the tiny one)")
    parser.add_argument("--ranks", type=_int_list, default=[1, 2], help="ranks per run (default 1,2)")
    parser.add_argument("--zero", type=_int_list, default=[1, 2, 3], help="ZeRO stages (default 1,2,3)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per stage (default 12)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench" / "train",
                        help="corpus (written once, reused) and one run directory per launch")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny config, ranks 1,2 at ZeRO-2, 6 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.config, args.ranks, args.zero, args.steps = DEFAULT_CONFIG, [1, 2], [2], 6
    if args.steps < 2 * WINDOWS:
        parser.error(f"--steps must be at least {2 * WINDOWS}: {WINDOWS} logging windows of at least 2 steps")
    plan = Plan(config=args.config.resolve(), ranks=args.ranks, zeros=args.zero, steps=args.steps,
                work_dir=args.work_dir.resolve(), gpus=torch.cuda.device_count(), thread_control=not args.quick)
    result = run(plan, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary_table(result))
    print(f"wrote {args.out} ({result['runtime_s']} s)")
    return 1 if any("error" in r for r in result["runs"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
