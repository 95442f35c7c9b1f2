"""Shards and manifest: the on-disk format, the statistics, and leakage-aware splits."""

import io
import json
import struct
import tarfile
import warnings
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import CHANNELS, TIME_POINTS, random_samples, write_random_corpus
from eeg2im_scale.data import format as format_module
from eeg2im_scale.data.format import decode_image, load_npy, read_shard
from eeg2im_scale.data.manifest import Manifest
from eeg2im_scale.data.splits import assign_groups, group_counts


def test_shard_contents_follow_the_format(random_corpus):
    first = sorted((random_corpus / "shards").glob("*.tar"))[0]
    with tarfile.open(first) as tar:
        names = tar.getnames()
        assert names[:3] == ["000000000.eeg.npy", "000000000.json", "000000000.png"]
        eeg = np.load(io.BytesIO(tar.extractfile(names[0]).read()))
        meta = json.loads(tar.extractfile(names[1]).read())
    assert eeg.dtype == np.float16 and eeg.shape == (CHANNELS, TIME_POINTS)
    assert {"label", "class_name", "subject", "image_id", "session", "block", "attributes"} <= set(meta)
    assert len(list(read_shard(first, 20))) == 20


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float16).reshape(3, 4),
                                   np.asfortranarray(np.arange(15.0).reshape(3, 5)), np.zeros((2, 0), np.float32)])
@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_cached_npy_reader_equals_np_load(array, version):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    data = buffer.getvalue()
    loaded = load_npy(data)
    assert loaded.dtype == array.dtype and loaded.shape == array.shape and loaded.flags.writeable
    np.testing.assert_array_equal(loaded, np.load(io.BytesIO(data)))
    with pytest.raises(ValueError, match="data bytes"):
        load_npy(data[:-1] if array.size else data + b"\0")


def _png16(image: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (PIL cannot write one)."""
    height, width, _ = image.shape
    rows = b"".join(b"\x00" + image[y].astype(">u2").tobytes() for y in range(height))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _encoded(image: np.ndarray, mode: str, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buf, format=fmt, **options)
    return buf.getvalue()


def test_image_decoding_gives_pils_pixels():
    """The loader decodes with torchvision (faster); every stored form must give what PIL gives."""
    assert format_module.torchvision_decoder() is not None, "torchvision's image op is missing: PIL decodes every image"
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 48)
    smooth = np.stack([np.add.outer(ramp, ramp) / 2, np.outer(ramp, ramp) / 255, ramp[None].repeat(48, 0)], -1)
    image = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    cases = {f"png {mode}": _encoded(image, mode, "PNG") for mode in ("RGB", "RGBA", "L", "LA", "P")}
    cases.update({f"jpeg q{q} {sub}": _encoded(image, "RGB", "JPEG", quality=q, subsampling=sub)
                  for q in (75, 95) for sub in (0, 2)})
    cases["png 16-bit"] = _png16(rng.integers(0, 2**16, (20, 30, 3)).astype(np.uint16))
    for name, data in cases.items():
        with Image.open(io.BytesIO(data)) as pil:
            expected = np.asarray(pil.convert("RGB"))
        for buffer in (data, bytearray(data)):
            with warnings.catch_warnings():  # torchvision's deprecation warning must not reach users (-W error)
                warnings.simplefilter("error")
                decoded = decode_image(buffer)
            assert decoded.dtype == np.uint8, name
            np.testing.assert_array_equal(decoded, expected, err_msg=name)


def test_manifest_rows_and_metadata(random_corpus):
    table = pq.read_table(random_corpus / "manifest.parquet")
    assert table.num_rows == 240
    for column in ["key", "shard", "label", "subject", "image_id", "block", "split_image", "split_subject",
                   "split_block", "attr_hue"]:
        assert column in table.column_names
    rows = table.to_pylist()
    assert rows[5]["key"] == "000000005" and rows[5]["shard"] == "shards/shard-000000.tar"
    assert rows[25]["shard"] == "shards/shard-000001.tar"
    manifest = Manifest(random_corpus)
    assert manifest.eeg_shape == (CHANNELS, TIME_POINTS)
    assert manifest.available_schemes() == ["image", "subject", "block"]


@pytest.mark.parametrize("scheme", ["image", "subject", "block"])
def test_channel_stats_are_those_of_the_training_split(random_corpus, scheme):
    table = pq.read_table(random_corpus / "manifest.parquet").to_pylist()
    train = {r["index"] for r in table if r[f"split_{scheme}"] == "train"}
    eeg = np.stack([s.eeg.astype(np.float16).astype(np.float64) for s in random_samples(0, 240) if s.index in train])
    mean, std = Manifest(random_corpus).eeg_stats(scheme)
    np.testing.assert_allclose(mean, eeg.mean(axis=(0, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, eeg.std(axis=(0, 2)), rtol=1e-4)


@pytest.mark.parametrize("scheme, group", [("image", "image_id"), ("subject", "subject"), ("block", "block")])
def test_splits_are_disjoint_in_their_unit(random_corpus, scheme, group):
    rows = pq.read_table(random_corpus / "manifest.parquet").to_pylist()
    units = {split: {r[group] for r in rows if r[f"split_{scheme}"] == split} for split in ("train", "val", "test")}
    assert all(units.values()), f"every split of {scheme} is non-empty"
    assert not units["train"] & units["val"] and not units["train"] & units["test"] and not units["val"] & units["test"]


def test_block_split_keeps_every_subject_in_training(random_corpus):
    rows = pq.read_table(random_corpus / "manifest.parquet").to_pylist()
    assert {r["subject"] for r in rows if r["split_block"] == "train"} == {0, 1, 2, 3}


def test_group_counts_and_assignment():
    assert group_counts(10, (0.8, 0.1, 0.1)) == (8, 1, 1)
    assert group_counts(3, (0.8, 0.1, 0.1)) == (1, 1, 1)
    assert group_counts(2, (0.8, 0.1, 0.1)) == (1, 0, 1)
    assert group_counts(1, (0.8, 0.1, 0.1)) == (1, 0, 0)
    a = assign_groups(range(10), (0.6, 0.2, 0.2), seed=3)
    assert a == assign_groups(range(10), (0.6, 0.2, 0.2), seed=3)
    assert sorted(a.values()).count("train") == 6


def test_existing_corpus_is_never_overwritten_silently(random_corpus):
    before = (random_corpus / "manifest.parquet").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_random_corpus(random_corpus)
    assert (random_corpus / "manifest.parquet").read_bytes() == before


def test_parallel_writing_gives_the_same_corpus(tmp_path):
    write_random_corpus(tmp_path / "serial", num_samples=80)
    write_random_corpus(tmp_path / "parallel", num_samples=80, workers=2)
    a = pq.read_table(tmp_path / "serial" / "manifest.parquet")
    b = pq.read_table(tmp_path / "parallel" / "manifest.parquet")
    assert a.equals(b) and a.schema.metadata == b.schema.metadata
    for shard in sorted((tmp_path / "serial" / "shards").glob("*.tar")):
        other = tmp_path / "parallel" / "shards" / shard.name
        assert [s["eeg.npy"] for s in read_shard(shard)] == [s["eeg.npy"] for s in read_shard(other)]
