"""Reliability (docs/reliability.md): two nodes on loopback, a rank killed or hung mid-run, a save
killed before its commit, a resume at another world size, bad data in bulk, config mistakes.

Real launchers (torchrun, two of them for two "nodes"), real DeepSpeed engines on CPU ranks
(gloo), real shards; the tiny config's low-level stage, a few dozen steps. Each rank's
``samples/rank<r>.jsonl`` says which samples it consumed at which step, so "nothing repeated or
skipped" is checked against the loader's uninterrupted stream, batch by batch.
"""

import ast
import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import torch
from test_bad_input import npy, rewrite_member
from test_train import BIN, CONFIG, _port, launch, stats

from eeg2im_scale.config import load_config
from eeg2im_scale.data.corpus import write_synthetic
from eeg2im_scale.data.loader import EEGImageLoader
from eeg2im_scale.train import checkpoint
from eeg2im_scale.train.command import main as train_main

STAGE = "lowlevel"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability") / "corpus"
    write_synthetic(load_config(CONFIG).synth, root)
    return root


def overrides(corpus: Path, *extra: str) -> list[str]:
    return [f"data.root={corpus}", f"train.stage={STAGE}", *extra]


def stage_path(run_dir: Path, *parts: str) -> Path:
    return run_dir.joinpath("stages", STAGE, *parts)


