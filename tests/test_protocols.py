"""Evaluation protocols (``eeg2im protocol``): split schemes, statistics, the table, and each
protocol run for real on small synthetic corpora (in-process training, one rank; one LOSO fold
under a launcher)."""

import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import random_samples

from eeg2im_scale.cli.main import main as cli_main
from eeg2im_scale.config import ConfigError, load_config
from eeg2im_scale.data.corpus import write_synthetic
from eeg2im_scale.data.manifest import STATS_CACHE, Manifest
from eeg2im_scale.data.splits import Scheme, parse_scheme
from eeg2im_scale.data.synth import SyntheticCorpus
from eeg2im_scale.data.synth_eeg import Stream, generator
from eeg2im_scale.data.writer import CorpusInfo, RawSample, write_corpus
from eeg2im_scale.eval.report import write_report
from eeg2im_scale.protocols.evaluate import nearest_prototype
from eeg2im_scale.protocols.stats import binomial_p_value, chance_level, mean_and_spread
from eeg2im_scale.protocols.table import (
    LOSO_SUMMARY,
    accuracy_row,
    read_table,
    update_table,
)

CONFIG = "tests/configs/tiny_train.yaml"
# The EEG classifier on a CPU budget: a ResNet18 teacher, and cross-entropy alone for the encoder
# (8 teacher steps give no teacher worth distilling; 24 encoder steps then learn a strong cue).
CLASSIFIER = ["model.teacher.arch=resnet18", "model.highlevel.kd_weight=0", "model.highlevel.feature_kd_weight=0",
              "train.highlevel.steps=24"]
