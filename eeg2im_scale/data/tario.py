"""A minimal sequential tar reader for shards: ustar headers parsed directly, data skipped by seek.

Why not ``tarfile``: profiling the training stream showed ``tarfile``'s stream mode spending more
time on each 512-byte header (object construction, name/number decoding, its own buffering)
than the loader spends decoding the sample's EEG, and it reads the bytes of every member, also
those of samples that belong to another split. This reader parses the fields a shard needs
(name, size, type, checksum) and moves past unwanted members with ``seek`` (on a stream that
cannot seek, a remote shard, by reading and dropping their bytes). Anything unusual
(PAX or GNU extension headers, base-256 sizes, a bad checksum) is handed to the caller as
:class:`TarFormatError` so that it can fall back or fail; shards written by
:mod:`eeg2im_scale.data.writer` never contain such headers.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

BLOCK = 512
_REGULAR = (b"0", b"\x00")
_EXTENSIONS = (b"x", b"g", b"L", b"K")  # PAX and GNU long-name headers: left to tarfile
_ADLER_MOD = 65521
_DROP_CHUNK = 1 << 20


class TarFormatError(Exception):
    """The shard is truncated or corrupt, or uses a tar feature this reader leaves to ``tarfile``.

    ``member`` names the member whose (intact) header was read when its data failed: every member
    before it is complete."""

    def __init__(self, message: str, unsupported: bool = False, member: str | None = None):
        super().__init__(message)
        self.unsupported = unsupported
        self.member = member


def _octal(field: bytes, what: str, name: str) -> int:
    if field[:1] and field[0] & 0x80:
        raise TarFormatError(f"member {name}: base-256 {what}", unsupported=True)
    text = field.rstrip(b"\x00 ").lstrip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"member {name}: {what} field {field!r} is not octal") from None


def _checksum_ok(header: bytes) -> bool:
    """The stored checksum against the header's byte sum (the checksum field counted as spaces),
    compared modulo 65521 through ``zlib.adler32``, whose low half is 1 + the byte sum mod 65521
    (C, not a Python loop over 512 bytes: docs/performance.md "Measured choices in the code"). A
    corruption goes unnoticed only if it changes the sum by a multiple of 65521."""
    stored = header[148:156].rstrip(b"\x00 ").lstrip(b" ")
    try:
        value = int(stored, 8)
    except ValueError:
        return False
    byte_sum = (zlib.adler32(header) & 0xFFFF) - 1 - sum(header[148:156]) + 8 * 32
    return (value - byte_sum) % _ADLER_MOD == 0


def iter_members(fileobj: BinaryIO, wanted: Callable[[str], bool] = lambda name: True
                 ) -> Iterator[tuple[str, bytearray | None]]:
    """``(name, data)`` for every regular member in order; ``data`` is None for members whose name
    ``wanted`` rejects (their bytes are skipped, not read). ``data`` is a ``bytearray``: being
    writable, the EEG array decoded from it needs no defensive copy.

    The archive ends at its zero block, or at end of file on a header boundary (as ``tarfile``
    accepts; a shard cut exactly there is caught by its caller's sample count). A partial header,
    a short member, or a bad checksum raises :class:`TarFormatError`.
    """
    end = os.fstat(fileobj.fileno()).st_size if fileobj.seekable() else None
    while True:
        header = fileobj.read(BLOCK)
        if not header or header == bytes(BLOCK):
            return
        if len(header) < BLOCK:
            raise TarFormatError(f"a header is cut off after {len(header)} of {BLOCK} bytes")
        name = header[:100].split(b"\x00", 1)[0].decode("utf-8", "replace")
        if not _checksum_ok(header):
            raise TarFormatError(f"bad header checksum (after member {name!r})")
        if header[257:262] == b"ustar" and header[345]:
            name = header[345:500].split(b"\x00", 1)[0].decode("utf-8", "replace") + "/" + name
        typeflag = header[156:157]
        if typeflag in _EXTENSIONS:
            raise TarFormatError(f"member {name}: extension header {typeflag!r}", unsupported=True)
        size = _octal(header[124:136], "size", name)
        padding = -size % BLOCK
        if typeflag not in _REGULAR or not wanted(name):
            _skip(fileobj, size + padding, end, name)
            if typeflag in _REGULAR:
                yield name, None
            continue
        data = bytearray(size)
        got = fileobj.readinto(data)
        if got != size:
            raise TarFormatError(f"member {name} has {got} of {size} bytes", member=name)
        _skip(fileobj, padding, end, name)
        yield name, data


def _skip(fileobj: BinaryIO, count: int, end: int | None, name: str) -> None:
    """Move past ``count`` bytes: seek in a file (seeking beyond the end does not fail, so the end
    is checked), read and drop them from a stream (``end`` None)."""
    if not count:
        return
    if end is not None:
        if fileobj.seek(count, 1) > end:
            raise TarFormatError(f"member {name} is cut off by the end of the file", member=name)
        return
    while count > 0:
        chunk = fileobj.read(min(count, _DROP_CHUNK))
        if not chunk:
            raise TarFormatError(f"member {name} is cut off by the end of the stream", member=name)
        count -= len(chunk)
