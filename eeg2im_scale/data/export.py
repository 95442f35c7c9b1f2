"""One trial out of a corpus, as ``eeg2im generate`` takes it: its raw EEG (.npy) and its stimulus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from .format import IMAGE_FIELDS, decode_sample, read_shard, sample_key
from .manifest import Manifest


def export_trial(root: str | Path, out: str | Path, key: str | None = None, index: int | None = None) -> list[Path]:
    """Write ``<key>.eeg.npy`` (float32 [channels, time], raw as stored: the pipeline applies the
    release's window, band-pass and z-scoring itself), ``<key>.<png|jpg>`` and ``<key>.json``
    (label, class name, subject, image) for the sample of ``key`` or sample ``index``."""
    if (key is None) == (index is None):
        raise ValueError("export-trial: give exactly one of --key and --index")
    key = key if key is not None else sample_key(index)
    manifest = Manifest(root)
    table = manifest.read(["key", "shard", "class_name", "image_id"])
    rows = table.filter(pc.equal(table.column("key"), key)).to_pylist()
    if not rows:
        first = table.column("key")[0].as_py()
        raise ValueError(f"{manifest.path}: no sample with key {key!r} (keys look like {first!r}; "
                         f"--index N takes a sample index)")
    row = rows[0]
    shard = str(Path(root) / row["shard"])
    raw = next(read_shard(shard, keep=lambda k: k == key), None)
    if raw is None:
        raise ValueError(f"{shard}: sample {key} listed in {manifest.path} is not in the shard")
    decoded = decode_sample(raw, shard, manifest.eeg_shape)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    image_field = next(f for f in IMAGE_FIELDS if f in raw)
    paths = [out / f"{key}.eeg.npy", out / f"{key}.{image_field}", out / f"{key}.json"]
    np.save(paths[0], decoded.eeg.numpy())
    paths[1].write_bytes(raw[image_field])
    paths[2].write_text(json.dumps({**decoded.meta, "key": key, "class_name": row["class_name"],
                                    "image_id": row["image_id"], "corpus": str(root)}, indent=1))
    return paths
