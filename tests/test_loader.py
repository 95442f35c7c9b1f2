"""Streaming loader: split by node and worker, fixed-length resampled epochs, exact resume."""

from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import CHANNELS, IMAGE, TIME_POINTS, assert_batches_match_reference, data_cfg
from eeg2im_scale.data import loader as loader_module
from eeg2im_scale.data.loader import EEGImageLoader
from eeg2im_scale.data.manifest import Manifest


def split_keys(root, scheme, split):
    rows = pq.read_table(root / "manifest.parquet", columns=["key", f"split_{scheme}"]).to_pylist()
    return {r["key"] for r in rows if r[f"split_{scheme}"] == split}


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("split", ["train", "test"])
def test_evaluation_reads_every_sample_exactly_once_across_ranks(random_corpus, corpus_root, num_workers, split):
    cfg = data_cfg(corpus_root, num_workers=num_workers, split_by="subject")
    seen = Counter()
    for rank in range(2):
        for batch in EEGImageLoader(cfg, split, train=False, rank=rank, world_size=2):
            assert batch["eeg"].shape[1:] == (CHANNELS, TIME_POINTS) and batch["eeg"].dtype == torch.float32
            assert batch["image"].shape[1:] == (3, IMAGE, IMAGE) and batch["image"].dtype == torch.uint8
            assert batch["attributes"].shape == (len(batch["key"]), 1)
            seen.update(batch["key"])
    assert set(seen) == split_keys(random_corpus, "subject", split)
    assert max(seen.values()) == 1


def run_epoch(loader):
    return [batch["key"] for batch in loader]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_epoch_has_fixed_length_per_rank_and_disjoint_shards(random_corpus, corpus_root, num_workers):
    cfg = data_cfg(corpus_root, num_workers=num_workers, samples_per_epoch=100)
    loaders = [EEGImageLoader(cfg, "train", rank=r, world_size=2) for r in range(2)]
    epochs = [run_epoch(loader) for loader in loaders]
    for loader, batches in zip(loaders, epochs):
        assert len(batches) == len(loader) and all(len(b) == cfg.batch_size for b in batches)
        assert loader.samples_per_epoch >= 100
    manifest = pq.read_table(random_corpus / "manifest.parquet", columns=["key", "shard"]).to_pylist()
    shard_of = {r["key"]: r["shard"] for r in manifest}
    shards = [{shard_of[k] for batch in batches for k in batch} for batches in epochs]
    assert not shards[0] & shards[1], "ranks read disjoint shards when there are enough of them"
    train = split_keys(random_corpus, "image", "train")
    assert all(k in train for batches in epochs for batch in batches for k in batch)


def test_training_stream_is_deterministic_and_changes_with_epoch(random_corpus):
    cfg = data_cfg(random_corpus)
    a, b = EEGImageLoader(cfg), EEGImageLoader(cfg)
    first_a, first_b = run_epoch(a), run_epoch(b)
    assert first_a == first_b
    assert run_epoch(a) != first_a  # epoch 1 is another permutation
    assert run_epoch(EEGImageLoader(data_cfg(random_corpus, seed=1))) != first_a


@pytest.mark.parametrize("num_workers, stop_after", [(0, 3), (2, 3), (2, 4), (2, 0)])
def test_resume_mid_epoch_gives_the_same_next_batches(corpus_root, num_workers, stop_after):
    cfg = data_cfg(corpus_root, num_workers=num_workers, samples_per_epoch=160)
    reference = EEGImageLoader(cfg, rank=1, world_size=2)
    expected = [(b["key"], b["eeg"]) for epoch in range(2) for b in reference]

    interrupted = EEGImageLoader(cfg, rank=1, world_size=2)
    iterator = iter(interrupted)
    got = [(b["key"], b["eeg"]) for _, b in zip(range(stop_after), iterator)]
    state = interrupted.state_dict()
    del iterator, interrupted

    resumed = EEGImageLoader(cfg, rank=1, world_size=2)
    resumed.load_state_dict(state)
    got += [(b["key"], b["eeg"]) for b in resumed]
    got += [(b["key"], b["eeg"]) for b in resumed]  # and the following epoch
    assert [k for k, _ in got] == [k for k, _ in expected]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(got, expected))


RECYCLED_FIRST = 12  # batches dropped at once at the start: twice the worker's pool of recycled buffers (4 + 2)


def test_worker_batch_buffers_are_reused_only_once_the_training_process_drops_them(random_corpus, monkeypatch):
    """A worker decodes into recycled shared-memory buffers. The first batches are dropped after
    checking, so their buffers come back and are reused (whether a reused buffer lands on a dropped
    batch again is otherwise a race with the worker's prefetch). Then every third batch is kept to
    the end (holding its buffer; once all are held the worker allocates fresh ones), of every other
    third only a view of its images, the rest is dropped: each batch must equal the in-process
    stream's when delivered and, what was kept, still at the end; and dropped buffers must have come
    back and been reused."""
    cfg = data_cfg(random_corpus, batch_size=4, samples_per_epoch=160)
    fields = ("key", "eeg", "image", "label", "subject", "attributes")
    expected = [{f: b[f] for f in fields} for b in EEGImageLoader(cfg)]
    released = []
    release = loader_module._release_slot
    monkeypatch.setattr(loader_module, "_release_slot",
                        lambda flags, worker, slot: (released.append((worker, slot)), release(flags, worker, slot)))

    def same(batch, reference):
        return all(batch[f] == reference[f] if f == "key" else torch.equal(batch[f], reference[f]) for f in fields)

    kept, kept_images = [], []
    for index, batch in enumerate(EEGImageLoader(replace(cfg, num_workers=1))):
        assert same(batch, expected[index]), f"batch {index} differs from the in-process stream"
        if index < RECYCLED_FIRST:
            pass
        elif index % 3 == 0:
            kept.append((index, batch))
        elif index % 3 == 1:
            kept_images.append((index, batch["image"][1:]))
        del batch
    assert len(kept) > loader_module.PREFETCH_FACTOR + loader_module.BATCH_SLOTS_SPARE  # more than the pool holds
    assert all(same(batch, expected[index]) for index, batch in kept), "a kept batch was overwritten"
    assert all(torch.equal(images, expected[index]["image"][1:]) for index, images in kept_images), \
        "a kept view of a batch was overwritten"
    assert len(released) > len(set(released)), "no buffer was reused"


