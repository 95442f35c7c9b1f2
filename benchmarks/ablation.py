"""Conditioning ablation: does multi-level EEG conditioning reproduce colour better than high-level alone?

Why: the paper's claim is that conditioning the diffusion UNet on multi-level EEG features (the
high-level semantic embedding plus the low-level latent aligned with an image autoencoder)
reproduces fine-grained attributes such as colour better than the high-level features alone.
``model.diffusion.condition_on`` (``multilevel | highlevel | lowlevel``) selects what conditions
the UNet; ``configs/ablation/{multilevel,highlevel_only,lowlevel_only}.yaml`` are the three
variants of the quickstart setting (``configs/synthetic_tiny.yaml``). This script trains and
evaluates all three over several seeds and reports the paired differences, so the claim is
judged against seed-to-seed spread rather than one run.

Two methods are run side by side (``--methods``, default both): ``paper``, the low-level encoder as
the paper describes it (aligned with the autoencoder latent only: ``model.lowlevel.
colour_layout_weight=0``, ``colour_distribution_weight=0``), and ``ours``, the configs as they are
(the quickstart's two extra colour heads on the EEG latent). Each method gets its own encoders per
seed, so a difference between methods is the heads' effect, not the conditioning's.

Method: one synthetic corpus (the multilevel config's ``synth`` section, after overrides) is
written once under ``--work-dir`` (named by a hash of its settings, reused when present) and every
run reads it (``data.root`` is overridden). Per method and seed s (``train.seed=s data.seed=s
eval.seed=s``; the corpus itself does not change with s):

1. ``multilevel`` is trained fully (``train.stage=all``) by a real ``deepspeed --num_gpus N
   launchers/train.py`` launch (``--num_gpus`` is always passed: on a CPU the launcher needs it;
   ``OMP_NUM_THREADS`` = usable cores // N per rank);
2. ``highlevel_only`` and ``lowlevel_only`` get fresh run directories holding copies of that run's
   ``stages/{teacher,lowlevel,highlevel}/final.safetensors`` and train only
   ``train.stage=diffusion``. The three variants differ only in what conditions the UNet, so
   sharing the encoders isolates the conditioning (no encoder-training noise between variants)
   and saves two thirds of the encoder training. Consequently the EEG classification accuracy
   (``eeg_top1``, the high-level encoder's) is identical for the three variants within a seed;
3. each release (``RUN_DIR/model``) is evaluated in this process with
   :func:`eeg2im_scale.eval.evaluator.evaluate` on the test split (``eval.inception_metrics=false``:
   no Inception weights offline), all test trials by default (``eval.max_trials``, recorded).

Reported per variant (mean, std with ddof=1, per-seed values): EEG top-1, generated-image
accuracy (``generated_n_way_top_k``: the fine-tuned teacher classifying the generated images),
colour-histogram distance (1 - HSV-histogram intersection with the true image), hue EMD, and the
recovered-vs-recorded hue / saturation / brightness errors (lower is better for every colour
metric). For each colour metric, the paired per-seed difference multilevel - highlevel_only
(mean, std, seeds where multilevel is better) and a one-line verdict: "yes" only when the mean
difference favours multilevel by more than its std on both colour-histogram distance and hue
error, "no" when it favours highlevel_only likewise, else "inconclusive" (always with one seed).
The teacher's accuracy on the real test images of the same trials (and its validation-split
accuracy from ``stages/teacher/validation.json``) is recorded per seed: generated-image accuracy
means little when the teacher is near chance on real images. Wall time of every launch and
evaluation is recorded; the JSON is rewritten after every run, so an interruption loses nothing
finished.

Cost (an estimate, not a measurement of the full run): the default (3 seeds,
``configs/ablation/*.yaml`` = the quickstart's 60/100/100/200 steps, 2 CPU ranks) trains
460 + 2 x 200 stage-steps per seed. A quickstart run on this shared 2-core CPU logged ~1.4-2.3 s
per step (2 ranks, 32 samples each), i.e. ~15 min for the multilevel run and ~6 min for each
diffusion-only run plus ~30 s of launcher start-up per launch and ~1 min per evaluation of the 120
test trials (25 DDIM steps with guidance): ~30 min per seed and method; the 3-seed run of one
method took 1.5 h here (``ablation.json`` of 2026-11-25), so both methods take ~3 h: spread them
over sittings with ``--resume`` or ``--methods``; a GPU makes it minutes. ``--quick`` (tiny corpus
and models of ``tests/configs/tiny_train.yaml``, 2 steps per stage, 6 test trials, 2 sampler steps,
one seed, one rank) took 122-155 s per method here with a load average of ~5 from other jobs on the
2 cores (three launcher start-ups of ~16 s each are most of it); its numbers are meaningless (the variants barely differ after 2 steps), it only checks the
pipeline end to end.

``--resume`` keeps the evaluated runs already in ``--out`` (same mode, ``--work-dir`` and resolved
config) and runs only the others, so the seeds can be spread over several sittings.

Run ``python benchmarks/ablation.py --out results.json [--seeds 0 1 2] [--nproc 2] [--resume] [key=value ...]``
(overrides apply to all three configs; ``data.root``, ``run_dir``, ``train.stage`` and the seeds
are set by the script).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

from eeg2im_scale.bench.environment import machine_info, synthetic_corpus
from eeg2im_scale.bench.proc import run_logged
from eeg2im_scale.config import STAGES, ConfigError, load_config, to_dict
from eeg2im_scale.config import read_yaml_values as read_config_values
from eeg2im_scale.data.manifest import Manifest

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "launchers" / "train.py"
CONFIG_DIR = REPO / "configs" / "ablation"
VARIANTS = ("multilevel", "highlevel_only", "lowlevel_only")
SHARED_STAGES = ("teacher", "lowlevel", "highlevel")  # trained once per seed (multilevel), copied to the others
RUN_TIMEOUT_S = 4 * 3600
# method -> overrides on top of every config: the paper's low-level encoder has no colour heads
METHODS = {"paper": ("model.lowlevel.colour_layout_weight=0", "model.lowlevel.colour_distribution_weight=0"),
           "ours": ()}
QUICK_BASE = REPO / "tests" / "configs" / "tiny_train.yaml"
QUICK_STEPS = 2  # per stage; DeepSpeed's warm-up schedule needs more than one
QUICK_EXTRA = [*(f"train.{s}.steps={QUICK_STEPS}" for s in STAGES), *(f"train.{s}.warmup_steps=1" for s in STAGES),
               "train.log_every=1", f"train.checkpoint_every={QUICK_STEPS}", "model.diffusion.sample_steps=2",
               "eval.max_trials=6", "eval.batch_size=6", "eval.grid_trials=2"]

# name in this report -> (evaluator metric, transform); lower is better for every colour metric
METRICS = {
    "eeg_top1": "EEG classification top-1 on the test trials (high-level encoder; shared, so equal across variants "
                "within a seed)",
    "generated_n_way_top_k": "generated images classified by the fine-tuned teacher (eval.n_way, eval.top_k; "
                             "n_way 0 = all classes)",
    "colour_hist_distance": "1 - mean HSV-histogram intersection between generated and true image (0 = same colours)",
    "hue_emd": "mean circular EMD between saturation-weighted hue histograms of generated and true image",
    "hue_error": "circular error (turns, 0-0.5) of the generated image's dominant hue vs the recorded hue",
    "saturation_error": "absolute error of the generated image's dominant-colour saturation vs the recorded one",
    "brightness_error": "absolute error of the generated image's brightness vs the recorded one",
}
COLOUR_METRICS = ("colour_hist_distance", "hue_emd", "hue_error", "saturation_error", "brightness_error")
VERDICT_METRICS = ("colour_hist_distance", "hue_error")


# --------------------------------------------------------------------------------------------
# Settings


@dataclasses.dataclass
class Plan:
    seeds: list[int]
    nproc: int
    work_dir: Path
    quick: bool
    user_overrides: list[str]
    methods: tuple[str, ...] = tuple(METHODS)
    resume: bool = False

    @property
    def omp_threads(self) -> int:
        """Ranks on one machine split its usable cores; oversubscription would measure contention."""
        return max(1, len(os.sched_getaffinity(0)) // self.nproc)

    def base_overrides(self) -> list[str]:
        """Before the user's: the quick mode's tiny settings."""
        return quick_overrides() if self.quick else []

    def common_overrides(self, corpus: Path | None = None) -> list[str]:
        """The same for every run and variant (seed, run_dir and stage come on top)."""
        fixed = [f"data.root={corpus}"] if corpus else []
        return [*self.base_overrides(), *self.user_overrides, *fixed, "eval.inception_metrics=false"]

    def overrides(self, corpus: Path, method: str, seed: int, run_dir: Path, stage: str) -> list[str]:
        return [*self.common_overrides(corpus), *METHODS[method], f"train.seed={seed}", f"data.seed={seed}",
                f"eval.seed={seed}", f"run_dir={run_dir}", f"train.stage={stage}"]

    def run_dir(self, method: str, seed: int | str, variant: str) -> Path:
        return self.work_dir / "runs" / method / f"seed{seed}" / variant


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def quick_overrides() -> list[str]:
    """``tests/configs/tiny_train.yaml`` as overrides (its corpus, models and batch), 2 steps per stage,
    a few test trials, 2 sampler steps. JSON values are valid YAML, which the override parser reads."""
    tiny = {k: v for k, v in _flatten(read_config_values(QUICK_BASE)).items() if k not in ("run_dir", "data.root")}
    return [f"{k}={json.dumps(v)}" for k, v in tiny.items()] + QUICK_EXTRA


def config_path(variant: str) -> Path:
    return CONFIG_DIR / f"{variant}.yaml"


def ensure_corpus(plan: Plan) -> dict:
    """The multilevel config's synthetic corpus under the work dir, written unless one with the same settings exists."""
    cfg = load_config(config_path("multilevel"), plan.common_overrides())
    synth = cfg.synth
    started = time.perf_counter()
    root, reused = synthetic_corpus(synth, plan.work_dir / "corpus", "ablation")
    manifest = Manifest(root)
    return {"root": str(root), "reused": reused, "write_s": None if reused else round(time.perf_counter() - started, 1),
            "synth": to_dict(synth), "split_by": cfg.data.split_by,
            "trials": {s: manifest.count(cfg.data.split_by, s) for s in ("train", "val", "test")},
            "num_classes": len(manifest.class_names)}


