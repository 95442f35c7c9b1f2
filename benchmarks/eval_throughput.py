"""Evaluation benchmark: Inception feature extraction speed and whole-evaluation scaling over processes.

Why: FID/IS/KID dominate evaluation cost, and the evaluator runs the Inception itself (our wrapper
of torch-fidelity's network, fed inside the generation loop) instead of handing images to
torch-fidelity; this script checks that costs nothing, and how much a second process buys.

* ``feature_extraction``: images/s of :func:`eeg2im_scale.eval.inception.extract` on uint8 images,
  and of ``torch_fidelity.calculate_metrics(input1=<Dataset of the same uint8 tensors>, isc=True)``,
  i.e. torch-fidelity's own pipeline (DataLoader, its extractor, IS on top). The real FID weights
  are not needed: the randomly initialised network of ``random_fid_inception`` is saved to a file
  and given to torch-fidelity as ``feature_extractor_weights_path``, so both run the same network
  with the same weights (the equal Inception Scores in the JSON confirm it). Both get the same
  torch threads, batch size and in-process loading (torch-fidelity's ``save_cpu_ram=True``: no
  worker processes). The first batch of each is an untimed warm-up.
* ``whole_evaluation``: wall time, trials/s and generated images/s of a full evaluation of a tiny
  release (``tests/configs/tiny_train.yaml``, trained once into ``--work-dir`` and reused) with 1
  process (``eeg2im evaluate``, OMP_NUM_THREADS=2) and 2 processes (``accelerate launch --cpu
  --num_processes 2 launchers/evaluate.py``, OMP_NUM_THREADS=1 each), same overrides; the wall time
  includes interpreter start-up and model loading, which is what a user waits for.

Run ``python benchmarks/eval_throughput.py --out results.json``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch_fidelity
from torch.utils.data import Dataset

from eeg2im_scale.bench.environment import machine_info
from eeg2im_scale.eval.gen_metrics import inception_score
from eeg2im_scale.eval.inception import extract, random_fid_inception

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "tests/configs/tiny_train.yaml"
STAGES = ("teacher", "lowlevel", "highlevel", "diffusion")
TORCH_THREADS = 2
TRAIN_STEPS = 2  # per stage; DeepSpeed's warm-up schedule needs more than one
SETTINGS = {
    "default": {"images": 128, "image_size": 64, "batch_size": 32, "repeats": 2,
                "eval": ["eval.random_inception=true", "eval.images_per_trial=2", "eval.sample_steps=4",
                         "eval.batch_size=4", "eval.kid_subsets=10", "eval.is_splits=2"]},
    "quick": {"images": 8, "image_size": 32, "batch_size": 8, "repeats": 1,
              "eval": ["eval.random_inception=true", "eval.images_per_trial=1", "eval.sample_steps=1",
                       "eval.batch_size=4", "eval.max_trials=4", "eval.kid_subsets=2", "eval.is_splits=2"]},
}


class _Uint8Images(Dataset):
    """torch-fidelity's input: a Dataset of uint8 [3, H, W] tensors."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def feature_extraction(settings: dict, work_dir: Path) -> dict:
    """Images/s of our ``extract`` vs torch-fidelity's ``calculate_metrics`` on the same images and weights."""
    torch.set_num_threads(TORCH_THREADS)
    n, size, batch = settings["images"], settings["image_size"], settings["batch_size"]
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = random_fid_inception("cpu", seed=0)
    weights = work_dir / "random_fid_inception.pth"
    torch.save(model.state_dict(), weights)

    extract(model, images[:batch])  # warm-up
    start = time.perf_counter()
    logits = torch.cat([extract(model, images[i : i + batch])[1] for i in range(0, n, batch)])
    ours_s = time.perf_counter() - start
    ours_is, _ = inception_score(logits, splits=2)

    kwargs = dict(isc=True, isc_splits=2, cuda=False, batch_size=batch, save_cpu_ram=True, cache=False,
                  verbose=False, feature_extractor_weights_path=str(weights))
    torch_fidelity.calculate_metrics(input1=_Uint8Images(images[:batch]), **kwargs)  # warm-up
    start = time.perf_counter()
    theirs = torch_fidelity.calculate_metrics(input1=_Uint8Images(images), **kwargs)
    theirs_s = time.perf_counter() - start
    return {
        "compared": "eeg2im_scale.eval.inception.extract(model, uint8 batch) over all batches vs "
                    "torch_fidelity.calculate_metrics(input1=Dataset of the same uint8 tensors, isc=True, "
                    "save_cpu_ram=True, cuda=False, feature_extractor_weights_path=<the same random weights>): "
                    "torch-fidelity's whole pipeline (DataLoader, extractor, IS), one untimed warm-up batch each",
        "weights": "random (random_fid_inception(seed=0), Kaiming-normal convolutions); real FID weights absent "
                   "offline: speed does not depend on weight values",
        "images": n, "image_size": size, "batch_size": batch, "torch_threads": TORCH_THREADS,
        "ours_images_per_s": n / ours_s, "ours_wall_s": ours_s,
        "torch_fidelity_images_per_s": n / theirs_s, "torch_fidelity_wall_s": theirs_s,
        "ratio_ours_over_torch_fidelity": theirs_s / ours_s,
        "inception_score_ours": ours_is, "inception_score_torch_fidelity": theirs["inception_score_mean"],
    }


