"""Turning the synthetic generator into shards, and making sure a configured corpus exists."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

from ..config import Config, ConfigError, SynthConfig
from .manifest import MANIFEST, Manifest, read_info
from .remote import is_url
from .synth import SyntheticCorpus
from .writer import CorpusInfo, RawSample, write_corpus

log = logging.getLogger(__name__)

ATTRIBUTES = ["hue", "saturation", "brightness", "hue2", "saturation2", "brightness2", "x", "y", "scale", "rotation"]


@lru_cache(maxsize=2)
def _corpus(cfg_items: tuple) -> SyntheticCorpus:
    """One generator per process and config (building montage/templates is not free)."""
    return SyntheticCorpus(SynthConfig(**dict(cfg_items)))


class SynthShard:
    """A picklable shard source: samples ``start:stop`` of the synthetic corpus."""

    def __init__(self, cfg: SynthConfig, start: int, stop: int):
        self.items = tuple(asdict(cfg).items())
        self.start, self.stop = start, stop

    def __call__(self):
        corpus = _corpus(self.items)
        for index in range(self.start, self.stop):
            sample = corpus.sample(index)
            yield RawSample(index, sample["eeg"], sample["image"], sample["meta"])


def write_synthetic(cfg: SynthConfig, out: str | Path, overwrite: bool = False) -> Path:
    corpus = _corpus(tuple(asdict(cfg).items()))
    info = CorpusInfo(
        channel_names=list(corpus.channel_names), sfreq=cfg.sfreq, time_points=cfg.time_points,
        class_names=list(corpus.class_names), image_format=cfg.image_format, source="synthetic",
        attribute_names=ATTRIBUTES, extra={"synth": asdict(cfg)},
    )
    per_shard = cfg.samples_per_shard
    num_shards = math.ceil(cfg.num_samples / per_shard)
    sources = (SynthShard(cfg, k * per_shard, min(cfg.num_samples, (k + 1) * per_shard)) for k in range(num_shards))
    return write_corpus(out, info, sources, split_fractions=cfg.split_fractions, seed=cfg.seed,
                        workers=cfg.workers, num_shards=num_shards, num_samples=cfg.num_samples, overwrite=overwrite)


def ensure_corpus(cfg: Config) -> Path:
    """The manifest of ``cfg.data.root``, synthesizing it from ``cfg.synth`` when missing and
    ``data.synthesize`` allows it. A corpus at a URL is never synthesized: its manifest is
    fetched (a local copy), and a missing one is an error naming the URL."""
    if is_url(cfg.data.root):
        return Manifest.for_data(cfg.data).path
    manifest = Path(cfg.data.root) / MANIFEST
    if manifest.is_file():
        if cfg.data.synthesize:
            _check_synth_settings(cfg, manifest)
        return manifest
    if not cfg.data.synthesize:
        raise FileNotFoundError(f"no corpus at {cfg.data.root} ({manifest} missing) and data.synthesize is false; "
                                f"create one with `eeg2im synth --out {cfg.data.root}` or `eeg2im convert ... --out "
                                f"{cfg.data.root}` (docs/converters.md), or set data.synthesize: true")
    log.info("synthesizing %d samples into %s", cfg.synth.num_samples, cfg.data.root)
    return write_synthetic(cfg.synth, cfg.data.root)


def _check_synth_settings(cfg: Config, manifest: Path) -> None:
    """A synthetic corpus written with other ``synth`` settings is not silently reused."""
    written = read_info(manifest).get("extra", {}).get("synth")
    if written is None:
        return  # not a synthetic corpus: data.root names the user's data
    wanted = json.loads(json.dumps(asdict(cfg.synth)))  # tuples as lists, as stored
    changed = sorted(k for k in wanted if written.get(k) != wanted[k] and k != "workers")
    if changed:
        details = ", ".join(f"synth.{k}: {written.get(k)!r} on disk vs {wanted[k]!r}" for k in changed)
        raise ConfigError(f"{manifest.parent} holds a synthetic corpus written with other settings ({details}); "
                         f"set data.root to a new directory, or delete {manifest.parent} to re-synthesize")


def ensure_corpus_on_rank(cfg: Config, rank: int, timeout_s: float = 24 * 3600) -> Path:
    """Rank 0 makes sure the corpus exists; the others wait for its manifest (published by an
    atomic rename, so its presence means the corpus is complete). Runs before the process group
    exists, so a long synthesis cannot trip the collective timeout."""
    if rank == 0 or is_url(cfg.data.root):
        return ensure_corpus(cfg)
    manifest = Path(cfg.data.root) / MANIFEST
    deadline = time.monotonic() + timeout_s
    while not manifest.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 did not write {manifest} within {timeout_s:.0f} s")
        time.sleep(0.5)
    return manifest