def config_differences(plan: Plan, corpus: Path) -> dict:
    """Resolved keys on which the runs of one seed differ, by ``method/variant`` (same overrides, run_dir
    as used per seed)."""
    flat = {f"{m}/{v}": _flatten(to_dict(load_config(config_path(v), [
        *plan.common_overrides(corpus), *METHODS[m], f"run_dir={plan.run_dir(m, '<s>', v)}"])))
        for m in plan.methods for v in VARIANTS}
    keys = sorted({k for f in flat.values() for k in f})
    return {k: {run: values.get(k) for run, values in flat.items()} for k in keys
            if len({json.dumps(values.get(k)) for values in flat.values()}) > 1}


# --------------------------------------------------------------------------------------------
# One training launch and one evaluation


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(plan: Plan, variant: str, overrides: list[str], log_path: Path) -> tuple[int, float]:
    """``deepspeed --num_gpus N --master_port <free>`` (concurrent jobs do not collide), in its own
    session so that a run past ``RUN_TIMEOUT_S`` is killed with its ranks."""
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(plan.nproc),
               "--master_port", str(_free_port()), str(LAUNCHER), "--config", str(config_path(variant)), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(plan.omp_threads), "PYTHONUNBUFFERED": "1"}
    return run_logged(command, env, log_path, RUN_TIMEOUT_S, REPO)


