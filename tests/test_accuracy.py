"""embserve.accuracy: the accuracy report, against a whole-table NumPy computation of every figure
(the documented bag sample redrawn here), block by block in bounded memory, on arrays,
StackedTables and QuantizedTables, with the refusals and the text table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from embserve.accuracy import (
    TableAccuracy,
    format_accuracy,
    sampling_note,
    table_accuracy,
)
from embserve.errors import ConfigError, QuantizationError
from embserve.storage import (
    QUANTIZED_TYPES,
    STORAGE_TYPES,
    QuantizedTable,
    dequantize_rows,
    quantize_rows,
    row_bytes,
    row_error_bound,
)
from embserve.tables import StackedTable


def table(rows: int = 300, dim: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, dim)) * rng.uniform(0.1, 5, (rows, 1))
    x[5] = 0.0  # a zero row
    x[6] = 1.5  # a constant row
    return x.astype(np.float32)


def whole_table_report(x: np.ndarray, storage: str) -> dict[str, float]:
    """Every figure of the module docstring, computed on the whole table at once."""
    data = quantize_rows(x, storage)
    y = dequantize_rows(data, storage, x.shape[1]).astype(np.float64)
    x64 = x.astype(np.float64)
    err = np.abs(y - x64)
    bound = row_error_bound(x, data, storage)
    bound = bound if bound.ndim == 2 else np.broadcast_to(bound[:, None], err.shape)
    cos = []
    for a, b in zip(x64, y, strict=True):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        cos.append(1.0 if na == nb == 0 else 0.0 if na * nb == 0 else a @ b / (na * nb))
    # The documented sample: default_rng(0); sizes uniform in 1..40, then the ids.
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 41, size=1000)
    ids = rng.integers(0, len(x), size=int(sizes.sum()))
    rel = []
    for bag in np.split(ids, np.cumsum(sizes)[:-1]):
        f, q = x64[bag].sum(axis=0), y[bag].sum(axis=0)
        nf, nd = np.linalg.norm(f), np.linalg.norm(q - f)
        rel.append(nd / nf if nf > 0 else 0.0 if nd == 0 else np.inf)
    return {
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "max_bound": float(bound.max()),
        "cosine_min": float(np.min(cos)),
        "cosine_mean": float(np.mean(cos)),
        "pooled_rel_median": float(np.median(rel)),
        "pooled_rel_max": float(np.max(rel)),
    }


@pytest.mark.parametrize("storage", STORAGE_TYPES)
def test_report_matches_the_whole_table_computation(storage: str) -> None:
    x = table()
    report = table_accuracy(x, storage, name="items", chunk_rows=37)
    want = whole_table_report(x, storage)
    assert report.table == "items"
    assert report.storage == storage
    assert (report.rows, report.dim) == x.shape
    assert report.float32_bytes == x.nbytes
    assert report.stored_bytes == 300 * row_bytes(storage, 12)
    assert report.bytes_per_row == row_bytes(storage, 12)
    for field, value in want.items():
        assert getattr(report, field) == pytest.approx(value, rel=1e-9, abs=1e-15), field
    assert report.max_abs_error == want["max_abs_error"]  # a max: no rounding
    assert report.beyond_bound == 0
    assert report.within_bound
    assert report.max_abs_error <= report.max_bound
    assert (report.bags, report.max_bag_size, report.seed) == (1000, 40, 0)


def test_float32_loses_nothing() -> None:
    report = table_accuracy(table(), "float32")
    assert report.max_abs_error == report.mean_abs_error == report.max_bound == 0
    assert report.pooled_rel_max == 0
    assert report.cosine_min == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("storage", QUANTIZED_TYPES)
def test_errors_grow_as_the_type_narrows(storage: str) -> None:
    """A sanity ordering on one table: each narrower type loses more."""
    x = table(2000, 32)
    reports = {s: table_accuracy(x, s) for s in ("float16", "bfloat16", "int8", "int4")}
    order = ["float16", "bfloat16", "int8", "int4"]
    rels = [reports[s].pooled_rel_median for s in order]
    assert rels == sorted(rels)
    assert reports[storage].cosine_min < 1
    assert reports["int4"].cosine_min < reports["float16"].cosine_min


@pytest.mark.parametrize("storage", QUANTIZED_TYPES)
def test_a_quantized_table_gives_the_same_report_as_its_type(storage: str) -> None:
    x = table()
    stored = QuantizedTable(quantize_rows(x, storage), storage, 12, name="items")
    a = table_accuracy(x, stored)
    b = table_accuracy(x, storage, name="items")
    assert a == b
    assert a.table == "items"


def test_block_size_does_not_change_the_report() -> None:
    x = table(500, 7)
    whole = table_accuracy(x, "int4")
    for chunk in (1, 3, 64, 499, 500, 10_000):
        other = table_accuracy(x, "int4", chunk_rows=chunk)
        assert other.max_abs_error == whole.max_abs_error
        assert other.cosine_min == whole.cosine_min
        for field in ("mean_abs_error", "cosine_mean", "pooled_rel_median", "pooled_rel_max"):
            assert getattr(other, field) == pytest.approx(getattr(whole, field), rel=1e-12)


def test_a_stacked_table_is_read_as_its_logical_rows() -> None:
    rng = np.random.default_rng(3)
    n, t, rows, dim = 4, 30, 101, 5
    stack = rng.standard_normal((n * t, 8)).astype(np.float32)
    stacked = StackedTable(
        stack, rows=rows, dim=dim, num_shards=n, shard_rows=t, row_offset=2, rotation=1, name="s"
    )
    assert table_accuracy(stacked, "int8", chunk_rows=9) == table_accuracy(
        stacked.unstack(), "int8", chunk_rows=9
    )


class BlockOnly:
    """A float32 table that hands out blocks of at most ``limit`` rows and nothing else."""

    def __init__(self, x: np.ndarray, limit: int) -> None:
        self.x, self.limit, self.largest = x, limit, 0
        self.shape = x.shape

    def __getitem__(self, key: Any) -> np.ndarray:
        assert isinstance(key, slice)
        block = self.x[key]
        assert len(block) <= self.limit
        self.largest = max(self.largest, len(block))
        return block

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise AssertionError("the whole table was converted")


def test_the_table_is_read_a_block_at_a_time_with_progress() -> None:
    x = table(1000, 16)
    source = BlockOnly(x, limit=128)
    calls: list[tuple[int, int]] = []
    report = table_accuracy(
        source, "int8", chunk_rows=128, progress=lambda d, t: calls.append((d, t))
    )
    assert source.largest == 128
    assert report == table_accuracy(x, "int8", chunk_rows=128)
    total = x.nbytes
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    assert len(calls) == 1 + 8  # ceil(1000 / 128) blocks
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_the_default_block_is_16_mib_of_float32() -> None:
    x = np.zeros((70_000, 64), np.float32)  # 17.1 MiB: two blocks of 65,536 rows and less
    source = BlockOnly(x, limit=65_536)
    table_accuracy(source, "float16")
    assert source.largest == 65_536


def test_damaged_stored_rows_are_counted_past_the_bound() -> None:
    """The bound is the one of the rows the quantizer writes, not one read from the damaged
    scales (swapped scale and bias would widen that one)."""
    x = table()
    data = quantize_rows(x, "int8")
    damaged = data.copy()
    damaged[:, 12:16], damaged[:, 16:20] = data[:, 16:20], data[:, 12:16]
    report = table_accuracy(x, QuantizedTable(damaged, "int8", 12))
    assert report.beyond_bound > 0
    assert not report.within_bound
    assert report.max_bound == table_accuracy(x, "int8").max_bound
    assert "past bound" in format_accuracy([report])


def test_zero_tables_and_rows() -> None:
    x = np.zeros((50, 3), np.float32)
    for storage in STORAGE_TYPES:
        report = table_accuracy(x, storage)
        assert report.max_abs_error == 0
        assert report.cosine_min == report.cosine_mean == 1.0
        assert report.pooled_rel_median == report.pooled_rel_max == 0.0


def test_refusals() -> None:
    x = table()
    stored = QuantizedTable(quantize_rows(x, "int8"), "int8", 12)
    with pytest.raises(ConfigError, match="reference must be the float32 table"):
        table_accuracy(stored, "int8")
    with pytest.raises(ConfigError, match=r"table 'items': the quantized table is \[300, 12\]"):
        table_accuracy(x[:200], stored, name="items")
    with pytest.raises(ConfigError, match="storage must be one of"):
        table_accuracy(x, "int2")
    for bad in (np.zeros((0, 4), np.float32), np.zeros(5, np.float32), [[1.0]]):
        with pytest.raises(ConfigError, match=r"a \[rows, dim\] float32 table is needed"):
            table_accuracy(bad, "int8")
    for kwargs in ({"bags": 0}, {"max_bag_size": -1}, {"chunk_rows": 0}, {"bags": True}):
        with pytest.raises(ConfigError, match="must be a positive integer"):
            table_accuracy(x, "int8", **kwargs)


def test_a_nan_row_is_refused_naming_it() -> None:
    x = table()
    x[123, 4] = np.nan
    with pytest.raises(QuantizationError, match="table 'users': row 123 holds NaN or inf"):
        table_accuracy(x, "int8", name="users", chunk_rows=50)


def test_text_table() -> None:
    x = table()
    reports = [table_accuracy(x, s, name=f"t_{s}") for s in ("int8", "int4")]
    text = format_accuracy(reports)
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0].split()[:4] == ["table", "storage", "bytes/row", "smaller"]
    assert lines[1].split()[:6] == ["t_int8", "int8", "20", "of", "48", "2.40x"]
    assert lines[2].split()[:6] == ["t_int4", "int4", "10", "of", "48", "4.80x"]
    assert f"{reports[0].max_abs_error:.2e}" in lines[1]
    assert lines[3].strip() == sampling_note(reports)
    assert "1,000 bags of 1-40 uniform ids (seed 0), sum combiner" in lines[3]
    assert "past bound" not in text


def test_report_is_a_named_tuple() -> None:
    report = table_accuracy(table(20, 2), "int4")
    assert isinstance(report, TableAccuracy)
    assert report._asdict()["storage"] == "int4"
