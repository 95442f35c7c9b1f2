"""The evaluator end to end: a tiny trained release, evaluated by 1, 2 and 3 processes."""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from eeg2im_scale.cli.main import main as cli_main
from eeg2im_scale.config import load_config

CONFIG = "tests/configs/tiny_train.yaml"
EVAL = ["eval.random_inception=true", "eval.images_per_trial=2", "eval.batch_size=4", "eval.sample_steps=2",
        "eval.kid_subsets=5", "eval.is_splits=2", "eval.grid_trials=3"]


@pytest.fixture(scope="module")
def release(tiny_release):
    return tiny_release


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RECONSTRUCTION = ["eval.reconstruction.metrics=[pixcorr,ssim,alexnet2]", "eval.reconstruction.random_networks=true"]


def overrides(release):
    return [f"data.root={release / 'corpus'}", *EVAL]


def test_single_process_evaluation_writes_metrics_table_and_grid(release, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli_main(["evaluate", "--config", CONFIG, "--checkpoint", str(release / "run" / "model"),
                     "--out", str(out), *overrides(release)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]  # a line for people after the JSON
    assert summary.startswith("evaluated 20 test trials x 2 images: EEG top-1 accuracy ") and "(chance " in summary
    metrics = json.loads((out / "metrics.json").read_text())
    values = {k: v["value"] for k, v in metrics["metrics"].items()}
    for name in ("eeg_top1", "eeg_top5", "inception_score", "fid", "kid", "generated_n_way_top_k", "real_n_way_top_k",
                 "hist_intersection", "hue_emd", "ssim", "pixel_correlation", "hue_error", "brightness_error"):
        entry = metrics["metrics"][name]
        assert name in values and entry["definition"] and entry["name"] and entry["better"] in ("higher", "lower"), name
        assert entry["chance"] is not None or entry["chance_rule"].startswith("reference:"), name
    for name in ("eeg_top1", "generated_n_way_top_k", "hist_intersection", "hue_emd", "hue_error", "saturation_error",
                 "brightness_error"):  # computed chance levels: each generation against another trial's stimulus
        assert isinstance(metrics["metrics"][name]["chance"], float), name
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
    assert all(0 <= float(r["generated_n_way_top_k"]) <= 1 for r in rows)  # generated-image accuracy per subject
    assert (out / "grid.png").stat().st_size > 0
    assert metrics["protocol"]["partial"] is False and metrics["protocol"]["split_trials"] == test_trials


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_only_a_complete_evaluation_into_the_release_eval_folder_rewrites_the_card(release, tmp_path):
    """A quick check elsewhere leaves the release byte-identical and says it is partial; the card changes
    only with a complete evaluation into RUN_DIR/eval, which is then not replaced without --overwrite."""
    model = release / "run" / "model"
    before = _tree_bytes(model)
    assert cli_main(["evaluate", "--config", CONFIG, "--checkpoint", str(model), "--out", str(tmp_path / "quick"),
                     *overrides(release), "eval.max_trials=4"]) == 0
    assert _tree_bytes(model) == before
    protocol = json.loads((tmp_path / "quick" / "metrics.json").read_text())["protocol"]
    assert protocol["partial"] is True and protocol["trials"] == 4 and protocol["split_trials"] == 20

    run_dir = tmp_path / "run"  # the release's own eval folder is RUN_DIR/eval: a copy, the fixture stays as it is
    shutil.copytree(model, run_dir / "model")
    real = [f"run_dir={run_dir}", *overrides(release), "eval.inception_metrics=false", "eval.random_inception=false"]
    assert cli_main(["evaluate", "--config", CONFIG, *real]) == 0
    card = (run_dir / "model" / "README.md").read_text()
    assert '"split": "test"' in card and '(`eeg_top1`)' in card and '| chance |' in card  # the card carries the evaluation
    done = subprocess.run([sys.executable, "-m", "eeg2im_scale.cli.main", "evaluate", "--config", CONFIG, *real],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "already holds an evaluation" in done.stderr and "--overwrite" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_one_two_and_three_processes_give_identical_metrics(release, tmp_path):
    """Rows are gathered in process order; every metric must be the same number whatever the process
    count. One trial per generation batch makes every trial's computation the same in every layout,
    so the comparison can be exact: any order effect on IS splits, KID subsets or n-way draws shows."""
    model = str(release / "run" / "model")
    accelerate = Path(sys.executable).parent / "accelerate"
    # a rendezvous left in this process by an earlier in-process run must not reach the launched jobs
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                            "MASTER_ADDR", "MASTER_PORT")}
    runs = {}
    for processes in (1, 2, 3):
        out = tmp_path / f"processes{processes}"
        result = subprocess.run([str(accelerate), "launch", "--cpu", "--num_processes", str(processes),
                                 "--num_machines", "1", "--main_process_port", str(free_port()),
                                 "--mixed_precision", "no", "--dynamo_backend", "no",
                                 "launchers/evaluate.py", "--config", CONFIG, "--checkpoint", model, "--out", str(out),
                                 *overrides(release), "eval.batch_size=1", *RECONSTRUCTION],
                                capture_output=True, text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-4000:]
        runs[processes] = json.loads((out / "metrics.json").read_text())
    for processes in (2, 3):
        assert runs[processes]["protocol"]["trials"] == runs[1]["protocol"]["trials"]
        assert {name: entry["value"] for name, entry in runs[processes]["metrics"].items()} == {
            name: entry["value"] for name, entry in runs[1]["metrics"].items()}, processes


def test_evaluation_writes_the_reconstruction_table_flagged_when_its_networks_are_random(release, tmp_path,
                                                                                         tiny_clip):
    """MindEye's table in metrics.json: 2-way identification against the distinct stimuli (chance 0.5),
    distances with a mismatched-stimulus chance, each entry saying where its weights came from (CLIP: a tiny
    OpenCLIP architecture here, named in its entry)."""
    from eeg2im_scale.eval.reconstruction import RANDOM_WEIGHTS

    out = tmp_path / "eval"
    assert cli_main(["evaluate", "--config", CONFIG, "--checkpoint", str(release / "run" / "model"),
                     "--out", str(out), *overrides(release), "eval.inception_metrics=false", "eval.max_trials=8",
                     "eval.reconstruction.metrics=[pixcorr,ssim,alexnet2,alexnet5,effnet,clip]",
                     f"eval.reconstruction.clip_model={tiny_clip}", "eval.reconstruction.random_networks=true"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    table = {k: v for k, v in metrics["metrics"].items() if k.startswith("recon_")}
    assert set(table) == {"recon_pixcorr", "recon_ssim", "recon_alexnet2", "recon_alexnet5", "recon_effnet", "recon_clip"}
    assert all(table[k]["weights"] == RANDOM_WEIGHTS for k in ("recon_alexnet2", "recon_alexnet5", "recon_effnet"))
    assert table["recon_clip"]["weights"] == f"{RANDOM_WEIGHTS} (OpenCLIP {tiny_clip})"
    assert table["recon_clip"]["chance"] == 0.5 and 0 <= table["recon_clip"]["value"] <= 1
    assert table["recon_ssim"]["weights"].startswith("none")
    assert table["recon_alexnet2"]["chance"] == 0.5 and 0 <= table["recon_alexnet2"]["value"] <= 1
    assert table["recon_effnet"]["better"] == "lower" and isinstance(table["recon_effnet"]["chance"], float)
    assert -1 <= table["recon_pixcorr"]["value"] <= 1 and table["recon_ssim"]["definition"].startswith("MindEye")
    reconstruction = metrics["protocol"]["reconstruction"]
    assert reconstruction["not_computed"] == {} and "MindEyeV2" in reconstruction["follows"]


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
    selected, grid, split_trials = _selected_keys(loader, 0, 4)
    assert selected == {r["key"] for r in rows if r["subject"] == 2} and len(grid) == 4 and grid <= selected
    assert split_trials == len(selected)
    loader = EEGImageLoader(data_cfg(random_corpus, split_by="loso:2", classes=["b"]), "test", train=False)
    assert _selected_keys(loader, 0, 4)[0] == {r["key"] for r in rows if r["subject"] == 2 and r["label"] == 1}


def _copy_release(release, tmp_path, **corpus_changes) -> Path:
    """A copy of the fixture's release (so a test may change it) with ``corpus.json`` entries replaced."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(release / "run" / "model", model)
    corpus = json.loads((model / "corpus.json").read_text())
    corpus.update(corpus_changes)
    (model / "corpus.json").write_text(json.dumps(corpus))
    return model


def test_release_data_takes_the_release_values_and_refuses_given_contradictions():
    from eeg2im_scale.config import ConfigError, DataConfig
    from eeg2im_scale.eval.selection import release_data

    corpus = {"split_by": "block", "class_subset": {"class_names": ["b", "a"], "source_labels": [1, 0]},
              "eeg_window": [2, 30], "bandpass": None, "normalize": True}
    data = release_data(DataConfig(), corpus, "RUN/model/corpus.json", given={"data.root", "data.batch_size"})
    assert (data.split_by, data.classes, data.eeg_window, data.bandpass) == ("block", ["b", "a"], (2, 30), None)
    assert release_data(DataConfig(split_by="block", classes=["b", "a"], eeg_window=(2, 30)), corpus, "x") == data
    with pytest.raises(ConfigError, match=r"data.split_by=image contradicts the release \(block, from RUN/model/"
                                          r"corpus.json\): drop the setting or pass data.split_by=block"):
        release_data(DataConfig(), corpus, "RUN/model/corpus.json", given={"data.split_by"})
    with pytest.raises(ConfigError, match=r"data.classes=null contradicts"):  # a Config built in code: all count
        release_data(DataConfig(split_by="block"), corpus, "x")


def test_evaluation_uses_the_release_split_scheme_and_statistics(release, tmp_path, capsys):
    """A release trained under another scheme is evaluated on that scheme's test trials (the config
    does not name one); a config that names another is refused; z-scoring uses the release's statistics."""
    from eeg2im_scale.data.manifest import Manifest

    base = ["--config", CONFIG, *overrides(release), "eval.inception_metrics=false", "eval.random_inception=false"]
    model = _copy_release(release, tmp_path, split_by="block")
    assert cli_main(["evaluate", "--checkpoint", str(model), "--out", str(tmp_path / "block"), *base]) == 0
    protocol = json.loads((tmp_path / "block" / "metrics.json").read_text())["protocol"]
    block_test = Manifest(release / "corpus").count("block", "test")
    assert protocol["split_by"] == "block" and protocol["trials"] == block_test != 20
    assert cli_main(["evaluate", "--checkpoint", str(model), "--out", str(tmp_path / "x"), *base,
                     "data.split_by=image"]) == 2
    assert "data.split_by=image contradicts the release (block" in capsys.readouterr().err

    limited = [*base, "eval.max_trials=8"]
    assert cli_main(["evaluate", "--checkpoint", str(release / "run" / "model"), "--out", str(tmp_path / "own"),
                     *limited]) == 0
    corpus = json.loads((release / "run" / "model" / "corpus.json").read_text())
    shifted = _copy_release(release, tmp_path / "shifted", eeg_mean=[m + 3.0 for m in corpus["eeg_mean"]])
    assert cli_main(["evaluate", "--checkpoint", str(shifted), "--out", str(tmp_path / "shifted_eval"),
                     *limited]) == 0
    own, moved = ({k: v["value"] for k, v in json.loads((tmp_path / d / "metrics.json").read_text())["metrics"].items()}
                  for d in ("own", "shifted_eval"))
    assert own != moved  # generation is seeded per trial: only the EEG's z-scoring differs


TUNE = ["tune.samplers=[ddim]", "tune.sample_steps=[1,2]", "tune.guidance_scales=[0.0,3.0]",
        "tune.metric=hist_intersection", "tune.max_trials=8", "eval.inception_metrics=false",
        "eval.random_inception=false", "eval.batch_size=8"]


def test_tune_selects_on_val_and_evaluate_uses_the_selection(release, tmp_path):
    from eeg2im_scale.eval.evaluator import evaluate

    model = _copy_release(release, tmp_path)
    config = tmp_path / "with_test.yaml"  # as configs/synthetic_tiny.yaml: the file's eval.split is evaluate's
    config.write_text(f"base: {Path(CONFIG).resolve()}\neval: {{split: test}}\n")
    base = ["--config", str(config), f"data.root={release / 'corpus'}", *TUNE]
    assert cli_main(["tune", "--checkpoint", str(model), *base]) == 0
    selection = json.loads((model / "selection.json").read_text())
    assert selection["split"] == "val" and selection["criterion"] == "hist_intersection"
    assert selection["better"] == "higher" and selection["trials"] == 8 and selection["date"]
    rows = selection["candidates"]
    assert [(r["sample_steps"], r["guidance_scale"]) for r in rows] == [(1, 0.0), (1, 3.0), (2, 0.0), (2, 3.0)]
    scores = [r["score"] for r in rows]
    assert len(set(scores)) > 1 and selection["score"] == max(scores)
    assert selection["selected"] == {k: rows[scores.index(max(scores))][k]
                                     for k in ("sampler", "sample_steps", "guidance_scale")}
    # a candidate's score is the evaluator's figure on val for those settings
    cfg = load_config(CONFIG, [f"data.root={release / 'corpus'}", *TUNE, "eval.split=val", "eval.max_trials=8",
                               "eval.sampler=ddim", "eval.sample_steps=2", "eval.guidance_scale=3.0"])
    check = evaluate(cfg, model, write=False)
    assert check["metrics"]["hist_intersection"]["value"] == pytest.approx(rows[3]["score"], rel=1e-9)
    assert check["protocol"]["model_selection"]["overridden_by"] == ["eval.sampler", "eval.sample_steps",
                                                                      "eval.guidance_scale"]

    assert cli_main(["evaluate", "--checkpoint", str(model), "--out", str(tmp_path / "test"), *base]) == 0
    protocol = json.loads((tmp_path / "test" / "metrics.json").read_text())["protocol"]
    assert protocol["split"] == "test" and protocol["trials"] == 20
    assert {k: protocol[k] for k in ("sampler", "sample_steps", "guidance_scale")} == selection["selected"]
    chosen = protocol["model_selection"]
    assert (chosen["split"], chosen["criterion"], chosen["selected"], chosen["overridden_by"]) == (
        "val", "hist_intersection", selection["selected"], [])
    other = 0.0 if selection["selected"]["guidance_scale"] == 3.0 else 3.0
    assert cli_main(["evaluate", "--checkpoint", str(model), "--out", str(tmp_path / "override"), *base,
                     "eval.max_trials=4", f"eval.guidance_scale={other}"]) == 0
    protocol = json.loads((tmp_path / "override" / "metrics.json").read_text())["protocol"]
    assert protocol["guidance_scale"] == other and protocol["model_selection"]["overridden_by"] == ["eval.guidance_scale"]
    assert protocol["sample_steps"] == selection["selected"]["sample_steps"]


def test_tune_on_test_is_refused_and_no_selection_is_recorded_as_none(release, tmp_path, capsys):
    model = _copy_release(release, tmp_path)
    assert cli_main(["tune", "--checkpoint", str(model), "--config", CONFIG, f"data.root={release / 'corpus'}",
                     *TUNE, "eval.split=test"]) == 2
    assert "validation split only; eval.split=test is refused" in capsys.readouterr().err
    assert not (model / "selection.json").exists()
    assert cli_main(["evaluate", "--checkpoint", str(model), "--out", str(tmp_path / "eval"), "--config", CONFIG,
                     f"data.root={release / 'corpus'}", *TUNE, "eval.max_trials=4"]) == 0
    protocol = json.loads((tmp_path / "eval" / "metrics.json").read_text())["protocol"]
    assert protocol["model_selection"] == "none: model defaults (no eeg2im tune run)"
    assert protocol["sample_steps"] == 4  # tiny_train.yaml's model.diffusion.sample_steps
