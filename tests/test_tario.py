"""The shard tar reader against Python's tarfile, and its failures on damaged archives."""

import io
import random
import tarfile

import pytest

from eeg2im_scale.data.tario import BLOCK, TarFormatError, iter_members


def _archive(members: dict[str, bytes], fmt=tarfile.USTAR_FORMAT, **info_fields) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            for key, value in info_fields.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data))
        directory = tarfile.TarInfo("sub")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
    return buffer.getvalue()


MEMBERS = {"000001.eeg.npy": b"x" * 1000, "000001.png": b"", "000002.json": b"{}" * 300,
           "a/" * 60 + "long.png": b"prefix field"}  # > 100 characters: stored with the ustar prefix


def _read(path, **kw):
    with open(path, "rb") as f:
        return list(iter_members(f, **kw))


def test_members_match_tarfile_and_unwanted_ones_are_skipped(tmp_path):
    path = tmp_path / "s.tar"
    path.write_bytes(_archive(MEMBERS))
    with tarfile.open(path) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
    assert _read(path) == expected == list(MEMBERS.items())
    assert _read(path, wanted=lambda name: name.startswith("000002")) == [
        ("000001.eeg.npy", None), ("000001.png", None), ("000002.json", b"{}" * 300), (expected[-1][0], None)]


@pytest.mark.parametrize("cut", [100, BLOCK + 10, 3 * BLOCK - 1, 3 * BLOCK + 64])
def test_truncation_inside_a_header_or_a_member_raises(tmp_path, cut):
    """Cuts inside the first header, the first member's data, its padding, and the second header. (A cut exactly on a header boundary reads as a shorter archive: the
    caller's sample count catches it.)"""
    data = _archive(MEMBERS)
    path = tmp_path / "s.tar"
    path.write_bytes(data[:cut])
    with pytest.raises(TarFormatError):
        _read(path)
    with pytest.raises(TarFormatError):
        _read(path, wanted=lambda name: False)  # skipped members are checked against the end too


def test_corrupt_header_and_extension_headers(tmp_path):
    data = bytearray(_archive(MEMBERS))
    data[BLOCK * 3 + 7] ^= 0xFF  # the name field of the second member's header
    path = tmp_path / "bad.tar"
    path.write_bytes(bytes(data))
    with pytest.raises(TarFormatError, match="checksum") as err:
        _read(path)
    assert not err.value.unsupported
    pax = tmp_path / "pax.tar"
    pax.write_bytes(_archive({"000001.json": b"{}"}, fmt=tarfile.PAX_FORMAT, mtime=0.5))
    with pytest.raises(TarFormatError) as err:
        _read(pax)
    assert err.value.unsupported


def test_read_shard_falls_back_to_tarfile_for_extension_headers_and_skips_other_splits(tmp_path):
    """A shard from another tool with PAX headers (here from the second member on) reads as
    tarfile reads it; samples ``keep`` rejects are counted for the truncation check, not yielded."""
    from eeg2im_scale.data.format import read_shard

    members = {f"{k:09d}.{field}": f"{k}{field}".encode() for k in range(3) for field in ("json", "png")}
    plain, pax = tmp_path / "plain.tar", tmp_path / "pax.tar"
    plain.write_bytes(_archive(members))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for n, (name, data) in enumerate(members.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0.5 if n else 0
            tar.addfile(info, io.BytesIO(data))
    pax.write_bytes(buffer.getvalue())
    for path in (plain, pax):
        samples = list(read_shard(path, expected_count=3, keep=lambda key: key != "000000001"))
        assert [s["__key__"] for s in samples] == ["000000000", "000000002"]
        assert samples[1]["png"] == b"2png" and samples[0]["json"] == b"0json"


def test_a_cut_inside_a_sample_keeps_the_samples_before_it_and_names_it(tmp_path):
    from eeg2im_scale.data.format import SampleError, read_shard

    members = {f"{k:09d}.{field}": bytes(700) for k in range(3) for field in ("json", "png")}
    path = tmp_path / "cut.tar"
    path.write_bytes(_archive(members)[: 4 * 3 * BLOCK + BLOCK + 100])  # inside 000000002.json's data
    for keep, expected in ((None, ["000000000", "000000001"]), (lambda key: key != "000000001", ["000000000"])):
        delivered = []
        with pytest.raises(SampleError) as err:
            for sample in read_shard(path, 3, keep=keep):
                delivered.append(sample["__key__"])
        assert delivered == expected
        assert (err.value.key, err.value.field) == ("000000002", "tar")


def test_checksum_accepts_correct_headers_and_refuses_any_single_byte_change():
    """The adler32-based check against the definition: sum of all bytes, the checksum field read as spaces."""
    from eeg2im_scale.data.tario import _checksum_ok

    rng = random.Random(0)
    for _ in range(200):
        header = bytearray(rng.randbytes(BLOCK))
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\x00 " % sum(header)
        assert _checksum_ok(bytes(header))
        position = rng.choice([i for i in range(BLOCK) if not 148 <= i < 156])
        header[position] = (header[position] + rng.randrange(1, 256)) % 256
        assert not _checksum_ok(bytes(header))