def seed_shared_encoders(source_run: Path, run_dir: Path) -> None:
    """The diffusion-only variants start from the multilevel run's encoder and teacher exports."""
    for stage in SHARED_STAGES:
        target = run_dir / "stages" / stage / "final.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source_run / "stages" / stage / "final.safetensors", target)


def drop_checkpoints(run_dir: Path) -> None:
    """Resumable checkpoints are not read here (~0.8 GB a full run, mostly the teacher's ZeRO state);
    stage exports, stats, validation and the release stay."""
    for path in run_dir.glob("stages/*/checkpoints"):
        shutil.rmtree(path, ignore_errors=True)


def evaluate_release(variant: str, overrides: list[str], run_dir: Path) -> tuple[dict, float]:
    from eeg2im_scale.eval.evaluator import evaluate

    cfg = load_config(config_path(variant), overrides)
    start = time.perf_counter()
    metrics = evaluate(cfg, run_dir / "model", run_dir / "eval")
    return metrics, time.perf_counter() - start


def selected_metrics(metrics: dict) -> dict:
    values = {k: v["value"] for k, v in metrics["metrics"].items()}
    out = {"eeg_top1": values.get("eeg_top1"), "generated_n_way_top_k": values.get("generated_n_way_top_k"),
           "colour_hist_distance": 1.0 - values["hist_intersection"] if "hist_intersection" in values else None}
    out.update({k: values.get(k) for k in ("hue_emd", "hue_error", "saturation_error", "brightness_error")})
    return out