def sample_log(run_dir: Path, rank: int) -> list[dict]:
    path = stage_path(run_dir, "samples", f"rank{rank:04d}.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def reference_stream(corpus: Path, rank: int, world_size: int, batches: int, *extra: str) -> list[list[str]]:
    """The keys of the first ``batches`` batches an uninterrupted rank draws, epoch after epoch."""
    loader = EEGImageLoader(load_config(CONFIG, overrides(corpus, *extra)).data, "train", rank=rank,
                            world_size=world_size)
    keys: list[list[str]] = []
    while len(keys) < batches:
        for batch in loader:
            keys.append(batch["key"])
            if len(keys) == batches:
                break
    return keys


def start_nodes(run_dir: Path, corpus: Path, *extra: str) -> list[subprocess.Popen]:
    """Two one-rank "nodes" (torchrun agents) meeting on loopback through a static rendezvous."""
    port = str(_port())
    procs = []
    for node in range(2):
        log = open(run_dir.parent / f"{run_dir.name}.node{node}.log", "w")  # noqa: SIM115 (the agent's stdout)
        procs.append(subprocess.Popen(
            [str(BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
             "--master_addr", "127.0.0.1", "--master_port", port, "launchers/train.py", "--config", CONFIG,
             f"run_dir={run_dir}", *overrides(corpus, *extra)],
            stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True))
    return procs


def node_log(run_dir: Path, node: int) -> str:
    return (run_dir.parent / f"{run_dir.name}.node{node}.log").read_text()


@pytest.fixture
def nodes():
    """Agents started by a test; whatever is left of them and their workers (a stopped rank) is
    killed at the end."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()


def wait_for_checkpoint(run_dir: Path, procs: list[subprocess.Popen], timeout: float = 300) -> None:
    latest = stage_path(run_dir, "checkpoints", checkpoint.LATEST)
    deadline = time.monotonic() + timeout
    while not latest.is_file():
        assert all(p.poll() is None for p in procs), "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.05)


def worker(agent: subprocess.Popen, rank: int) -> psutil.Process:
    """The training process of ``rank`` that the torchrun ``agent`` started."""
    found = []
    for proc in psutil.Process(agent.pid).children(recursive=True):
        try:
            if proc.environ().get("RANK") == str(rank):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue  # a short-lived helper
    assert len(found) == 1, found
    return found[0]


def wait_all(procs: list[subprocess.Popen], timeout: float) -> float:
    start = time.monotonic()
    for proc in procs:
        proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
    return time.monotonic() - start


def shard_of(corpus: Path) -> dict[str, str]:
    rows = pq.read_table(corpus / "manifest.parquet", columns=["key", "shard"]).to_pylist()
    return {r["key"]: r["shard"] for r in rows}


# ---- several nodes ------------------------------------------------------------------------------


def test_two_nodes_on_loopback_read_disjoint_shards_with_the_configured_global_batch(corpus, tmp_path, nodes):
    """Two torchrun "nodes" of one rank each: the run completes, the global batch is data.batch_size
    × train.grad_accum × ranks, and within every epoch the nodes read disjoint shards. The run is
    launched with --resume on an empty run_dir: it starts from scratch, with a warning."""
    run_dir = tmp_path / "run"
    nodes += start_nodes(run_dir, corpus, "train.lowlevel.steps=6", "train.grad_accum=2", "train.log_every=3",
                         "train.checkpoint_every=3", "--resume")
    wait_all(nodes, timeout=600)
    assert [p.returncode for p in nodes] == [0, 0], node_log(run_dir, 0)[-3000:] + node_log(run_dir, 1)[-3000:]
    head = node_log(run_dir, 0)
    assert "global batch 32" in head and "holds no checkpoint: training stage lowlevel from its start" in head
    assert stats(run_dir, STAGE)[-1]["kimg"] == pytest.approx(6 * 32 / 1000)
    assert stage_path(run_dir, "final.safetensors").is_file()
    shards = shard_of(corpus)
    per_epoch: dict[int, list[set[str]]] = {}
    for rank in range(2):
        records = sample_log(run_dir, rank)
        assert [r["step"] for r in records] == [s for s in range(1, 7) for _ in range(2)]  # 2 micro-batches/step
        assert all(len(r["keys"]) == 8 for r in records)
        for r in records:
            per_epoch.setdefault(r["epoch"], [set(), set()])[rank] |= {shards[k] for k in r["keys"]}
    assert sorted(per_epoch) == [0, 1]  # 12 micro-batches per rank cross an epoch of 10
    for epoch, (zero, one) in per_epoch.items():
        assert zero and one and not zero & one, f"epoch {epoch}: both nodes read {sorted(zero & one)}"


# ---- a rank that dies or hangs ------------------------------------------------------------------

KILL_RUN = ("train.lowlevel.steps=60", "train.checkpoint_every=10", "train.log_every=10")


def test_sigkilled_rank_fails_the_others_fast_and_resume_continues_the_stream(corpus, tmp_path, nodes):
    """SIGKILL one node's rank mid-run: the other node's rank exits with a clear error well within the
    collective timeout; --resume continues from the last complete checkpoint, and every rank's
    samples are exactly those of an uninterrupted run, step by step."""
    run_dir = tmp_path / "run"
    nodes += start_nodes(run_dir, corpus, *KILL_RUN, "train.collective_timeout_s=20")
    wait_for_checkpoint(run_dir, nodes)
    worker(nodes[1], rank=1).send_signal(signal.SIGKILL)
    elapsed = wait_all(nodes, timeout=20 + 60)
    assert [p.returncode != 0 for p in nodes] == [True, True]
    assert elapsed < 20 + 30
    assert "train: error: rank 0 lost its peers" in node_log(run_dir, 0)
    assert "Relaunch with --resume" in node_log(run_dir, 0)
    assert "SIGKILL" in node_log(run_dir, 1)
    resumed_at = int(checkpoint.latest_tag(stage_path(run_dir, "checkpoints"))[len("step"):])
    assert resumed_at < 60

    out = launch("torchrun", run_dir, corpus, *overrides(corpus, *KILL_RUN), resume=True)
    assert f"stage lowlevel resumed at step {resumed_at} " in out.stdout + out.stderr
    assert [r["step"] for r in stats(run_dir, STAGE)] == list(range(10, 61, 10))
    for rank in range(2):
        records = sample_log(run_dir, rank)
        assert [r["step"] for r in records] == list(range(1, 61))
        assert [r["keys"] for r in records] == reference_stream(corpus, rank, 2, 60)


def test_hung_rank_makes_the_others_time_out_instead_of_hanging(corpus, tmp_path, nodes):
    """SIGSTOP one node's rank (alive, silent: a hung collective): the other node's rank gives up after
    train.collective_timeout_s with a clear error, instead of waiting forever."""
    run_dir = tmp_path / "run"
    timeout_s = 15
    nodes += start_nodes(run_dir, corpus, "train.lowlevel.steps=400", "train.checkpoint_every=5",
                         f"train.collective_timeout_s={timeout_s}")
    wait_for_checkpoint(run_dir, nodes)
    worker(nodes[1], rank=1).send_signal(signal.SIGSTOP)
    elapsed = wait_all(nodes[:1], timeout=timeout_s + 60)
    assert nodes[0].returncode != 0
    assert timeout_s / 2 < elapsed < timeout_s + 30  # (rank 0 may have been waiting already when rank 1 stopped)
    log = node_log(run_dir, 0)
    assert "train: error: rank 0 lost its peers" in log and "Timed out" in log, log[-3000:]


# ---- a save killed half-way; a resume at another world size ------------------------------------

TORN_RUN = ("train.lowlevel.steps=12", "train.checkpoint_every=2", "train.log_every=1")


@pytest.fixture(scope="module")
def torn_save(corpus, tmp_path_factory):
    """A 2-rank run whose rank 0 is SIGKILLed inside the save of step 6: every rank's files are
    written, the commit (complete.json, latest) is not. Copies of it, taken before any test resumes
    it: ``run`` and ``other_world``."""
    base = tmp_path_factory.mktemp("torn")
    run_dir = base / "run"
    args = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "launchers/train.py", "--config", CONFIG,
            f"run_dir={run_dir}", *overrides(corpus, *TORN_RUN)]
    result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=600,
                            env={**ENV, "EEG2IM_FAULT_KILL_BEFORE_COMMIT": "6"})
    assert result.returncode != 0 and "SIGKILL" in result.stdout + result.stderr, result.stderr[-3000:]
    shutil.copytree(run_dir, base / "other_world")
    shutil.copytree(run_dir, base / "damaged")
    return base


def test_save_killed_before_its_commit_leaves_latest_on_the_previous_checkpoint(corpus, torn_save):
    run_dir = torn_save / "run"
    ckpt = stage_path(run_dir, "checkpoints")
    assert checkpoint.latest_tag(ckpt) == "step00000004"
    torn = ckpt / "step00000006"
    assert (torn / "client_rank0001.pt").is_file() and not (torn / checkpoint.COMPLETE).exists()
    assert checkpoint.problems(torn) and not checkpoint.problems(ckpt / "step00000004")

    out = launch("torchrun", run_dir, corpus, *overrides(corpus, *TORN_RUN), resume=True)
    assert "stage lowlevel resumed at step 4 " in out.stdout + out.stderr
    assert [r["step"] for r in stats(run_dir, STAGE)] == list(range(1, 13))
    for rank in range(2):
        assert [r["keys"] for r in sample_log(run_dir, rank)] == reference_stream(corpus, rank, 2, 12)
    assert sorted(p.name for p in ckpt.glob("step*")) == ["step00000010", "step00000012"]
    assert not checkpoint.problems(ckpt / "step00000012")


def test_resume_falls_back_past_a_damaged_checkpoint_and_refuses_when_none_is_complete(torn_save, caplog):
    """A committed checkpoint damaged afterwards (a file truncated) is not loaded: resuming takes the
    newest complete one before it, and with none left says what to do."""
    ckpt = stage_path(torn_save / "damaged", "checkpoints")
    optim = min((ckpt / "step00000004").glob("*optim_states.pt"))
    optim.write_bytes(optim.read_bytes()[:100])
    point = checkpoint.resume_point(ckpt)
    assert (point.tag, point.step, point.world_size, point.partitioned) == ("step00000002", 2, 2, True)
    assert f"{optim.name} has 100 bytes" in caplog.text
    (ckpt / "step00000002" / "client_rank0001.pt").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint.*run without --resume"):
        checkpoint.resume_point(ckpt)


def train_in_process(*argv: str) -> int:
    """``launchers/train.py`` as one process without a launcher, leaving this process's env as it was."""
    saved = dict(os.environ)
    try:
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(name, None)
        return train_main(["--config", CONFIG, *argv])
    finally:
        os.environ.clear()
        os.environ.update(saved)


def assert_resumes_on_one_rank(run_dir: Path, corpus: Path, caplog, *extra: str) -> None:
    """Resume a 2-rank run whose latest checkpoint is step 4 on one rank: the partitioned optimizer
    state goes through DeepSpeed's universal format, so Adam carries on from step 4 (its step count
    reaches 12, not 8); the loader restarts the interrupted epoch (documented)."""
    caplog.set_level(logging.INFO)
    assert train_in_process(f"run_dir={run_dir}", *overrides(corpus, *TORN_RUN, *extra), "--resume") == 0
    assert "written by 2 ranks, resuming with 1: converting it to DeepSpeed's universal format" in caplog.text
    assert "epoch 0 restarts from its beginning" in caplog.text and "resumed at step 4 " in caplog.text
    assert [r["step"] for r in stats(run_dir, STAGE)] == list(range(1, 13))
    records = sample_log(run_dir, 0)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert [r["keys"] for r in records[4:]] == reference_stream(corpus, 0, 1, 8)
    ckpt = stage_path(run_dir, "checkpoints")
    assert not (ckpt / checkpoint.UNIVERSAL).exists()
    assert json.loads((ckpt / "step00000012" / checkpoint.COMPLETE).read_text())["world_size"] == 1
    # our own file, read in full: DeepSpeed's optimizer state holds more than tensors
    optim = torch.load(next((ckpt / "step00000012").glob("*optim_states.pt")), weights_only=False)
    inner = optim["optimizer_state_dict"]
    adam = inner["base_optimizer_state"] if "base_optimizer_state" in inner else inner["optimizer_state_dict"]
    assert {int(s["step"]) for s in adam["state"].values()} == {12}
    assert stage_path(run_dir, "final.safetensors").is_file()


def test_checkpoint_of_two_ranks_resumes_on_one(corpus, torn_save, caplog):
    """ZeRO-2 (the default), from the run whose save was killed."""
    assert_resumes_on_one_rank(torn_save / "other_world", corpus, caplog)


def test_zero3_bf16_checkpoint_of_two_ranks_resumes_on_one(corpus, tmp_path, caplog):
    """ZeRO-3 in bf16 (configs/deepspeed/zero3_bf16.json's layout): parameters partitioned too."""
    zero3 = ("train.zero_stage=3", "train.precision=bf16")
    launch("torchrun", tmp_path / "run", corpus, *overrides(corpus, *TORN_RUN, *zero3, "train.halt_after=4"))
    assert_resumes_on_one_rank(tmp_path / "run", corpus, caplog, *zero3)


# ---- bad data in bulk ---------------------------------------------------------------------------

BAD = {  # sample index -> (defect, the field its report names)
    40: ("nan", "eeg.npy"), 106: ("nan", "eeg.npy"), 2: ("nan", "eeg.npy"),
    130: ("shape", "eeg.npy"), 150: ("image", "png"),
}
TRUNCATED_SHARD, CUT_AT = "shards/shard-000004.tar", 69  # cut inside this sample: it and the rest are lost


@pytest.fixture(scope="module")
def bad_corpus(corpus, tmp_path_factory):
    """The tiny corpus with a truncated shard, NaN EEG, wrong-shape EEG and an undecodable image; and
    the (split, key) -> field that a run must report: every bad sample of the train and val splits."""
    root = tmp_path_factory.mktemp("bad") / "corpus"
    shutil.copytree(corpus, root)
    rows = pq.read_table(root / "manifest.parquet", columns=["index", "key", "shard", "split_image"]).to_pylist()
    by_index = {r["index"]: r for r in rows}
    shape = load_config(CONFIG).synth
    mutations = {"nan": lambda m: {**m, "eeg.npy": npy(np.full((shape.channels, shape.time_points), np.nan, np.float16))},
                 "shape": lambda m: {**m, "eeg.npy": npy(np.zeros((shape.channels, shape.time_points - 1), np.float16))},
                 "image": lambda m: {**m, "png": b"not a png"}}
    for index, (defect, _) in BAD.items():
        rewrite_member(root / by_index[index]["shard"], by_index[index]["key"], mutations[defect])
    path = root / TRUNCATED_SHARD
    with tarfile.open(path) as tar:
        first = next(m for m in tar.getmembers() if m.name.startswith(by_index[CUT_AT]["key"] + "."))
    path.write_bytes(path.read_bytes()[: first.offset_data + first.size // 2])
    expected = {(r["split_image"], r["key"]): BAD[r["index"]][1] for r in rows if r["index"] in BAD}
    expected |= {(r["split_image"], r["key"]): "tar" for r in rows
                 if r["shard"] == TRUNCATED_SHARD and r["index"] >= CUT_AT}
    expected = {k: v for k, v in expected.items() if k[0] in ("train", "val")}  # test samples are never read
    assert {split for split, _ in expected} == {"train", "val"} and ("test", "000000002") not in expected
    return root, expected


def test_bulk_bad_data_with_skip_completes_and_reports_exactly_the_dropped_keys(bad_corpus, tmp_path):
    root, expected = bad_corpus
    run_dir = tmp_path / "run"
    launch("torchrun", run_dir, root, *overrides(root, "data.on_error=skip", "train.lowlevel.steps=12",
                                                 "train.log_every=6"))
    assert stage_path(run_dir, "final.safetensors").is_file()
    report = json.loads(stage_path(run_dir, "dropped.json").read_text())
    assert {(s["split"], s["key"]): s["field"] for s in report["samples"]} == expected
    assert report["keys"] == sorted({key for _, key in expected})
    assert all(s["shard"].endswith(".tar") and s["problem"] for s in report["samples"])
    validation = json.loads(stage_path(run_dir, "validation.json").read_text())
    assert validation["samples"] == 22 - sum(split == "val" for split, _ in expected)


def test_bulk_bad_data_with_raise_names_the_first_bad_sample(bad_corpus, tmp_path, capsys):
    root, _ = bad_corpus
    cfg = load_config(CONFIG, overrides(root, "data.on_error=skip"))
    loader = EEGImageLoader(cfg.data, "train")
    first = next(loader.dropped[0] for _ in loader if loader.dropped)  # the stream a 1-rank run reads
    assert train_in_process(f"run_dir={tmp_path / 'run'}", *overrides(root, "data.on_error=raise")) == 2
    err = capsys.readouterr().err
    assert f"train: error: rank 0 met a bad sample: {first['shard']}: sample {first['key']}: field {first['field']}" in err
    assert "data.on_error=skip" in err


# ---- config mistakes ----------------------------------------------------------------------------


@pytest.mark.parametrize("mistake, world_size, fix", [
    ("train.chekpoint_every=3", 1, "unknown key 'train.chekpoint_every'; valid keys in 'train': .*checkpoint_every"),
    ("train.grad_accum=two", 1, "train.grad_accum: expected int, got str"),
    ("train.checkpoint_every=0", 1, "train.checkpoint_every must be >= 1"),
    ("train.precision=fp16", 1, "use bf16 or fp32 on the CPU"),
    ("train.deepspeed_config={tmp}/batch64.json", 2,
     ("train_batch_size 64 is impossible with data.batch_size=8 × train.grad_accum=1 × 2 ranks = 16; "
      "remove train_batch_size from the JSON")),
    ("train.deepspeed_config={tmp}/micro4.json", 1,
     ("train_micro_batch_size_per_gpu 4 contradicts data.batch_size=8; remove train_micro_batch_size_per_gpu from "
      "the JSON and set data.batch_size=4")),
    ("run_dir={tmp}/run", 16, "has 12 shards for 16 ranks; validation needs one per rank: use at most 12 ranks"),
], ids=["unknown-key", "wrong-type", "zero-interval", "fp16-on-cpu", "global-batch", "micro-batch", "too-many-ranks"])
def test_config_mistakes_fail_before_any_work_with_the_fix(tmp_path, monkeypatch, capsys, mistake, world_size, fix):
    """Refused before a corpus is written or a process group formed, naming the knob to change. (A
    later stage without its inputs: tests/test_train.py.)"""
    (tmp_path / "batch64.json").write_text(json.dumps({"train_batch_size": 64}))
    (tmp_path / "micro4.json").write_text(json.dumps({"train_micro_batch_size_per_gpu": 4}))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))  # what the launcher tells every process
    run_dir, data = tmp_path / "run", tmp_path / "never_written"
    assert train_main(["--config", CONFIG, f"run_dir={run_dir}", f"data.root={data}",
                       mistake.format(tmp=tmp_path)]) == 2
    assert re.search(fix, capsys.readouterr().err.replace("\n", " "))
    assert not run_dir.exists() and not data.exists() and not torch.distributed.is_initialized()


# ---- untrusted pickles --------------------------------------------------------------------------


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for path in Path("eeg2im_scale").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                calls.append((f"{path}:{node.lineno}", safe))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pickle":
                assert node.attr not in ("load", "loads", "Unpickler"), f"{path}:{node.lineno} unpickles"
    assert calls and all(safe for _, safe in calls), [c for c, safe in calls if not safe]


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_client_state_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "client_rank0000.pt"
    torch.save({"loader": _Payload(marker)}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        checkpoint.read_client(path)
    assert not marker.exists()
