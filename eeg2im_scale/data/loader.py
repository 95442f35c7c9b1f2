"""Streaming EEG/image loader over WebDataset shards, split by rank and by worker, resumable.

Training (``train=True``): each epoch, the shard list is permuted with (seed, epoch), split by
node and then by worker so ranks read disjoint shards; each worker cycles through its own shards
(reshuffled every pass) through a seeded shuffle buffer and emits a *fixed* number of full
batches. Every rank therefore runs the same number of steps whatever the shard sizes — no DDP
hang on uneven shards — and the stream is a pure function of (seed, epoch, rank, worker).

Resume: the position is the number of batches consumed plus, per worker, how many raw samples
its shuffle buffer had emitted. Restoring rebuilds the same stream and discards that many raw
samples *before* decoding, so the next batches equal those of an uninterrupted run.

Evaluation (``train=False``): shards in order, split by node and worker, no shuffle, partial last
batches: every sample of the split exactly once across all ranks.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import DataConfig
from .format import SampleError, decode_sample, read_shard, sample_key
from .manifest import Manifest, ShardEntry
from .preprocess import EEGPreprocess, bandpass_sos, prepare_image
from .remote import RemoteOptions, relative_to

log = logging.getLogger(__name__)


def split_by_node(shards: list, rank: int, world_size: int) -> list:
    """Every ``world_size``-th shard from ``rank``. Unlike ``wds.split_by_node`` the rank is given,
    not read from the environment, so one process can play any rank (tests, workers)."""
    return shards[rank::world_size]


def split_by_worker(shards: list, worker: int, num_workers: int) -> list:
    return shards[worker::num_workers]


@lru_cache(maxsize=16)
def _shard_indices(manifest_path: str, shard: str) -> np.ndarray:
    """The sample indices the manifest places in ``shard`` (read only when a shard is found broken)."""
    table = pq.read_table(manifest_path, columns=["index", "shard"])
    return table.column("index").filter(pc.equal(table.column("shard"), shard)).to_numpy()


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@dataclass
class StreamPlan:
    """Everything a worker needs to build its stream; picklable so it travels to workers."""

    root: str  # a directory or a URL (data/remote.py)
    manifest_path: str  # local: the manifest itself, or its downloaded copy
    remote: RemoteOptions
    shards: list[ShardEntry]
    member: np.ndarray  # bool mask by sample index
    label_map: np.ndarray  # stored label -> training label (data.classes re-indexing)
    eeg_shape: tuple[int, int]
    preprocess: EEGPreprocess
    image_size: int
    attribute_names: list[str]
    batch_size: int
    shuffle_buffer: int
    seed: int
    train: bool
    on_error: str
    rank: int
    world_size: int
    batches_per_worker: int = 0  # training only

    # ---- raw sample streams -------------------------------------------------------------------

    def _read(self, entry: ShardEntry, dropped: list) -> Iterator[dict]:
        """Raw samples of the split from one shard; shard-level defects raise, or are recorded
        with ``lost``: the split's samples of the shard that were not delivered."""
        delivered = set()

        def in_split(key: str) -> bool:
            index = int(key) if key.isdigit() else -1
            if not 0 <= index < len(self.member):
                raise SampleError(entry.path, key, "__key__", "key is not a sample index of the manifest")
            return bool(self.member[index])

        try:
            for raw in read_shard(entry.path, entry.total, keep=in_split, opener=self.remote.open):
                delivered.add(int(raw["__key__"]))
                yield raw
        except SampleError as err:
            if self.on_error == "raise":
                raise
            indices = _shard_indices(self.manifest_path, relative_to(self.root, entry.path))
            lost = [sample_key(i) for i in indices if self.member[i] and i not in delivered]
            dropped.append({**err.record(), "lost": lost})

    def epoch_shards(self, epoch: int, worker: int, num_workers: int) -> list[ShardEntry]:
        """This worker's shards for the epoch; the list is repeated when there are fewer shards
        than readers, so no worker is ever left without data."""
        order = list(self.shards)
        random.Random(_seed(self.seed, epoch)).shuffle(order)
        readers = self.world_size * num_workers
        order = order * math.ceil(readers / len(order))
        return split_by_worker(split_by_node(order, self.rank, self.world_size), worker, num_workers)

    def _passes(self, shards: list[ShardEntry], shard_rng: random.Random, buffer_rng: random.Random,
                dropped: list) -> Iterator[dict]:
        """Endless passes over the worker's shards, each in a new order and shuffled through the
        buffer, which drains at the end of every pass: a pass yields each sample exactly once,
        so an epoch repeats samples only where its fixed length exceeds the worker's share."""
        initial = min(self.shuffle_buffer, 100)
        for _ in itertools.count():
            order = list(shards)
            shard_rng.shuffle(order)
            raws = itertools.chain.from_iterable(self._read(entry, dropped) for entry in order)
            produced = False
            for raw in wds.shuffle(self.shuffle_buffer, initial=initial, rng=buffer_rng)(raws):
                produced = True
                yield raw
            if not produced:
                raise RuntimeError(f"no readable samples in shards {[e.path for e in shards]}")

    # ---- decoded batches ----------------------------------------------------------------------

    def _batches(self, raws: Iterator[dict], dropped: list, worker: int, limit: int | None,
                 cursor: int, pool: SlotPool | None) -> Iterator[dict]:
        batch = BatchBuilder(self, pool)
        emitted = 0

        def flush():
            nonlocal batch
            out = batch.finish()
            out.update(_worker=worker, _cursor=cursor, _dropped=list(dropped))
            dropped.clear()
            batch = BatchBuilder(self, pool)
            return out

        for raw in raws:
            cursor += 1
            try:
                batch.add(raw)
            except SampleError as err:
                if self.on_error == "raise":
                    raise
                dropped.append(err.record())
            if len(batch) == self.batch_size:
                yield flush()
                emitted += 1
                if limit is not None and emitted >= limit:
                    return
        if len(batch) or dropped:
            yield flush()

    def worker_stream(self, epoch: int, worker: int, num_workers: int, batches_done: int,
                      cursor: int, pool: SlotPool | None = None) -> Iterator[dict]:
        dropped: list = []
        if not self.train:
            shards = split_by_worker(split_by_node(self.shards, self.rank, self.world_size), worker, num_workers)
            raws = itertools.chain.from_iterable(self._read(e, dropped) for e in shards)
            yield from self._batches(raws, dropped, worker, None, 0, pool)
            return
        # batch i of this rank comes from worker i % num_workers (DataLoader round-robin)
        already = len(range(worker, batches_done, num_workers))
        remaining = self.batches_per_worker - already
        if remaining <= 0:
            return
        shard_rng = random.Random(_seed(self.seed, epoch, self.rank, worker, 0))
        buffer_rng = random.Random(_seed(self.seed, epoch, self.rank, worker, 1))
        shuffled = self._passes(self.epoch_shards(epoch, worker, num_workers), shard_rng, buffer_rng, dropped)
        for _ in range(cursor):  # fast-forward without decoding
            next(shuffled)
        dropped.clear()  # already reported before the checkpoint
        yield from self._batches(shuffled, dropped, worker, remaining, cursor, pool)


