"""The on-disk sample format: one WebDataset key per EEG trial.

A sample is ``<key>.eeg.npy`` (float16, channels × time), ``<key>.png`` or ``<key>.jpg`` (RGB) and
``<key>.json`` (label, class name, subject, image id, session/block, attributes). Keys are the
zero-padded global sample index, so the manifest can be addressed by integer without a lookup
table. Every decoding problem becomes a :class:`SampleError` naming shard, key and field.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import math
import tarfile
from collections.abc import Callable, Iterator
from typing import BinaryIO, ContextManager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .preprocess import square_resize
from .remote import RemoteError
from .tario import TarFormatError, iter_members

KEY_DIGITS = 9
IMAGE_FIELDS = ("png", "jpg", "jpeg")
REQUIRED_META = ("label", "subject")


def sample_key(index: int) -> str:
    return f"{index:0{KEY_DIGITS}d}"


class SampleError(ValueError):
    """A bad sample or shard; ``str()`` names shard, key and field so the user can find it."""

    def __init__(self, shard: str, key: str | None, field: str, problem: str):
        self.shard, self.key, self.field, self.problem = str(shard), key, field, problem
        super().__init__(f"{self.shard}: sample {key or '?'}: field {field}: {problem}")

    def record(self) -> dict:
        return {"shard": self.shard, "key": self.key, "field": self.field, "problem": self.problem}


def nonfinite_problem(eeg: np.ndarray) -> str:
    """Why ``eeg`` [channels, time] cannot be stored as float16, and where: NaN/Inf in the source,
    or finite values beyond float16's range (65504)."""
    source_bad = ~np.isfinite(eeg)
    with np.errstate(over="ignore"):
        bad = source_bad if source_bad.any() else ~np.isfinite(eeg.astype(np.float16))
    where = np.argwhere(bad)
    first = ", ".join(str(int(i)) for i in where[0])
    at = f"first at (channel, time) = ({first})" if eeg.ndim == 2 else f"first at index ({first})"
    if source_bad.any():
        return f"has {len(where)} NaN/Inf values, {at}"
    return (f"has {len(where)} values beyond the float16 range (|x| > 65504; max |x| = {np.abs(eeg).max():.3g}), "
            f"{at}: store µV, not V scaled up")


def encode_eeg(eeg: np.ndarray) -> bytes:
    """float16 .npy bytes; refuses values that float16 cannot hold rather than storing inf."""
    half = np.asarray(eeg).astype(np.float16, copy=False)
    if not np.isfinite(half).all():
        raise ValueError(f"EEG {nonfinite_problem(np.asarray(eeg))}")
    buf = io.BytesIO()
    np.save(buf, half, allow_pickle=False)
    return buf.getvalue()


def encode_image(image: np.ndarray, fmt: str, size: int | None = None) -> bytes:
    """PNG (lossless) or JPEG (quality 95) bytes, optionally pre-resized to the training size (centre
    square, then bicubic: :func:`square_resize`)."""
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    if size is not None and pil.size != (size, size):
        pil = Image.fromarray(square_resize(np.asarray(pil), size))
    buf = io.BytesIO()
    if fmt == "png":
        pil.save(buf, format="PNG", compress_level=1)
    elif fmt in ("jpg", "jpeg"):
        pil.save(buf, format="JPEG", quality=95)
    else:
        raise ValueError(f"image format must be png or jpg, got {fmt!r}")
    return buf.getvalue()


def encode_sample(index: int, eeg: np.ndarray, image_bytes: bytes, image_ext: str, meta: dict) -> dict:
    return {
        "__key__": sample_key(index),
        "eeg.npy": encode_eeg(eeg),
        image_ext: image_bytes,
        "json": json.dumps(meta, sort_keys=True).encode(),
    }


@dataclass
class Decoded:
    key: str
    eeg: torch.Tensor  # float32, channels × time
    image: np.ndarray  # uint8, H × W × 3
    meta: dict


