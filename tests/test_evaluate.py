"""The evaluator end to end: a tiny trained release, evaluated by 1 and by 2 processes."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from eeg2im_scale.cli.main import main as cli_main
from eeg2im_scale.config import load_config
from eeg2im_scale.data.corpus import write_synthetic
from eeg2im_scale.train.run import main as train_main

CONFIG = "tests/configs/tiny_train.yaml"
EVAL = ["eval.random_inception=true", "eval.images_per_trial=2", "eval.batch_size=4", "eval.sample_steps=2",
        "eval.kid_subsets=5", "eval.is_splits=2", "eval.grid_trials=3"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    write_synthetic(load_config(CONFIG).synth, root / "corpus")
    steps = [f"train.{s}.steps=2" for s in ("teacher", "lowlevel", "highlevel", "diffusion")]
    assert train_main(["--config", CONFIG, f"run_dir={root / 'run'}", f"data.root={root / 'corpus'}",
                       "train.log_every=1", *steps]) == 0
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(release):
    return [f"data.root={release / 'corpus'}", *EVAL]


def test_single_process_evaluation_writes_metrics_table_and_grid(release, tmp_path):
    out = tmp_path / "eval"
    assert cli_main(["evaluate", "--config", CONFIG, "--checkpoint", str(release / "run" / "model"),
                     "--out", str(out), *overrides(release)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    values = {k: v["value"] for k, v in metrics["metrics"].items()}
    for name in ("eeg_top1", "eeg_top5", "inception_score", "fid", "kid", "generated_n_way_top_k", "real_n_way_top_k",
                 "hist_intersection", "hue_emd", "ssim", "pixel_correlation", "hue_error", "brightness_error"):
        assert name in values and metrics["metrics"][name]["definition"], name
    test_trials = 20  # tiny_train.yaml's test split under the image scheme
    assert metrics["protocol"]["trials"] == test_trials and metrics["protocol"]["generated_images"] == 2 * test_trials
    assert metrics["protocol"]["inception"].startswith("random")
    from eeg2im_scale.data.manifest import Manifest

    manifest = Manifest(release / "corpus")
    member = manifest.membership("image", "test")
    stimuli = {r["image_id"] for r in manifest.read(["index", "image_id"]).to_pylist() if member[r["index"]]}
    assert metrics["protocol"]["real_images"] == metrics["protocol"]["distinct_stimuli"] == len(stimuli) < test_trials
    assert 0 <= values["eeg_top1"] <= values["eeg_top5"] <= 1 and values["fid"] >= 0
    with open(out / "per_subject.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["trials"]) for r in rows) == test_trials
    assert (out / "grid.png").stat().st_size > 0
    card = (release / "run" / "model" / "README.md").read_text()
    assert '"fid"' in card and '"split": "test"' in card  # the model card now carries the evaluation


def test_one_two_and_three_processes_give_identical_metrics(release, tmp_path):
    """Rows are gathered in process order; every metric must be the same number whatever the process
    count. One trial per generation batch makes every trial's computation the same in every layout,
    so the comparison can be exact: any order effect on IS splits, KID subsets or n-way draws shows."""
    model = str(release / "run" / "model")
    accelerate = Path(sys.executable).parent / "accelerate"
    # this process's own rendezvous (left by the fixture's training) must not reach the launched jobs
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                            "MASTER_ADDR", "MASTER_PORT")}
    runs = {}
    for processes in (1, 2, 3):
        out = tmp_path / f"processes{processes}"
        result = subprocess.run([str(accelerate), "launch", "--cpu", "--num_processes", str(processes),
                                 "--num_machines", "1", "--main_process_port", str(free_port()),
                                 "--mixed_precision", "no", "--dynamo_backend", "no",
                                 "launchers/evaluate.py", "--config", CONFIG, "--checkpoint", model, "--out", str(out),
                                 *overrides(release), "eval.batch_size=1"],
                                capture_output=True, text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-4000:]
        runs[processes] = json.loads((out / "metrics.json").read_text())
    for processes in (2, 3):
        assert runs[processes]["protocol"]["trials"] == runs[1]["protocol"]["trials"]
        assert {name: entry["value"] for name, entry in runs[processes]["metrics"].items()} == {
            name: entry["value"] for name, entry in runs[1]["metrics"].items()}, processes


def test_evaluation_without_inception_metrics_needs_no_inception(release, tmp_path):
    """eval.inception_metrics=false (the offline quickstart) skips IS/FID/KID and says so."""
    out = tmp_path / "eval"
    assert cli_main(["evaluate", "--config", CONFIG, "--checkpoint", str(release / "run" / "model"),
                     "--out", str(out), *overrides(release), "eval.inception_metrics=false",
                     "eval.random_inception=false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert not {"inception_score", "fid", "kid"} & set(metrics["metrics"])
    assert {"eeg_top1", "generated_n_way_top_k", "hue_error"} <= set(metrics["metrics"])
    assert metrics["protocol"]["inception"].startswith("none")
    assert metrics["protocol"]["generated_images"] == 2 * metrics["protocol"]["trials"]


def test_evaluated_trials_follow_any_split_scheme_and_class_subset(random_corpus):
    """The trials evaluated are the split's members under the scheme, including the protocols'
    derived ones (``loso:<subject>``) and a class subset."""
    import pyarrow.parquet as pq

    from eeg2im_scale.data.loader import EEGImageLoader
    from eeg2im_scale.eval.evaluator import _selected_keys

    from conftest import data_cfg

    rows = pq.read_table(random_corpus / "manifest.parquet", columns=["key", "subject", "label"]).to_pylist()
    loader = EEGImageLoader(data_cfg(random_corpus, split_by="loso:2"), "test", train=False)
    selected, grid = _selected_keys(loader, 0, 4)
    assert selected == {r["key"] for r in rows if r["subject"] == 2} and len(grid) == 4 and grid <= selected
    loader = EEGImageLoader(data_cfg(random_corpus, split_by="loso:2", classes=["b"]), "test", train=False)
    assert _selected_keys(loader, 0, 4)[0] == {r["key"] for r in rows if r["subject"] == 2 and r["label"] == 1}