PREFETCH_FACTOR = 4  # batches each DataLoader worker prepares ahead
BATCH_SLOTS_SPARE = 2  # recycled buffers per worker beyond those: a batch in use and the one before it


class SlotPool:
    """Shared-memory batch buffers of one DataLoader worker, recycled across batches.

    Why: a worker's batch has to live in shared memory to reach the training process, and a
    fresh segment per batch cost the worker more than decoding it. Torch's shared allocation
    zero-fills the whole segment (``posix_fallocate`` on tmpfs) and every page then faults again
    on its first write; a recycled buffer's pages are already there (docs/performance.md, "Loader
    workers").

    ``flags`` (shared with the training process, one byte per buffer) is set here when a buffer
    is taken and cleared there once no tensor views the batch any more (or once pinning copied
    it out), so a buffer is never overwritten while in use. When every buffer is in use (a
    consumer that keeps batches) the worker allocates a one-off segment instead: it never waits."""

    def __init__(self, flags: torch.Tensor):
        self.flags = flags.numpy()
        self.buffers: list[torch.UntypedStorage] = []

    def acquire(self, nbytes: int) -> tuple[torch.UntypedStorage, int | None]:
        for slot, storage in enumerate(self.buffers):
            if not self.flags[slot] and storage.nbytes() >= nbytes:
                self.flags[slot] = 1
                return storage, slot
        storage = torch.UntypedStorage._new_shared(nbytes)
        if len(self.buffers) == len(self.flags):
            return storage, None
        self.buffers.append(storage)
        self.flags[len(self.buffers) - 1] = 1
        return storage, len(self.buffers) - 1


