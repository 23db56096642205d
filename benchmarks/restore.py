"""Benchmark restoring a large embedding table: embserve (memory-mapped and copied) vs TensorFlow.

What it does: writes one checkpoint holding a 16,000,000 × 64 float32 table (4.1 GB; ``--rows``
scales it) with ``embserve.train.Checkpoint.save`` in a temporary directory under /tmp, then
restores it, each time in a fresh process, with

- ``embserve``: ``es.train.Checkpoint(embedding=emb).restore(prefix)`` (the default: the table
  becomes a read-only memory-mapped view; a table this large is not checksummed on restore),
- ``embserve copy=True``: the table is read into private memory,
- ``embserve verify=True``: mapped, but every byte's CRC-32C is checked first,
- ``TF before build``: TensorFlow 2.21's ``tf.train.Checkpoint(embedding=emb).restore(prefix)``
  into an unbuilt ``tf.tpu.experimental.embedding.TPUEmbeddingForServing``, then ``build()``
  (restore-on-create: the table is created from the checkpoint value),
- ``TF after build``: ``build()`` first (untimed; it fills the table with its initializer),
  then ``restore``,

and reports per contestant the restore time, the resident memory the restore added (VmRSS
after − before), the peak resident memory during the restore (VmHWM, reset just before it via
``/proc/self/clear_refs``), and the time of the first lookup of 1,024 random ids in the
restored table, then of a second one with other ids. Every lookup result is checked against the
values written before anything is reported.

Why this way: each measurement is a fresh process, so nothing (page tables, allocator arenas,
compiled kernels) carries over; contestants are interleaved, rotating who goes first, so every
one sees the same shared, noisy machine; the median of the repetitions is reported with the
range. The checkpoint is written from a memory-mapped source filled chunk by chunk, so the
writer never holds the table in anonymous memory.

Page cache: this container cannot drop the page cache (``/proc/sys/vm/drop_caches`` is not
writable), so the main table is **warm-cache**: the data file is read once before the first
repetition. With ``--cold`` every repetition is also run after evicting the checkpoint's files
from the page cache with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (per file, no privileges
needed); on this VM the "disk" may itself be cached by the host, so cold numbers are an upper
bound on real disk speed.

``--sparsecore``: the same race on a SparseCore (``TPUEmbeddingV2``) checkpoint instead
(SPARSECORE_FORMAT.md). One stack ``items_shops_users`` of 8,388,608 × 64 float32 (2.15 GB;
``--rows`` sets the stack's rows, a multiple of 512, ``--dim`` its width, a multiple of 8)
holding three tables in the layout TensorFlow 2.21's own stacker computes for them on 2 chips ×
4 SparseCores (N = 8; checked with ``_stack_tables_with_same_table_dim_and_optimizer``):

- ``items`` 4,194,300 × 64 (padded to 4,194,304 rows), row offset 0, rotation 0,
- ``shops`` 3,145,700 × 60 (padded to 3,145,728 × 64), row offset 524,288, rotation 4,
- ``users`` 1,048,550 × 57 (padded to 1,048,576 × 64), row offset 917,504, rotation 0,

rows interleaved over the 8 SparseCores by the row formula (§3.1), stored as one row slice per
chip (``BundleWriter.add_sliced``), the ``_sparse_core_table_layouts`` proto and an object graph
with TensorFlow's nodes and edges (``embedding/<stack>``, ``embedding/_variables/<stack>/
parameters``, ``embedding/_sparse_core_table_layouts``, ``save_counter``). Row ``r``, column
``c`` of a table holds a hash of (table, r, c) (exact in float32); padding rows hold 1e30 and
padding columns NaN. The stack is filled shard block by shard block into a memory-mapped scratch
file, so the writer never holds it in anonymous memory. Contestants: embserve's default
(zero copy: each table is a ``StackedTable`` over the mapped stack), ``copy=True`` (plain
private per-table arrays), ``verify=True``, and, with ``--tf-python``, TensorFlow 2.21's
``TPUEmbeddingForServing``: ``restore()`` then ``build()`` (TensorFlow unstacks every table into
a new variable; restoring after ``build()`` restores nothing there, silently, so it is not a
contestant). Each worker looks up 1,024 random ids in every table (one feature per table), and
every result is checked against the values the hash gives for those rows; the parent also
checks, before the save, that the scratch stack holds each looked-up row where the row formula
puts it and the padding where it belongs. embserve's kernels are loaded first by restoring and
looking up a 512-row checkpoint of the same layout, the same way.

Usage::

    .venv/bin/python benchmarks/restore.py --tf-python .venvs/tf/bin/python
    .venv/bin/python benchmarks/restore.py --tf-python .venvs/tf/bin/python --cold --write
    .venv/bin/python benchmarks/restore.py --rows 1000000 --reps 1    # a quick look
    .venv/bin/python benchmarks/restore.py --sparsecore --tf-python .venvs/tf/bin/python --write

``--write`` inserts the markdown section (with the command and machine facts) at the top of
``benchmarks/RESULTS.md``, below its marker line, keeping older sections. The temporary
directory is removed at the end, also on errors and Ctrl-C.

The same file is the worker: ``restore.py --worker KIND ...`` runs one measurement and prints
one JSON line; the TensorFlow worker runs under ``--tf-python`` and imports only the standard
library, numpy and TensorFlow.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import cpu_model, git_commit, publish

ROWS = 16_000_000
DIM = 64
N_IDS = 1024
SEED = 20_251_126
TABLE_NAME = "table"
REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30
FILL_CHUNK_ROWS = 1 << 20  # 256 MiB of float32 × 64 per chunk while writing the source


@dataclass(frozen=True)
class Contestant:
    """One way of restoring the table."""

    key: str
    label: str
    tf: bool
    # Private memory this contestant needs beyond the page cache, in tables (measured with the
    # 4.1 GB table: TF before build +1 table; TF after build holds the built table and peaks
    # at +1 more during the restore; embserve copy=True +1, mapped file pages aside).
    tables_of_memory: float


CONTESTANTS = (
    Contestant("embserve", "embserve (mmap)", tf=False, tables_of_memory=0.0),
    Contestant("embserve-copy", "embserve copy=True", tf=False, tables_of_memory=1.0),
    Contestant("embserve-verify", "embserve verify=True", tf=False, tables_of_memory=0.0),
    Contestant("tf-before-build", "TF restore, then build", tf=True, tables_of_memory=1.0),
    Contestant("tf-after-build", "TF build, then restore", tf=True, tables_of_memory=2.0),
)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the parent and the workers (standard library and numpy only)


def _proc_status() -> dict[str, int]:
    """``/proc/self/status`` memory fields in KiB (VmRSS, VmHWM, RssAnon, RssFile)."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[name] = int(rest.split()[0])
    return out


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write ``5`` to ``/proc/self/clear_refs``),
    so the next peak reading covers only what follows. False when the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _ids(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The two lookups' ids: 1,024 uniform random rows each, the same in every process."""
    rng = np.random.default_rng(SEED)
    return rng.integers(0, rows, N_IDS, dtype=np.int64), rng.integers(
        0, rows, N_IDS, dtype=np.int64
    )


def _digest(values: Any) -> str:
    """sha256 of a float32 result's bytes (results must be bit-identical: a lookup of dense ids
    is a gather, no arithmetic)."""
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.float32))
    return hashlib.sha256(arr.tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# SparseCore mode: the stack's geometry, values and ids (shared by the parent and the workers)

SC_STACK_ROWS = 8_388_608  # × 64 float32 = 2 GiB
SC_CHIPS = 2
SC_CORES_PER_CHIP = 4  # v5p
SC_CORES = SC_CHIPS * SC_CORES_PER_CHIP  # N
SC_TINY_ROWS = 512  # the kernel-loading checkpoint's stack
SC_PAD_ROW = np.float32(1e30)
SC_FILL_CHUNK_ROWS = 1 << 16  # rows per fill step: 16 MiB of float32 × 64, 4× that in hashing
# (name, eighths of the stack's rows, rows short of the padded count, columns short of the width)
SC_TABLE_SHAPES = (("items", 4, 4, 0), ("shops", 3, 28, 4), ("users", 1, 26, 7))


@dataclass(frozen=True)
class ScTable:
    """One logical table inside the stack (SPARSECORE_FORMAT.md §1 names)."""

    name: str
    rows: int  # R
    dim: int  # D
    padded_rows: int  # Rp
    row_offset: int  # o
    rotation: int  # ρ
    seed: int

    @property
    def feature(self) -> str:
        return f"f_{self.name}"

    @property
    def block_rows(self) -> int:
        """Rp / N: the table's rows in every SparseCore shard."""
        return self.padded_rows // SC_CORES


def _sc_tables(stack_rows: int, width: int) -> tuple[int, list[ScTable]]:
    """T (rows per SparseCore shard) and the tables, laid out as TensorFlow's stacker lays them
    out: name order, offsets = padded rows before / N, rotation = (k · cores per chip) mod N."""
    if stack_rows < 512 or stack_rows % 512:
        raise SystemExit(f"restore.py --sparsecore: --rows {stack_rows} is not a multiple of 512")
    if width < 16 or width % 8:
        raise SystemExit(f"restore.py --sparsecore: --dim {width} is not a multiple of 8 ≥ 16")
    tables = []
    before = 0
    for k, (name, eighths, short_rows, short_dim) in enumerate(SC_TABLE_SHAPES):
        padded = stack_rows // 8 * eighths  # a multiple of 8·N = 64, as TensorFlow pads
        tables.append(
            ScTable(
                name,
                padded - short_rows,
                width - short_dim,
                padded,
                before // SC_CORES,
                k * SC_CORES_PER_CHIP % SC_CORES,
                k + 1,
            )
        )
        before += padded
    assert before == stack_rows
    return stack_rows // SC_CORES, tables


def _sc_stack_name(tables: Sequence[ScTable]) -> str:
    return "_".join(t.name for t in tables)


def _sc_values(table: ScTable, rows: np.ndarray) -> np.ndarray:
    """The values of logical ``rows`` of ``table``: [len(rows), D] float32, a hash of (table,
    row, column) scaled to [-1, 1) (24 significant bits, so exact in float32)."""
    r = np.asarray(rows, dtype=np.uint64)[:, None]
    c = np.arange(table.dim, dtype=np.uint64)[None, :]
    mask = np.uint64(0xFFFFFFFF)
    h = (r * np.uint64(0x9E3779B1) + c * np.uint64(0x85EBCA77) + np.uint64(table.seed)) & mask
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & mask
    h ^= h >> np.uint64(12)
    out = (h >> np.uint64(8)).astype(np.float32)
    out *= np.float32(2.0**-23)
    out -= np.float32(1.0)
    return out


def _sc_stacked_rows(table: ScTable, shard_rows: int, rows: np.ndarray) -> np.ndarray:
    """SPARSECORE_FORMAT.md §3.1: logical row r is stacked row
    ``((r mod N + ρ) mod N) · T + o + r div N``."""
    r = np.asarray(rows, dtype=np.int64)
    return (
        ((r % SC_CORES + table.rotation) % SC_CORES) * shard_rows + table.row_offset + r // SC_CORES
    )


def _sc_ids(tables: Sequence[ScTable]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The two lookups' ids: 1,024 uniform random rows of every table, the same in every
    process."""
    first, second = {}, {}
    for t in tables:
        rng = np.random.default_rng([SEED, t.seed])
        first[t.feature] = rng.integers(0, t.rows, N_IDS, dtype=np.int64)
        second[t.feature] = rng.integers(0, t.rows, N_IDS, dtype=np.int64)
    return first, second


def _sc_digest(outputs: dict[str, Any], tables: Sequence[ScTable]) -> str:
    """sha256 over every feature's float32 result, in table order."""
    h = hashlib.sha256()
    for t in tables:
        h.update(np.ascontiguousarray(np.asarray(outputs[t.feature], dtype=np.float32)).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Workers (one measurement per process)


def _worker_embserve(prefix: str, rows: int, dim: int, mode: str) -> dict[str, Any]:
    """Restore with embserve, measure, look up twice."""
    import embserve as es  # imported before the baseline: its import is not the restore's cost

    table = es.TableConfig(vocabulary_size=rows, dim=dim, name=TABLE_NAME)
    emb = es.TPUEmbeddingForServing(es.FeatureConfig(table), optimizer=None)
    # Load the lookup kernels now (numba's on-disk cache) on a tiny object, so the "first
    # lookup" below measures reaching the restored rows, not loading machine code.
    small = es.TPUEmbeddingForServing(
        es.FeatureConfig(es.TableConfig(vocabulary_size=4, dim=dim)), optimizer=None
    )
    t = time.perf_counter()
    small(np.zeros(N_IDS, dtype=np.int64))
    kernel_load_s = time.perf_counter() - t
    ids1, ids2 = _ids(rows)

    before = _proc_status()
    peak_reset = _reset_peak()
    t0 = time.perf_counter()
    status = es.train.Checkpoint(embedding=emb).restore(
        prefix, copy=mode == "copy", verify=mode == "verify"
    )
    restore_s = time.perf_counter() - t0
    after = _proc_status()
    status.assert_consumed()
    return _lookups(
        lambda ids: emb(ids),
        ids1,
        ids2,
        before,
        after,
        peak_reset,
        restore_s=restore_s,
        extra={"kernel_load_s": kernel_load_s, "versions": {"embserve": es.__version__}},
    )


def _worker_tf(prefix: str, rows: int, dim: int, mode: str) -> dict[str, Any]:
    """Restore with TensorFlow 2.21 into TPUEmbeddingForServing, measure, look up twice."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    emb_api = tf.tpu.experimental.embedding
    table = emb_api.TableConfig(vocabulary_size=rows, dim=dim, name=TABLE_NAME)
    emb = emb_api.TPUEmbeddingForServing(emb_api.FeatureConfig(table), optimizer=None)
    ids1, ids2 = _ids(rows)
    tf.nn.embedding_lookup(tf.zeros([4, dim]), tf.zeros([N_IDS], tf.int64))  # load the op once
    extra: dict[str, Any] = {"versions": {"tensorflow": tf.__version__}}
    if mode == "after-build":
        t = time.perf_counter()
        emb.build()
        extra["build_s"] = time.perf_counter() - t
    before = _proc_status()
    peak_reset = _reset_peak()
    t0 = time.perf_counter()
    status = tf.train.Checkpoint(embedding=emb).restore(prefix)
    if mode == "before-build":
        t1 = time.perf_counter()
        emb.build()  # restore-on-create: the variables are created from the checkpoint values
        extra["restore_call_s"] = t1 - t0
        extra["build_s"] = time.perf_counter() - t1
    restore_s = time.perf_counter() - t0
    after = _proc_status()
    status.assert_consumed()
    return _lookups(
        lambda ids: emb(tf.constant(ids)).numpy(),
        ids1,
        ids2,
        before,
        after,
        peak_reset,
        restore_s=restore_s,
        extra=extra,
    )


def _lookups(
    lookup: Callable[[Any], Any],
    ids1: Any,
    ids2: Any,
    before: dict[str, int],
    after: dict[str, int],
    peak_reset: bool,
    *,
    restore_s: float,
    extra: dict[str, Any],
    digest: Callable[[Any], str] = _digest,
) -> dict[str, Any]:
    """Time two lookups after a restore; assemble the worker's report (``digest`` runs after
    the timing)."""
    t = time.perf_counter()
    out1 = lookup(ids1)
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    out2 = lookup(ids2)
    second_s = time.perf_counter() - t
    end = _proc_status()
    return {
        "restore_s": restore_s,
        "rss_before_kib": before["VmRSS"],
        "rss_after_kib": after["VmRSS"],
        "anon_added_kib": after["RssAnon"] - before["RssAnon"],
        "file_added_kib": after["RssFile"] - before["RssFile"],
        "peak_kib": after["VmHWM"],
        "peak_is_restore_only": peak_reset,
        "first_lookup_s": first_s,
        "second_lookup_s": second_s,
        "rss_after_lookups_kib": end["VmRSS"],
        "digests": [digest(out1), digest(out2)],
        **extra,
    }


def _worker_embserve_sc(
    prefix: str, tiny_prefix: str, stack_rows: int, width: int, mode: str
) -> dict[str, Any]:
    """Restore the SparseCore checkpoint with embserve, measure, look up twice."""
    import embserve as es

    def serving(rows: int) -> tuple[list[ScTable], Any]:
        _, tables = _sc_tables(rows, width)
        features = {
            t.feature: es.FeatureConfig(
                es.TableConfig(vocabulary_size=t.rows, dim=t.dim, name=t.name)
            )
            for t in tables
        }
        return tables, es.TPUEmbeddingForServing(features, optimizer=None)

    copy, verify = mode == "copy", mode == "verify"
    # Load the lookup kernels (numba's on-disk cache) by restoring and looking up a 512-row
    # checkpoint of the same layout in the same mode: the "first lookup" below then measures
    # reaching the restored rows, not loading machine code.
    t = time.perf_counter()
    tiny_tables, tiny = serving(SC_TINY_ROWS)
    es.train.Checkpoint(embedding=tiny).restore(tiny_prefix, copy=copy, verify=verify)
    tiny({t.feature: np.zeros(N_IDS, dtype=np.int64) for t in tiny_tables})
    kernel_load_s = time.perf_counter() - t
    del tiny
    tables, emb = serving(stack_rows)
    ids1, ids2 = _sc_ids(tables)

    before = _proc_status()
    peak_reset = _reset_peak()
    t0 = time.perf_counter()
    status = es.train.Checkpoint(embedding=emb).restore(prefix, copy=copy, verify=verify)
    restore_s = time.perf_counter() - t0
    after = _proc_status()
    status.assert_consumed()
    kinds = sorted({type(v).__name__ for v in emb.embedding_tables.values()})
    return _lookups(
        emb,
        ids1,
        ids2,
        before,
        after,
        peak_reset,
        restore_s=restore_s,
        extra={
            "kernel_load_s": kernel_load_s,
            "table_types": kinds,
            "versions": {"embserve": es.__version__},
        },
        digest=lambda out: _sc_digest(out, tables),
    )


def _worker_tf_sc(prefix: str, stack_rows: int, width: int) -> dict[str, Any]:
    """Restore the SparseCore checkpoint with TensorFlow 2.21's TPUEmbeddingForServing:
    ``restore()`` before ``build()`` (the only order in which it restores stacked tables)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    emb_api = tf.tpu.experimental.embedding
    _, tables = _sc_tables(stack_rows, width)
    features = {
        t.feature: emb_api.FeatureConfig(
            emb_api.TableConfig(vocabulary_size=t.rows, dim=t.dim, name=t.name)
        )
        for t in tables
    }
    emb = emb_api.TPUEmbeddingForServing(features, optimizer=None)
    ids1, ids2 = _sc_ids(tables)
    tf.nn.embedding_lookup(tf.zeros([4, width]), tf.zeros([N_IDS], tf.int64))  # load the op once
    before = _proc_status()
    peak_reset = _reset_peak()
    t0 = time.perf_counter()
    status = tf.train.Checkpoint(embedding=emb).restore(prefix)
    t1 = time.perf_counter()
    emb.build()  # creates the per-table variables, then the pending restore unstacks into them
    restore_s = time.perf_counter() - t0
    after = _proc_status()
    # assert_consumed / assert_existing_objects_matched fail after every correct SparseCore
    # restore in TF 2.21 (tests/data/sparsecore/README.md); the values are checked instead.
    status.assert_nontrivial_match()
    kinds = sorted({type(v).__name__ for v in emb.embedding_tables.values()})

    def lookup(ids: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = emb({f: tf.constant(v) for f, v in ids.items()})
        return {f: v.numpy() for f, v in out.items()}

    return _lookups(
        lookup,
        ids1,
        ids2,
        before,
        after,
        peak_reset,
        restore_s=restore_s,
        extra={
            "restore_call_s": t1 - t0,
            "build_s": restore_s - (t1 - t0),
            "table_types": kinds,
            "versions": {"tensorflow": tf.__version__},
        },
        digest=lambda out: _sc_digest(out, tables),
    )


def _worker_touch(nbytes: int) -> dict[str, Any]:
    """The machine's price of fresh private memory: allocate ``nbytes`` and write them once
    (the first touch faults every page in), then once more (already resident)."""
    t0 = time.perf_counter()
    block = np.empty(nbytes // 4, dtype=np.float32)
    block.fill(1.0)
    t1 = time.perf_counter()
    block.fill(2.0)
    return {"first_touch_s": t1 - t0, "second_write_s": time.perf_counter() - t1}


def _worker_main(args: argparse.Namespace) -> int:
    """``--worker KIND``: one measurement; the report is the last line on stdout."""
    kind = args.worker
    if kind == "touch":
        report = _worker_touch(args.rows * args.dim * 4)
    elif args.sparsecore:
        if kind.startswith("embserve"):
            mode = {"embserve": "mmap", "embserve-copy": "copy", "embserve-verify": "verify"}[kind]
            report = _worker_embserve_sc(args.prefix, args.tiny_prefix, args.rows, args.dim, mode)
        else:
            report = _worker_tf_sc(args.prefix, args.rows, args.dim)
    elif kind.startswith("embserve"):
        mode = {"embserve": "mmap", "embserve-copy": "copy", "embserve-verify": "verify"}[kind]
        report = _worker_embserve(args.prefix, args.rows, args.dim, mode)
    else:
        report = _worker_tf(args.prefix, args.rows, args.dim, kind.removeprefix("tf-"))
    print(json.dumps(report), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# The parent: write the checkpoint, run the workers, report


def _log(message: str) -> None:
    print(f"[restore.py {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _meminfo_kib(field_name: str) -> int:
    with open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith(field_name + ":")).split()[1])


def _plan_size(
    rows: int | None, dim: int, workdir_parent: str, contestants: Sequence[Contestant]
) -> tuple[int, list[str], list[Contestant]]:
    """Choose the row count from free memory and disk; drop contestants that would not fit.

    Disk: the source (a memory-mapped scratch file) and the checkpoint exist together for a
    moment: 2 tables + 1 GiB. Memory: the page cache should hold the checkpoint (warm numbers),
    plus the hungriest contestant's anonymous memory, plus 2 GiB for interpreters and TF.
    """
    notes: list[str] = []
    available = _meminfo_kib("MemAvailable") * 1024
    free_disk = shutil.disk_usage(workdir_parent).free
    row_bytes = dim * 4

    def fits(n: int, c: Contestant) -> bool:
        table = n * row_bytes
        return table * (1 + c.tables_of_memory) + 2 * GIB <= available

    explicit = rows is not None
    n = rows if rows is not None else ROWS
    if not explicit:
        while n > 250_000 and (2 * n * row_bytes + GIB > free_disk or not fits(n, CONTESTANTS[0])):
            n //= 2
        if n != ROWS:
            notes.append(
                f"table reduced to {n:,} rows: {available / GIB:.1f} GiB memory available, "
                f"{free_disk / GIB:.1f} GiB free disk"
            )
    if 2 * n * row_bytes + GIB > free_disk:
        raise SystemExit(
            f"restore.py: {n:,} × {dim} needs {2 * n * row_bytes / GIB:.1f} GiB of free disk in "
            f"{workdir_parent}, only {free_disk / GIB:.1f} GiB free: use --rows"
        )
    chosen = []
    for c in contestants:
        if fits(n, c):
            chosen.append(c)
        else:
            notes.append(
                f"{c.label} left out: needs about "
                f"{(1 + c.tables_of_memory) * n * row_bytes / GIB:.1f} GiB + 2 GiB, "
                f"{available / GIB:.1f} GiB available"
            )
    return n, notes, chosen


def _write_checkpoint(
    workdir: Path, rows: int, dim: int
) -> tuple[str, list[str], dict[str, float]]:
    """Write the benchmark checkpoint with ``embserve.train.Checkpoint.save``.

    The table's values (seeded standard normals) are generated chunk by chunk into a
    memory-mapped scratch file, which the table initializer hands to the writer as is: no copy
    of the table is ever held in anonymous memory. Returns the prefix, the digests of the two
    expected lookups and timings.
    """
    import embserve as es

    source_path = workdir / "source.f32"
    source = np.memmap(source_path, dtype=np.float32, mode="w+", shape=(rows, dim))
    t = time.perf_counter()
    seeds = np.random.SeedSequence(SEED).spawn((rows + FILL_CHUNK_ROWS - 1) // FILL_CHUNK_ROWS)
    for i, seed in enumerate(seeds):
        lo = i * FILL_CHUNK_ROWS
        hi = min(rows, lo + FILL_CHUNK_ROWS)
        source[lo:hi] = np.random.default_rng(seed).standard_normal((hi - lo, dim), np.float32)
    source.flush()
    fill_s = time.perf_counter() - t
    ids1, ids2 = _ids(rows)
    digests = [_digest(source[ids1]), _digest(source[ids2])]

    held = [source]  # the initializer's reference, dropped after the save
    del source

    def initializer(shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
        assert tuple(shape) == (rows, dim)
        return held[0]

    table = es.TableConfig(vocabulary_size=rows, dim=dim, name=TABLE_NAME, initializer=initializer)
    emb = es.TPUEmbeddingForServing(es.FeatureConfig(table), optimizer=None)
    t = time.perf_counter()
    prefix = es.train.Checkpoint(embedding=emb).save(workdir / "ckpt")
    save_s = time.perf_counter() - t
    del emb, table
    held.clear()  # unmaps the scratch file (the writer and the object held the only views)
    os.unlink(source_path)
    return prefix, digests, {"fill_s": fill_s, "save_s": save_s}


def _sc_fill(stack: np.ndarray, shard_rows: int, tables: Sequence[ScTable]) -> None:
    """Pack every table into ``stack`` ([T·N, W]) with the row formula, shard block by shard
    block: SparseCore shard s holds, at rows ``[s·T + o, s·T + o + Rp/N)``, the table's logical
    rows ``j·N + ((s − ρ) mod N)`` for j = 0, 1, … (§3.1 solved for r). Every stacked row is
    written once (the blocks tile the shards); padding rows get 1e30, padding columns NaN."""
    for t in tables:
        for shard in range(SC_CORES):
            base = shard * shard_rows + t.row_offset
            lane = (shard - t.rotation) % SC_CORES
            for j0 in range(0, t.block_rows, SC_FILL_CHUNK_ROWS):
                j1 = min(t.block_rows, j0 + SC_FILL_CHUNK_ROWS)
                rows = np.arange(j0, j1, dtype=np.int64) * SC_CORES + lane
                real = int(np.searchsorted(rows, t.rows))  # rows ascend: real ones first
                out = stack[base + j0 : base + j1]
                out[:real, : t.dim] = _sc_values(t, rows[:real])
                out[:real, t.dim :] = np.nan
                out[real:] = SC_PAD_ROW


def _sc_check_source(stack: np.ndarray, shard_rows: int, tables: Sequence[ScTable]) -> None:
    """Before saving: the looked-up rows sit where §3.1 puts them, every padding row and
    column holds its sentinel (a mistake in the writer would otherwise be measured)."""
    ids1, ids2 = _sc_ids(tables)
    for t in tables:
        for ids in (ids1[t.feature], ids2[t.feature], np.array([0, t.rows - 1])):
            rows = stack[_sc_stacked_rows(t, shard_rows, ids)]
            if not np.array_equal(rows[:, : t.dim], _sc_values(t, ids)):
                raise RuntimeError(f"writer bug: table {t.name} rows not where §3.1 puts them")
            if t.dim < stack.shape[1] and not np.isnan(rows[:, t.dim :]).all():
                raise RuntimeError(f"writer bug: table {t.name} padding columns not NaN")
        padding = stack[_sc_stacked_rows(t, shard_rows, np.arange(t.rows, t.padded_rows))]
        if not (padding == SC_PAD_ROW).all():
            raise RuntimeError(f"writer bug: table {t.name} padding rows not 1e30")


def _write_sparsecore(
    directory: Path, stack_rows: int, width: int, source_path: Path | None
) -> tuple[str, dict[str, float]]:
    """Write a SparseCore checkpoint ``directory/ckpt-1`` as a 2-chip × 4-SparseCore
    ``TPUEmbeddingV2`` job would (SPARSECORE_FORMAT.md §5): the stack as one row slice per chip,
    the layouts proto, the object graph TensorFlow writes for ``tf.train.Checkpoint(
    embedding=...)``. With ``source_path`` the stack is packed into a memory-mapped scratch file
    (removed afterwards) and written from there, so no copy of it is held in anonymous memory.
    Returns the prefix and timings."""
    from embserve.checkpoint import OBJECT_GRAPH_KEY, BundleWriter, ObjectGraphBuilder
    from embserve.checkpoint.sparsecore import LAYOUTS_ATTRIBUTE, TableLayout, encode_layouts

    shard_rows, tables = _sc_tables(stack_rows, width)
    stack_name = _sc_stack_name(tables)
    directory.mkdir(parents=True, exist_ok=True)
    stack: np.ndarray
    if source_path is None:
        stack = np.empty((stack_rows, width), dtype=np.float32)
    else:
        stack = np.memmap(source_path, dtype=np.float32, mode="w+", shape=(stack_rows, width))
    t = time.perf_counter()
    _sc_fill(stack, shard_rows, tables)
    if isinstance(stack, np.memmap):
        stack.flush()
    fill_s = time.perf_counter() - t
    _sc_check_source(stack, shard_rows, tables)

    # The object graph as TensorFlow saves a TPUEmbeddingV2 (node ids in its order too).
    b = ObjectGraphBuilder()
    emb = b.add_child(b.ROOT, "embedding")
    counter = b.add_child(b.ROOT, "save_counter")
    stack_node = b.add_child(emb, stack_name)
    variables = b.add_child(emb, "_variables")
    layouts_node = b.add_child(emb, LAYOUTS_ATTRIBUTE)
    b.add_child(b.add_child(variables, stack_name), "parameters", child=stack_node)
    b.add_attribute(counter, full_name="save_counter")
    b.add_attribute(stack_node)
    b.add_attribute(layouts_node)
    _, keys = b.build()
    layouts = [
        TableLayout(
            t.name,
            stack_name,
            SC_CORES,
            SC_CHIPS,
            shard_rows,
            (t.rows, t.dim),
            (t.padded_rows, width),
            t.row_offset,
            t.rotation,
        )
        for t in tables
    ]
    per_chip = stack_rows // SC_CHIPS
    prefix = os.fspath(directory / "ckpt-1")
    t = time.perf_counter()
    with BundleWriter(prefix, overwrite=True) as w:
        w.add_sliced(
            keys[(stack_node, "VARIABLE_VALUE")],
            (stack_rows, width),
            [
                (((p * per_chip, per_chip), (0, width)), stack[p * per_chip : (p + 1) * per_chip])
                for p in range(SC_CHIPS)
            ],
        )
        w.add(keys[(layouts_node, "VARIABLE_VALUE")], encode_layouts(layouts))
        w.add(keys[(counter, "VARIABLE_VALUE")], np.int64(1))
        w.add(OBJECT_GRAPH_KEY, b.serialize())
    save_s = time.perf_counter() - t
    del stack  # unmaps the scratch file (the writer kept no view)
    if source_path is not None:
        os.unlink(source_path)
    return prefix, {"fill_s": fill_s, "save_s": save_s}


def _checkpoint_files(prefix: str) -> list[str]:
    directory, base = os.path.split(prefix)
    return [os.path.join(directory, f) for f in os.listdir(directory) if f.startswith(base + ".")]


def _warm(prefix: str) -> float:
    """Read the checkpoint's files once (into the page cache); returns GB/s of that read."""
    total = 0
    t = time.perf_counter()
    for path in _checkpoint_files(prefix):
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(16 << 20):
                total += len(chunk)
    return total / (time.perf_counter() - t) / 1e9


def _evict(prefix: str) -> None:
    """Drop the checkpoint's pages from the page cache (clean pages of these files only)."""
    for path in _checkpoint_files(prefix):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@dataclass
class Runs:
    """Every repetition of one contestant under one cache condition."""

    contestant: Contestant
    cache: str
    reports: list[dict[str, Any]] = field(default_factory=list)


def _run_worker(
    contestant: Contestant,
    python: str,
    prefix: str,
    rows: int,
    dim: int,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """One fresh process, one measurement."""
    cmd = [
        python,
        os.fspath(Path(__file__).resolve()),
        "--worker",
        contestant.key,
        "--prefix",
        prefix,
        "--rows",
        str(rows),
        "--dim",
        str(dim),
        *extra_args,
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{contestant.label} worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def _fmt_s(seconds: Sequence[float]) -> str:
    """Median (min–max) with units chosen for the size."""
    med, lo, hi = statistics.median(seconds), min(seconds), max(seconds)

    def one(v: float) -> str:
        if v < 1e-3:
            return f"{v * 1e6:.0f} µs"
        if v < 1:
            return f"{v * 1e3:.1f} ms"
        return f"{v:.2f} s"

    if len(seconds) == 1:
        return one(med)
    return f"{one(med)} ({one(lo)} – {one(hi)})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _fmt_mib(kib: float) -> str:
    mib = kib / 1024
    if abs(mib) >= 1024:
        return f"{mib / 1024:.2f} GiB"
    return f"{mib:.0f} MiB"


def _table(all_runs: Sequence[Runs], lookup: str = "1,024 ids") -> str:
    """The markdown results table: medians over repetitions (range for times)."""
    lines = [
        "| contestant | cache | restore time | RSS added by restore (anon + file) | peak RSS "
        f"during restore (above before) | RSS before | first lookup, {lookup} | second lookup |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for runs in all_runs:
        reps = runs.reports
        if not reps:
            continue

        def med(key: str, reps: list[dict[str, Any]] = reps) -> float:
            return statistics.median(r[key] for r in reps)

        added = statistics.median(r["rss_after_kib"] - r["rss_before_kib"] for r in reps)
        peak_added = statistics.median(r["peak_kib"] - r["rss_before_kib"] for r in reps)
        lines.append(
            f"| {runs.contestant.label} | {runs.cache} "
            f"| {_fmt_s([r['restore_s'] for r in reps])} "
            f"| {_fmt_mib(added)} ({_fmt_mib(med('anon_added_kib'))} + "
            f"{_fmt_mib(med('file_added_kib'))}) "
            f"| {_fmt_mib(med('peak_kib'))} (+{_fmt_mib(peak_added)}) "
            f"| {_fmt_mib(med('rss_before_kib'))} "
            f"| {_fmt_s([r['first_lookup_s'] for r in reps])} "
            f"| {_fmt_s([r['second_lookup_s'] for r in reps])} |"
        )
    return "\n".join(lines)


def _thp() -> str:
    """The machine's transparent huge page settings (the selected value in brackets)."""
    parts = []
    for name in ("enabled", "defrag", "shmem_enabled"):
        try:
            with open(f"/sys/kernel/mm/transparent_hugepage/{name}", encoding="ascii") as f:
                parts.append(f"{name} `{f.read().strip()}`")
        except OSError:
            parts.append(f"{name} ?")
    return ", ".join(parts)


def _damon() -> str:
    """Running DAMON monitors (the kernel's access monitor; a ``pageout`` scheme reclaims pages
    it finds cold, page cache included, which can undo a warm-up): state, address space and
    scheme actions of each, read from sysfs."""
    root = Path("/sys/kernel/mm/damon/admin/kdamonds")
    found = []
    try:
        for kdamond in sorted(p for p in root.iterdir() if p.name.isdigit()):
            state = (kdamond / "state").read_text().strip()
            for ctx in sorted(p for p in (kdamond / "contexts").iterdir() if p.name.isdigit()):
                ops = (ctx / "operations").read_text().strip()
                actions = [
                    (scheme / "action").read_text().strip()
                    for scheme in sorted((ctx / "schemes").iterdir())
                    if scheme.name.isdigit()
                ]
                found.append(
                    f"kdamond {kdamond.name} {state} ({ops}, schemes: {actions or 'none'})"
                )
    except OSError:
        pass
    return "; ".join(found) if found else "none running (or not visible)"


def _machine_facts(versions: dict[str, str]) -> str:
    model = cpu_model()
    commit = git_commit()
    fs = subprocess.run(
        ["df", "-T", tempfile.gettempdir()], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    fs_type = fs[-1].split()[1] if len(fs) > 1 else "?"
    return "\n".join(
        [
            f"- nproc {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), CPU {model}, "
            f"RAM {_meminfo_kib('MemTotal') / 2**20:.1f} GiB "
            f"({_meminfo_kib('MemAvailable') / 2**20:.1f} GiB available at the end), "
            f"temp dir on {fs_type}, kernel {platform.release()}",
            f"- transparent huge pages: {_thp()}; DAMON: {_damon()}",
            "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            f"- embserve tree: git {commit}",
        ]
    )


def _race(
    args: argparse.Namespace,
    contestants: Sequence[Contestant],
    prefix: str,
    digests: list[str],
    run: Callable[[Contestant, str], dict[str, Any]],
    each_rep: Callable[[], None] | None = None,
) -> tuple[list[Runs], dict[str, str]]:
    """Every contestant ``args.reps`` times under each cache condition, interleaved with a
    rotating order; every report's lookup digests must equal ``digests``. ``each_rep`` runs at
    the start of every repetition."""
    caches = ["warm", "cold"] if args.cold else ["warm"]
    all_runs = [Runs(c, cache) for cache in caches for c in contestants]
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for rep in range(args.reps):
        if each_rep is not None:
            each_rep()
        for cache in caches:
            group = [r for r in all_runs if r.cache == cache]
            shift = rep % len(group)
            for runs in group[shift:] + group[:shift]:  # rotate who goes first
                c = runs.contestant
                if cache == "cold":
                    _evict(prefix)
                else:
                    _warm(prefix)
                python = args.tf_python if c.tf else sys.executable
                _log(f"rep {rep + 1}/{args.reps} {cache}: {c.label}")
                report = run(c, python)
                if report["digests"] != digests:
                    raise RuntimeError(f"{c.label}: lookup results differ from the values written")
                versions.update(report.get("versions", {}))
                runs.reports.append(report)
    return all_runs, versions


SC_CONTESTANTS = (
    Contestant("embserve", "embserve default (zero copy)", tf=False, tables_of_memory=0.0),
    Contestant("embserve-copy", "embserve copy=True", tf=False, tables_of_memory=1.0),
    Contestant("embserve-verify", "embserve verify=True", tf=False, tables_of_memory=0.0),
    # TF holds the joined stack, its unstacking temporaries and the new variables at once.
    Contestant("tf-before-build", "TF restore, then build", tf=True, tables_of_memory=3.0),
)


def _main_sparsecore(args: argparse.Namespace, command: str) -> int:
    """``--sparsecore``: write the stacked checkpoint, race the contestants, report."""
    stack_rows = args.rows if args.rows is not None else SC_STACK_ROWS
    width = args.dim
    shard_rows, tables = _sc_tables(stack_rows, width)
    stack_bytes = stack_rows * width * 4
    notes: list[str] = []
    free_disk = shutil.disk_usage(args.tmp).free
    if 2 * stack_bytes + GIB > free_disk:
        raise SystemExit(
            f"restore.py: the stack and its scratch source need {2 * stack_bytes / GIB:.1f} GiB "
            f"+ 1 GiB of free disk in {args.tmp}, only {free_disk / GIB:.1f} GiB free: use --rows"
        )
    available = _meminfo_kib("MemAvailable") * 1024
    contestants = []
    for c in SC_CONTESTANTS:
        if c.tf and not args.tf_python:
            continue
        if stack_bytes * (1 + c.tables_of_memory) + 2 * GIB > available:
            notes.append(
                f"{c.label} left out: needs about "
                f"{(1 + c.tables_of_memory) * stack_bytes / GIB:.1f} GiB + 2 GiB, "
                f"{available / GIB:.1f} GiB available"
            )
            continue
        contestants.append(c)
    if not args.tf_python:
        notes.append("TensorFlow left out: no --tf-python given")
    workdir = Path(tempfile.mkdtemp(prefix="embserve-restore-sc-bench-", dir=args.tmp))
    load_before = os.getloadavg()[0]
    try:
        tiny_prefix, _ = _write_sparsecore(workdir / "tiny", SC_TINY_ROWS, width, None)
        _log(
            f"writing a SparseCore stack of {stack_rows:,} × {width} float32 "
            f"({stack_bytes / 1e9:.2f} GB) in {workdir}"
        )
        prefix, setup = _write_sparsecore(workdir / "big", stack_rows, width, workdir / "stack.f32")
        _log(f"written in {setup['fill_s']:.1f} s (values) + {setup['save_s']:.1f} s (save)")
        ids1, ids2 = _sc_ids(tables)
        digests = [
            _sc_digest({t.feature: _sc_values(t, ids[t.feature]) for t in tables}, tables)
            for ids in (ids1, ids2)
        ]
        warm_gbs = _warm(prefix)
        extra_args = ["--sparsecore", "--tiny-prefix", tiny_prefix]
        touches: list[dict[str, Any]] = []
        toucher = Contestant("touch", "first touch of private memory", tf=False, tables_of_memory=1)

        def touch() -> None:
            _log(f"probe: first touch of {stack_bytes / GIB:.1f} GiB of private memory")
            touches.append(_run_worker(toucher, sys.executable, prefix, stack_rows, width))

        all_runs, versions = _race(
            args,
            contestants,
            prefix,
            digests,
            lambda c, py: _run_worker(c, py, prefix, stack_rows, width, extra_args),
            each_rep=touch,
        )
        first = [r["first_touch_s"] for r in touches]
        again = [r["second_write_s"] for r in touches]
        notes.append(
            f"fresh private memory on this VM: a new process writing {stack_bytes / GIB:.1f} GiB "
            f"of `np.empty` for the first time took {_fmt_s(first)}, writing it again "
            f"{_fmt_s(again)} (one probe per repetition, each in a fresh process): "
            "copy=True and TensorFlow allocate GBs during the restore and pay these first-touch "
            "page faults"
        )
        for runs in all_runs:
            if not runs.reports:
                continue
            kinds = sorted({k for r in runs.reports for k in r["table_types"]})
            line = f"{runs.contestant.label} ({runs.cache}): tables served as {', '.join(kinds)}"
            if runs.contestant.tf:
                call = statistics.median(r["restore_call_s"] for r in runs.reports)
                build = statistics.median(r["build_s"] for r in runs.reports)
                line += (
                    f"; restore() {call:.3f} s + build() {build:.2f} s (build creates a variable "
                    "per table, runs its initializer, then the pending restore reads the whole "
                    "stack and unstacks each table into its variable)"
                )
            notes.append(line)
        kernel = [
            r["kernel_load_s"] for runs in all_runs for r in runs.reports if "kernel_load_s" in r
        ]
        date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        peak_note = (
            "peak RSS = VmHWM reset (clear_refs) just before the restore, read just after it"
            if all(r["peak_is_restore_only"] for runs in all_runs for r in runs.reports)
            else "peak RSS = VmHWM of the whole process (this kernel refused to reset it)"
        )
        stack_name = _sc_stack_name(tables)
        layout_rows = [
            "| table | rows × dim | padded (Rp × W) | row offset o | rotation ρ | bytes (R·D·4) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *[
                f"| `{t.name}` | {t.rows:,} × {t.dim} | {t.padded_rows:,} × {width} "
                f"| {t.row_offset:,} | {t.rotation} | {t.rows * t.dim * 4 / 1e9:.2f} GB |"
                for t in tables
            ],
        ]
        section = "\n".join(
            [
                f"## {date}: restoring a SparseCore (TPUEmbeddingV2) checkpoint: one "
                f"{stack_rows:,} × {width} float32 stack ({stack_bytes / 1e9:.2f} GB), "
                f"{len(tables)} tables, {SC_CHIPS} chips × {SC_CORES_PER_CHIP} SparseCores",
                "",
                f"Command: `{command}`",
                "",
                _machine_facts(versions),
                "",
                "### The checkpoint",
                "",
                f"Stack `{stack_name}` [{stack_rows:,}, {width}] float32, N = {SC_CORES} "
                f"SparseCores, T = {shard_rows:,} rows per SparseCore shard, stored as "
                f"{SC_CHIPS} row slices of {stack_rows // SC_CHIPS:,} rows (one per chip) in "
                "one data file, with the `_sparse_core_table_layouts` proto and TensorFlow's "
                "object graph; the layout is the one TensorFlow 2.21's stacker computes for "
                "these tables. Padding rows hold 1e30, padding columns NaN.",
                "",
                *layout_rows,
                "",
                "### Restore time and memory",
                "",
                _table(all_runs, f"1,024 ids in each of {len(tables)} tables"),
                "",
                f"Median of {_count(args.reps, 'repetition')} (min – max), each in a fresh "
                "process, contestants interleaved with a rotating order; every lookup result "
                "checked bit-identical to the values written (the hash of table, row, column "
                "for the ids looked up; before the save the writer's stack was checked to hold "
                "those rows where the row formula of SPARSECORE_FORMAT.md §3.1 puts them). "
                "**warm** = the checkpoint's data file was read just before each run (the page "
                "cache cannot be dropped in this container)"
                + (
                    "; **cold** = its pages evicted with posix_fadvise(DONTNEED) just before "
                    "each run (the VM host may still cache the disk)."
                    if args.cold
                    else "."
                ),
                "- restore time: embserve's `restore(...)` call; TensorFlow's `restore()` + "
                "`build()` (restoring after `build()` leaves TF 2.21's stacked tables at their "
                "initializer values without a word, so that order is no contestant). RSS "
                "added = VmRSS after − before, split into anonymous (private) memory and mapped "
                "file pages (page cache, shared and reclaimable); "
                + peak_note
                + ", so it counts file pages mapped during the restore too (copy=True maps the "
                "stack and copies each table out of it, so it peaks at the tables plus the "
                "stack's page-cache pages, which it unmaps before returning; verify=True maps "
                "and reads every page); RSS before includes the interpreter and the imported "
                "libraries.",
                "- lookups: one call `emb({feature: ids})` with 1,024 uniform random ids for "
                f"each of the {len(tables)} tables, right after the restore, then a second "
                "call with other ids"
                + (
                    f"; embserve's kernels were loaded beforehand by restoring and looking up a "
                    f"{SC_TINY_ROWS}-row checkpoint of the same layout in the same mode "
                    f"({statistics.median(kernel) * 1e3:.0f} ms), so the first lookup is the "
                    "cost of reaching the rows."
                    if kernel
                    else "."
                ),
                f"- setup (not timed above): stack packed in {setup['fill_s']:.1f} s into a "
                f"memory-mapped scratch file, `BundleWriter.add_sliced` wrote it in "
                f"{setup['save_s']:.1f} s ({stack_bytes / setup['save_s'] / 1e9:.2f} GB/s); a "
                f"warm sequential read of the data file ran at {warm_gbs:.1f} GB/s",
                *[f"- {note}" for note in notes],
                f"- 1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} "
                "after (the cores are shared with other work)",
                "",
            ]
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        _log(f"removed {workdir}")
    publish(section, args.write)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with ``--worker``, one measurement)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help=f"table rows (default {ROWS:,})")
    parser.add_argument("--dim", type=int, default=DIM, help=f"table width (default {DIM})")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per contestant")
    parser.add_argument("--tf-python", help="python of a venv with tensorflow 2.21 (adds TF)")
    parser.add_argument("--cold", action="store_true", help="also run with the files evicted")
    parser.add_argument("--write", action="store_true", help="insert results into RESULTS.md")
    parser.add_argument("--tmp", default="/tmp", help="where the temporary directory goes")
    parser.add_argument(
        "--sparsecore",
        action="store_true",
        help=f"a SparseCore (TPUEmbeddingV2) checkpoint: one stack of --rows (default "
        f"{SC_STACK_ROWS:,}) × --dim, three tables, {SC_CHIPS} chips × {SC_CORES_PER_CHIP} "
        "SparseCores",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--tiny-prefix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker_main(args)

    command = " ".join([".venv/bin/python", "benchmarks/restore.py", *sys.argv[1:]])
    if args.sparsecore:
        return _main_sparsecore(args, command)
    wanted = [c for c in CONTESTANTS if args.tf_python or not c.tf]
    rows, notes, contestants = _plan_size(args.rows, args.dim, args.tmp, wanted)
    if not args.tf_python:
        notes.append("TensorFlow left out: no --tf-python given")
    table_bytes = rows * args.dim * 4
    workdir = Path(tempfile.mkdtemp(prefix="embserve-restore-bench-", dir=args.tmp))
    load_before = os.getloadavg()[0]
    try:
        _log(
            f"writing a {rows:,} × {args.dim} float32 table ({table_bytes / 1e9:.2f} GB) "
            f"in {workdir}"
        )
        prefix, digests, setup = _write_checkpoint(workdir, rows, args.dim)
        _log(f"written in {setup['fill_s']:.1f} s (values) + {setup['save_s']:.1f} s (save)")
        warm_gbs = _warm(prefix)
        all_runs, versions = _race(
            args,
            contestants,
            prefix,
            digests,
            lambda c, py: _run_worker(c, py, prefix, rows, args.dim),
        )
        for runs in all_runs:
            if runs.contestant.key.startswith("tf") and runs.reports:
                build = statistics.median(r["build_s"] for r in runs.reports)
                what = "build() (restore-on-create reads the checkpoint inside it)"
                if runs.contestant.key == "tf-after-build":
                    what = "build() before the restore, not in the restore time"
                    notes.append(f"{runs.contestant.label} ({runs.cache}): {what}: {build:.2f} s")
                else:
                    call = statistics.median(r["restore_call_s"] for r in runs.reports)
                    notes.append(
                        f"{runs.contestant.label} ({runs.cache}): restore() {call:.3f} s + {what} "
                        f"{build:.2f} s"
                    )
        kernel = [
            r["kernel_load_s"] for runs in all_runs for r in runs.reports if "kernel_load_s" in r
        ]
        date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        peak_note = (
            "peak RSS = VmHWM reset (clear_refs) just before the restore, read just after it"
            if all(r["peak_is_restore_only"] for runs in all_runs for r in runs.reports)
            else "peak RSS = VmHWM of the whole process (this kernel refused to reset it)"
        )
        section = "\n".join(
            [
                f"## {date}: restoring a {rows:,} × {args.dim} float32 table "
                f"({table_bytes / 1e9:.2f} GB)",
                "",
                f"Command: `{command}`",
                "",
                _machine_facts(versions),
                "",
                "### Restore time and memory",
                "",
                _table(all_runs),
                "",
                f"Median of {_count(args.reps, 'repetition')} (min – max), each in a fresh "
                "process, contestants interleaved with a rotating order; every lookup result "
                "checked bit-identical to the values written. **warm** = the checkpoint's "
                "data file was read just before each run (the page cache cannot be dropped in "
                "this container, so these are warm-cache numbers)"
                + (
                    "; **cold** = its pages evicted with posix_fadvise(DONTNEED) just before "
                    "each run (the VM host may still cache the disk)."
                    if args.cold
                    else "."
                ),
                "- restore time: the `restore(...)` call (TensorFlow before build: `restore()` "
                "+ `build()`, which is when the values are read); RSS added = VmRSS after − "
                "before, split into anonymous (private) memory and mapped file pages (page "
                "cache, shared between processes and reclaimable); "
                + peak_note
                + ", so it counts file pages mapped during the restore too (embserve "
                "copy=True reads the file straight into its array, so it peaks at one table; "
                "verify=True maps and reads every page); RSS before includes the "
                "interpreter and the imported libraries.",
                "- first lookup: `emb(ids)` with 1,024 uniform random ids right after the "
                "restore (embserve: its kernels were loaded beforehand on a tiny table, "
                f"{statistics.median(kernel) * 1e3:.0f} ms, so this is the cost of reaching "
                "the rows); second lookup: 1,024 other ids."
                if kernel
                else "- first lookup: `emb(ids)` with 1,024 uniform random ids right after the "
                "restore; second lookup: 1,024 other ids.",
                "- embserve restores a table this large without reading it (tables over 64 MiB "
                "are checksummed only with verify=True or `embserve inspect --verify`).",
                f"- setup (not timed above): values generated in {setup['fill_s']:.1f} s, "
                f"`embserve.train.Checkpoint.save` wrote them in {setup['save_s']:.1f} s "
                f"({table_bytes / setup['save_s'] / 1e9:.2f} GB/s, with fsync); a warm "
                f"sequential read of the data file ran at {warm_gbs:.1f} GB/s",
                *[f"- {note}" for note in notes],
                f"- 1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} "
                "after (the cores are shared with other work)",
                "",
            ]
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        _log(f"removed {workdir}")
    publish(section, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