def test_preprocessing_crops_and_normalises_with_training_statistics(random_corpus):
    cfg = data_cfg(random_corpus, eeg_window=(4, 28), batch_size=200)
    eeg = next(iter(EEGImageLoader(cfg, "train", train=False)))["eeg"]
    assert eeg.shape[1:] == (CHANNELS, 24)
    assert abs(float(eeg.mean())) < 0.1 and abs(float(eeg.std()) - 1) < 0.1
    raw = next(iter(EEGImageLoader(data_cfg(random_corpus, normalize=False, batch_size=200), "train", train=False)))
    mean, std = Manifest(random_corpus).eeg_stats("image")
    np.testing.assert_allclose(raw["eeg"].mean(dim=(0, 2)).numpy(), mean, atol=0.05)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("window, bandpass", [(None, None), ((1, 31), (5.0, 15.0))])
def test_batches_equal_an_independent_per_sample_decode(random_corpus, num_workers, window, bandpass):
    """The loader decodes into preallocated (in workers: shared-memory) batches; every row, the
    partial last batch included, must equal a plain NumPy/SciPy/PIL decode of its sample."""
    cfg = data_cfg(random_corpus, batch_size=7, num_workers=num_workers, eeg_window=window, bandpass=bandpass)
    batches = list(EEGImageLoader(cfg, "train", train=False))
    assert len(batches[-1]["key"]) < 7
    assert assert_batches_match_reference(random_corpus, batches, cfg) == len(split_keys(random_corpus, "image", "train"))


def test_bandpass_attenuates_out_of_band_power(random_corpus):
    plain = next(iter(EEGImageLoader(data_cfg(random_corpus, batch_size=64), "train", train=False)))["eeg"]
    band = next(iter(EEGImageLoader(data_cfg(random_corpus, batch_size=64, bandpass=(5.0, 15.0)), "train", train=False)))["eeg"]
    freqs = np.fft.rfftfreq(TIME_POINTS, 1 / 100.0)
    power = lambda x: (np.abs(np.fft.rfft(x.numpy(), axis=-1)) ** 2).mean(axis=(0, 1))
    out_of_band = freqs > 30
    assert power(band)[out_of_band].sum() < 0.05 * power(plain)[out_of_band].sum()


def test_bad_loader_arguments_fail_clearly(random_corpus, tmp_path):
    with pytest.raises(ValueError, match="exceeds the 32 time points"):
        EEGImageLoader(data_cfg(random_corpus, eeg_window=(0, 64)))
    with pytest.raises(ValueError, match="scheme 'release' is not recorded.*available: image, subject, block"):
        EEGImageLoader(data_cfg(random_corpus, split_by="release"))
    with pytest.raises(FileNotFoundError, match="eeg2im synth --out"):
        EEGImageLoader(data_cfg(tmp_path / "missing"))


def test_state_saved_under_another_world_size_restarts_the_epoch(random_corpus, caplog):
    cfg = data_cfg(random_corpus)
    two = EEGImageLoader(cfg, rank=0, world_size=2)
    next(iter(two))
    one = EEGImageLoader(cfg)
    one.load_state_dict(two.state_dict())
    assert "restarts from its beginning" in caplog.text
    assert one.state_dict()["batches_done"] == 0


def test_class_subset_selects_and_relabels_in_the_given_order(random_corpus):
    """data.classes keeps only the named classes, relabelled 0..k-1 in the order given."""
    full = Manifest(random_corpus)
    names = full.read(["key", "class_name"]).to_pylist()
    expected = {r["key"]: ["c", "a"].index(r["class_name"]) for r in names if r["class_name"] in ("c", "a")}
    loader = EEGImageLoader(data_cfg(random_corpus, classes=["c", "a"]), "train", train=False)
    seen = {}
    for batch in loader:
        seen.update(zip(batch["key"], batch["label"].tolist()))
    train_keys = {k for k in expected if full.membership("image", "train")[int(k)]}
    assert seen == {k: expected[k] for k in train_keys}
    assert loader.manifest.class_names == ["c", "a"]
    assert loader.manifest.class_subset == {"class_names": ["c", "a"], "source_labels": [2, 0]}


def test_class_subset_naming_an_unknown_class_fails_with_the_valid_ones(random_corpus):
    with pytest.raises(ValueError, match=r"data.classes names \['zebra'\].*its classes are: a, b, c"):
        EEGImageLoader(data_cfg(random_corpus, classes=["a", "zebra"]), "train")


def test_non_square_stimuli_are_centre_cropped_not_squashed():
    """As the reference FID/IS pipelines: the centred square, then the resize. Squashing a 2:1 image
    would pull the black side bands into every pixel column of the result."""
    import io

    from PIL import Image

    from eeg2im_scale.data.format import encode_image
    from eeg2im_scale.data.preprocess import prepare_image

    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 20:60] = 255  # the centred 40 x 40 square is white
    assert (prepare_image(image, 16) == 255).all()
    stored = np.asarray(Image.open(io.BytesIO(encode_image(image, "png", size=16))))
    assert stored.shape == (16, 16, 3) and (stored == 255).all()
