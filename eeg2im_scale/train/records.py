"""Per-stage records beside ``stats.jsonl``: which samples each rank read, and which were left out.

``samples/rank<r>.jsonl`` holds one line per micro-batch a rank consumes; ``dropped.json``, written
when the stage ends, lists every sample left out under ``data.on_error: skip``. Resuming cuts the
logs back to the checkpoint, so both describe exactly the run the final weights come from.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..data.loader import EEGImageLoader
from .distributed import DistInfo, barrier, gather_objects

log = logging.getLogger(__name__)


def cut_jsonl(path: Path, step: int) -> None:
    """Keep the records of steps up to ``step`` (and drop a line cut off by a kill)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)


class SampleLog:
    """One JSON line per micro-batch a rank consumes: the optimizer step it feeds, the loader's
    epoch, its sample keys, and the samples dropped while assembling it (``data.on_error: skip``).
    Line-buffered, so a killed rank loses at most the line it was writing."""

    def __init__(self, path: Path, loader: EEGImageLoader):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 (held for the stage; close() ends it)
        self._loader, self._reported = loader, 0

    def write(self, step: int, keys: list[str]) -> None:
        record = {"step": step, "epoch": self._loader.state.epoch, "keys": list(keys)}
        if len(self._loader.dropped) > self._reported:
            record["dropped"] = self._loader.dropped[self._reported:]
            self._reported = len(self._loader.dropped)
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


def report_dropped(out: Path, dist: DistInfo, val_dropped: list[dict]) -> None:
    """``dropped.json``: every sample the stage left out, once per (split, key, field), from the
    ranks' sample logs (training) and validation; a broken shard contributes each sample of the
    split that it did not deliver."""
    gathered = gather_objects(val_dropped)
    barrier()  # every rank's sample log is closed
    if not dist.is_main:
        return
    records = [("train", d) for path in sorted((out / "samples").glob("rank*.jsonl"))
               for line in path.read_text().splitlines() for d in json.loads(line).get("dropped", [])]
    records += [("val", d) for rank_records in gathered for d in rank_records]
    found = {}
    for split, d in records:
        for key in d["lost"] if "lost" in d else [d["key"]]:  # a broken shard: the split's samples it lost
            problem = d["problem"] if key == d["key"] else f"not read: the shard breaks at sample {d['key']} ({d['problem']})"
            found[(split, key, d["field"])] = {"key": key, "split": split, "shard": d["shard"], "field": d["field"],
                                               "problem": problem}
    order = sorted(found, key=lambda k: (k[0], k[1] or "", k[2]))
    report = {"keys": sorted({k for _, k, _ in found if k is not None}), "samples": [found[k] for k in order]}
    (out / "dropped.json").write_text(json.dumps(report, indent=1))
    if report["samples"]:
        log.warning("stage %s left out %d samples (data.on_error=skip); they are listed in %s", out.name,
                    len(report["keys"]), out / "dropped.json")
