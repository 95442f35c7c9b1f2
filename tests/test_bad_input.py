"""Bad input: every defect names shard, key and field (``raise``) or is dropped and reported (``skip``)."""

import io
import shutil
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import CHANNELS, TIME_POINTS, assert_batches_match_reference, data_cfg
from eeg2im_scale.data.format import SampleError
from eeg2im_scale.data.loader import EEGImageLoader

KEY = "000000044"  # in shards/shard-000002.tar
SHARD = "shard-000002.tar"


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


MUTATIONS = {
    "nan": ("eeg.npy", lambda m: {**m, "eeg.npy": npy(np.full((CHANNELS, TIME_POINTS), np.nan, np.float16))}),
    "shape": ("eeg.npy", lambda m: {**m, "eeg.npy": npy(np.zeros((CHANNELS, TIME_POINTS - 1), np.float16))}),
    "pickle": ("eeg.npy", lambda m: {**m, "eeg.npy": npy(np.array([{"a": 1}], dtype=object))}),
    "image": ("png", lambda m: {**m, "png": b"this is not a png"}),
    "missing": ("json", lambda m: {k: v for k, v in m.items() if k != "json"}),
    "label": ("json.label", lambda m: {**m, "json": b'{"subject": 1}'}),
    "attributes": ("json.attributes", lambda m: {**m, "json": b'{"label": 0, "subject": 1, "attributes": {"hue": "red"}}'}),
}


def rewrite_member(path, key, mutate):
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    fields = {name.split(".", 1)[1]: data for name, data in members if name.startswith(key + ".")}
    fields = mutate(fields)
    with tarfile.open(path, "w") as tar:
        written = False
        for name, data in members:
            if name.startswith(key + "."):
                if not written:
                    for field, payload in fields.items():
                        info = tarfile.TarInfo(f"{key}.{field}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
                    written = True
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def broken_copy(random_corpus, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(random_corpus, root)
    return root


def eval_keys(root, on_error):
    loader = EEGImageLoader(data_cfg(root, on_error=on_error, split_by="subject"), "train", train=False)
    keys = [k for batch in loader for k in batch["key"]]
    return keys, loader


def train_split_keys(root):
    rows = pq.read_table(root / "manifest.parquet", columns=["key", "split_subject"]).to_pylist()
    return [r["key"] for r in rows if r["split_subject"] == "train"]


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_bad_sample_raises_with_shard_key_and_field(broken_copy, kind):
    field, mutate = MUTATIONS[kind]
    assert KEY in train_split_keys(broken_copy)
    rewrite_member(broken_copy / "shards" / SHARD, KEY, mutate)
    with pytest.raises(SampleError) as err:
        eval_keys(broken_copy, "raise")
    assert SHARD in str(err.value) and f"sample {KEY}" in str(err.value) and f"field {field}" in str(err.value)


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_bad_sample_is_skipped_counted_and_reported(broken_copy, kind):
    field, mutate = MUTATIONS[kind]
    rewrite_member(broken_copy / "shards" / SHARD, KEY, mutate)
    keys, loader = eval_keys(broken_copy, "skip")
    assert sorted(keys) == sorted(set(train_split_keys(broken_copy)) - {KEY})
    assert [(d["key"], d["field"]) for d in loader.dropped] == [(KEY, field)]
    assert loader.state_dict()["dropped"] == 1


def truncate(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_truncated_shard_raises_naming_shard_and_key(broken_copy):
    truncate(broken_copy / "shards" / SHARD)
    with pytest.raises(SampleError, match=rf"{SHARD}: sample 0000000\d\d: field tar: truncated"):
        eval_keys(broken_copy, "raise")


def test_shard_cut_at_a_member_boundary_is_detected(broken_copy):
    path = broken_copy / "shards" / SHARD
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()][:30]
    with tarfile.open(path, "w") as tar:  # a clean tar that simply holds fewer samples
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SampleError, match=rf"{SHARD}: sample 000000049: field tar: truncated shard: it ends in this sample, the 10th of 20"):
        eval_keys(broken_copy, "raise")


def test_truncated_shard_is_skipped_and_the_run_completes(broken_copy):
    truncate(broken_copy / "shards" / SHARD)
    keys, loader = eval_keys(broken_copy, "skip")
    assert [d["field"] for d in loader.dropped] == ["tar"]
    lost = set(train_split_keys(broken_copy)) - set(keys)
    assert lost and all(k.startswith("0000000") and 40 <= int(k) < 60 for k in lost)
    assert len(lost) > 1 and loader.state_dict()["dropped"] == len(lost)  # samples, not drop records


def test_a_dropped_sample_leaves_no_trace_in_its_batch(broken_copy):
    """A sample that fails after its EEG was decoded into the batch (here: its image) gives its
    slot to the next sample; no row holds any of its data."""
    rewrite_member(broken_copy / "shards" / SHARD, KEY, MUTATIONS["image"][1])
    cfg = data_cfg(broken_copy, on_error="skip", split_by="subject")
    batches = list(EEGImageLoader(cfg, "train", train=False))
    assert KEY not in {k for b in batches for k in b["key"]}
    assert assert_batches_match_reference(broken_copy, batches, cfg) == len(train_split_keys(broken_copy)) - 1


def test_training_with_skip_still_delivers_full_epochs(broken_copy):
    rewrite_member(broken_copy / "shards" / SHARD, KEY, MUTATIONS["nan"][1])
    truncate(broken_copy / "shards" / "shard-000005.tar")
    loader = EEGImageLoader(data_cfg(broken_copy, on_error="skip", num_workers=2, samples_per_epoch=400))
    batches = [b for b in loader]
    assert len(batches) == len(loader) and all(len(b["key"]) == 8 for b in batches)
    assert KEY not in {k for b in batches for k in b["key"]}
    assert {d["field"] for d in loader.dropped} <= {"eeg.npy", "tar"} and loader.dropped