FOUR_CLASSES = ["synth.num_classes=4"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny models gain nothing from more threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    """tiny_train.yaml's corpus with 4 classes: 192 trials, 2 subjects, 48 images."""
    root = tmp_path_factory.mktemp("protocols") / "tiny4"
    write_synthetic(load_config(CONFIG, FOUR_CLASSES).synth, root)
    return root


def trained_keys(run_dir, stage) -> list[int]:
    """Every sample a stage trained on, from its per-rank sample logs."""
    return [int(key) for path in sorted((run_dir / "stages" / stage / "samples").glob("rank*.jsonl"))
            for line in path.read_text().splitlines() for key in json.loads(line)["keys"]]


def manifest_column(root, column) -> dict[int, object]:
    table = Manifest(root).read(["index", column]).to_pydict()
    return dict(zip(table["index"], table[column]))


def protocols_html(run_dir) -> str:
    html = write_report(run_dir).read_text()
    return html[html.index('<section id="protocols">'):html.index('<section id="training">')]


# ---- statistics -----------------------------------------------------------------------------------


def test_binomial_test_chance_level_and_spread():
    assert binomial_p_value(10, 10, 0.5) == pytest.approx(1 / 1024)
    assert binomial_p_value(0, 10, 0.5) == pytest.approx(1.0)
    assert binomial_p_value(4, 12, 1 / 3) == pytest.approx(0.6069, abs=1e-4)  # scoring chance is no evidence
    assert binomial_p_value(30, 60, 0.25) < 1e-4 < binomial_p_value(20, 60, 0.25)
    with pytest.raises(ValueError):
        binomial_p_value(11, 10, 0.5)
    assert chance_level([10, 10, 10], 3) == pytest.approx(1 / 3)
    assert chance_level([5, 15], 2) == 0.75  # always guessing the majority class
    assert chance_level([3, 0, 0, 0], 2) == 1.0
    assert mean_and_spread([0.4, 0.6]) == (pytest.approx(0.5), pytest.approx(math.sqrt(0.02)))
    assert mean_and_spread([0.7]) == (0.7, 0.0)


def test_table_merges_invocations_and_summarises_loso_folds(tmp_path):
    def fold(subject, correct):
        return accuracy_row("loso", f"subject {subject}", "eeg_top1", correct, 40, 0.25, 0.01,
                            split_by=f"loso:{subject}", run_dir=str(tmp_path / f"subject-{subject}"))

    update_table(tmp_path, "loso", [fold(0, 20)], ["how folds are formed"], 0.01)
    control = accuracy_row("controls", "shuffled labels", "eeg_top1", 12, 40, 0.25, 0.01, split_by="image",
                           run_dir="x", control="shuffled")
    update_table(tmp_path, "controls", [control], ["a note"], 0.01)
    table = update_table(tmp_path, "loso", [fold(1, 10)], ["how folds are formed"], 0.01)
    assert table == read_table(tmp_path)
    rows = {(r["protocol"], r["variant"]): r for r in table["rows"]}
    assert len(rows) == 4 and table["notes"] == {"loso": ["how folds are formed"], "controls": ["a note"]}
    summary = rows[("loso", LOSO_SUMMARY)]
    assert summary["value"] == pytest.approx(0.375) and summary["spread"] == pytest.approx(math.sqrt(2 * 0.125 ** 2))
    assert (summary["trials"], summary["correct"], summary["chance"]) == (80, 30, 0.25)
    assert summary["p_value"] == pytest.approx(binomial_p_value(30, 80, 0.25))
    assert rows[("controls", "shuffled labels")]["leak"] is False
    assert rows[("loso", "subject 0")]["verdict"] == "above chance" and rows[("loso", "subject 1")]["leak"] is None
    table = update_table(tmp_path, "loso", [fold(0, 10)], ["how folds are formed"], 0.01)  # a fold rerun replaces its row
    summary = next(r for r in table["rows"] if r["variant"] == LOSO_SUMMARY)
    assert len(table["rows"]) == 4 and summary["value"] == pytest.approx(0.25) and summary["spread"] == 0


def test_retrieval_summaries_keep_intra_and_inter_subject_apart(tmp_path):
    def fold(mode, subject, correct, k=1):
        row = accuracy_row("retrieval", f"{mode}-subject, subject {subject}", f"retrieval_top{k}", correct, 20,
                           k / 20, 0.01, split_by=f"{mode}:{subject}:release", run_dir=f"r/{mode}-subject-{subject}")
        return {**row, "mode": mode, "subject": subject}

    rows = [fold("intra", 1, 10), fold("intra", 2, 6), fold("inter", 1, 2), fold("inter", 2, 1), fold("intra", 1, 14, 5)]
    table = update_table(tmp_path, "retrieval", rows, ["note"], 0.01)
    summaries = {(r["variant"], r["metric"]): r for r in table["rows"] if "spread" in r}
    assert set(summaries) == {("intra-subject mean ± std over subjects", "retrieval_top1"),
                              ("inter-subject mean ± std over subjects", "retrieval_top1"),
                              ("intra-subject mean ± std over subjects", "retrieval_top5")}
    intra, inter = (summaries[(f"{m}-subject mean ± std over subjects", "retrieval_top1")] for m in ("intra", "inter"))
    assert (intra["value"], intra["correct"], intra["trials"], intra["mode"]) == (pytest.approx(0.4), 16, 40, "intra")
    assert (inter["value"], inter["correct"], inter["split_by"]) == (pytest.approx(0.075), 3, "inter")
    assert summaries[("intra-subject mean ± std over subjects", "retrieval_top5")]["spread"] == 0
    table = update_table(tmp_path, "retrieval", [fold("inter", 2, 9)], ["note"], 0.01)  # a rerun fold is resummarised
    inter = next(r for r in table["rows"] if r["variant"] == "inter-subject mean ± std over subjects")
    assert inter["correct"] == 11 and len(table["rows"]) == 8


# ---- split schemes --------------------------------------------------------------------------------


def test_protocol_schemes_parse_and_bad_ones_are_config_errors():
    assert parse_scheme("image").column == "split_image"
    assert parse_scheme("loso:3").subject == 3 and parse_scheme("loso:3").column is None
    assert parse_scheme("heldout:a,b").classes == ("a", "b")
    assert parse_scheme("inter:2:release") == Scheme("inter", subject=2, base="release")
    assert load_config(None, ["data.split_by=loso:2"]).data.split_by == "loso:2"
    for bad in ("imag", "loso:x", "loso:", "heldout:", "heldout:a,a", "intra:1", "intra:1:loso", "inter:x:image"):
        with pytest.raises(ConfigError, match=r"data.split_by: .*loso:<subject>"):
            load_config(None, [f"data.split_by={json.dumps(bad)}"])


def test_loso_and_heldout_memberships_follow_their_definitions(random_corpus):
    manifest = Manifest(random_corpus)
    subject = np.array([s for _, s in sorted(manifest_column(random_corpus, "subject").items())])
    label = np.array([s for _, s in sorted(manifest_column(random_corpus, "label").items())])
    image_val = manifest.membership("image", "val")
    for held_out in manifest.subjects:
        train, val, test = (manifest.membership(f"loso:{held_out}", s) for s in ("train", "val", "test"))
        assert np.array_equal(test, subject == held_out)
        assert np.array_equal(val, (subject != held_out) & image_val)
        assert np.array_equal(train, (subject != held_out) & ~image_val)
    train, val, test = (manifest.membership("heldout:b", s) for s in ("train", "val", "test"))
    assert np.array_equal(test, label == 1)
    assert np.array_equal(train, (label != 1) & manifest.membership("image", "train"))
    assert np.array_equal(val, (label != 1) & image_val)
    assert not manifest.image_ids("heldout:b", "test") & manifest.image_ids("heldout:b", "train")
    with pytest.raises(ValueError, match=r"names subject 9; this corpus's subjects are \[0, 1, 2, 3\]"):
        manifest.membership("loso:9", "test")
    with pytest.raises(ValueError, match=r"names classes \['zebra'\]"):
        manifest.membership("heldout:a,zebra", "test")


def test_intra_and_inter_subject_memberships_restrict_a_stored_scheme(random_corpus):
    manifest = Manifest(random_corpus)
    subject = np.array([s for _, s in sorted(manifest_column(random_corpus, "subject").items())])
    for split in ("train", "val", "test"):
        stored = manifest.membership("image", split)
        assert np.array_equal(manifest.membership("intra:1:image", split), stored & (subject == 1))
        others = stored & (subject == 1) if split == "test" else stored & (subject != 1)
        assert np.array_equal(manifest.membership("inter:1:image", split), others)
    with pytest.raises(ValueError, match=r"'inter:1:release' needs the 'release' scheme, not recorded here"):
        manifest.membership("inter:1:release", "test")


def test_protocol_scheme_statistics_come_from_its_training_trials_only(random_corpus, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(random_corpus, root)
    manifest = Manifest(root)
    train = manifest.membership("loso:1", "train")
    eeg = np.stack([s.eeg.astype(np.float16).astype(np.float64) for s in random_samples(0, 240)])
    expected_mean = eeg[train].mean(axis=(0, 2))
    expected_std = eeg[train].std(axis=(0, 2))
    mean, std = manifest.eeg_stats("loso:1")
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(std, expected_std, rtol=1e-5)
    with_test_subject = eeg[train | manifest.membership("loso:1", "test")].mean(axis=(0, 2))
    assert not np.allclose(mean, with_test_subject, atol=1e-3)  # subject 1's trials changed the mean
    (cache,) = [p for p in (root / STATS_CACHE).glob("*.json") if json.loads(p.read_text())["scheme"] == "loso:1"]
    cached = json.loads(cache.read_text())
    cache.write_text(json.dumps({**cached, "mean": [0.0] * len(mean)}))
    assert np.all(Manifest(root).eeg_stats("loso:1")[0] == 0)  # the cache is what later loaders read
    manifest.path.touch()  # a rewritten manifest: the cached numbers are stale
    np.testing.assert_allclose(Manifest(root).eeg_stats("loso:1")[0], expected_mean, rtol=1e-5, atol=1e-4)


def test_shuffled_labels_permute_the_training_images_labels(random_corpus):
    manifest = Manifest(random_corpus)
    shuffled = manifest.shuffled_image_labels("image", seed=0)
    true = {image: label for image, label in zip(manifest_column(random_corpus, "image_id").values(),
                                                 manifest_column(random_corpus, "label").values())}
    assert set(shuffled) == manifest.image_ids("image", "train")
    assert sorted(shuffled.values()) == sorted(true[i] for i in shuffled)  # class frequencies kept
    assert np.mean([shuffled[i] == true[i] for i in shuffled]) < 0.6  # 3 classes: ~1/3 agree by chance
    assert shuffled == manifest.shuffled_image_labels("image", seed=0) != manifest.shuffled_image_labels("image", 1)


def test_zero_shot_prototypes_leave_each_trials_own_image_out():
    e = torch.eye(4)
    features = {"a1": e[0], "a2": e[1], "b1": e[2] + 0.1 * e[0], "b2": e[2] + 0.1 * e[0]}
    labels = {"a1": 0, "a2": 0, "b1": 1, "b2": 1}
    # the trial of image a1 looks exactly like a1: with a1 in class 0's prototype it would be class 0
    assert nearest_prototype(e[:1], ["a1"], features, labels, 2).tolist() == [1]
    assert nearest_prototype(e[:1], ["a2"], features, labels, 2).tolist() == [0]  # a1 is fair game for others
    generator_ = torch.Generator().manual_seed(0)
    features = {f"i{k}": torch.randn(6, generator=generator_) for k in range(12)}
    labels = {f"i{k}": k % 3 for k in range(12)}
    queries, images = torch.randn(24, 6, generator=generator_), [f"i{k % 12}" for k in range(24)]
    brute = []
    for query, own in zip(queries, images):
        prototypes = [torch.stack([torch.nn.functional.normalize(features[i], dim=0) for i in features
                                   if labels[i] == c and i != own]).mean(0) for c in range(3)]
        brute.append(int(torch.stack([torch.cosine_similarity(query, p, dim=0) for p in prototypes]).argmax()))
    assert nearest_prototype(queries, images, features, labels, 3).tolist() == brute


# ---- the protocols, run for real ------------------------------------------------------------------


def test_dry_run_prints_each_runs_commands_and_writes_nothing(tmp_path, capsys):
    where = [f"run_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'corpus'}"]
    assert cli_main(["protocol", "loso", "--config", CONFIG, *where, "--dry-run",
                     "--launcher", "torchrun --nproc_per_node 8"]) == 0
    out = capsys.readouterr().out
    assert "protocol loso: 2 run(s)" in out and out.count("torchrun --nproc_per_node 8 launchers/train.py") == 4
    assert "'data.split_by=\"loso:1\"' train.stage=highlevel" in out
    assert cli_main(["protocol", "controls", "--config", CONFIG, *where, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train.shuffle_labels=true" in out and "'data.bandpass=[0, 1.0]'" in out and "No pre-stimulus" in out
    assert not (tmp_path / "corpus").exists() and not (tmp_path / "run").exists()


def test_loso_folds_are_fresh_runs_that_never_see_their_test_subject(tiny4, tmp_path):
    run_dir = tmp_path / "run"
    common = ["--config", CONFIG, *FOUR_CLASSES, *CLASSIFIER, f"run_dir={run_dir}", f"data.root={tiny4}"]
    assert cli_main(["protocol", "loso", *common, "protocol.subjects=[0]"]) == 0
    # the second fold as a separate job under a launcher (plain python: one rank); the table merges
    assert cli_main(["protocol", "loso", *common, "protocol.subjects=[1]", "--launcher", sys.executable]) == 0
    rows = {r["variant"]: r for r in read_table(run_dir)["rows"]}
    assert set(rows) == {"subject 0", "subject 1", LOSO_SUMMARY}
    subjects = manifest_column(tiny4, "subject")
    for held_out in (0, 1):
        fold = run_dir / "protocols" / "loso" / f"subject-{held_out}"
        row = rows[f"subject {held_out}"]
        assert row["run_dir"] == str(fold) and row["split_by"] == f"loso:{held_out}"
        assert (row["trials"], row["chance"]) == (96, 0.25)  # every trial of the subject; 4 balanced classes
        assert load_config(fold / "config.yaml").data.split_by == f"loso:{held_out}"
        for stage in ("teacher", "highlevel"):
            keys = trained_keys(fold, stage)
            assert keys and all(subjects[k] != held_out for k in keys), stage
        assert not (fold / "stages" / "diffusion").exists()  # only what the classifier needs
    assert rows[LOSO_SUMMARY]["value"] == pytest.approx((rows["subject 0"]["value"] + rows["subject 1"]["value"]) / 2)
    html = protocols_html(run_dir)
    for row in rows.values():
        assert f'<td class="num">{row["value"]:.4g}' in html and f'<td class="num">{row["chance"]:.4g}</td>' in html


def test_held_out_classes_never_reach_training_and_are_scored_zero_shot(tiny4, tmp_path):
    run_dir = tmp_path / "run"
    assert cli_main(["protocol", "held-out-classes", "--config", CONFIG, *FOUR_CLASSES, "model.teacher.arch=resnet18",
                     f"run_dir={run_dir}", f"data.root={tiny4}"]) == 0
    (row,) = read_table(run_dir)["rows"]
    heldout = parse_scheme(row["split_by"]).classes
    assert len(heldout) == 2 and row["metric"] == "zero_shot_top1"
    assert row["trials"] == 96 and row["chance"] == 0.5  # every trial of the 2 unseen classes
    classes = manifest_column(tiny4, "class_name")
    fold = run_dir / "protocols" / "held-out-classes" / "zero-shot"
    for stage in ("teacher", "highlevel"):
        keys = trained_keys(fold, stage)
        assert keys and not {classes[k] for k in keys} & set(heldout), stage
    from safetensors.torch import load_file

    assert load_file(str(fold / "stages" / "highlevel" / "final.safetensors"))["encoder.classifier.weight"].shape[0] == 2
    assert "zero_shot_top1" in protocols_html(run_dir)


def test_by_image_refuses_shared_images_then_trains_and_evaluates_the_pipeline(tiny4, tmp_path, capsys):
    run_dir = tmp_path / "run"
    common = ["--config", CONFIG, *FOUR_CLASSES, "model.teacher.arch=resnet18", f"run_dir={run_dir}",
              f"data.root={tiny4}", *(f"train.{s}.steps=2" for s in ("teacher", "lowlevel", "highlevel", "diffusion")),
              "eval.inception_metrics=false", "eval.sample_steps=2", "eval.batch_size=8"]
    # the block split holds out recording blocks: every subject sees every image, so images are shared
    assert cli_main(["protocol", "by-image", *common, "data.split_by=block"]) == 2
    assert "data.split_by=block tests" in capsys.readouterr().err and not run_dir.exists()
    assert cli_main(["protocol", "by-image", *common]) == 0
    rows = {r["metric"]: r for r in read_table(run_dir)["rows"]}
    metrics = json.loads((run_dir / "protocols" / "by-image" / "image" / "eval" / "metrics.json").read_text())
    eeg = rows["eeg_top1"]
    assert eeg["value"] == pytest.approx(metrics["metrics"]["eeg_top1"]["value"])
    assert eeg["trials"] == Manifest(tiny4).count("image", "test") and eeg["chance"] >= 0.25
    assert rows["generated_n_way_top_k"]["chance"] == 0.25  # 1 of 4 candidates
    html = protocols_html(run_dir)
    assert "split by image" in html and "disjoint under data.split_by=image" in html


def test_a_run_that_cannot_be_built_fails_before_any_training(tiny4, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli_main(["protocol", "controls", "--config", CONFIG, *FOUR_CLASSES, f"run_dir={run_dir}",
                     f"data.root={tiny4}", "protocol.prestimulus_window=[0, 20]"]) == 2
    assert "controls, pre-stimulus [0, 20): ShallowFBCSPNet needs at least" in capsys.readouterr().err
    assert not run_dir.exists()


def block_design_samples(synth, start: int, stop: int):
    """The synthetic generator in EEG-ImageNet's design: each subject sees each class in one block,
    so the block's slow drift identifies the class."""
    corpus = SyntheticCorpus(synth)
    images_per_class = corpus.num_images / synth.num_classes
    for index in range(start, stop):
        image_id, subject = divmod(index, synth.num_subjects)
        label = image_id % synth.num_classes
        block = subject * synth.num_classes + label
        attributes, pixels = corpus.image(image_id)
        progress = (image_id // synth.num_classes + 0.5) / images_per_class
        eeg = corpus.eeg.trial(generator(synth.seed, Stream.TRIAL, index), label, subject, block, progress, attributes)
        yield RawSample(index, eeg, pixels, {"label": label, "subject": subject, "image_id": image_id,
                                             "session": label, "block": block, "class_name": corpus.class_names[label]})


BLOCK_DESIGN = ["synth.num_classes=4", "synth.num_subjects=4", "synth.sessions_per_subject=4",
                "synth.num_samples=384", "synth.class_snr=0", "synth.drift=3.0"]  # only the drift tells classes apart


@pytest.fixture(scope="module")
def block_design(tmp_path_factory):
    synth = load_config(CONFIG, BLOCK_DESIGN).synth
    corpus = SyntheticCorpus(synth)
    info = CorpusInfo(channel_names=corpus.channel_names, sfreq=synth.sfreq, time_points=synth.time_points,
                      class_names=corpus.class_names, source="synthetic, block design")
    step = synth.samples_per_shard
    sources = [lambda s=s: block_design_samples(synth, s, min(s + step, synth.num_samples))
               for s in range(0, synth.num_samples, step)]
    root = tmp_path_factory.mktemp("protocols") / "block_design"
    write_corpus(root, info, sources, split_fractions=synth.split_fractions, seed=synth.seed)
    return root


@pytest.mark.parametrize("split_by, leaks, extra", [
    ("image", True, ["protocol.prestimulus_window=[0, 100]"]),
    ("block", False, []),
])
def test_drift_controls_flag_a_block_design_only_when_the_split_shares_blocks(block_design, tmp_path, split_by, leaks,
                                                                            extra):
    """The synthetic trials start at stimulus onset; under the image split their first 100 samples
    stand in for a pre-stimulus baseline too (class_snr=0: drift, and no class-evoked response)."""
    run_dir = tmp_path / "run"
    assert cli_main(["protocol", "controls", "--config", CONFIG, *BLOCK_DESIGN, *CLASSIFIER, "train.highlevel.steps=60",
                     f"data.root={block_design}", "data.synthesize=false", f"data.split_by={split_by}",
                     f"run_dir={run_dir}", *extra]) == 0
    rows = {r["variant"]: r for r in read_table(run_dir)["rows"]}
    shuffled = rows.pop("shuffled labels")
    assert set(rows) == {"< 1 Hz only", "drift probe",
                         *(["pre-stimulus [0, 100)", "drift probe, pre-stimulus [0, 100)"] if extra else [])}
    for drift in rows.values():  # without a leak the verdict is "no leakage" or "inconclusive", never a leak
        assert (drift["leak"] is True) is leaks and (drift["p_value"] < 0.01) is leaks, drift
        assert drift["train_accuracy"] is not None
    # the same split and classifier with shuffled labels: not above chance, although the EEG carries the class
    assert shuffled["leak"] is not True and shuffled["p_value"] > 0.01
    assert ("This corpus leaks" in protocols_html(run_dir)) is leaks