class BatchBuilder:
    """One batch, decoded sample by sample straight into its preallocated tensors.

    Why: decoding every sample into tensors of its own and then stacking them cost a fifth of the
    decode time, and the transient 225 KB tensors (64 per batch) interleaved with the shuffle
    buffer's raw samples on the heap: a streaming epoch took ~15 page faults per sample for them.
    All tensors of a batch are views of one buffer: in a DataLoader worker it is a shared-memory
    buffer of the worker's :class:`SlotPool`, so handing the batch to the training process passes
    one file descriptor and copies nothing (with ``pin_memory`` on a CUDA host, pinning copies)."""

    def __init__(self, plan: StreamPlan, pool: SlotPool | None = None):
        self.plan, self.pool = plan, pool
        self.eeg_shape = plan.preprocess.output_shape(plan.eeg_shape)
        self.tensors: dict[str, torch.Tensor] = {}  # allocated by the first add()
        self.slot: int | None = None
        self.full_eeg = None
        self.label, self.subject, self.key, self.image_id, self.attributes = [], [], [], [], []

    def __len__(self) -> int:
        return len(self.key)

    def _allocate(self, capacity: int) -> None:
        size = self.plan.image_size
        fields = {"eeg": ((capacity, *self.eeg_shape), torch.float32),
                  "image": ((capacity, 3, size, size), torch.uint8),
                  "label": ((capacity,), torch.long), "subject": ((capacity,), torch.long),
                  "attributes": ((capacity, len(self.plan.attribute_names)), torch.float32)}
        offsets, nbytes = [], 0
        for shape, dtype in fields.values():
            offsets.append(nbytes)
            nbytes += -(-math.prod(shape) * dtype.itemsize // 64) * 64  # every field 64-byte aligned
        if self.pool is not None and capacity:
            storage, self.slot = self.pool.acquire(nbytes)
        elif get_worker_info() is not None:
            storage = torch.UntypedStorage._new_shared(nbytes)
        else:
            storage = torch.UntypedStorage(nbytes)
        self.tensors = {name: torch.empty(0, dtype=dtype).set_(storage, offset // dtype.itemsize, shape)
                        for (name, (shape, dtype)), offset in zip(fields.items(), offsets)}
        if self.plan.preprocess.window is not None:  # decoded in full first: all of the trial is checked for NaN/Inf
            self.full_eeg = torch.empty(self.plan.eeg_shape)

    def add(self, raw: dict) -> None:
        """Decode ``raw`` into the next slot; a :class:`SampleError` leaves the batch as it was
        (the half-written slot is reused by the next sample)."""
        plan, index = self.plan, len(self.key)
        if not self.tensors:
            self._allocate(plan.batch_size)
        eeg = self.tensors["eeg"][index]  # one view object: preprocess.into skips the copy when handed it back
        sample = decode_sample(raw, raw["__url__"], plan.eeg_shape, eeg_out=eeg if self.full_eeg is None else self.full_eeg)
        plan.preprocess.into(eeg, sample.eeg)
        prepare_image(sample.image, plan.image_size, out=self.tensors["image"][index].numpy())
        attrs = sample.meta.get("attributes", {})
        try:
            attributes = [float(attrs.get(name, np.nan)) for name in plan.attribute_names]
        except (TypeError, ValueError, AttributeError) as exc:
            raise SampleError(raw["__url__"], sample.key, "json.attributes", f"not numbers: {exc}") from None
        label = int(plan.label_map[sample.meta["label"]])
        self.label.append(label)
        self.subject.append(sample.meta["subject"])
        self.image_id.append(str(sample.meta.get("image_id", "")))
        self.attributes.append(attributes)
        self.key.append(sample.key)

    def finish(self) -> dict:
        """The batch as a dict of tensors and lists; a partial batch is a view of its samples.
        ``_slot`` names the worker's recycled buffer holding it (None: a buffer of its own)."""
        count = len(self.key)
        if not self.tensors:
            self._allocate(0)
        views = {name: tensor[:count] for name, tensor in self.tensors.items()}
        views["label"].numpy()[:] = self.label
        views["subject"].numpy()[:] = self.subject
        views["attributes"].numpy()[:] = np.reshape(self.attributes, (count, len(self.plan.attribute_names)))
        batch = {"eeg": views["eeg"], "image": views["image"], "label": views["label"],
                 "subject": views["subject"], "key": self.key, "image_id": self.image_id}
        if self.plan.attribute_names:
            batch["attributes"] = views["attributes"]
        batch["_slot"] = self.slot
        return batch


def _empty_shared_flags(workers: int, slots: int) -> torch.Tensor:
    """The per-worker :class:`SlotPool` flags, in shared memory created before the workers start."""
    flags = torch.UntypedStorage._new_shared(workers * slots)
    flags.fill_(0)
    return torch.empty(0, dtype=torch.uint8).set_(flags, 0, (workers, slots))


def _release_slot(flags: np.ndarray, worker: int, slot: int) -> None:
    flags[worker, slot] = 0


def _as_built(batch: dict) -> dict:
    """The DataLoader's ``collate_fn``: batches leave :class:`BatchBuilder` finished, and the
    default (``default_convert``) walks every list of every batch again (its cost:
    docs/performance.md "Measured choices in the code")."""
    return batch


class _WorkerDataset(IterableDataset):
    def __init__(self, plan: StreamPlan, epoch: int, batches_done: int, cursors: list[int],
                 slot_flags: torch.Tensor | None):
        self.plan, self.epoch, self.batches_done, self.cursors = plan, epoch, batches_done, cursors
        self.slot_flags = slot_flags

    def __iter__(self):
        info = get_worker_info()
        loader_worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader always starts its round-robin at its worker 0, while the next batch of a
        # resumed epoch belongs to worker batches_done % num_workers: rotate the roles to match.
        worker = (loader_worker + self.batches_done) % num_workers
        pool = SlotPool(self.slot_flags[worker]) if info and self.slot_flags is not None else None
        return self.plan.worker_stream(self.epoch, worker, num_workers, self.batches_done, self.cursors[worker], pool)


def samples_lost(record: dict) -> int:
    """Samples of the split a drop record stands for: one bad sample, or every sample of the split
    that a broken shard did not deliver (its ``lost``)."""
    return len(record["lost"]) if "lost" in record else 1


@dataclass
class LoaderState:
    epoch: int = 0
    batches_done: int = 0
    cursors: list[int] = field(default_factory=list)
    dropped: int = 0  # samples lost to data.on_error: skip (not drop records: a broken shard loses several)


class EEGImageLoader:
    """Batches for one rank. Iterating runs the rest of the current epoch; ``state_dict`` /
    ``load_state_dict`` carry the exact position into a checkpoint.

    A batch's tensors are views of one buffer (with workers, a recycled shared-memory one):
    keeping any of them, even ``label``, keeps all of the batch's memory. Clone what you keep."""

    def __init__(self, cfg: DataConfig, split: str = "train", *, train: bool | None = None,
                 rank: int = 0, world_size: int = 1, preprocess: EEGPreprocess | None = None):
        self.cfg, self.split = cfg, split
        self.train = (split == "train") if train is None else train
        self.manifest = Manifest.for_data(cfg)
        self.num_workers = cfg.num_workers
        self.rank, self.world_size = rank, world_size
        shards = self.manifest.shards(cfg.split_by, split)  # first: validates scheme and split
        channels, time_points = self.manifest.eeg_shape
        if cfg.eeg_window is not None and cfg.eeg_window[1] > time_points:
            raise ValueError(f"data.eeg_window {list(cfg.eeg_window)} exceeds the {time_points} time points of {cfg.root}")
        if preprocess is None:  # given: a release's own (its training statistics), for evaluating it
            mean, std = self.manifest.eeg_stats(cfg.split_by) if cfg.normalize else (None, None)
            sos = bandpass_sos(*cfg.bandpass, float(self.manifest.info["sfreq"])) if cfg.bandpass else None
            preprocess = EEGPreprocess(tuple(cfg.eeg_window) if cfg.eeg_window else None, mean, std, sos)
        self.plan = StreamPlan(
            root=str(cfg.root), manifest_path=str(self.manifest.path), remote=self.manifest.remote, shards=shards,
            member=self.manifest.membership(cfg.split_by, split),
            label_map=self.manifest.label_map,
            eeg_shape=(channels, time_points),
            preprocess=preprocess,
            image_size=cfg.image_size, attribute_names=self.manifest.attribute_names,
            batch_size=cfg.batch_size, shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed,
            train=self.train, on_error=cfg.on_error, rank=rank, world_size=world_size,
        )
        self.num_samples = int(self.plan.member.sum())
        if self.train:
            wanted = cfg.samples_per_epoch or self.num_samples
            readers = world_size * max(1, self.num_workers)
            self.plan.batches_per_worker = max(1, math.ceil(wanted / (readers * cfg.batch_size)))
        self.state = LoaderState(cursors=[0] * max(1, self.num_workers))
        self.dropped: list[dict] = []

    @property
    def samples_per_epoch(self) -> int:
        """Global samples per training epoch: data.samples_per_epoch rounded up to whole batches
        on every worker of every rank."""
        return self.plan.batches_per_worker * max(1, self.num_workers) * self.world_size * self.cfg.batch_size

    def __len__(self) -> int:
        if self.train:
            return self.plan.batches_per_worker * max(1, self.num_workers)
        raise TypeError("an evaluation loader's length per rank depends on the shard split; use num_samples")

    def set_epoch(self, epoch: int) -> None:
        self.state = LoaderState(epoch=epoch, cursors=[0] * max(1, self.num_workers), dropped=self.state.dropped)

    def state_dict(self) -> dict:
        return {"epoch": self.state.epoch, "batches_done": self.state.batches_done,
                "cursors": list(self.state.cursors), "dropped": self.state.dropped,
                "world_size": self.world_size, "num_workers": self.num_workers, "seed": self.cfg.seed}

    def load_state_dict(self, state: dict) -> None:
        same_layout = (state["world_size"], state["num_workers"], state["seed"]) == (
            self.world_size, self.num_workers, self.cfg.seed)
        if same_layout:
            self.state = LoaderState(state["epoch"], state["batches_done"], list(state["cursors"]), state["dropped"])
        else:
            log.warning("loader state was saved with world_size=%s num_workers=%s seed=%s; now %s/%s/%s: "
                        "epoch %s restarts from its beginning", state["world_size"], state["num_workers"],
                        state["seed"], self.world_size, self.num_workers, self.cfg.seed, state["epoch"])
            self.set_epoch(state["epoch"])

    def __iter__(self) -> Iterator[dict]:
        slot_flags = (_empty_shared_flags(self.num_workers, PREFETCH_FACTOR + BATCH_SLOTS_SPARE)
                      if self.num_workers else None)
        dataset = _WorkerDataset(self.plan, self.state.epoch, self.state.batches_done, list(self.state.cursors),
                                 slot_flags)
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                            prefetch_factor=PREFETCH_FACTOR if self.num_workers else None,
                            persistent_workers=False, pin_memory=torch.cuda.is_available(),
                            collate_fn=_as_built,
                            # its own generator: starting an iterator must not draw from the global RNG,
                            # or a resumed run's dropout/noise would diverge from the uninterrupted one
                            generator=torch.Generator().manual_seed(self.cfg.seed))
        flags = slot_flags.numpy() if slot_flags is not None else None
        for batch in loader:
            worker, slot = batch.pop("_worker"), batch.pop("_slot")
            if slot is not None:
                storage = batch["eeg"].untyped_storage()
                if storage.is_shared():
                    # free once the last tensor viewing it is gone: torch keeps a storage's Python
                    # object alive as long as the storage, so this fires then, not when `storage` goes
                    weakref.finalize(storage, _release_slot, flags, worker, slot)
                else:  # pinned: the DataLoader already copied the batch out of the worker's buffer
                    _release_slot(flags, worker, slot)
            self.state.cursors[worker] = batch.pop("_cursor")
            for record in batch.pop("_dropped"):
                self.state.dropped += samples_lost(record)
                self.dropped.append(record)
                log.warning("dropped %d sample(s): %s: sample %s: field %s: %s", samples_lost(record),
                            record["shard"], record["key"], record["field"], record["problem"])
            if not batch["key"]:
                continue  # a worker's last flush carried only drop reports
            self.state.batches_done += 1
            yield batch
        if self.train:
            self.set_epoch(self.state.epoch + 1)