@torch.no_grad()
def teacher_accuracy(metrics: dict, run_dir: Path) -> dict:
    """The release's teacher on the real test images of the evaluated trials, as the evaluator scored it
    (``real_n_way_top_k``: the generated images' n-way top-k on the true images), plus the teacher
    stage's own validation-split accuracy."""
    protocol, real = metrics["protocol"], metrics["metrics"].get("real_n_way_top_k")
    result = {"test_images": protocol["trials"], "n_way": protocol["n_way"], "top_k": protocol["top_k"],
              "chance": min(1.0, protocol["top_k"] / protocol["n_way"])}
    if real is not None:
        result["test_n_way_top_k"] = real["value"]
    validation = run_dir / "stages" / "teacher" / "validation.json"
    if validation.is_file():
        result["val_accuracy"] = json.loads(validation.read_text()).get("accuracy")
    return result


def run_variant(plan: Plan, corpus: Path, method: str, seed: int, variant: str, log=print) -> dict:
    run_dir = plan.run_dir(method, seed, variant)
    shutil.rmtree(run_dir, ignore_errors=True)  # nothing of an earlier run (exports, release) carries over
    run_dir.mkdir(parents=True)
    stage = "all" if variant == "multilevel" else "diffusion"
    if stage == "diffusion":
        seed_shared_encoders(plan.run_dir(method, seed, "multilevel"), run_dir)
    overrides = plan.overrides(corpus, method, seed, run_dir, stage)
    log_path = run_dir / "launch.log"
    name = f"{method} seed {seed} {variant}"
    record = {"method": method, "variant": variant, "seed": seed, "config": str(config_path(variant).relative_to(REPO)),
              "train_stage": stage, "encoders": "trained" if stage == "all" else "copied from the multilevel run",
              "run_dir": str(run_dir), "log": str(log_path), "nproc": plan.nproc,
              "omp_num_threads": plan.omp_threads, "load_average_1min_before": round(os.getloadavg()[0], 2)}
    log(f"{name}: training (train.stage={stage}, {plan.nproc} rank(s)) ...")
    code, seconds = launch(plan, variant, overrides, log_path)
    record["train_wall_s"] = round(seconds, 1)
    drop_checkpoints(run_dir)
    if code != 0 or not (run_dir / "model").is_dir():
        tail = log_path.read_text(errors="replace")[-3000:]
        log(f"{name}: training FAILED (exit {code}), see {log_path}\n{tail}")
        return {**record, "error": f"training exit code {code}" if code else "no release written", "log_tail": tail}
    log(f"{name}: trained in {seconds:.0f} s; evaluating ...")
    try:
        metrics, eval_seconds = evaluate_release(variant, overrides, run_dir)
    except Exception as exc:  # noqa: BLE001 - recorded, the other runs go on
        log(f"{name}: evaluation FAILED: {exc!r}")
        return {**record, "error": f"evaluation failed: {exc!r}"}
    protocol = metrics["protocol"]
    record.update({"eval_wall_s": round(eval_seconds, 1), "metrics": selected_metrics(metrics),
                   "metrics_file": str(run_dir / "eval" / "metrics.json"),
                   "eval_protocol": {k: protocol[k] for k in ("split", "trials", "images_per_trial", "sampler",
                                                              "sample_steps", "guidance_scale", "n_way", "top_k")},
                   "load_average_1min_after": round(os.getloadavg()[0], 2)})
    if variant == "multilevel":
        record["teacher"] = teacher_accuracy(metrics, run_dir)
    log(f"{name}: evaluated in {eval_seconds:.0f} s: "
        + ", ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items() if v is not None))
    return record


# --------------------------------------------------------------------------------------------
# Summary


def _stats(values: dict) -> dict:
    """mean, std (ddof=1; None below two seeds) and the per-seed values."""
    numbers = list(values.values())
    return {"mean": statistics.fmean(numbers) if numbers else None,
            "std": statistics.stdev(numbers) if len(numbers) > 1 else None,
            "n": len(numbers), "per_seed": values}


def summarize(runs: dict) -> dict:
    ok = {seed: {v: r for v, r in by_variant.items() if "metrics" in r} for seed, by_variant in runs.items()}
    table = {v: {m: _stats({seed: rs[v]["metrics"][m] for seed, rs in ok.items()
                            if v in rs and rs[v]["metrics"].get(m) is not None})
                 for m in METRICS} for v in VARIANTS}
    paired = {}
    for m in COLOUR_METRICS:
        diffs = {seed: rs["multilevel"]["metrics"][m] - rs["highlevel_only"]["metrics"][m] for seed, rs in ok.items()
                 if {"multilevel", "highlevel_only"} <= set(rs) and rs["multilevel"]["metrics"].get(m) is not None
                 and rs["highlevel_only"]["metrics"].get(m) is not None}
        paired[m] = {**_stats(diffs), "multilevel_better_in": sum(d < 0 for d in diffs.values()),
                     "seeds": len(diffs)}
    same_eeg = [len({round(r["metrics"]["eeg_top1"], 12) for r in rs.values()}) == 1 for rs in ok.values() if len(rs) > 1]
    teacher = {seed: rs["multilevel"]["teacher"] for seed, rs in ok.items() if "teacher" in rs.get("multilevel", {})}
    return {"metrics": table, "paired_multilevel_minus_highlevel_only": paired, "verdict": verdict(paired),
            "eeg_top1_identical_within_seed": all(same_eeg) if same_eeg else None,
            "teacher_test_accuracy": _stats({s: t["test_n_way_top_k"] for s, t in teacher.items()
                                             if "test_n_way_top_k" in t}),
            "teacher_val_accuracy": _stats({s: t["val_accuracy"] for s, t in teacher.items()
                                            if t.get("val_accuracy") is not None}),
            "teacher_chance": next((t["chance"] for t in teacher.values()), None)}


def summarize_methods(runs: dict) -> dict:
    return {method: summarize(by_seed) for method, by_seed in runs.items()}


def verdict(paired: dict) -> str:
    """yes / no / inconclusive from the paired differences (lower is better for the colour metrics)."""
    prefix = "multilevel beats highlevel_only on colour fidelity: "
    parts, signs = [], []
    for m in VERDICT_METRICS:
        p = paired[m]
        if p["mean"] is None:
            return prefix + f"inconclusive (no paired seeds for {m})"
        spread = f" ± {p['std']:.4f}" if p["std"] is not None else ""
        parts.append(f"{m} diff {p['mean']:+.4f}{spread}, multilevel better in {p['multilevel_better_in']}/{p['seeds']}")
        if p["std"] is None:
            signs.append(0)
        elif -p["mean"] > p["std"]:
            signs.append(1)
        elif p["mean"] > p["std"]:
            signs.append(-1)
        else:
            signs.append(0)
    seeds = paired[VERDICT_METRICS[0]]["seeds"]
    answer = "yes" if all(s == 1 for s in signs) else "no" if all(s == -1 for s in signs) else "inconclusive"
    why = "; ".join(parts) + f"; {seeds} seed(s), mean paired difference multilevel - highlevel_only ± std"
    if seeds < 2:
        why += "; one seed gives no spread estimate"
    return prefix + f"{answer} ({why})"


def summary_text(result: dict) -> str:
    lines = []
    for method, summary in result["summary"].items():
        lines += [f"method {method}:", *_method_text(summary)]
    lines += [f"error {r['method']} seed {r['seed']} {r['variant']}: {r['error']}" for by_seed in result["runs"].values()
              for rs in by_seed.values() for r in rs.values() if "error" in r]
    return "\n".join(lines)


def _method_text(summary: dict) -> list[str]:
    lines = [f"{'metric':<24}" + "".join(f"{v:>24}" for v in VARIANTS)]
    for m in METRICS:
        cells = []
        for v in VARIANTS:
            s = summary["metrics"][v][m]
            cells.append("-" if s["mean"] is None else f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s["std"] is not None else ""))
        lines.append(f"{m:<24}" + "".join(f"{c:>24}" for c in cells))
    t = summary["teacher_test_accuracy"]
    if t["mean"] is not None:
        lines.append(f"teacher on real test images: {t['mean']:.4f} (chance {summary['teacher_chance']:.4f})")
    return lines + [summary["verdict"]]


