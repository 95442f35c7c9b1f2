"""EEG-ImageNet of Zhu et al. (2024): a small release in the exact layout (two part files, each a
dict of ``dataset``/``labels``/``images``, images under ``<wnid>/<name>``), converted through the
CLI and read back; class selection, the default window, refusals and the shipped config."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from test_convert import close_colour, fails, solid, written

from eeg2im_scale.cli.main import main
from eeg2im_scale.data.convert import ConvertOptions, convert_eeg_imagenet_2024
from eeg2im_scale.data.manifest import Manifest

LABELS = ["n02106662", "n02124075", "n02099601", "n02099712"]  # two coarse classes, then two fine ones
GRANULARITY = {"n02106662": "coarse", "n02124075": "coarse", "n02099601": "fine", "n02099712": "fine"}
FILES = {"EEG-ImageNet_1.pth": 0, "EEG-ImageNet_2.pth": 8}  # part file → its subject
MISSING = (8, "n02099712", (10, 40))  # a block with two trials missing, as in the real release
FLAT = "n02124075_3.JPEG"  # stored directly under the image folder, not in its class folder


def image_name(wnid: str, k: int) -> str:
    return f"{wnid}_{k + 1}.JPEG"


def zhu_release(tmp_path, per_block=50, length=12, short=(), edit=None):
    """Subject 0 sees the classes in label order, subject 8 in reverse order and each block
    rotated by 7 images, so an image's split differs between subjects. ``short``: (file,
    index) pairs given length - 3. Returns {(file name, index): what that trial should become}."""
    rng = np.random.default_rng(0)
    expected = {}
    for k, wnid in enumerate(LABELS):
        for i in range(per_block):
            name = image_name(wnid, i)
            solid(tmp_path / "images" / (name if name == FLAT else f"{wnid}/{name}"), k * per_block + i)
    for file, subject in FILES.items():
        dataset = []
        for wnid in LABELS if subject == 0 else LABELS[::-1]:
            skip = MISSING[2] if (subject, wnid) == MISSING[:2] else ()
            for position, i in enumerate(j for j in range(per_block) if j not in skip):
                i = i if subject == 0 else (i + 7) % per_block
                n = length - 3 if (file, len(dataset)) in short else length
                eeg = torch.from_numpy(rng.standard_normal((62, n)).astype(np.float32))
                expected[file, len(dataset)] = {"label": LABELS.index(wnid), "subject": subject,
                                                "image": image_name(wnid, i), "position": position,
                                                "split": "train" if position < 30 else "test", "eeg": eeg}
                dataset.append({"eeg_data": eeg, "granularity": GRANULARITY[wnid], "subject": subject,
                                "label": wnid, "image": image_name(wnid, i)})
        data = {"dataset": dataset, "labels": list(LABELS),
                "images": [image_name(w, i) for w in LABELS for i in range(per_block)]}
        if edit:
            edit(file, data)
        torch.save(data, tmp_path / file)
    return expected


def zhu_args(tmp_path, out="out", *extra):
    return ["convert", "eeg-imagenet-2024", "--eeg", *(str(tmp_path / f) for f in FILES), "--images",
            str(tmp_path / "images"), "--out", str(tmp_path / out), *extra]


def test_eeg_imagenet_2024_through_the_cli(tmp_path, capsys):
    short = {("EEG-ImageNet_1.pth", 3), ("EEG-ImageNet_1.pth", 45), ("EEG-ImageNet_2.pth", 130)}
    expected = zhu_release(tmp_path, short=short)
    assert main(zhu_args(tmp_path, "out", "--window", "2:10", "--samples-per-shard", "64")) == 0
    report = capsys.readouterr().out
    assert "wrote 395 samples" in report and "dropped 3: shorter than window end 10: 3" in report
    assert "subjects: 2 (0, 8)" in report
    manifest = Manifest(tmp_path / "out")
    info, extra = manifest.info, manifest.info["extra"]
    assert manifest.eeg_shape == (62, 8) and info["sfreq"] == 1000.0 and info["class_names"] == LABELS
    assert info["channel_names"][:3] == ["FP1", "FPZ", "FP2"] and info["channel_names"][-1] == "CB2"
    assert len(set(info["channel_names"])) == 62 and not {"M1", "M2"} & set(info["channel_names"])
    assert extra["class_granularity"] == GRANULARITY and extra["granularity"] == "all"
    assert extra["blocks_not_50"] == [[8, "n02099712", 48]] and extra["trials_in_release"] == 398
    assert extra["subjects_per_file"] == {str(tmp_path / f): [s] for f, s in FILES.items()}
    # val: round(10 %) of each class's training images: 37 (0-29 for subject 0, 7-36 for subject 8),
    # 38 in the block with missing trials, so 4 per class
    val = set(extra["val_images"])
    assert sorted(name.split("_")[0] for name in val) == sorted(LABELS * 4)

    samples = written(tmp_path / "out")
    assert len(samples) == 395
    seen = set()
    for s in samples:
        meta = s["meta"]
        key = (meta["source_file"], meta["source_index"])
        want = expected[key]
        seen.add(key)
        assert (meta["label"], meta["subject"], meta["image_id"]) == (want["label"], want["subject"], want["image"])
        assert meta["class_name"] == LABELS[want["label"]] and meta["granularity"] == GRANULARITY[meta["class_name"]]
        assert meta["block"] == want["subject"] * 4 + want["label"] and meta["session"] == 0
        assert meta["block_position"] == want["position"]
        assert meta["release_split"] == ("val" if want["split"] == "train" and want["image"] in val else want["split"])
        np.testing.assert_allclose(s["eeg"], want["eeg"][:, 2:10].numpy(), rtol=1e-3, atol=1e-3)
        folder = "" if want["image"] == FLAT else f"{LABELS[want['label']]}/"
        assert s["field"] == "jpg" and s["bytes"] == (tmp_path / "images" / folder / want["image"]).read_bytes()
        k = LABELS.index(meta["class_name"]) * 50 + int(want["image"].split("_")[1].split(".")[0]) - 1
        assert close_colour(s["image"], k)
    assert seen == set(expected) - short
    # the published split: 30 training (train + val) trials per (subject, class) block, the rest test
    for subject in FILES.values():
        for label in range(4):
            block = [s["meta"]["release_split"] for s in samples
                     if (s["meta"]["subject"], s["meta"]["label"]) == (subject, label)]
            lost = [expected[k]["position"] for k in short if (expected[k]["subject"], expected[k]["label"]) ==
                    (subject, label)]
            assert len(block) == (48 if (subject, LABELS[label]) == MISSING[:2] else 50) - len(lost)
            assert sum(split != "test" for split in block) == 30 - sum(p < 30 for p in lost)
    # val holds whole images: none of its images has a trial in train
    by_split = {split: {s["meta"]["image_id"] for s in samples if s["meta"]["release_split"] == split}
                for split in ("train", "val", "test")}
    assert by_split["val"] == val and not by_split["val"] & by_split["train"]
    # shards never mix the two part files
    files: dict[str, set] = {}
    for s in samples:
        files.setdefault(s["shard"], set()).add(s["meta"]["source_file"])
    assert all(len(v) == 1 for v in files.values())
    fails(capsys, zhu_args(tmp_path, "out2", "--granularity", "coarse", "--classes", "n02099601"),
          "--classes: ['n02099601'] are not coarse classes")
    fails(capsys, zhu_args(tmp_path, "out2", "--val-fraction", "1"), "--val-fraction must be in [0, 1)")


def test_eeg_imagenet_2024_granularity_classes_and_default_window(tmp_path):
    expected = zhu_release(tmp_path, per_block=3, length=442, short={("EEG-ImageNet_1.pth", 7)})
    (tmp_path / "images" / "n02106662" / image_name("n02106662", 0)).unlink()  # a coarse class's: not needed
    files = [tmp_path / f for f in FILES]
    opts = ConvertOptions(out=tmp_path / "fine", image_format="png", image_size=8)
    manifest = convert_eeg_imagenet_2024(files, tmp_path / "images", opts, granularity="fine", val_fraction=0)
    info = Manifest(manifest.parent).info
    assert info["class_names"] == ["n02099601", "n02099712"] and info["time_points"] == 400
    assert info["extra"]["class_subset"] == {"source_labels": [2, 3], "class_names": ["n02099601", "n02099712"]}
    assert info["extra"]["class_granularity"] == {"n02099601": "fine", "n02099712": "fine"}
    assert info["extra"]["dropped"] == {"shorter than window end 440": 1} and info["extra"]["val_images"] == []
    samples = written(manifest.parent)
    assert len(samples) == 2 * 2 * 3 - 1  # 2 subjects x 2 fine classes x 3 images, one trial too short
    for s in samples:
        want = expected[s["meta"]["source_file"], s["meta"]["source_index"]]
        assert s["meta"]["label"] == want["label"] - 2 and s["meta"]["release_split"] == "train"
        np.testing.assert_allclose(s["eeg"], want["eeg"][:, 40:440].numpy(), rtol=1e-3, atol=1e-3)
        assert s["field"] == "png" and s["image"].shape == (8, 8, 3)

    opts = ConvertOptions(out=tmp_path / "one", classes=["n02124075"])
    manifest = convert_eeg_imagenet_2024(files[0], tmp_path / "images", opts, granularity="coarse")
    samples = written(manifest.parent)
    assert Manifest(manifest.parent).info["class_names"] == ["n02124075"]
    assert sorted(s["meta"]["image_id"] for s in samples) == [image_name("n02124075", i) for i in range(3)]
    val = [s["meta"]["image_id"] for s in samples if s["meta"]["release_split"] == "val"]
    assert len(val) == 1 and Manifest(manifest.parent).info["extra"]["val_images"] == val  # round(0.3) -> at least 1


def _drop(key):
    return lambda file, data: data.pop(key) if file == "EEG-ImageNet_2.pth" else None


def _set(index, field, value, file="EEG-ImageNet_1.pth"):
    def edit(name, data):
        if name == file:
            data["dataset"][index][field] = value
    return edit


@pytest.mark.parametrize("edit, fragments", [
    (_drop("labels"), ["EEG-ImageNet_2.pth", "missing key(s) ['labels']"]),
    (lambda f, d: d["dataset"][5].pop("eeg_data"), ["EEG-ImageNet_1.pth", "dataset[5]", "missing key(s) ['eeg_data']"]),
    (_set(4, "eeg_data", torch.zeros(64, 12)), ["EEG-ImageNet_1.pth", "dataset[4]", "field eeg_data",
                                                "shape (64, 12), expected [62 channels, time]"]),
    (_set(9, "eeg_data", torch.zeros(62)), ["dataset[9]", "field eeg_data", "shape (62,)"]),
    (_set(7, "label", "n09999999", "EEG-ImageNet_2.pth"),
     ["EEG-ImageNet_2.pth", "dataset[7]", "field label", "'n09999999' is not one of the 4 labels"]),
    (_set(2, "granularity", "fine0"), ["dataset[2]", "field granularity", "'fine0' is not one of"]),
    (_set(3, "granularity", "fine"), ["dataset[3]", "field granularity", "'fine' for n02106662"]),
    (_set(6, "subject", 8), ["EEG-ImageNet_2.pth", "dataset[0]", "field subject", "subject 8 is also in",
                             "EEG-ImageNet_1.pth"]),
    (_set(6, "image", "../x.JPEG"), ["dataset[6]", "field image", "not an image file name"]),
    (lambda f, d: d["labels"].reverse() if f == "EEG-ImageNet_2.pth" else None,
     ["EEG-ImageNet_2.pth", "field labels", "differs from the labels of the first file"]),
    (lambda f, d: d.update(dataset=argparse.Namespace(trials=1)),
     ["EEG-ImageNet_1.pth", "arbitrary Python objects", "found argparse.Namespace"]),
    ("image", ["images", "EEG-ImageNet_1.pth: dataset[38]", "field image", "'n02099712_9.JPEG' not found",
               "n02099712/n02099712_9.JPEG"]),
])
def test_eeg_imagenet_2024_malformed_input_is_named_before_writing(tmp_path, capsys, edit, fragments):
    zhu_release(tmp_path, per_block=10, edit=None if edit == "image" else edit)
    if edit == "image":  # first needed by subject 0's trial 38 (class 3, image 9)
        (tmp_path / "images" / "n02099712" / "n02099712_9.JPEG").unlink()
    fails(capsys, zhu_args(tmp_path, "out", "--window", "2:10"), *fragments)
    assert not (tmp_path / "out").exists()

