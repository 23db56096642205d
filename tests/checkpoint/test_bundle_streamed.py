"""BundleWriter.add_streamed: a tensor written in pieces is the tensor add() writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embserve.checkpoint import BundleReader, BundleWriter, DataType
from embserve.checkpoint.bundle import data_path


@pytest.mark.parametrize(
    ("dtype", "stored"),
    [(np.float32, DataType.FLOAT), (np.uint8, DataType.UINT8), (np.float16, DataType.HALF)],
)
def test_pieces_give_the_bytes_and_checksum_of_one_add(
    tmp_path: Path, dtype: type, stored: DataType
) -> None:
    value = (np.arange(7 * 5) % 251).astype(dtype).reshape(7, 5)
    with BundleWriter(tmp_path / "whole") as w:
        whole = w.add("t", value)
    with BundleWriter(tmp_path / "parts") as w:
        parts = w.add_streamed("t", (7, 5), stored, [value[:3], value[3:4], value[4:]])
    assert (parts.dtype, parts.shape, parts.size, parts.crc32c) == (
        whole.dtype,
        whole.shape,
        whole.size,
        whole.crc32c,
    )
    assert (
        Path(data_path(tmp_path / "parts", 0, 1)).read_bytes()
        == Path(data_path(tmp_path / "whole", 0, 1)).read_bytes()
    )
    reader = BundleReader(tmp_path / "parts", verify=True)
    np.testing.assert_array_equal(reader.get_tensor("t"), value)


def test_bfloat16_pieces_and_alignment(tmp_path: Path) -> None:
    bits = np.arange(12, dtype=np.uint16).reshape(4, 3)
    with BundleWriter(tmp_path / "p", alignment=64) as w:
        w.add("pad", np.int8(1))
        info = w.add_streamed("b", (4, 3), DataType.BFLOAT16, (bits[i : i + 1] for i in range(4)))
    assert info.offset % 64 == 0
    np.testing.assert_array_equal(BundleReader(tmp_path / "p").get_tensor("b"), bits)


@pytest.mark.parametrize("pieces", [[np.zeros((2, 2), np.float32)], [np.zeros((5, 2), np.float32)]])
def test_wrong_element_count_raises_and_records_nothing(tmp_path: Path, pieces: list) -> None:
    w = BundleWriter(tmp_path / "p")
    with pytest.raises(ValueError, match="elements of shape"):
        w.add_streamed("t", (4, 2), DataType.FLOAT, pieces)
    w.abort()
    assert not list(tmp_path.iterdir())


def test_strings_and_kinds_are_refused(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "p") as w:
        with pytest.raises(ValueError, match="string tensors cannot be streamed"):
            w.add_streamed("s", (1,), DataType.STRING, [np.array([b"x"], dtype=object)])
        with pytest.raises(TypeError):
            w.add_streamed("f", (2,), DataType.UINT8, [np.array([1.5, 2.5])])
        w.add("ok", np.zeros(1, np.float32))
