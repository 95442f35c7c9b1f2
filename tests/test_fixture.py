"""The committed tiny corpus (tests/fixtures/tiny_corpus): a format and generator regression guard.

It was written by ``eeg2im synth`` with the settings below. If a change alters the on-disk
format or what the generator produces for a seed, these tests say so; regenerate the fixture
only for an intended change.
"""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from eeg2im_scale.config import DataConfig, SynthConfig
from eeg2im_scale.data.corpus import write_synthetic
from eeg2im_scale.data.format import decode_sample, read_shard
from eeg2im_scale.data.loader import EEGImageLoader

FIXTURE = "tests/fixtures/tiny_corpus"
SETTINGS = SynthConfig(num_samples=24, num_classes=3, num_subjects=2, sessions_per_subject=3, samples_per_shard=8,
                       image_size=16, channels=8, time_points=64, sfreq=250.0, workers=1, seed=7)


def decoded(root):
    samples = {}
    for shard in sorted((root / "shards").glob("*.tar")):
        for raw in read_shard(shard):
            sample = decode_sample(raw, str(shard), (8, 64))
            samples[sample.key] = sample
    return samples


def test_committed_fixture_streams_through_the_loader():
    cfg = DataConfig(root=FIXTURE, batch_size=4, image_size=16, synthesize=False, shuffle_buffer=8)
    keys = [k for split in ("train", "val", "test")
            for batch in EEGImageLoader(cfg, split, train=False) for k in batch["key"]]
    assert sorted(keys) == [f"{i:09d}" for i in range(24)]


def test_generator_and_writer_reproduce_the_committed_fixture(tmp_path):
    write_synthetic(SETTINGS, tmp_path / "again")
    committed, again = decoded(Path(FIXTURE)), decoded(tmp_path / "again")
    assert committed.keys() == again.keys()
    for key, sample in committed.items():
        np.testing.assert_allclose(again[key].eeg.numpy(), sample.eeg.numpy(), atol=0.05)
        assert np.abs(again[key].image.astype(int) - sample.image.astype(int)).max() <= 1
        assert again[key].meta == sample.meta
    columns = ["key", "label", "subject", "image_id", "block", "split_image", "split_subject", "split_block"]
    assert pq.read_table(tmp_path / "again" / "manifest.parquet", columns=columns).equals(
        pq.read_table(Path(FIXTURE) / "manifest.parquet", columns=columns))
