"""The ``embserve`` command line: serve a model, look inside checkpoints, run the demo.

::

    embserve serve CONFIG [--host H] [--port P] [--workers N]
                                      serve the model CONFIG describes over TensorFlow
                                      Serving's REST API, reloading new checkpoints
    embserve inspect PATH             every tensor (dtype, shape, size), the embedding tables
                                      and their optimizer slots, totals
    embserve inspect PATH --verify    ... and check every tensor checksum, with a progress bar
    embserve inspect PATH --config    a skeleton serving config (TOML) for the tables found,
                                      which the server loads as it is
    embserve inspect PATH --accuracy int8,int4
                                      what each storage type would cost a float32 checkpoint's
                                      tables (accuracy report; nothing written)
    embserve inspect QUANTIZED --accuracy --against FLOAT32
                                      the accuracy report of a quantized checkpoint's tables
                                      against the float32 checkpoint they came from
    embserve quantize PATH --to DIR --dtype int8 [--tables a,b] [--overwrite]
                                      write a quantized checkpoint into DIR (progress bar),
                                      then print its accuracy report
    embserve demo                     serve the bundled demo checkpoint and query it over HTTP

``PATH`` is a checkpoint prefix (``/ckpts/ckpt-3``, naming ``ckpt-3.index`` and its data
shards) or a directory, which means its latest checkpoint (its ``checkpoint`` state file), as
in ``tf.train.load_checkpoint``.

This module is the top layer (ARCHITECTURE.md): it turns exceptions into one-line messages and
draws progress bars. Nothing below it prints; the format layer reports progress through the
``progress(done, total)`` callback of :meth:`embserve.checkpoint.BundleReader.verify`, which
:class:`ProgressBar` implements. From the server it imports :mod:`embserve.server.args` (the
``serve`` arguments) and, inside ``inspect --config`` only, :mod:`embserve.server.config`,
whose writer makes the skeleton: the config's parser and writer share one schema, so a
skeleton is always a config the server accepts (neither needs the ``serve`` extra).

Exit codes: 0 success; 1 an error about the input (no checkpoint there, a corrupt file, a
checksum mismatch, nothing to make a config from, a row a storage type cannot hold), reported
as one line on stderr without a traceback; 2 a usage error (argparse's convention); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from embserve.checkpoint import OBJECT_GRAPH_KEY, BundleReader, TensorInfo
from embserve.checkpoint.dtypes import SUPPORTED, DataType
from embserve.errors import EmbserveError
from embserve.server.args import add_serve_arguments, run_from_args

if TYPE_CHECKING:
    from embserve.accuracy import TableAccuracy
    from embserve.checkpointing import FoundTable

__all__ = ["ProgressBar", "format_bytes", "main"]

PROG = "embserve"

# ---------------------------------------------------------------------------------------------
# Formatting helpers


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units with three significant digits: ``617 B``, ``1.50 KiB``,
    ``3.81 GiB`` (what ``ls -lh`` users read at a glance; exact counts go in the totals)."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            break
    if n >= 100:
        return f"{n:.0f} {unit}"
    if n >= 10:
        return f"{n:.1f} {unit}"
    return f"{n:.2f} {unit}"


def _exact_bytes(n: int) -> str:
    """``617 B``; ``3.81 GiB (4,096,000,000 bytes)`` once rounding hides the exact count."""
    short = format_bytes(n)
    return short if n < 1024 else f"{short} ({n:,} bytes)"


def _shape(shape: Sequence[int]) -> str:
    """A shape as TensorFlow prints lists: ``[7, 3]``, ``[]`` for a scalar."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _columns(rows: Sequence[Sequence[str]], right: Sequence[int] = (), indent: str = "  ") -> str:
    """Rows of cells as aligned text columns (columns listed in ``right`` right-aligned)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    """``1 table``, ``2 tables``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _tensor_bytes(info: TensorInfo) -> int:
    """Bytes of a tensor's value: ``size`` for one stored piece, elements × itemsize for a
    sliced tensor (whose index entry has no size of its own) or for strings, their encoding."""
    if not info.is_sliced:
        return info.size
    return info.num_elements * SUPPORTED[info.dtype].itemsize


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (messages naming files can hold newlines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


# ---------------------------------------------------------------------------------------------
# Progress


class ProgressBar:
    """A ``progress(done, total)`` callback that draws a plain-text progress bar.

    On a terminal it redraws one line in place (``\\r``) at most every ``min_interval`` seconds:
    label, a bar, percent, bytes done of total and throughput. When the stream is not a
    terminal (a log file, a CI job, a pipe), ``\\r`` redraws would pile up into one enormous
    line, so it prints a plain line at 25 %, 50 %, 75 % and 100 % instead.

    No dependency (tqdm, rich) for this: the bar is thirty lines, and the core install stays
    numpy + numba + protobuf + crc32c.

    Args:
        label: what is in progress (``"verify"``).
        stream: where to draw (stderr, so stdout stays the report).
        tty: force terminal / non-terminal drawing; default ``stream.isatty()``.
        clock: seconds, monotonic (injectable for tests).
        min_interval: least time between two terminal redraws.
    """

    def __init__(
        self,
        label: str,
        stream: TextIO,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 0.1,
    ) -> None:
        self.label = label
        self.stream = stream
        if tty is None:
            isatty = getattr(stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        self.clock = clock
        self.min_interval = min_interval
        self.start = clock()
        self._last_draw = -math.inf
        self._next_milestone = 25  # percent, for non-terminal output
        self._drawn = False
        self.done = 0
        self.total = 0

    def __call__(self, done: int, total: int) -> None:
        """Record progress (``done`` of ``total`` bytes); draw when due."""
        self.done, self.total = done, total
        percent = 100 if total <= 0 else min(100, done * 100 // total)
        if self.tty:
            now = self.clock()
            if done >= total or now - self._last_draw >= self.min_interval:
                self._last_draw = now
                self._draw_tty(done, total, percent)
        else:
            if percent >= self._next_milestone:
                self._next_milestone = (percent // 25 + 1) * 25
                self.stream.write(f"{self.label}: {self._status(done, total, percent)}\n")
                self.stream.flush()

    def _rate(self, done: int) -> str:
        elapsed = self.clock() - self.start
        if elapsed <= 0 or done == 0:
            return "-- B/s"
        return f"{format_bytes(done / elapsed)}/s"

    def _status(self, done: int, total: int, percent: int) -> str:
        return f"{percent:3d}%  {format_bytes(done)} / {format_bytes(total)}  {self._rate(done)}"

    def _draw_tty(self, done: int, total: int, percent: int) -> None:
        status = self._status(done, total, percent)
        columns = shutil.get_terminal_size((80, 24)).columns
        width = max(10, min(40, columns - len(self.label) - len(status) - 6))
        filled = width * percent // 100
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {status}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line (terminal) so the next message starts on a fresh one."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


# ---------------------------------------------------------------------------------------------
# inspect


class _NothingToDoError(EmbserveError):
    """The input is valid but cannot give what was asked (e.g. a config without tables)."""


def _find_tables(reader: BundleReader) -> list[FoundTable]:
    """The TPU embedding tables of a checkpoint, by object-graph signature.

    Imported here, not at the top: :mod:`embserve.checkpointing` pulls in the lookup kernels
    (numba), which ``embserve --help`` should not wait for.
    """
    from embserve.checkpointing import find_embedding_tables

    if not reader.has_tensor(OBJECT_GRAPH_KEY):
        return []  # a TF1 name-based checkpoint: no objects, so no TPUEmbedding objects
    return list(find_embedding_tables(reader))


def _copies_line(infos: Sequence[TensorInfo]) -> str:
    """The totals line saying which numeric tensors cannot be served as views of the data files
    (each serving process then holds a private copy: a misaligned offset, or slices). String
    tensors are always decoded into objects and are not counted."""
    numeric = [i for i in infos if i.dtype != DataType.STRING]
    copied = [i for i in numeric if not i.zero_copy]
    if not copied:
        everything = _count(len(numeric), "numeric tensor")
        return f"  zero-copy: all {everything} map straight from the data files"
    shown = "; ".join(f"{i.key} ({i.copy_reason})" for i in copied[:5])
    more = f"; and {len(copied) - 5} more" if len(copied) > 5 else ""
    total = sum(_tensor_bytes(i) for i in copied)
    return (
        f"  copied: {len(copied)} of {_count(len(numeric), 'numeric tensor')} "
        f"({format_bytes(total)}) cannot be mapped and are copied into every process: "
        f"{shown}{more}"
    )


def _table_bytes(reader: BundleReader, table: FoundTable) -> int:
    """A table's own bytes: its tensor's, or for a table inside a SparseCore stack its logical
    rows x dim (the stack, with padding and the other tables, is listed apart)."""
    if table.layout is not None:
        return math.prod(table.shape) * reader.info(table.key).numpy_dtype.itemsize
    return _tensor_bytes(reader.info(table.key))


def _stacks_report(found: Sequence[FoundTable]) -> list[str]:
    """The SparseCore stacks (TPUEmbeddingV2) holding the tables found, if any: each stack's
    shape and topology, then where each of its tables sits in it (SPARSECORE_FORMAT.md §3)."""
    stacks: dict[tuple[tuple[str, ...], str], list[FoundTable]] = {}
    for t in found:
        if t.layout is not None:
            stacks.setdefault((t.object_path, t.layout.stack), []).append(t)
    if not stacks:
        return []
    lines = ["", f"SparseCore stacks ({len(stacks)}; tables served from them in place):"]
    rows = [
        ["stack", "shape", "chips x SC", "table", "rows x dim", "padding", "offset", "rotation"]
    ]
    for (_, stack), tables in stacks.items():
        first = tables[0].layout
        assert first is not None
        for n, t in enumerate(sorted(tables, key=lambda t: t.layout.row_offset if t.layout else 0)):
            layout = t.layout
            assert layout is not None
            padding = f"+{layout.padded_rows - layout.rows} rows, +{layout.width - layout.dim} cols"
            rows.append(
                [
                    stack if n == 0 else "",
                    _shape(first.stack_shape) if n == 0 else "",
                    f"{first.num_partitions} x {first.sparse_cores_per_chip}" if n == 0 else "",
                    t.table,
                    f"{layout.rows} x {layout.dim}",
                    padding,
                    str(layout.row_offset),
                    str(layout.rotation),
                ]
            )
    lines.append(_columns(rows, right=(6, 7)))
    return lines


def _report(reader: BundleReader, path: str, found: Sequence[FoundTable]) -> str:
    """The human-readable listing: variables, embedding tables with slots, totals."""
    infos = [reader.info(k) for k in reader]
    lines = [f"checkpoint: {reader.prefix}"]
    if os.path.isdir(path):
        lines[0] += f"  (the latest in {path})"
    shards = reader.num_shards
    lines.append(f"index: {reader.index_path}; {_count(shards, 'data shard')}")
    lines += ["", f"variables ({len(infos)}):"]
    if infos:
        rows = [["name", "dtype", "shape", "size"]]
        for info in infos:
            name = info.key
            if info.is_sliced:
                name += f"  ({len(info.slices)} slices)"
            rows.append(
                [name, info.dtype_name, _shape(info.shape), format_bytes(_tensor_bytes(info))]
            )
        lines.append(_columns(rows, right=(3,)))
    else:
        lines.append("  (none)")

    lines.append("")
    objects = sorted({t.object_path for t in found})
    if found:
        noun = "object" if len(objects) == 1 else "objects"
        lines.append(f"embedding tables ({len(found)}, in {len(objects)} TPUEmbedding {noun}):")
        rows = [["object", "table", "dtype", "shape", "size", "slots"]]
        for t in found:
            slots = ", ".join(t.slots) if t.slots else "-"
            rows.append(
                [
                    "/".join(t.object_path),
                    t.table,
                    t.dtype,
                    _shape(t.shape),
                    format_bytes(_table_bytes(reader, t)),
                    slots,
                ]
            )
        lines.append(_columns(rows, right=(4,)))
        lines += _stacks_report(found)
    else:
        graph = reader.has_tensor(OBJECT_GRAPH_KEY)
        why = "" if graph else " (no object graph: a TF1 name-based checkpoint)"
        lines.append(f"embedding tables: none found{why}")

    lines.append(_copies_line(infos))
    table_bytes = sum(_table_bytes(reader, t) for t in found)
    slot_keys = list(dict.fromkeys(k for t in found for k in t.slots.values()))
    slot_bytes = sum(_tensor_bytes(reader.info(k)) for k in slot_keys)
    value_bytes = sum(_tensor_bytes(i) for i in infos)
    disk = os.path.getsize(reader.index_path) + sum(os.path.getsize(p) for p in reader.data_paths)
    lines += [
        "",
        "totals:",
        f"  {_count(len(infos), 'tensor')}, {_exact_bytes(value_bytes)} of values; "
        f"{_exact_bytes(disk)} on disk with the index",
        f"  {_count(len(found), 'embedding table')}, {format_bytes(table_bytes)}; "
        f"{_count(len(slot_keys), 'optimizer slot')}, {format_bytes(slot_bytes)}",
    ]
    return "\n".join(lines)


def _verify(reader: BundleReader, err: TextIO) -> str:
    """Check every tensor checksum with a progress bar on ``err``; the summary line."""
    bar = ProgressBar("verify", err)
    started = time.monotonic()
    try:
        reader.verify(progress=bar)
    finally:
        bar.close()
    elapsed = time.monotonic() - started
    return f"verify: OK, every checksum matches ({format_bytes(bar.total)} in {elapsed:.2f} s)"


# ---------------------------------------------------------------------------------------------
# Accuracy (inspect --accuracy, quantize)

_QUANTIZE_TYPES = ("float16", "bfloat16", "int8", "int4")


def _storage_list(text: str) -> list[str]:
    """``int8,int4`` → the storage types, checked (an argparse ``type``: errors exit 2)."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in _QUANTIZE_TYPES]
    if not kinds or bad:
        raise argparse.ArgumentTypeError(
            f"storage types are a comma-separated list of {', '.join(_QUANTIZE_TYPES)}; got "
            f"{text!r}"
        )
    return list(dict.fromkeys(kinds))


def _table_list(text: str) -> list[str]:
    """``a,b`` → table names (an argparse ``type``)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"a comma-separated list of table names; got {text!r}")
    return names


def _label(t: FoundTable, found: Sequence[FoundTable]) -> str:
    """A table's name in reports: its name, with its object path when several objects hold
    tables."""
    if len({f.object_path for f in found}) <= 1:
        return t.table
    return "/".join((*t.object_path, t.table))


def _float_table(reader: BundleReader, t: FoundTable) -> Any:
    """A float32 table of a checkpoint, as served: its mapped array, or its rows of a
    SparseCore stack (checksums checked on first read)."""
    from embserve.tables import StackedTable

    if t.storage != "float32":
        raise _NothingToDoError(
            f"checkpoint {reader.prefix!r}: table {t.table!r} is stored as "
            f"{t.storage or t.dtype}, not float32"
        )
    data = reader.get_tensor(t.key)
    if t.layout is None:
        return data
    layout = t.layout
    return StackedTable(
        data,
        rows=layout.rows,
        dim=layout.dim,
        num_shards=layout.num_sparse_cores,
        shard_rows=layout.shard_rows,
        row_offset=layout.row_offset,
        rotation=layout.rotation,
        name=t.table,
    )


def _measure(
    pairs: Sequence[tuple[str, Any, Any]], err: TextIO, label: str = "accuracy"
) -> list[TableAccuracy]:
    """``table_accuracy`` over (name, float32 table, QuantizedTable or storage type) with one
    progress bar over every table's float32 bytes."""
    from embserve.accuracy import table_accuracy

    total = sum(math.prod(ref.shape) * 4 for _, ref, _ in pairs)
    bar = ProgressBar(label, err)
    reports = []
    done = 0
    try:
        bar(0, total)
        for name, ref, stored in pairs:

            def advance(d: int, _total: int, base: int = done) -> None:
                bar(base + d, total)

            reports.append(table_accuracy(ref, stored, name=name, progress=advance))
            done += math.prod(ref.shape) * 4
    finally:
        bar.close()
    return reports


def _accuracy_of_types(
    reader: BundleReader, found: Sequence[FoundTable], kinds: Sequence[str], err: TextIO
) -> list[TableAccuracy]:
    """What each storage type would cost a float32 checkpoint's tables (nothing written)."""
    if not found:
        raise _NothingToDoError(
            f"no TPU embedding tables found in checkpoint {reader.prefix!r}; nothing to measure"
        )
    stored = [t for t in found if t.storage != "float32"]
    if stored:
        raise _NothingToDoError(
            f"checkpoint {reader.prefix!r} is quantized already (table {stored[0].table!r}: "
            f"{stored[0].storage or stored[0].dtype}); measure it against its float32 "
            "checkpoint: embserve inspect PATH --accuracy --against FLOAT32_CHECKPOINT"
        )
    tables = [(_label(t, found), _float_table(reader, t)) for t in found]
    return _measure([(name, ref, kind) for name, ref in tables for kind in kinds], err)


def _accuracy_against(
    reader: BundleReader, against: str, err: TextIO, only: Sequence[str] | None = None
) -> list[TableAccuracy]:
    """The stored tables of a quantized checkpoint against the float32 checkpoint ``against``
    (tables matched by object path and name; tables stored as float32 are left out)."""
    from embserve.storage import QuantizedTable

    found = _find_tables(reader)
    quantized = [t for t in found if t.storage not in ("float32", None)]
    if only is not None:
        quantized = [t for t in quantized if t.table in only]
    if not quantized:
        raise _NothingToDoError(
            f"checkpoint {reader.prefix!r} holds no quantized tables to measure (a float32 "
            "checkpoint: embserve inspect PATH --accuracy int8,int4 measures what each type "
            "would cost)"
        )
    source = BundleReader(against)
    try:
        originals = {(t.object_path, t.table): t for t in _find_tables(source)}
        pairs = []
        for t in quantized:
            original = originals.get((t.object_path, t.table))
            if original is None:
                raise _NothingToDoError(
                    f"table {'/'.join((*t.object_path, t.table))!r} of {reader.prefix!r} is "
                    f"not in checkpoint {source.prefix!r}"
                )
            ref = _float_table(source, original)
            if tuple(ref.shape) != tuple(t.shape):
                raise _NothingToDoError(
                    f"table {t.table!r} is {list(t.shape)} in {reader.prefix!r} but "
                    f"{list(ref.shape)} in {source.prefix!r}: not the checkpoint it came from"
                )
            assert t.storage is not None
            stored = QuantizedTable(
                reader.get_tensor(t.key), t.storage, int(t.shape[1]), name=t.table
            )
            pairs.append((_label(t, quantized), ref, stored))
        return _measure(pairs, err)
    finally:
        source.close()


def _accuracy_text(reports: Sequence[TableAccuracy]) -> str:
    from embserve.accuracy import format_accuracy

    lines = ["accuracy against float32:"]
    lines.append(format_accuracy(reports))
    beyond = [r for r in reports if not r.within_bound]
    if beyond:
        lines.append(
            "  WARNING: "
            + ", ".join(f"{r.table} ({r.storage}): {r.beyond_bound}" for r in beyond)
            + " elements past the derived bound: these stored rows are not what embserve's "
            "quantizer writes for the float32 values"
        )
    return "\n".join(lines)


def _inspect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``embserve inspect``: open (validating the metadata), report, optionally verify.

    The listing is printed before verifying (it helps to see what a damaged checkpoint holds);
    a config is printed only after, and alone on stdout, so that ``--config --verify >
    serving.toml`` never leaves a config for a corrupt checkpoint.
    """
    path: str = args.path
    reader = BundleReader(path)
    try:
        if args.against is not None:
            reports = _accuracy_against(reader, args.against, err)
            out.write(_accuracy_text(reports) + "\n")
            out.flush()
            return 0
        found = _find_tables(reader)
        if args.accuracy:
            reports = _accuracy_of_types(reader, found, args.accuracy, err)
            out.write(_accuracy_text(reports) + "\n")
            out.flush()
            return 0
        if args.config:
            if not found:
                raise _NothingToDoError(
                    f"no TPU embedding tables found in checkpoint {reader.prefix!r}; "
                    "nothing to make a serving config from"
                )
            # Here, not at the top: the config module imports embserve (numba), which
            # `embserve --help` should not wait for. It needs no serve extra.
            from embserve.server.config import serving_config_toml

            config = serving_config_toml(found, os.path.abspath(path))  # refusals come first
            if args.verify:
                err.write(_verify(reader, err) + "\n")
            out.write(config)
        else:
            out.write(_report(reader, path, found) + "\n")
            out.flush()
            if args.verify:
                out.write("\n" + _verify(reader, err) + "\n")
        out.flush()
    finally:
        reader.close()
    return 0


def _check_inspect(args: argparse.Namespace) -> str | None:
    """Usage errors of ``inspect`` argparse cannot see (exit 2)."""
    if args.accuracy is None and args.against is not None:
        return "--against needs --accuracy"
    if args.accuracy is not None and (args.config or args.verify):
        return "--accuracy cannot be combined with --config or --verify"
    if args.accuracy == [] and args.against is None:
        return (
            "--accuracy needs storage types for a float32 checkpoint (--accuracy int8,int4) or "
            "--against FLOAT32_CHECKPOINT for a quantized one"
        )
    if args.accuracy and args.against is not None:
        return (
            "--accuracy TYPES measures a float32 checkpoint; --accuracy --against measures a "
            "quantized one: give one or the other"
        )
    return None


# ---------------------------------------------------------------------------------------------
# quantize


def _quantize(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``embserve quantize``: write the quantized checkpoint with a progress bar, then print what
    was written and the accuracy report (the float32 source against the written rows)."""
    from embserve.quantizing import quantize_checkpoint

    bar = ProgressBar("quantize", err)
    started = time.monotonic()
    try:
        written = quantize_checkpoint(
            args.path,
            args.to,
            args.dtype,
            tables=args.tables,
            progress=bar,
            overwrite=args.overwrite,
        )
    finally:
        bar.close()
    elapsed = time.monotonic() - started
    reader = BundleReader(args.to)
    try:
        source = sum(w.source_nbytes for w in written if w.storage != "float32")
        stored = sum(w.stored_nbytes for w in written if w.storage != "float32")
        lines = [f"wrote {reader.prefix} in {elapsed:.2f} s"]
        rows = [["table", "storage", "shape", "float32", "stored"]]
        several = len({w.object_path for w in written}) > 1
        for w in written:
            rows.append(
                [
                    "/".join((*w.object_path, w.name)) if several else w.name,
                    w.storage,
                    _shape((w.rows, w.dim)),
                    format_bytes(w.source_nbytes),
                    format_bytes(w.stored_nbytes),
                ]
            )
        lines.append(_columns(rows, right=(3, 4)))
        if stored:
            lines.append(
                f"  quantized tables: {format_bytes(source)} -> {format_bytes(stored)} "
                f"({source / stored:.2f}x smaller)"
            )
        out.write("\n".join(lines) + "\n\n")
        out.flush()
        names = [w.name for w in written if w.storage != "float32"]
        reports = _accuracy_against(reader, args.path, err, only=names)
        out.write(_accuracy_text(reports) + "\n")
        out.flush()
    finally:
        reader.close()
    return 0


def _demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``embserve demo``: serve the bundled demo checkpoint and query it (``make demo``)."""
    from embserve.demo.__main__ import main as demo_main

    return demo_main(out)


# ---------------------------------------------------------------------------------------------
# main


def _version() -> str:
    """The installed distribution's version (internal modules never import the root package)."""
    try:
        return importlib.metadata.version("embserve")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``embserve`` command (``serve``, ``inspect``, ``quantize``,
    ``demo``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="TensorFlow's TPUEmbedding serving API on the CPU, without TensorFlow.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="serve a model over TensorFlow Serving's REST API",
        description=(
            "Serve a TPU embedding model over TensorFlow Serving's REST API (predict, status, "
            "metadata, /healthz, /metrics), reloading new checkpoints as they appear. Needs "
            "the serve extra: pip install 'embserve[serve]'."
        ),
    )
    add_serve_arguments(serve)
    serve.set_defaults(run=lambda args, out, err: run_from_args(args))

    inspect = sub.add_parser(
        "inspect",
        help="list a checkpoint's variables and embedding tables",
        description=(
            "List every variable of a TensorFlow checkpoint (dtype, shape, size), the TPU "
            "embedding tables and optimizer slots found by the object graph, and totals. Reads "
            "the index and the object graph only, unless --verify."
        ),
    )
    inspect.add_argument(
        "path",
        metavar="PATH",
        help="a checkpoint prefix (ckpt-3 for ckpt-3.index) or a directory (its latest checkpoint)",
    )
    inspect.add_argument(
        "--verify",
        action="store_true",
        help="also check every tensor's CRC-32C (reads all data; progress bar on stderr)",
    )
    inspect.add_argument(
        "--config",
        action="store_true",
        help="print a skeleton serving config (TOML) for the tables found, instead of the listing",
    )
    inspect.add_argument(
        "--accuracy",
        nargs="?",
        const=[],
        type=_storage_list,
        metavar="TYPES",
        help=(
            "print the accuracy report instead of the listing: for a float32 checkpoint, what "
            "each storage type in TYPES (comma-separated: float16, bfloat16, int8, int4) would "
            "cost its tables, nothing written; for a quantized checkpoint, no TYPES and "
            "--against the float32 checkpoint it came from"
        ),
    )
    inspect.add_argument(
        "--against",
        metavar="FLOAT32_CHECKPOINT",
        help="with --accuracy: the float32 checkpoint a quantized PATH was made from",
    )
    inspect.set_defaults(run=_inspect, check=_check_inspect, parser=inspect)

    quantize = sub.add_parser(
        "quantize",
        help="write a quantized copy of a float32 checkpoint and print its accuracy",
        description=(
            "Write a quantized checkpoint: the float32 checkpoint's embedding tables stored as "
            "float16, bfloat16, or int8 / int4 row-wise (FBGEMM's fused rows), streamed a block "
            "at a time with a progress bar on stderr; optimizer slots are left out (a serving "
            "checkpoint). Then print the tables written and the accuracy report: each "
            "quantized table's rows against the float32 ones (max / mean error, the derived "
            "bound, cosine similarity, relative error of pooled sums on 1,000 sampled bags). "
            "embserve serve and es.train.Checkpoint.restore load the result memory-mapped."
        ),
    )
    quantize.add_argument(
        "path",
        metavar="CHECKPOINT",
        help="the float32 checkpoint: a prefix or a directory (its latest checkpoint)",
    )
    quantize.add_argument(
        "--to",
        required=True,
        metavar="DIR",
        help=(
            "the directory to write into (created if needed; the checkpoint keeps its prefix "
            "name and becomes the directory's latest), or an existing checkpoint prefix to "
            "replace (with --overwrite)"
        ),
    )
    quantize.add_argument(
        "--dtype", required=True, choices=_QUANTIZE_TYPES, help="the storage type of the tables"
    )
    quantize.add_argument(
        "--tables",
        type=_table_list,
        metavar="A,B",
        help="quantize only these tables (comma-separated); the others are copied as float32",
    )
    quantize.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a checkpoint of the same name in DIR (never done otherwise)",
    )
    quantize.set_defaults(run=_quantize)

    demo = sub.add_parser("demo", help="serve the bundled demo checkpoint and query it over HTTP")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``embserve`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Expected failures (missing or corrupt checkpoints, unreadable files) become one line on
    stderr and exit code 1; usage errors exit 2. Anything else is a bug and keeps its
    traceback.
    """
    parser = build_parser()
    out, err = sys.stdout, sys.stderr
    try:
        args = parser.parse_args(argv)
        check = getattr(args, "check", None)
        problem = check(args) if check is not None else None
        if problem is not None:
            args.parser.error(problem)
    except SystemExit as exc:  # --help / --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        code: int = args.run(args, out, err)
        return code
    except (EmbserveError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            # `embserve inspect ... | head`: the reader left; not an error worth a message.
            _silence_stdout()
            return 1
        err.write(f"{PROG}: error: {_one_line(exc)}\n")
        err.flush()
        return 1
    except KeyboardInterrupt:
        err.write(f"\n{PROG}: interrupted\n")
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover - `python -m embserve.cli`
    sys.exit(main())