def load_npy(data: bytes) -> np.ndarray:
    """``np.load(allow_pickle=False)`` of one in-memory .npy, with the header parse cached: every
    sample of a corpus has the same header, and parsing it (``ast.literal_eval``) cost a sixth of
    the loader's time per sample. The array is writable (torch refuses read-only buffers): a copy
    unless ``data`` is itself writable."""
    version = data[6:7]
    if data[:6] != b"\x93NUMPY" or version not in (b"\x01", b"\x02", b"\x03"):
        raise ValueError("not a .npy file (bad magic string)")
    length_bytes = 2 if version == b"\x01" else 4
    start = 8 + length_bytes + int.from_bytes(data[8:8 + length_bytes], "little")
    shape, fortran_order, dtype = _npy_header(bytes(data[:start]))
    count = math.prod(shape)
    if len(data) - start != count * dtype.itemsize:
        raise ValueError(f"{len(data) - start} data bytes, the header's {dtype} {shape} needs {count * dtype.itemsize}")
    array = np.frombuffer(data, dtype, count, offset=start).reshape(shape, order="F" if fortran_order else "C")
    return array if array.flags.writeable else array.copy()


@lru_cache(maxsize=16)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    stream = io.BytesIO(header)
    major, _ = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(stream)
    if dtype.hasobject:
        raise ValueError("holds Python objects (pickled), which are refused")
    return shape, fortran_order, dtype


