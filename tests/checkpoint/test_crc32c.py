"""Masked CRC-32C, checked against the values CHECKPOINT_FORMAT.md §2.2 and §4.3 took from real
TensorFlow files."""

from __future__ import annotations

import mmap
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from embserve.checkpoint import crc32c


def test_known_values() -> None:
    one = (1).to_bytes(8, "little")
    assert crc32c.value(one) == 0xC514CFAD
    assert crc32c.mask(0xC514CFAD) == 0x41DE7501
    assert crc32c.masked_value(one) == 0x41DE7501
    assert crc32c.mask(0) == 0xA282EAD8 == crc32c.masked_value(b"")


def test_string_example() -> None:
    length_crc = crc32c.value((13).to_bytes(4, "little"))
    assert length_crc == 0x1844B36A
    assert crc32c.mask(length_crc) == 0x09571B61
    stored = crc32c.mask(length_crc).to_bytes(4, "little")
    total = crc32c.extend(crc32c.extend(length_crc, stored), b"scalar-string")
    assert total == 0x487C0D3B
    assert crc32c.mask(total) == 0xBCF97BD0


@settings(deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_unmask_inverts_mask(crc: int) -> None:
    assert crc32c.unmask(crc32c.mask(crc)) == crc
    assert 0 <= crc32c.mask(crc) < 2**32


@settings(deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300), st.integers(0, 300))
def test_chunked_buffer_crc(data: bytes, a: int, b: int) -> None:
    lo, hi = sorted((min(a, len(data)), min(b, len(data))))
    calls: list[int] = []
    got = crc32c.value_of_buffer(memoryview(data), lo, hi, progress=calls.append)
    assert got == crc32c.value(data[lo:hi])
    assert sum(calls) == hi - lo


def test_chunked_over_mmap(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40_000  # 10 MB: three 4 MiB chunks
    path = tmp_path / "blob"
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert crc32c.value_of_buffer(m) == crc32c.value(data)
        assert crc32c.value_of_buffer(m, 5, len(data) - 7) == crc32c.value(data[5:-7])
