"""Shared fixtures: small corpora written through the real writer (real tar shards, real Parquet)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from eeg2im_scale.config import DataConfig
from eeg2im_scale.data.writer import CorpusInfo, RawSample, write_corpus

CHANNELS, TIME_POINTS, IMAGE, SFREQ = 4, 32, 8, 100.0


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
    info = CorpusInfo(channel_names=[f"E{i}" for i in range(CHANNELS)], sfreq=SFREQ, time_points=TIME_POINTS,
                      class_names=["a", "b", "c"], image_format="png", source="test", attribute_names=["hue"])
    sources = [RangeSource(s, min(num_samples, s + per_shard)) for s in range(0, num_samples, per_shard)]
    return write_corpus(root, info, sources, seed=0, **kw)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module's small-tensor tests: on a small shared CPU, two threads contend
    and run ~100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def benchmark_module(name: str):
    """``benchmarks/<name>.py`` imported (they are scripts, not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "benchmarks"
                                                  / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def one_thread():
    """The tiny tensors gain nothing from more intra-op threads, and on a busy 2-core machine
    spinning OpenMP workers made a tiny training 4× slower. OMP_NUM_THREADS stops init_distributed
    from raising the count again."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("OMP_NUM_THREADS", "1")
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory) -> Path:
    """ROOT/corpus, ``tests/configs/tiny_train.yaml``'s synthetic corpus, and ROOT/run, every stage
    trained 2 steps on one rank in this process, its release in ROOT/run/model. Trained once for
    all the tests that only read a release: copy what a test changes."""
    from eeg2im_scale.config import STAGES, load_config
    from eeg2im_scale.data.corpus import write_synthetic
    from eeg2im_scale.train.command import main as train_main

    config, root = "tests/configs/tiny_train.yaml", tmp_path_factory.mktemp("tiny_release")
    write_synthetic(load_config(config).synth, root / "corpus")
    environment = dict(os.environ)
    with one_thread():
        try:
            assert train_main(["--config", config, f"run_dir={root / 'run'}", f"data.root={root / 'corpus'}",
                               "train.log_every=1", *(f"train.{s}.steps=2" for s in STAGES)]) == 0
        finally:  # the one-process group's RANK, MASTER_PORT...: jobs launched later must not inherit them
            os.environ.clear()
            os.environ.update(environment)
    return root


@pytest.fixture(scope="session")
def random_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("random_corpus")
    write_random_corpus(root)
    return root


def data_cfg(root, **kw) -> DataConfig:
    defaults = dict(root=str(root), batch_size=8, shuffle_buffer=16, image_size=IMAGE, synthesize=False)
    defaults.update(kw)
    return DataConfig(**defaults)


def assert_batches_match_reference(root, batches, cfg: DataConfig) -> int:
    """Every row of ``batches`` equals an independent NumPy/SciPy/PIL decode of its sample (crop,
    z-score with the training statistics, optional band-pass; image as stored). Returns the rows."""
    import io
    import json
    import tarfile

    from PIL import Image
    from scipy import signal

    from eeg2im_scale.data.manifest import Manifest

    raw = {}
    for shard in sorted((root / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, field = member.name.split(".", 1)
                raw.setdefault(key, {})[field] = tar.extractfile(member).read()
    mean, std = Manifest(root).eeg_stats(cfg.split_by)
    label_map = Manifest.for_data(cfg).label_map
    rows = 0
    for batch in batches:
        assert len(batch["eeg"]) == len(batch["image"]) == len(batch["key"]) == len(batch["label"])
        for i, key in enumerate(batch["key"]):
            eeg = np.load(io.BytesIO(raw[key]["eeg.npy"])).astype(np.float32)
            if cfg.eeg_window:
                eeg = eeg[:, cfg.eeg_window[0]:cfg.eeg_window[1]]
            eeg = (eeg - mean[:, None]) / std[:, None]
            if cfg.bandpass:
                eeg = signal.sosfiltfilt(signal.butter(4, cfg.bandpass, btype="bandpass", fs=SFREQ, output="sos"), eeg, axis=-1)
            np.testing.assert_allclose(batch["eeg"][i].numpy(), eeg, rtol=1e-5, atol=1e-5, err_msg=key)
            image = np.asarray(Image.open(io.BytesIO(raw[key]["png"])).convert("RGB")).transpose(2, 0, 1)
            np.testing.assert_array_equal(batch["image"][i].numpy(), image, err_msg=key)
            meta = json.loads(raw[key]["json"])
            assert (int(batch["label"][i]), int(batch["subject"][i]), batch["image_id"][i]) == (
                label_map[meta["label"]], meta["subject"], meta["image_id"])
            assert float(batch["attributes"][i, 0]) == np.float32(meta["attributes"]["hue"])
            rows += 1
    return rows


class CorpusHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``server.cut_every`` > 0 cuts every n-th shard response after half its bytes
    (the connection closes mid-body, as a flaky proxy does); ``server.missing`` answers 404."""

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.requests.append(self.path)
            shard = self.path.endswith(".tar")
            if shard:
                server.shard_requests += 1
            cut = shard and server.cut_every and server.shard_requests % server.cut_every == 0
        if any(self.path.endswith(name) for name in server.missing):
            self.send_error(404)
            return
        if not cut:
            super().do_GET()
            return
        body = (Path(server.folder) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        with server.lock:
            server.cuts += 1
        self.close_connection = True


@contextlib.contextmanager
def serving(folder):
    """A real HTTP server on 127.0.0.1 serving ``folder``: (base URL, server to tune and inspect)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CorpusHandler, directory=str(folder)))
    server.folder, server.lock, server.requests = str(folder), threading.Lock(), []
    server.shard_requests, server.cut_every, server.cuts, server.missing = 0, 0, 0, ()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """The default cache (where a corpus at a URL without ``data.cache_dir`` keeps its manifest
    copy) moved into the test's own folder, for this process and the workers it starts."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))


@pytest.fixture(params=["local", "http"])
def corpus_root(request, random_corpus, private_cache):
    """``random_corpus`` as a directory and as a URL served on 127.0.0.1: the loader's behaviour
    (node and worker splitting, fixed-length epochs, mid-epoch resume) must not depend on which."""
    if request.param == "local":
        yield random_corpus
        return
    with serving(Path(random_corpus).parent) as (base, _):
        yield f"{base}/{Path(random_corpus).name}"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """A tiny OpenCLIP architecture registered under its own name (OpenCLIP's ``add_model_config``): the
    CLIP code paths at a test's cost (ViT-L-14 takes 15 s to build on these cores). 224 px like CLIP's."""
    import open_clip

    path = tmp_path_factory.mktemp("open_clip") / "eeg2im-tiny-clip.json"
    path.write_text(json.dumps({
        "embed_dim": 24,
        "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(path)
    return path.stem
