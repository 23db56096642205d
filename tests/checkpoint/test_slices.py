"""Slice keys ("ordered code"), against the byte examples of CHECKPOINT_FORMAT.md §5.2."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embserve.checkpoint._wire import Malformed
from embserve.checkpoint.slices import decode_signed, decode_slice_key, encode_signed, slice_key

INT64 = st.integers(-(2**63), 2**63 - 1)

EXAMPLES = {
    0: "80",
    1: "81",
    11: "8B",
    53: "B5",
    63: "BF",
    64: "C040",
    -1: "7F",
    -64: "40",
    -65: "3FBF",
    8191: "DFFF",
    8192: "E02000",
    2**40: "FD0000000000",
}


@pytest.mark.parametrize(("value", "encoded"), EXAMPLES.items())
def test_signed_examples(value: int, encoded: str) -> None:
    assert encode_signed(value).hex().upper() == encoded
    assert decode_signed(bytes.fromhex(encoded), 0) == (value, len(encoded) // 2)


@settings(deadline=None)
@given(INT64)
def test_signed_round_trip(value: int) -> None:
    enc = encode_signed(value)
    assert 1 <= len(enc) <= 10
    assert decode_signed(enc + b"\x00junk", 0) == (value, len(enc))


@settings(deadline=None)
@given(INT64, INT64)
def test_signed_preserves_order(a: int, b: int) -> None:
    assert (a < b) == (encode_signed(a) < encode_signed(b))


def test_extremes() -> None:
    for v in (2**63 - 1, -(2**63), 2**62, -(2**62) - 1):
        assert decode_signed(encode_signed(v), 0)[0] == v
    with pytest.raises(ValueError, match="out of range"):
        encode_signed(2**63)


def test_real_keys() -> None:
    tf1 = bytes.fromhex("00656d6200010102848380 84".replace(" ", ""))
    assert slice_key("emb", [(4, 3), (0, 4)]) == tf1
    assert decode_slice_key(tf1) == (b"emb", [(4, 3), (0, 4)])
    tf2 = slice_key("v1/.ATTRIBUTES/VARIABLE_VALUE", [(11, 53)])
    assert tf2 == b"\x00v1/.ATTRIBUTES/VARIABLE_VALUE\x00\x01\x01\x01\x8b\xb5"


@settings(deadline=None)
@given(
    st.binary(max_size=20),
    st.lists(
        st.tuples(st.integers(0, 2**40), st.one_of(st.none(), st.integers(0, 2**40))),
        max_size=5,
    ),
)
def test_slice_key_round_trip(name: bytes, extents: list[tuple[int, int | None]]) -> None:
    want = [(0, None) if n is None else (s, n) for s, n in extents]
    assert decode_slice_key(slice_key(name, extents)) == (name, want)


@pytest.mark.parametrize(
    "key",
    [
        b"",
        b"\x01abc",
        b"\x00abc",  # unterminated name
        b"\x00a\x00\x02",  # bad escape
        b"\x00a\xff\x01\x00\x01\x00",  # bad FF escape
        b"\x00a\x00\x01\x09",  # rank length byte too big
        b"\x00a\x00\x01\x01\x01\x80",  # one number missing
        b"\x00a\x00\x01\x00\x00",  # trailing byte
        b"\x00a\x00\x01\x01\x01\xc0\x01\x80",  # non-canonical (1 in two bytes)
        b"\x00a\x00\x01\x01\x01\xff\xff\x80\x80",  # longer than 10 bytes
    ],
)
def test_bad_slice_keys(key: bytes) -> None:
    with pytest.raises(Malformed):
        decode_slice_key(key)
