"""The accuracy report of a quantized table: what serving it in fewer bytes costs, measured.

:func:`table_accuracy` compares a table's stored rows (a :class:`~embserve.storage.QuantizedTable`,
or a storage type to quantize to on the fly) with its float32 values, and returns a
:class:`TableAccuracy`; :func:`format_accuracy` prints reports as a plain text table. This is
what ``embserve quantize`` prints after writing a quantized checkpoint and what ``embserve
inspect --accuracy`` prints for a float32 one.

Per table, against the float32 table (``x`` a float32 element, ``y`` the value lookups read for
it, :func:`~embserve.storage.dequantize_rows`):

* **row error**: the largest and the mean ``|y - x|`` over every element;
* **bound**: the largest per-element bound derived in :mod:`embserve.storage`
  (:func:`~embserve.storage.row_error_bound`), and the count of elements past their bound (0
  unless the stored rows are damaged or were not written by embserve's quantizer). The bound is
  the one of the rows embserve's quantizer writes for ``x`` (recomputed per block), not one read
  from the stored scales: a bound computed from a damaged scale or bias widens with it;
* **cosine similarity** of each row ``y`` with its ``x`` (min and mean over rows; 1 for a row
  that is zero in both, 0 for a row zero in one only);
* **pooled outputs**: a fixed sample of bags, by default 1,000 bags whose sizes are uniform in
  1..40 and whose ids are uniform over the rows (with repeats), drawn by
  ``numpy.random.default_rng(seed)`` with seed 0, so every run and machine draws the same bags
  for the same row count. Each bag is pooled with the ``sum`` combiner, from the float32 rows
  (``f``) and from the stored rows (``q``); the relative error ``||q - f|| / ||f||`` (Euclidean
  norms over the bag's ``dim`` outputs; 0 when both are zero) is reported as its median and
  maximum over bags. Sums are taken in float64, so the figure measures the storage type, not the
  summation order (the lookup kernels add in float32 in bag order, which adds at most a few
  float32 roundings of the sum).

**Memory.** The table is read a block of rows at a time (16 MiB of float32 by default): the
float32 block, its stored rows and their dequantized values are the only table-sized
allocations, whatever the table's size; the bags add ``bags x dim`` float64 sums. A float32
table may be an array (a memory map of a checkpoint) or a
:class:`~embserve.tables.StackedTable` (whose blocks are copied out of the stack).

Layer: above :mod:`embserve.storage`, beside :mod:`embserve.lookup` (it imports neither lookup
nor anything above it; the kernels are not needed to measure the storage types).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import numpy as np

from embserve.errors import ConfigError
from embserve.storage import (
    STORAGE_TYPES,
    QuantizedTable,
    dequantize_rows,
    quantize_rows,
    row_bytes,
    row_error_bound,
)

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_BAGS",
    "DEFAULT_MAX_BAG_SIZE",
    "DEFAULT_SEED",
    "TableAccuracy",
    "format_accuracy",
    "sampling_note",
    "table_accuracy",
]

#: Float32 bytes read per block.
CHUNK_BYTES: Final = 16 << 20
#: Bags in the pooled-output sample.
DEFAULT_BAGS: Final = 1000
#: Bag sizes are uniform in ``1..DEFAULT_MAX_BAG_SIZE``.
DEFAULT_MAX_BAG_SIZE: Final = 40
#: The seed of the bag sample.
DEFAULT_SEED: Final = 0

Progress = Callable[[int, int], None]


class TableAccuracy(NamedTuple):
    """One table's accuracy report (see the module docstring for each figure).

    Attributes:
        table: the table's name.
        storage: the storage type measured.
        rows: logical rows.
        dim: logical width.
        float32_bytes: ``rows * dim * 4``.
        stored_bytes: ``rows *`` :func:`~embserve.storage.row_bytes`.
        max_abs_error: the largest ``|y - x|``.
        mean_abs_error: the mean ``|y - x|`` over ``rows * dim`` elements.
        max_bound: the largest per-element derived bound.
        beyond_bound: elements whose error exceeds their bound (0 expected).
        cosine_min: the smallest row cosine similarity.
        cosine_mean: the mean row cosine similarity.
        pooled_rel_median: the median relative error of the sampled bags' pooled outputs.
        pooled_rel_max: the largest of them.
        bags: bags sampled.
        max_bag_size: the largest bag size drawn from.
        seed: the sample's seed.
    """

    table: str
    storage: str
    rows: int
    dim: int
    float32_bytes: int
    stored_bytes: int
    max_abs_error: float
    mean_abs_error: float
    max_bound: float
    beyond_bound: int
    cosine_min: float
    cosine_mean: float
    pooled_rel_median: float
    pooled_rel_max: float
    bags: int
    max_bag_size: int
    seed: int

    @property
    def bytes_per_row(self) -> int:
        """Stored bytes per row."""
        return self.stored_bytes // self.rows

    @property
    def within_bound(self) -> bool:
        """Every element within its derived bound."""
        return self.beyond_bound == 0


def _positive(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    if value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value}")
    return int(value)


def _sample_bags(
    rows: int, bags: int, max_bag_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, bag of each id), sorted by id: the fixed bag sample of the module docstring."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_bag_size + 1, size=bags)
    ids = rng.integers(0, rows, size=int(sizes.sum()))
    bag_of = np.repeat(np.arange(bags), sizes)
    order = np.argsort(ids, kind="stable")
    return ids[order], bag_of[order]


def table_accuracy(
    reference: Any,
    quantized: QuantizedTable | str,
    *,
    name: str | None = None,
    bags: int = DEFAULT_BAGS,
    max_bag_size: int = DEFAULT_MAX_BAG_SIZE,
    seed: int = DEFAULT_SEED,
    chunk_rows: int | None = None,
    progress: Progress | None = None,
) -> TableAccuracy:
    """Measure ``quantized`` against the float32 table ``reference`` (module docstring).

    Args:
        reference: the float32 ``[rows, dim]`` table: an array (a memory map is read a block
            at a time, never whole) or a :class:`~embserve.tables.StackedTable`.
        quantized: the stored table to measure (a :class:`~embserve.storage.QuantizedTable` of
            the same shape), or a storage type (``"int8"``...): each block is then quantized
            with :func:`~embserve.storage.quantize_rows` as it is read and nothing is kept
            or written (what the type would cost). ``"float32"`` measures nothing lost (all
            errors 0).
        name: the table's name (default: the QuantizedTable's, else ``"table"``).
        bags: bags in the pooled-output sample.
        max_bag_size: bag sizes are uniform in ``1..max_bag_size``.
        seed: the sample's seed.
        chunk_rows: rows per block (default: 16 MiB of float32).
        progress: ``progress(done, total)`` in float32 bytes read: ``(0, total)`` first, then
            after each block.

    Raises:
        ConfigError: ``reference`` is not a non-empty 2-D table (or is itself quantized), the
            shapes differ, or an unknown storage type or bad count.
        QuantizationError: a float32 row holds NaN / inf or a value the type cannot hold
            (names the table and the row).
    """
    label = name
    if label is None:
        label = (quantized.name if isinstance(quantized, QuantizedTable) else None) or "table"
    if isinstance(reference, QuantizedTable):
        raise ConfigError(
            f"table {label!r}: the reference must be the float32 table, got a {reference.storage} "
            "QuantizedTable"
        )
    shape = tuple(getattr(reference, "shape", ()))
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ConfigError(f"table {label!r}: a [rows, dim] float32 table is needed, got {shape}")
    rows, dim = int(shape[0]), int(shape[1])
    if isinstance(quantized, QuantizedTable):
        storage = quantized.storage
        if quantized.shape != (rows, dim):
            raise ConfigError(
                f"table {label!r}: the quantized table is {list(quantized.shape)}, the float32 "
                f"table {[rows, dim]}"
            )
    elif isinstance(quantized, str) and quantized in STORAGE_TYPES:
        storage = quantized
    else:
        raise ConfigError(
            f"table {label!r}: storage must be one of {', '.join(STORAGE_TYPES)} or a "
            f"QuantizedTable, got {quantized!r}"
        )
    bags = _positive(bags, "bags")
    max_bag_size = _positive(max_bag_size, "max_bag_size")
    step = (
        max(1, CHUNK_BYTES // (4 * dim))
        if chunk_rows is None
        else _positive(chunk_rows, "chunk_rows")
    )

    ids, bag_of = _sample_bags(rows, bags, max_bag_size, seed)
    pooled_f = np.zeros((bags, dim))
    pooled_q = np.zeros((bags, dim))
    max_err = max_bound = 0.0
    sum_err = 0.0
    beyond = 0
    cos_min, cos_sum = math.inf, 0.0
    total = rows * dim * 4
    if progress is not None:
        progress(0, total)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        x = np.asarray(reference[start:stop], dtype=np.float32)
        if x.shape != (stop - start, dim):
            raise ConfigError(
                f"table {label!r}: rows [{start}, {stop}) came back as {list(x.shape)}"
            )
        ours = quantize_rows(x, storage, table=label, first_row=start)
        data = quantized.data[start:stop] if isinstance(quantized, QuantizedTable) else ours
        y = dequantize_rows(data, storage, dim)
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        err = np.abs(y64 - x64)
        bound = row_error_bound(x, ours, storage)
        if bound.ndim == 1:
            bound = bound[:, None]
        beyond += int(np.count_nonzero(err > bound))
        max_err = max(max_err, float(err.max()))
        sum_err += float(err.sum())
        max_bound = max(max_bound, float(bound.max()))

        nx = np.sqrt(np.einsum("ij,ij->i", x64, x64))
        ny = np.sqrt(np.einsum("ij,ij->i", y64, y64))
        dot = np.einsum("ij,ij->i", x64, y64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.clip(dot / (nx * ny), -1.0, 1.0)
        cos = np.where((nx == 0) & (ny == 0), 1.0, np.where((nx == 0) | (ny == 0), 0.0, cos))
        cos_min = min(cos_min, float(cos.min()))
        cos_sum += float(cos.sum())

        lo, hi = np.searchsorted(ids, [start, stop])
        if hi > lo:
            local = ids[lo:hi] - start
            np.add.at(pooled_f, bag_of[lo:hi], x64[local])
            np.add.at(pooled_q, bag_of[lo:hi], y64[local])
        if progress is not None:
            progress(stop * dim * 4, total)

    norm_f = np.linalg.norm(pooled_f, axis=1)
    norm_d = np.linalg.norm(pooled_q - pooled_f, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(norm_f > 0, norm_d / norm_f, np.where(norm_d == 0, 0.0, np.inf))
    return TableAccuracy(
        table=label,
        storage=storage,
        rows=rows,
        dim=dim,
        float32_bytes=rows * dim * 4,
        stored_bytes=rows * row_bytes(storage, dim),
        max_abs_error=max_err,
        mean_abs_error=sum_err / (rows * dim),
        max_bound=max_bound,
        beyond_bound=beyond,
        cosine_min=cos_min,
        cosine_mean=cos_sum / rows,
        pooled_rel_median=float(np.median(rel)),
        pooled_rel_max=float(rel.max()),
        bags=bags,
        max_bag_size=max_bag_size,
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------
# Text


def _g(value: float) -> str:
    """Three significant digits: ``0``, ``3.91e-03``, ``inf``."""
    if value == 0:
        return "0"
    return f"{value:.2e}"


def _cos(value: float) -> str:
    """A cosine near 1, with enough digits to tell 0.999990 from 1."""
    return f"{value:.6f}"


def sampling_note(reports: Sequence[TableAccuracy]) -> str:
    """The footnote saying how the pooled outputs were sampled."""
    first = reports[0] if reports else None
    bags = first.bags if first else DEFAULT_BAGS
    size = first.max_bag_size if first else DEFAULT_MAX_BAG_SIZE
    seed = first.seed if first else DEFAULT_SEED
    return (
        f"pooled: {bags:,} bags of 1-{size} uniform ids (seed {seed}), sum combiner, relative "
        "error ||pooled_q - pooled_f|| / ||pooled_f||; cosine: per row; bound: the largest "
        "derived per-element bound (README: Quantizing a checkpoint)"
    )


def format_accuracy(reports: Sequence[TableAccuracy], indent: str = "  ") -> str:
    """Reports as a plain text table, one line per table, with the sampling footnote."""
    header = [
        "table",
        "storage",
        "bytes/row",
        "smaller",
        "max |err|",
        "max bound",
        "mean |err|",
        "cos min",
        "cos mean",
        "pooled rel median",
        "pooled rel max",
    ]
    cells = [header]
    for r in reports:
        within = "" if r.within_bound else f" ({r.beyond_bound} past bound)"
        cells.append(
            [
                r.table,
                r.storage,
                f"{r.bytes_per_row} of {r.dim * 4}",
                f"{r.float32_bytes / r.stored_bytes:.2f}x",
                _g(r.max_abs_error) + within,
                _g(r.max_bound),
                _g(r.mean_abs_error),
                _cos(r.cosine_min),
                _cos(r.cosine_mean),
                _g(r.pooled_rel_median),
                _g(r.pooled_rel_max),
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    left = {0, 1}
    lines = []
    for row in cells:
        text = "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        lines.append((indent + text).rstrip())
    lines.append(indent + sampling_note(reports))
    return "\n".join(lines)