# --------------------------------------------------------------------------------------------
# Driver


METHOD = (
    "Two methods, each with its own runs: paper (the low-level encoder aligned with the autoencoder latent only: "
    "model.lowlevel.colour_layout_weight=0, colour_distribution_weight=0) and ours (the configs as they are, with "
    "the two colour heads on the EEG latent). "
    "One synthetic corpus (multilevel config's synth section) for all runs. Per method and seed s (train.seed = data.seed = "
    "eval.seed = s): multilevel is trained with train.stage=all by `deepspeed --num_gpus N launchers/train.py`; "
    "highlevel_only and lowlevel_only get copies of its stages/{teacher,lowlevel,highlevel}/final.safetensors and "
    "train only train.stage=diffusion, so the three differ only in what conditions the UNet "
    "(model.diffusion.condition_on). Each release is evaluated in-process with eeg2im_scale.eval.evaluator.evaluate "
    "on the test split with eval.inception_metrics=false. Statistics over seeds: mean, std (ddof=1); paired "
    "differences are multilevel - highlevel_only per seed (negative = multilevel better for the colour metrics). "
    "Verdict: yes only if the mean paired difference favours multilevel by more than its std on both "
    "colour_hist_distance and hue_error; no if it favours highlevel_only likewise; else inconclusive.")