@functools.cache
def torchvision_decoder() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchvision's image-decoding op (to RGB), called without its Python wrapper (a private
    API: why, and what it saves, in docs/performance.md "Private APIs"). None where the op or its
    module is missing (PIL decodes). Looked up on first use, not at import."""
    try:
        import torchvision.io

        op, rgb = torch.ops.image.decode_image, torchvision.io.ImageReadMode.RGB.value
    except (ImportError, AttributeError, RuntimeError):
        return None
    return lambda data: op(data, rgb, False)


def decode_image(data: bytes | bytearray) -> np.ndarray:
    """PNG/JPEG bytes → uint8 RGB, H × W × 3.

    torchvision's decoders (libpng, libjpeg-turbo) give PIL's pixels — checked for 8-bit PNG in
    every colour mode and for JPEG — faster than PIL, on the largest single cost of decoding a
    sample (docs/performance.md). What they refuse, or return in another bit depth, goes through
    PIL."""
    decode_op = torchvision_decoder()
    if decode_op is not None:
        buffer = data if isinstance(data, bytearray) else bytearray(data)  # torch wants a writable buffer
        try:
            image = decode_op(torch.frombuffer(buffer, dtype=torch.uint8))
            if image.dtype == torch.uint8:
                return image.permute(1, 2, 0).numpy()
        except (RuntimeError, ValueError):
            pass
    with Image.open(io.BytesIO(data)) as pil:
        return np.asarray(pil.convert("RGB"))


def decode_sample(raw: dict, shard: str, eeg_shape: tuple[int, int], eeg_out: torch.Tensor | None = None) -> Decoded:
    """Decode and validate one raw sample; any defect raises :class:`SampleError`.

    ``eeg_out`` (float32, ``eeg_shape``) receives the EEG instead of a new tensor: the loader
    decodes straight into its batch."""
    key = raw.get("__key__")

    def need(field: str) -> bytes:
        if field not in raw:
            raise SampleError(shard, key, field, f"missing (present: {sorted(k for k in raw if not k.startswith('__'))})")
        return raw[field]

    try:
        eeg = load_npy(need("eeg.npy"))
    except SampleError:
        raise
    except Exception as exc:
        raise SampleError(shard, key, "eeg.npy", f"not a readable .npy array ({exc})") from None
    if eeg.shape != tuple(eeg_shape):
        raise SampleError(shard, key, "eeg.npy", f"shape {eeg.shape}, expected {tuple(eeg_shape)} (channels, time)")
    if not np.issubdtype(eeg.dtype, np.floating):
        raise SampleError(shard, key, "eeg.npy", f"dtype {eeg.dtype}, expected a float type")
    # torch's float16 conversion is vectorised, numpy's is not (~25x)
    eeg = torch.from_numpy(eeg).float() if eeg_out is None else eeg_out.copy_(torch.from_numpy(eeg))
    if not math.isfinite(eeg.sum()):  # a NaN/Inf makes the sum non-finite; one pass, no mask tensor
        bad = int((~torch.isfinite(eeg)).sum())
        if bad:
            raise SampleError(shard, key, "eeg.npy", f"{bad} NaN/Inf values")

    image_field = next((f for f in IMAGE_FIELDS if f in raw), None)
    if image_field is None:
        raise SampleError(shard, key, "png|jpg", "missing image")
    try:
        image = decode_image(raw[image_field])
    except Exception as exc:
        raise SampleError(shard, key, image_field, f"undecodable image ({exc})") from None

    try:
        meta = json.loads(need("json"))
    except SampleError:
        raise
    except Exception as exc:
        raise SampleError(shard, key, "json", f"invalid JSON ({exc})") from None
    for name in REQUIRED_META:
        if not isinstance(meta.get(name), int):
            raise SampleError(shard, key, f"json.{name}", f"missing or not an integer: {meta.get(name)!r}")
    return Decoded(key=key, eeg=eeg, image=image, meta=meta)


def _open_local(path: str | Path) -> BinaryIO:
    return open(path, "rb")


def read_shard(path: str | Path, expected_count: int | None = None,
               keep: Callable[[str], bool] | None = None,
               opener: Callable[[str], ContextManager[BinaryIO]] = _open_local) -> Iterator[dict]:
    """Stream raw samples (``{"__key__", "__url__", field: bytes}``) from one tar shard, opened
    by ``opener`` (a local file by default; ``remote.RemoteOptions.open`` for a corpus at a URL).

    Samples whose key ``keep`` rejects (another split's) are counted but neither read nor
    yielded: their bytes are skipped. A truncated or corrupt tar raises :class:`SampleError` with
    field ``tar``; so does a shard that ends cleanly but holds fewer samples than the manifest
    says (a tar cut at a member boundary).
    """
    shard = str(path)
    current: dict | None = None  # the sample being assembled; None while skipping one
    current_key = None
    count = 0
    try:
        for name, data in _members(shard, keep, opener):
            key, field = _key_of(name), name.rsplit("/", 1)[-1].partition(".")[2]
            if key != current_key:
                if current is not None:
                    yield current
                if current_key is not None:
                    count += 1
                current_key = key
                current = None if data is None else {"__key__": key, "__url__": shard}
            if current is not None:
                current[field.lower()] = data
    except (TarFormatError, tarfile.TarError, EOFError, OSError) as exc:
        failed_key = _key_of(exc.member) if isinstance(exc, TarFormatError) and exc.member else None
        if failed_key not in (None, current_key):  # the next sample's header was intact:
            if current is not None:  # this one is complete
                yield current
            current_key = failed_key
        problem = str(exc) if isinstance(exc, RemoteError) else f"truncated or corrupt shard ({exc})"
        raise SampleError(shard, current_key, "tar", problem) from None
    if expected_count is not None and count + (current_key is not None) < expected_count:
        # cut at a member boundary: the last sample may lack members, so it is not trusted
        raise SampleError(shard, current_key, "tar", f"truncated shard: it ends in this sample, the "
                                                  f"{count + 1}th of {expected_count}")
    if current is not None:
        yield current


def _key_of(member_name: str) -> str:
    return member_name.rsplit("/", 1)[-1].partition(".")[0]


def _members(path: str, keep: Callable[[str], bool] | None,
             opener: Callable[[str], ContextManager[BinaryIO]]) -> Iterator[tuple[str, bytes | None]]:
    """``(name, data or None)`` of the shard's regular members: :func:`tario.iter_members`, or
    ``tarfile`` from where that stopped for tars with PAX/GNU extension headers (not written here)."""
    wanted = (lambda name: keep(_key_of(name))) if keep else (lambda name: True)
    done = 0
    try:
        with opener(path) as fileobj:
            for member in iter_members(fileobj, wanted):
                done += 1
                yield member
        return
    except TarFormatError as exc:
        if not exc.unsupported:
            raise
    with opener(path) as fileobj, tarfile.open(fileobj=fileobj, mode="r|") as tar:
        regular = (info for info in tar if info.isreg())
        for info in itertools.islice(regular, done, None):
            if not wanted(info.name):
                yield info.name, None
                continue
            data = tar.extractfile(info).read()
            if len(data) != info.size:  # stream mode returns short reads silently
                raise tarfile.ReadError(f"member {info.name} has {len(data)} of {info.size} bytes")
            yield info.name, data
