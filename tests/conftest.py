"""Shared fixtures: small corpora written through the real writer (real tar shards, real Parquet)."""

from __future__ import annotations

import numpy as np
import pytest

from eeg2im_scale.config import DataConfig
from eeg2im_scale.data.writer import CorpusInfo, RawSample, write_corpus

CHANNELS, TIME_POINTS, IMAGE = 4, 32, 8


def random_samples(start: int, stop: int, *, subjects: int = 4, sessions: int = 3, classes: int = 3):
    """Deterministic random trials: index -> (subject, image, session) as in the synthetic layout."""
    for index in range(start, stop):
        rng = np.random.default_rng(index)
        subject, image_id = index % subjects, index // subjects
        session = image_id % sessions
        yield RawSample(
            index=index,
            eeg=(rng.standard_normal((CHANNELS, TIME_POINTS)) * 5 + index % 7).astype(np.float32),
            image=rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8),
            meta={"label": image_id % classes, "subject": subject, "image_id": f"img{image_id}",
                  "session": session, "block": subject * sessions + session,
                  "attributes": {"hue": (image_id % 10) / 10}},
        )


class RangeSource:
    def __init__(self, start, stop):
        self.start, self.stop = start, stop

    def __call__(self):
        return random_samples(self.start, self.stop)


def write_random_corpus(root, num_samples: int = 240, per_shard: int = 20, **kw):
    info = CorpusInfo(channel_names=[f"E{i}" for i in range(CHANNELS)], sfreq=100.0, time_points=TIME_POINTS,
                      class_names=["a", "b", "c"], image_format="png", source="test", attribute_names=["hue"])
    sources = [RangeSource(s, min(num_samples, s + per_shard)) for s in range(0, num_samples, per_shard)]
    return write_corpus(root, info, sources, seed=0, **kw)


@pytest.fixture(scope="session")
def random_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("random_corpus")
    write_random_corpus(root)
    return root


def data_cfg(root, **kw) -> DataConfig:
    defaults = dict(root=str(root), batch_size=8, shuffle_buffer=16, image_size=IMAGE, synthesize=False)
    defaults.update(kw)
    return DataConfig(**defaults)
