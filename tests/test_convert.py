"""Converters: tiny fixtures in each release's exact layout, written through the real writer and
read back (counts, shapes, labels, image association, splits, drops, class subsets, refusals)."""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from eeg2im_scale.cli.main import main
from eeg2im_scale.data.convert import ConvertOptions, convert_arrays, convert_eeg_imagenet, convert_things_eeg2
from eeg2im_scale.data.format import decode_sample, read_shard
from eeg2im_scale.data.manifest import Manifest


def colour(k: int) -> tuple[int, int, int]:
    """Distinct solid colours, far apart so JPEG error cannot confuse them."""
    return (40 * (k % 6) + 20, 60 * (k // 6 % 4) + 20, 200 - 30 * (k % 5))


def solid(path, k: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour(k)).save(path)


def written(root) -> list[dict]:
    """Every sample of a corpus, decoded, with the stored image bytes."""
    manifest = Manifest(root)
    samples = []
    for shard in sorted((root / "shards").glob("*.tar")):
        for raw in read_shard(shard):
            decoded = decode_sample(raw, str(shard), manifest.eeg_shape)
            field = "jpg" if "jpg" in raw else "png"
            samples.append({"meta": decoded.meta, "eeg": decoded.eeg.numpy(), "image": decoded.image,
                            "bytes": raw[field], "field": field, "shard": shard.name})
    assert len(samples) == manifest.num_samples
    return samples


def close_colour(image: np.ndarray, k: int) -> bool:
    return np.abs(image.reshape(-1, 3).mean(0) - colour(k)).max() < 4


def fails(capsys, argv, *fragments) -> str:
    """The CLI exits 2 and its message holds every fragment."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    return err


# --- EEG-ImageNet -------------------------------------------------------------------------------

WNIDS = ["n02106662", "n02124075", "n03773504"]
NAMES = [f"{w}_{k}" for w in WNIDS for k in (11, 12)]  # image index i: class i // 2
SHORT, LONG, UNDER_WINDOW = 0, 1, 2  # trials with 440, 620, 455 samples


def imagenet_release(tmp_path, name="eeg_5_95_std.pth", **edit):
    """2 subjects × 6 images; trials 0-2 have lengths the published loaders drop."""
    rng = np.random.default_rng(0)
    lengths = {SHORT: 440, LONG: 620, UNDER_WINDOW: 455}
    dataset = [{"eeg": torch.from_numpy(rng.standard_normal((128, lengths.get(i, 500 + i))).astype(np.float32)),
                "image": i % 6, "label": (i % 6) // 2, "subject": 1 + i // 6} for i in range(12)]
    data = {"dataset": dataset, "labels": list(WNIDS), "images": list(NAMES)}
    for key, value in edit.items():
        data[key] = value
    torch.save(data, tmp_path / name)
    splits = [{"train": [0, 1, 2, 3, 4, 6, 7], "val": [8, 9], "test": [10]}] + \
             [{"train": list(range(8)), "val": [8, 9], "test": [10, 11]} for _ in range(5)]
    torch.save({"splits": splits}, tmp_path / "splits.pth")
    images = tmp_path / "imagenet"
    for i, n in enumerate(NAMES):
        solid(images / (f"{n}.JPEG" if i == 5 else f"{WNIDS[i // 2]}/{n}.JPEG"), i)  # one flat file
    return tmp_path / name, data


def imagenet_args(tmp_path, out="out", *extra):
    return ["convert", "eeg-imagenet", "--eeg", str(tmp_path / "eeg_5_95_std.pth"), "--splits",
            str(tmp_path / "splits.pth"), "--images", str(tmp_path / "imagenet"), "--out", str(tmp_path / out),
            "--samples-per-shard", "4", *extra]


def test_eeg_imagenet_through_the_cli(tmp_path, capsys):
    _, data = imagenet_release(tmp_path)
    assert main(imagenet_args(tmp_path)) == 0
    report = capsys.readouterr().out
    assert "wrote 9 samples" in report and "dropped 3" in report
    assert "split release: train 4, val 2, test 1, none 2" in report
    root = tmp_path / "out"
    manifest = Manifest(root)
    assert manifest.eeg_shape == (128, 440) and manifest.info["sfreq"] == 1000.0
    assert manifest.info["channel_names"][:2] == ["ch001", "ch002"] and manifest.info["class_names"] == WNIDS
    extra = manifest.info["extra"]
    assert extra["dropped"] == {"length < 450": 1, "length > 600": 1, "shorter than window end 460": 1}
    assert extra["window"] == [20, 460] and extra["split_index"] == 0 and not extra["has_means_stddevs"]
    assert len(list((root / "shards").glob("*.tar"))) == 3
    release = {0: "train", 1: "train", 2: "train", 3: "train", 4: "train", 6: "train", 7: "train", 8: "val",
               9: "val", 10: "test"}
    samples = written(root)
    assert sorted(s["meta"]["source_index"] for s in samples) == list(range(3, 12))
    for s in samples:
        meta, i = s["meta"], s["meta"]["source_index"]
        source = data["dataset"][i]
        assert meta["label"] == source["label"] and meta["subject"] == source["subject"]
        assert meta["image_id"] == NAMES[source["image"]] and meta["class_name"] == WNIDS[source["label"]]
        assert meta["block"] == source["subject"] * 3 + source["label"] and meta["session"] == 0
        assert meta.get("release_split") == release.get(i)
        np.testing.assert_allclose(s["eeg"], source["eeg"][:, 20:460].numpy(), rtol=1e-3, atol=1e-3)
        image = NAMES[source["image"]]
        folder = "" if source["image"] == 5 else f"{WNIDS[source['label']]}/"
        assert s["field"] == "jpg" and s["bytes"] == (tmp_path / "imagenet" / f"{folder}{image}.JPEG").read_bytes()
        assert close_colour(s["image"], source["image"])
    assert manifest.read(["split_release"]).column("split_release").null_count == 2
    fails(capsys, imagenet_args(tmp_path, "out2", "--window", "460:20"), "--window needs 0 <= START < STOP")


def test_eeg_imagenet_class_subset_and_window(tmp_path):
    imagenet_release(tmp_path)
    opts = ConvertOptions(out=tmp_path / "sub", classes=["n03773504", "n02106662"], image_format="png", image_size=8)
    manifest = convert_eeg_imagenet(tmp_path / "eeg_5_95_std.pth", tmp_path / "splits.pth", tmp_path / "imagenet",
                                    opts, split_index=2, window=(0, 450))
    info = Manifest(manifest.parent).info
    assert info["class_names"] == ["n03773504", "n02106662"] and info["time_points"] == 450
    assert info["extra"]["class_subset"] == {"source_labels": [2, 0], "class_names": ["n03773504", "n02106662"]}
    assert info["extra"]["dropped"] == {"length < 450": 1, "length > 600": 1}
    samples = written(manifest.parent)
    # trials 4-5 and 10-11 are class 2, 6-7 class 0 (0-1 dropped), all with split index 2's lists
    assert sorted((s["meta"]["source_index"], s["meta"]["label"]) for s in samples) == \
           [(4, 0), (5, 0), (6, 1), (7, 1), (10, 0), (11, 0)]
    for s in samples:
        assert s["field"] == "png" and s["image"].shape == (8, 8, 3)
        assert close_colour(s["image"], NAMES.index(s["meta"]["image_id"]))
        assert s["meta"]["release_split"] == ("train" if s["meta"]["source_index"] < 8 else "test")


@pytest.mark.parametrize("case, fragments", [
    ("missing key", ["eeg_5_95_std.pth", "missing key(s) ['images']"]),
    ("channels", ["eeg_5_95_std.pth", "dataset[4]", "field eeg", "64 channels, expected 128"]),
    ("dtype", ["dataset[3]", "field eeg", "dtype torch.int64"]),
    ("label", ["dataset[7]", "field label", "7 is not an integer index into the 3 labels"]),
    ("image", ["imagenet", "dataset[5]", "field image", "'n03773504_12' not found"]),
    ("split index", ["splits.pth", "--split-index 6 is not one of the 6 splits"]),
    ("objects", ["eeg_5_95_std.pth", "arbitrary Python objects", "found argparse.Namespace", "execute code"]),
])
def test_eeg_imagenet_malformed_input_is_named_before_writing(tmp_path, capsys, case, fragments):
    path, data = imagenet_release(tmp_path)
    args = imagenet_args(tmp_path)
    if case == "missing key":
        del data["images"]
    elif case == "channels":
        data["dataset"][4]["eeg"] = torch.zeros(64, 500)
    elif case == "dtype":
        data["dataset"][3]["eeg"] = torch.zeros(128, 500, dtype=torch.int64)
    elif case == "label":
        data["dataset"][7]["label"] = 7
    elif case == "image":
        (tmp_path / "imagenet" / "n03773504_12.JPEG").unlink()
    elif case == "split index":
        args += ["--split-index", "6"]
    elif case == "objects":
        data["dataset"] = argparse.Namespace(trials=1)
    torch.save(data, path)
    fails(capsys, args, *fragments)
    assert not (tmp_path / "out").exists()


# --- THINGS-EEG2 --------------------------------------------------------------------------------

TRAIN_CONCEPTS = ["00001_aardvark", "00002_abacus", "00003_acorn"]
TEST_CONCEPTS = ["00001_aircraft_carrier", "00002_alligator"]


def things_code(part: str, index: int, channels: int, points: int) -> np.ndarray:
    """A fixed random pattern per image: EEG with ``signal`` carries its image (retrieval tests decode it)."""
    return np.random.default_rng([part == "test", index]).standard_normal((channels, points))


def things_release(tmp_path, channels=17, points=100, sfreq=100.0, metadata=True, train_reps=2, test_reps=3,
                   train_concepts=TRAIN_CONCEPTS, test_concepts=TEST_CONCEPTS, subjects=(1, 2), signal=0.0,
                   draw=solid):
    """The release's layout: 2 training images per training concept, 1 per test concept; by default
    2 subjects, 3 training concepts and 2 test concepts. ``signal`` adds ``things_code`` to every
    repetition of an image; ``draw(path, k)`` writes the k-th image (training images first)."""
    images = tmp_path / "image_set"
    listing = {"train": [(c, f"{c[6:]}_{k:02d}b.jpg") for c in train_concepts for k in (1, 2)],
               "test": [(c, f"{c[6:]}_06s.jpg") for c in test_concepts]}
    for k, (concept, name) in enumerate(listing["train"] + listing["test"]):
        folder = "training_images" if k < len(listing["train"]) else "test_images"
        draw(images / folder / concept / name, k)
    if metadata:
        kinds = ("concepts", "files")
        np.save(images / "image_metadata.npy", {f"{p}_img_{kind}": [pair[j] for pair in listing[p]]
                                               for p in ("train", "test") for j, kind in enumerate(kinds)})
    rng = np.random.default_rng(1)
    times = np.arange(points) / sfreq - 0.2
    arrays = {}
    for subject in subjects:
        for part, n, reps in (("training", len(listing["train"]), train_reps), ("test", len(listing["test"]), test_reps)):
            eeg = rng.standard_normal((n, reps, channels, points)).astype(np.float32)
            if signal:
                eeg += signal * np.stack([things_code(part, i, channels, points) for i in range(n)])[:, None]
            path = tmp_path / "eeg" / f"sub-{subject:02d}" / f"preprocessed_eeg_{part}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, {"preprocessed_eeg_data": eeg, "ch_names": [f"E{c}" for c in range(channels)],
                           "times": times})
            arrays[subject, part] = eeg
    return images, arrays


def test_things_eeg2_keeps_repetitions(tmp_path):
    images, arrays = things_release(tmp_path)
    manifest = convert_things_eeg2(tmp_path / "eeg", images, ConvertOptions(out=tmp_path / "out", samples_per_shard=5),
                                   allow_pickle=True)
    info = Manifest(manifest.parent).info
    assert info["sfreq"] == 100.0 and info["time_points"] == 100 and info["channel_names"][0] == "E0"
    assert info["class_names"] == ["aardvark", "abacus", "acorn", "aircraft_carrier", "alligator"]
    extra = info["extra"]
    assert extra["image_metadata_checked"] and extra["concepts"] == {"training": 3, "test": 2}
    assert len(extra["val_concepts"]) == 1 and extra["repetitions"]["sub-01/test"] == 3
    samples = written(manifest.parent)
    assert len(samples) == 2 * (6 * 2 + 2 * 3)
    order = [f"training_images/{c}/{c[6:]}_{k:02d}b.jpg" for c in TRAIN_CONCEPTS for k in (1, 2)] + \
            [f"test_images/{c}/{c[6:]}_06s.jpg" for c in TEST_CONCEPTS]
    for s in samples:
        meta = s["meta"]
        part = "training" if meta["image_id"].startswith("training") else "test"
        k = order.index(meta["image_id"])
        assert meta["image_index"] == (k if part == "training" else k - 6)
        assert meta["label"] == (k // 2 if part == "training" else 3 + k - 6)
        expected_split = "test" if part == "test" else "val" if info["class_names"][meta["label"]] in \
            extra["val_concepts"] else "train"
        assert meta["release_split"] == expected_split
        assert meta["block"] == meta["subject"] * 1000 + meta["repetition"]
        source = arrays[meta["subject"], part][meta["image_index"], meta["repetition"]]
        np.testing.assert_allclose(s["eeg"], source, rtol=1e-3, atol=1e-3)
        assert s["bytes"] == (images / meta["image_id"]).read_bytes() and close_colour(s["image"], k)
    files = {}  # shards never mix source files: 12 + 6 trials per subject in shards of 5 → 3 + 2 shards
    for s in samples:
        files.setdefault(s["shard"], set()).add((s["meta"]["subject"], s["meta"]["image_id"][:4]))
    assert len(files) == 10 and all(len(v) == 1 for v in files.values())
    # training and test concepts never share a release split
    assert not {s["meta"]["label"] for s in samples if s["meta"]["release_split"] == "test"} & \
           {s["meta"]["label"] for s in samples if s["meta"]["release_split"] != "test"}


def test_things_eeg2_63_channels_250_hz_averaged_through_the_cli(tmp_path, capsys):
    images, arrays = things_release(tmp_path, channels=63, points=250, sfreq=250.0, metadata=False)
    argv = ["convert", "things-eeg2", "--eeg-dir", str(tmp_path / "eeg"), "--images", str(images), "--out",
            str(tmp_path / "out"), "--allow-pickle", "--average-repetitions", "--classes", "alligator,abacus"]
    assert main(argv) == 0
    assert "wrote 6 samples" in capsys.readouterr().out  # 2 subjects × (2 abacus + 1 alligator)
    info = Manifest(tmp_path / "out").info
    assert info["sfreq"] == 250.0 and info["time_points"] == 250 and len(info["channel_names"]) == 63
    assert info["extra"]["class_subset"] == {"source_labels": [4, 1], "class_names": ["alligator", "abacus"]}
    for s in written(tmp_path / "out"):
        meta = s["meta"]
        part = "test" if meta["label"] == 0 else "training"
        assert meta["release_split"] == ("test" if part == "test" else meta["release_split"])
        assert meta["block"] == meta["subject"] and "repetition" not in meta
        np.testing.assert_allclose(s["eeg"], arrays[meta["subject"], part][meta["image_index"]].mean(0),
                                   rtol=1e-3, atol=1e-3)


def test_things_eeg2_refuses_pickles_without_the_flag(tmp_path, capsys):
    images, _ = things_release(tmp_path, metadata=False)
    argv = ["convert", "things-eeg2", "--eeg-dir", str(tmp_path / "eeg"), "--images", str(images), "--out",
            str(tmp_path / "out")]
    fails(capsys, argv, "sub-01/preprocessed_eeg_training.npy", "pickled", "execute arbitrary code", "--allow-pickle")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, fragments", [
    ("metadata", ["image_metadata.npy", "image 3", "field train_img_files", "abacus_02b.jpg"]),
    ("image count", ["sub-02/preprocessed_eeg_test.npy", "field preprocessed_eeg_data", "shape (3, 3, 17, 100)"]),
    ("missing key", ["sub-01/preprocessed_eeg_training.npy", "missing key(s) ['times']"]),
    ("variant", ["sub-02/preprocessed_eeg_training.npy", "mixed variants"]),
])
def test_things_eeg2_malformed_input(tmp_path, case, fragments):
    images, arrays = things_release(tmp_path)
    eeg = tmp_path / "eeg"
    if case == "metadata":
        meta = np.load(images / "image_metadata.npy", allow_pickle=True).item()
        meta["train_img_files"][3] = "abacus_03b.jpg"
        np.save(images / "image_metadata.npy", meta)
    elif case == "image count":
        np.save(eeg / "sub-02/preprocessed_eeg_test.npy", {"preprocessed_eeg_data": np.zeros((3, 3, 17, 100)),
                                                           "ch_names": [f"E{c}" for c in range(17)],
                                                           "times": np.arange(100) / 100})
    elif case == "missing key":
        np.save(eeg / "sub-01/preprocessed_eeg_training.npy", {"preprocessed_eeg_data": arrays[1, "training"],
                                                               "ch_names": [f"E{c}" for c in range(17)]})
    elif case == "variant":
        np.save(eeg / "sub-02/preprocessed_eeg_training.npy", {"preprocessed_eeg_data": arrays[2, "training"],
                                                               "ch_names": [f"F{c}" for c in range(17)],
                                                               "times": np.arange(100) / 100 - 0.2})
    with pytest.raises(ValueError) as info:
        convert_things_eeg2(eeg, images, ConvertOptions(out=tmp_path / "out"), allow_pickle=True)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert not (tmp_path / "out").exists()


# --- arrays -------------------------------------------------------------------------------------

def arrays_release(tmp_path, n=8, channels=4, points=32):
    rng = np.random.default_rng(2)
    eeg = rng.standard_normal((n, channels, points)).astype(np.float32)
    for k in range(4):
        solid(tmp_path / "pics" / f"img{k}.png", k)
    table = {"image": [f"img{i % 4}.png" for i in range(n)], "label": [i % 4 // 2 for i in range(n)],
             "subject": [i // 4 for i in range(n)], "block": [i % 2 for i in range(n)]}
    return eeg, table


def test_arrays_npy_and_csv_through_the_cli(tmp_path, capsys):
    eeg, table = arrays_release(tmp_path)
    np.save(tmp_path / "x.npy", eeg)
    lines = ["image,label,subject,block"] + [",".join(str(table[c][i]) for c in table) for i in range(8)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    argv = ["convert", "arrays", "--eeg", str(tmp_path / "x.npy"), "--table", str(tmp_path / "t.csv"),
            "--images", str(tmp_path / "pics"), "--out", str(tmp_path / "out"), "--sfreq", "250",
            "--image-format", "png", "--workers", "2", "--samples-per-shard", "3"]
    assert main(argv) == 0
    assert "wrote 8 samples in 3 shards" in capsys.readouterr().out
    info = Manifest(tmp_path / "out").info
    assert info["class_names"] == ["0", "1"] and info["channel_names"] == ["ch001", "ch002", "ch003", "ch004"]
    assert info["sfreq"] == 250.0 and info["extra"]["blocks"] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    for s in written(tmp_path / "out"):
        r = s["meta"]["source_index"]
        assert s["meta"]["label"] == table["label"][r] and s["meta"]["subject"] == table["subject"][r]
        assert s["meta"]["block"] == 2 * table["subject"][r] + table["block"][r]  # (subject, block) pairs numbered
        np.testing.assert_allclose(s["eeg"], eeg[r], rtol=1e-3, atol=1e-3)
        assert s["bytes"] == (tmp_path / "pics" / table["image"][r]).read_bytes()  # PNG passed through


def test_arrays_npz_and_parquet_with_class_names_and_release_split(tmp_path):
    eeg, table = arrays_release(tmp_path)
    np.savez(tmp_path / "x.npz", eeg=eeg, ch_names=np.array(["O1", "Oz", "O2", "Pz"]), sfreq=np.float64(512))
    table["label"] = ["dog" if v else "cat" for v in table["label"]]
    table["split"] = ["train", "train", "val", None, "test", "train", "", "test"]
    table["session"] = [1] * 8
    pq.write_table(pa.table(table), tmp_path / "t.parquet")
    manifest = convert_arrays(tmp_path / "x.npz", tmp_path / "t.parquet", tmp_path / "pics",
                              ConvertOptions(out=tmp_path / "out", image_size=4, classes=["dog"]))
    info = Manifest(manifest.parent).info
    assert info["channel_names"] == ["O1", "Oz", "O2", "Pz"] and info["sfreq"] == 512.0
    assert info["class_names"] == ["dog"] and info["extra"]["class_subset"]["source_labels"] == [1]
    samples = written(manifest.parent)
    assert sorted(s["meta"]["source_index"] for s in samples) == [2, 3, 6, 7]
    for s in samples:
        r = s["meta"]["source_index"]
        assert s["meta"]["label"] == 0 and s["meta"]["session"] == 1
        assert s["meta"].get("release_split") == (table["split"][r] or None)
        assert s["field"] == "jpg" and s["image"].shape == (4, 4, 3) and close_colour(s["image"], r % 4)


@pytest.mark.parametrize("case, fragments", [
    ("column", ["t.csv", "missing column(s) ['subject']"]),
    ("rows", ["t.csv", "7 rows", "holds 8 trials"]),
    ("image", ["t.csv", "row 5", "field image", "'nope.png' not found"]),
    ("label", ["t.csv", "row 2", "field label", "label -1 out of range"]),
    ("split", ["t.csv", "row 1", "field split", "'training' is not one of"]),
    ("dtype", ["x.npy", "dtype complex64"]),
    ("shape", ["x.npy", "shape (8, 128)", "expected [trials, channels, time]"]),
    ("pickle", ["x.npy", "pickled Python objects", "plain numeric arrays only"]),
    ("sfreq", ["x.npy", "pass --sfreq"]),
    ("corrupt image", ["img3.png", "not a readable image"]),
])
def test_arrays_malformed_input(tmp_path, capsys, case, fragments):
    eeg, table = arrays_release(tmp_path)
    if case == "dtype":
        eeg = eeg.astype(np.complex64)
    elif case == "shape":
        eeg = eeg.reshape(8, 128)
    np.save(tmp_path / "x.npy", np.array([{"eeg": eeg}]) if case == "pickle" else eeg, allow_pickle=True)
    if case == "column":
        del table["subject"]
    elif case == "rows":
        table = {k: v[:7] for k, v in table.items()}
    elif case == "image":
        table["image"][5] = "nope.png"
    elif case == "label":
        table["label"][2] = -1
    elif case == "split":
        table["split"] = ["train", "training"] + ["test"] * 6
    elif case == "corrupt image":
        (tmp_path / "pics" / "img3.png").write_bytes(b"not a png")
    columns = list(table)
    (tmp_path / "t.csv").write_text("\n".join([",".join(columns)] + [",".join(str(table[c][i]) for c in columns)
                                                                      for i in range(len(table["image"]))]) + "\n")
    argv = ["convert", "arrays", "--eeg", str(tmp_path / "x.npy"), "--table", str(tmp_path / "t.csv"),
            "--images", str(tmp_path / "pics"), "--out", str(tmp_path / "out")] + ([] if case == "sfreq" else
                                                                                  ["--sfreq", "100"])
    fails(capsys, argv, *fragments)
    assert not (tmp_path / "out").exists()


def test_common_options_are_checked(tmp_path, capsys):
    eeg, table = arrays_release(tmp_path)
    np.save(tmp_path / "x.npy", eeg)
    pq.write_table(pa.table(table), tmp_path / "t.parquet")
    base = ["convert", "arrays", "--eeg", str(tmp_path / "x.npy"), "--table", str(tmp_path / "t.parquet"),
            "--images", str(tmp_path / "pics"), "--out", str(tmp_path / "out"), "--sfreq", "100"]
    fails(capsys, base + ["--classes", "0,7"], "unknown class(es) ['7']")
    fails(capsys, base + ["--split-fractions", "0.5,0.1"], "--split-fractions")
    assert main(base) == 0
    fails(capsys, base, "already exists", "--overwrite")
    assert main(base + ["--overwrite", "--split-fractions", "0.5,0.25,0.25", "--seed", "3"]) == 0
    assert Manifest(tmp_path / "out").info["split_fractions"] == [0.5, 0.25, 0.25]
