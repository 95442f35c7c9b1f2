"""Corpora at a URL: shards streamed from object stores and web servers, without a shared filesystem.

``data.root`` may be a local directory or a URL: ``http(s)://``, ``s3://``, ``gs://`` (fsspec;
s3fs / gcsfs as optional extras, credentials from each backend's usual environment or profile),
``file://``, or webdataset's ``pipe:`` form, a shell command whose ``{}`` is replaced by the
file's path inside the corpus (``pipe:aws s3 cp s3://bucket/corpus/{} -``).

- The manifest (small, read by column) is downloaded once per process into the local cache and
  read from there.
- A shard is read as a stream, front to back (no seeks; other splits' members are read and
  dropped). A connection that fails mid-shard is reopened with exponential back-off
  (``data.retries``) and the bytes already read are skipped, so the reader continues at the same
  byte: no sample is delivered twice and none is lost. A shard that stays unreachable raises
  :class:`RemoteError` naming the URL, which the loader treats as a bad shard (``data.on_error``).
- With ``data.cache_dir`` a shard is downloaded whole into the cache (to a temporary name, then
  renamed: several workers and ranks on a node may fetch at once) and read locally from then on;
  the least recently used shards are evicted beyond ``data.cache_max_gb``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

URL_PREFIXES = ("http://", "https://", "s3://", "gs://", "gcs://", "file://", "pipe:")
CHUNK = 1 << 20
HTTP_TIMEOUT_S = 60.0  # a stalled connection raises after this long and is resumed like a dropped one


class RemoteError(OSError):
    """A file of a remote corpus that could not be read after every retry."""


def is_url(root: str | os.PathLike) -> bool:
    return isinstance(root, str) and root.startswith(URL_PREFIXES)


def join(root: str, relative: str) -> str:
    """The location of ``relative`` (``manifest.parquet``, ``shards/shard-000000.tar``) in ``root``."""
    if root.startswith("pipe:"):
        if "{}" not in root:
            raise ValueError(f"data.root={root!r}: a pipe: root needs a {{}} where the file's path goes, e.g. "
                             "'pipe:aws s3 cp s3://bucket/corpus/{} -'")
        return root.replace("{}", relative)
    if is_url(root):
        return root.rstrip("/") + "/" + relative
    return os.path.join(root, relative)


def relative_to(root: str, location: str) -> str:
    """Inverse of :func:`join` for the locations it made."""
    if root.startswith("pipe:"):
        prefix, _, suffix = root.partition("{}")
        return location[len(prefix):len(location) - len(suffix)]
    if is_url(root):
        return location[len(root.rstrip("/")) + 1:]
    return os.path.relpath(location, root)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eeg2im_scale"


def _open_raw(url: str) -> tuple[BinaryIO, Callable[[], None]]:
    """A fresh sequential stream of ``url`` and the function that checks how it ended."""
    if url.startswith("pipe:"):
        process = subprocess.Popen(url[len("pipe:"):], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def finished() -> None:
            code = process.wait()
            if code != 0:
                error = process.stderr.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
                raise OSError(f"command exited with {code}: {error[0]}")
        return process.stdout, finished
    if url.startswith(("http://", "https://")):
        return _open_http(url)
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.open(path, "rb"), lambda: None  # object stores read front to back through their own ranged reads


def _open_http(url: str) -> tuple[BinaryIO, Callable[[], None]]:
    """A plain streamed GET by the standard library (proxies from the environment, redirects, TLS;
    no range requests: servers need not support them). Its response reads straight from the
    socket, at about twice the rate of fsspec's asynchronous client on a busy core
    (docs/performance.md)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Accept-Encoding": "identity"})
    try:
        response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            raise FileNotFoundError(f"HTTP {exc.code}") from None
        raise OSError(f"HTTP {exc.code} {exc.reason}") from None

    def finished() -> None:  # http.client ends a body cut short silently: compare with Content-Length
        if response.length:
            raise OSError(f"the connection closed {response.length} bytes before the announced end")
    return response, finished