def train_release(work_dir: Path, steps: int) -> Path:
    """The tiny release (synthetic corpus + model), trained once per ``steps`` and reused."""
    root = work_dir / f"release_steps{steps}"
    model = root / "run" / "model"
    if (root / "done").exists():
        return root
    code = ("import sys; from eeg2im_scale.config import load_config; "
            "from eeg2im_scale.data.corpus import write_synthetic; from eeg2im_scale.train.command import main; "
            "write_synthetic(load_config(sys.argv[1]).synth, sys.argv[2]); sys.exit(main(sys.argv[3:]))")
    command = [sys.executable, "-c", code, CONFIG, str(root / "corpus"), "--config", CONFIG,
               f"run_dir={root / 'run'}", f"data.root={root / 'corpus'}",
               *(f"train.{s}.steps={steps}" for s in STAGES)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if done.returncode != 0 or not model.is_dir():
        raise RuntimeError(f"training the tiny release failed:\n{done.stderr[-4000:]}")
    (root / "done").write_text("")
    return root


def evaluate_once(release: Path, processes: int, overrides: list[str], out: Path) -> dict:
    """One evaluation as a user runs it; wall time of the whole command."""
    common = ["--config", CONFIG, "--checkpoint", str(release / "run" / "model"), "--out", str(out),
              f"data.root={release / 'corpus'}", *overrides]
    bin_dir = Path(sys.executable).parent
    if processes == 1:
        command = [str(bin_dir / "eeg2im"), "evaluate", *common]
    else:
        command = [str(bin_dir / "accelerate"), "launch", "--cpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "launchers/evaluate.py", *common]
    threads = max(1, TORCH_THREADS // processes)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{processes}-process evaluation failed:\n{done.stderr[-4000:]}")
    protocol = json.loads((out / "metrics.json").read_text())["protocol"]
    fid = json.loads((out / "metrics.json").read_text())["metrics"]["fid"]["value"]
    return {"wall_s": wall, "trials": protocol["trials"], "generated_images": protocol["generated_images"],
            "omp_num_threads": threads, "load_average_1min_before": round(load_before, 2),
            "load_average_1min_after": round(os.getloadavg()[0], 2), "fid": fid}


def whole_evaluation(settings: dict, work_dir: Path, release: Path | None = None) -> dict:
    """1 vs 2 processes on the same release and overrides; the fastest of ``repeats`` runs each.
    ``release``: a tiny release trained elsewhere (ROOT/corpus, ROOT/run/model), else one is trained."""
    start = time.perf_counter()
    trained_here = release is None
    release = train_release(work_dir, TRAIN_STEPS) if trained_here else release
    result = {"config": CONFIG, "train_steps_per_stage": TRAIN_STEPS if trained_here else "given (--release)",
              "release_dir": str(release), "release_train_s": time.perf_counter() - start,
              "overrides": settings["eval"], "repeats": settings["repeats"],
              "wall_time_includes": "interpreter start-up, imports, model loading, evaluation, writing outputs"}
    for processes in (1, 2):
        runs = [evaluate_once(release, processes, settings["eval"], work_dir / f"eval_{processes}proc_{r}")
                for r in range(settings["repeats"])]
        best = min(runs, key=lambda run: run["wall_s"])
        result[f"processes_{processes}"] = {
            **best, "trials_per_s": best["trials"] / best["wall_s"],
            "generated_images_per_s": best["generated_images"] / best["wall_s"],
            "all_wall_s": [run["wall_s"] for run in runs]}
    one, two = result["processes_1"], result["processes_2"]
    result["speedup_2_over_1"] = one["wall_s"] / two["wall_s"]
    result["same_fid_1_and_2_processes"] = abs(one["fid"] - two["fid"]) <= 1e-3 * max(1.0, abs(one["fid"]))
    return result


def print_table(result: dict) -> None:
    f = result["feature_extraction"]
    print(f"feature extraction ({f['images']} images {f['image_size']}², batch {f['batch_size']}, "
          f"{f['torch_threads']} threads): ours {f['ours_images_per_s']:.1f} images/s, torch-fidelity "
          f"{f['torch_fidelity_images_per_s']:.1f} images/s (ratio {f['ratio_ours_over_torch_fidelity']:.2f})")
    w = result["whole_evaluation"]
    print(f"{'processes':>9} {'threads':>7} {'wall s':>7} {'trials/s':>9} {'images/s':>9}")
    for processes in (1, 2):
        r = w[f"processes_{processes}"]
        print(f"{processes:>9} {r['omp_num_threads']:>7} {r['wall_s']:>7.1f} {r['trials_per_s']:>9.2f} "
              f"{r['generated_images_per_s']:>9.2f}")
    print(f"speed-up 2 vs 1 process: {w['speedup_2_over_1']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="result JSON")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one repeat")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "bench_eval"),
                        help="where the tiny release is trained (reused) and evaluations are written")
    parser.add_argument("--release", type=Path, help=f"evaluate this release of {CONFIG} (ROOT/corpus, "
                        "ROOT/run/model) instead of training one")
    args = parser.parse_args(argv)
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "default"
    settings = SETTINGS[mode]
    started = time.perf_counter()
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "mode": mode, "settings": settings, "machine": machine_info("torch-fidelity")}
    result["feature_extraction"] = feature_extraction(settings, work_dir)
    result["whole_evaluation"] = whole_evaluation(settings, work_dir, args.release)
    result["total_wall_s"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