NOTES = [
    ("lower is better for every colour metric (colour_hist_distance, hue_emd, hue/saturation/brightness_error); "
     "paired differences are multilevel - highlevel_only, so negative favours multilevel"),
    ("generated_n_way_top_k is only meaningful when the teacher classifies the real test images well above chance: "
     "compare with summary.teacher_test_accuracy and summary.teacher_chance"),
    ("teacher_val_accuracy is the teacher stage's own validation-split accuracy (stages/teacher/validation.json); "
     "teacher_test_accuracy is the evaluator's real_n_way_top_k: the release's teacher on the real images of the "
     "evaluated test trials, scored like the generated images (same n-way top-k and draws, trials in key order)"),
]
QUICK_NOTE = ("quick mode: 2 steps per stage, so the UNet's zero-initialised FiLM output layer (EMA weights in the "
              "release) has barely moved and the three variants generate (nearly) the same images; the numbers only "
              "show that the pipeline runs end to end")


def write_json(path: Path, result: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


def finished_runs(out: Path, result: dict) -> dict:
    """The evaluated runs of an earlier ``--out`` made with the same mode, corpus and resolved
    config (``--resume``): a long ablation can then be extended seed by seed across sessions."""
    if not out.is_file():
        return {}
    earlier = json.loads(out.read_text())
    same = (earlier.get("mode") == result["mode"]
            and earlier["settings"]["corpus"]["root"] == result["settings"]["corpus"]["root"]
            and earlier["configs"]["resolved_multilevel"] == result["configs"]["resolved_multilevel"]
            and earlier["configs"]["differences"] == result["configs"]["differences"])
    if not same:
        raise SystemExit(f"--resume: {out} was made with another mode, corpus or config; use a new --out")
    return {method: {seed: {v: r for v, r in runs.items() if "metrics" in r} for seed, runs in by_seed.items()}
            for method, by_seed in earlier["runs"].items()}


def run(plan: Plan, out: Path, log=print) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # in-process evaluation runs between launches
    log("corpus: synthesizing or reusing ...")
    corpus = ensure_corpus(plan)
    root = Path(corpus["root"])
    cfg = load_config(config_path("multilevel"), plan.common_overrides(root))
    result = {
        "benchmark": "ablation", "mode": "quick" if plan.quick else "full", "complete": False,
        "environment": machine_info("deepspeed", "diffusers", "accelerate"), "method": METHOD,
        "settings": {"methods": {m: list(METHODS[m]) for m in plan.methods}, "seeds": plan.seeds, "nproc": plan.nproc, "omp_num_threads_per_rank": plan.omp_threads,
                     "launcher": "deepspeed --num_gpus N --master_port <free port> launchers/train.py",
                     "evaluation": "in-process eeg2im_scale.eval.evaluator.evaluate, test split",
                     "eval_split": cfg.eval.split,
                     "eval_max_trials": cfg.eval.max_trials, "eval_max_trials_note": "0 = every test trial",
                     "eval_test_trials": corpus["trials"]["test"] if not cfg.eval.max_trials
                     else min(cfg.eval.max_trials, corpus["trials"]["test"]),
                     "steps_per_stage": {s: cfg.train.stage_config(s).steps for s in STAGES},
                     "user_overrides": plan.user_overrides, "corpus": corpus},
        "configs": {"files": {v: str(config_path(v).relative_to(REPO)) for v in VARIANTS},
                    "overrides_common": plan.common_overrides(root),
                    "overrides_per_run": ["<the method's overrides>", "train.seed=<s>", "data.seed=<s>", "eval.seed=<s>", "run_dir=<run dir>",
                                          "train.stage=all (multilevel) | diffusion (the others)"],
                    "differences": config_differences(plan, root),
                    "resolved_multilevel": to_dict(cfg)},
        "shared_encoders": "teacher, low-level and high-level encoders are trained once per seed (multilevel run) "
                           "and copied to highlevel_only and lowlevel_only, which train only the diffusion stage: "
                           "eeg_top1 is therefore the same for the three variants within a seed",
        "metric_definitions": METRICS,
        "notes": NOTES + ([QUICK_NOTE] if plan.quick else []),
        "runs": {},
    }
    done = finished_runs(out, result) if plan.resume else {}
    for method in plan.methods:
        for seed in plan.seeds:
            by_variant = result["runs"].setdefault(method, {}).setdefault(f"seed{seed}", {})
            kept = done.get(method, {}).get(f"seed{seed}", {})
            for variant in VARIANTS:
                if variant in kept:
                    by_variant[variant] = kept[variant]
                    log(f"{method} seed {seed} {variant}: kept from {out}")
                    continue
                shared = plan.run_dir(method, seed, "multilevel") / "stages"
                if variant != "multilevel" and not all((shared / s / "final.safetensors").is_file() for s in SHARED_STAGES):
                    by_variant[variant] = {"method": method, "variant": variant, "seed": seed,
                                           "error": "skipped: the multilevel run of this seed left no encoders to share"}
                    continue
                by_variant[variant] = run_variant(plan, root, method, seed, variant, log)
                result["summary"] = summarize_methods(result["runs"])
                result["runtime_s"] = round(time.perf_counter() - started, 1)
                write_json(out, result)  # partial results survive an interruption
    result["summary"] = summarize_methods(result["runs"])
    result["table"] = summary_text(result).splitlines()
    result["complete"] = True
    result["environment"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    result["runtime_s"] = round(time.perf_counter() - started, 1)
    write_json(out, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results (rewritten after every run)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; --quick: 0)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench" / "ablation",
                        help="corpus (written once, reused) and one run directory per seed and variant")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="paper: no colour heads on the low-level EEG latent; ours: the configs as they are")
    parser.add_argument("--nproc", type=int, default=None, help="ranks per training launch (default 2; --quick: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny_train-sized corpus and models, 2 steps per stage, 6 test trials, 1 seed")
    parser.add_argument("--resume", action="store_true",
                        help="keep the evaluated runs already in --out (same mode, corpus and config) and run the rest")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="applied to all three configs")
    args = parser.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    nproc = args.nproc if args.nproc is not None else (1 if args.quick else 2)
    if nproc < 1 or len(set(seeds)) != len(seeds):
        parser.error("--nproc must be >= 1 and --seeds distinct")
    reserved = [o for o in args.overrides if o.split("=", 1)[0].strip() in
                ("data.root", "run_dir", "train.stage", "train.seed", "data.seed", "eval.seed")]
    if reserved:
        parser.error(f"set by the benchmark, not overridable: {', '.join(reserved)}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = Plan(seeds=seeds, nproc=nproc, work_dir=args.work_dir.resolve(), quick=args.quick,
                user_overrides=list(args.overrides), methods=tuple(dict.fromkeys(args.methods)), resume=args.resume)
    try:  # a bad override fails before any work
        load_config(config_path("multilevel"), plan.common_overrides())
    except ConfigError as exc:
        parser.error(str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = run(plan, args.out, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(summary_text(result))
    print(f"wrote {args.out} ({result['runtime_s']} s)")
    return 1 if any("error" in r for by_seed in result["runs"].values() for rs in by_seed.values()
                    for r in rs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