class ResumingStream(io.RawIOBase):
    """A raw, read-only stream of ``url`` that survives dropped connections: a failed read reopens
    the URL (up to ``retries`` times, back-off doubling from ``backoff_s``), skips the bytes already
    delivered, and continues from the same byte. Not seekable, by design: remote shards are read
    front to back. :meth:`RemoteOptions.open` puts it behind an ``io.BufferedReader``, which serves
    the tar reader's 512-byte header reads from memory in C."""

    def __init__(self, url: str, retries: int = 3, backoff_s: float = 0.5):
        super().__init__()
        self.url, self.retries, self.backoff_s = url, retries, backoff_s
        self.position = 0  # bytes delivered
        self.reopened = 0
        self._stream, self._finished = self._reopen(first=True)

    def _reopen(self, first: bool = False) -> tuple[BinaryIO, Callable[[], None]]:
        attempt = 0
        while True:
            try:
                stream, finished = _open_raw(self.url)
                _discard(stream, self.position)
                return stream, finished
            except FileNotFoundError as exc:  # not a transient fault: no retry
                raise RemoteError(f"{self.url}: not found ({exc})") from None
            except (OSError, ValueError) + _client_errors() as exc:
                attempt += 1
                if attempt > self.retries:
                    raise RemoteError(f"{self.url}: unreachable after {self.retries} retries ({exc})") from None
                log.warning("%s: %s (%s); retry %d of %d", self.url, "open failed" if first else "reconnect failed",
                            exc, attempt, self.retries)
                time.sleep(self.backoff_s * 2 ** (attempt - 1))

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        """Bytes from the connection into ``buffer``; 0 at the end of the stream. A failed read
        (whatever it wrote into ``buffer`` does not count) reconnects and continues after the bytes
        delivered so far."""
        failures = 0
        while True:
            try:
                got = self._stream.readinto(buffer)
                if not got:
                    self._finished()  # a clean end, or a command that failed: then retried below
                    return 0
                self.position += got
                return got
            except (OSError, ValueError) + _client_errors() as exc:
                failures += 1
                if failures > self.retries:
                    raise RemoteError(f"{self.url}: connection lost at byte {self.position} and not regained after "
                                      f"{self.retries} retries ({exc})") from None
                log.warning("%s: connection lost at byte %d (%s); resuming, retry %d of %d", self.url,
                            self.position, exc, failures, self.retries)
                self._close_stream()
                time.sleep(self.backoff_s * 2 ** (failures - 1))
                self._stream, self._finished = self._reopen()
                self.reopened += 1

    def _close_stream(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()

    def close(self) -> None:
        self._close_stream()
        super().close()


def _client_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a dropped connection raises besides OSError: http.client's (a chunked body
    cut short), and aiohttp's through fsspec's backends, when installed."""
    import http.client

    try:
        import aiohttp
    except ImportError:
        return (http.client.HTTPException, )
    return (http.client.HTTPException, aiohttp.ClientError)


def _discard(stream: BinaryIO, count: int) -> None:
    while count > 0:
        chunk = stream.read(min(count, CHUNK))
        if not chunk:
            raise OSError(f"the stream ended {count} bytes before the position to resume at")
        count -= len(chunk)


def download(url: str, destination: Path, retries: int = 3) -> Path:
    """``url`` into ``destination``, atomically: written to a unique temporary name in the same
    folder, then renamed, so readers (other workers, other ranks) see the whole file or none."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out, ResumingStream(url, retries) as stream:
            buffer = memoryview(bytearray(CHUNK))
            while got := stream.readinto(buffer):
                out.write(buffer[:got])
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return destination


@dataclass(frozen=True)
class RemoteOptions:
    """How a corpus at a URL is read (``data.cache_dir``, ``data.cache_max_gb``, ``data.retries``);
    picklable, so it travels to DataLoader workers."""

    cache_dir: str | None = None
    cache_max_gb: float = 50.0
    retries: int = 3

    def open(self, location: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A file of the corpus for reading front to back: local files as they are; remote ones
        from the cache when there is one, else as a resuming stream."""
        if not is_url(location):
            return open(location, "rb")
        if location.startswith("file://"):
            return open(location[len("file://"):], "rb")
        if self.cache_dir:
            return open(self.cached(location), "rb")
        return io.BufferedReader(ResumingStream(location, self.retries), CHUNK)

    def cached(self, url: str) -> Path:
        """The local copy of ``url`` in the cache, downloaded once (by whichever process asks
        first; the others reuse the renamed file), then the cache trimmed to its bound."""
        path = Path(self.cache_dir) / "shards" / hashlib.sha256(url.encode()).hexdigest()[:32]
        if path.is_file():
            os.utime(path)  # most recently used
            return path
        download(url, path, self.retries)
        trim_cache(path.parent, int(self.cache_max_gb * 2**30), keep=path)
        return path


def trim_cache(folder: Path, max_bytes: int, keep: Path) -> None:
    """Delete the least recently used files of ``folder`` until it holds at most ``max_bytes``
    (never ``keep``, the file just fetched). A file another process is reading stays readable
    after its deletion (POSIX)."""
    files = []
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue  # another process's download in progress
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        if path != keep:
            path.unlink(missing_ok=True)
            total -= size


_MANIFESTS: dict[str, Path] = {}


def local_copy(root: str, relative: str, cache_dir: str | None, retries: int = 3) -> Path:
    """A small corpus file (the manifest) of a URL root, downloaded once per process into the
    cache (a new process fetches it again: a re-published corpus is seen at the next launch)."""
    url = join(root, relative)
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    if url not in _MANIFESTS or not _MANIFESTS[url].is_file():  # fetched once, unless its copy was deleted
        folder = Path(cache_dir or default_cache_dir()) / "corpora" / hashlib.sha256(root.encode()).hexdigest()[:16]
        try:
            _MANIFESTS[url] = download(url, folder / relative.replace("/", "_"), retries)
        except RemoteError as exc:
            raise FileNotFoundError(f"no corpus at {root}: {exc}. Check the URL and the credentials of its "
                                    f"backend (environment or profile), or upload the corpus (README, 'Bring your "
                                    f"data')") from None
    return _MANIFESTS[url]
