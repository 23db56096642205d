"""Benchmark embserve's serving lookups against PyTorch, NumPy, TensorFlow and the machine.

What it does: four serving workloads (a: 26 one-hot features on 26 tables of 1,000,000 × 64,
Zipf and uniform ids; b: multi-hot bags of 1–40 ids from a 4,000,000 × 64 table, sum and
weighted mean; c: a sequence feature [256, 50, 64] from ragged rows of 0–80 ids; d: batch-1 ×
26 features latency) are run by every contestant; per call it reports the median, min and max
time, the ratio to PyTorch and the achieved table-read bandwidth, one verdict line per target of
issue 6, as markdown on stdout (and, with ``--write``, in ``benchmarks/RESULTS.md`` together with
the machine and the command). For context it measures this machine's random-row-gather limit
for exactly each workload's rows (interleaved with the contestants) and its gather and
sequential-read bandwidth.

``--sweep`` instead measures throughput (lookups and GB/s of rows) against batch size
(1 … 16,384: 26 one-hot features and bags of 1–40, sum) and against table size (4,096 rows =
1 MiB, cache-resident, × 4 per step up to 32 Mi rows = 8 GiB; bags of uniform ids), and draws
``benchmarks/plots/batch_sweep.png`` and ``table_sweep.png`` (matplotlib, Agg backend).

Contestants:

- embserve through its public serving API: ``mid = es.TPUEmbeddingForServing(feature_config,
  optimizer=None)``, ``es.train.Checkpoint(embedding=mid).restore(prefix)`` (tables become
  views of the checkpoint mapped at 2 MiB boundaries), ``collapse_huge_pages(mid)`` (as
  ``embserve serve`` does with ``huge_pages = true``; ``EMBSERVE_BENCH_HUGE_PAGES=0`` skips it),
  ``mid(features, weights)``; plus ``embserve (4 KiB pages)``, the same lookups on torch's maps;
- PyTorch ``embedding_bag`` / ``embedding`` (the ``bench`` extra) and vectorised NumPy, on
  ``np.memmap`` s of the same checkpoint file at the offsets its index gives (the zero-copy
  route without embserve; 4 KiB page-table entries);
- TensorFlow's ``TPUEmbeddingForServing`` when ``--tf-python`` names a TF 2.21 venv's python: it
  restores the same checkpoint (into its own memory) and is timed through ``tf.function`` and
  eagerly (``_tf_worker.py``, which needs neither torch nor embserve).

Why it is built this way (ARCHITECTURE.md, "Habits"):

- Every contestant runs in its own worker process (spawned; TF's is a subprocess of its own
  interpreter): numba's, torch's and TF's thread pools disturb each other inside one process.
  The parent drives the workers round-robin, one at a time, rotating who goes first, so every
  contestant sees the same (shared, noisy) machine.
- The tables exist once: a TensorFlow-format checkpoint in /dev/shm written by
  ``es.train.Checkpoint.write`` (7.7 GB at full size), which every worker maps. One private copy
  per worker would not fit in this machine's 24 GiB (TF makes one anyway; it is the only one).
- Inputs are generated once by the parent, converted to each contestant's types inside its worker
  before any timing, and every contestant's output (of every batch; of 2 batches per sweep
  point) is checked against a float64 reference (rtol 1e-5) before the first timed call.
- Each workload cycles through several distinct input batches, so a timed call does not find
  its rows still in the 32 MiB L3 cache from the previous call (16 batches × 6.8 MB of rows
  in workload a is 3.4× the L3).

Usage::

    .venv/bin/python benchmarks/run.py --tf-python .venvs/tf/bin/python   # a few minutes
    .venv/bin/python benchmarks/run.py --sweep --tf-python .venvs/tf/bin/python
    .venv/bin/python benchmarks/run.py --write   # ... and prepend the results to RESULTS.md
    .venv/bin/python benchmarks/run.py --quick   # seconds-long smoke run (tests/test_benchmarks.py)
    .venv/bin/python benchmarks/run.py --sweep --quick --plots-dir /tmp/plots

``make bench`` runs the first two (TF when ``.venvs/tf`` exists). Contestants that cannot be
imported (torch without the ``bench`` extra, TF without a usable ``--tf-python``) are left out
with a note; any other failure, including a wrong output, is an error. When memory is short the
one-hot tables shrink to 250,000 rows, TF is left out, or the table sweep stops below 8 GiB, each
with a note in the report.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import mmap
import multiprocessing as mp
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS_PATH, cpu_model, git_commit, publish

DIM = 64
ROW_BYTES = DIM * 4  # one float32 row of 64 = 256 bytes
N_ONEHOT = 26
ZIPF_EXPONENT = 1.05
SEED = 20_251_125
LIBRARIES = ("embserve", "torch", "numpy")
# Pause between two contestants' turns. numba (omp layer) and torch both run on GNU OpenMP, whose
# idle threads spin before sleeping: measured here, a pool burns 8-11 ms of CPU in the 20 ms
# after a parallel region and ~1 ms more by 50 ms. Without a pause the worker that just finished
# steals a core from the next one. 30 ms × ~450 turns adds ~14 s to a full run.
SETTLE_S = 0.03


def _cpu_count() -> int:
    """Threads per contestant: the cores this process may run on (2 here), or ``--threads``
    (passed to the workers as ``EMBSERVE_BENCH_THREADS``, with ``NUMBA_NUM_THREADS``)."""
    chosen = os.environ.get("EMBSERVE_BENCH_THREADS")
    return int(chosen) if chosen else len(os.sched_getaffinity(0))


def _log(message: str) -> None:
    """Progress to stderr, so stdout carries only the markdown report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Sizes, tables, workloads
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How big everything is; ``FULL`` for ``make bench``, ``QUICK`` for the smoke test."""

    onehot_vocab: int  # rows of each of the 26 one-hot tables (workloads a, d)
    big_vocab: int  # rows of the one multi-hot / sequence table (workloads b, c)
    batch: int  # workloads a and b
    seq_batch: int  # workload c
    n_batches: int  # distinct input batches per workload, cycled through by the timed calls
    latency_batches: int  # the same for workload d (26 ids each, so many more are cheap)
    rounds: int  # round-robin rounds per workload
    reps: int  # timed calls per contestant per round (workload d uses 20×)
    bandwidth_rows: int  # rows gathered by the random-gather probe


FULL = Sizes(
    onehot_vocab=1_000_000,
    big_vocab=4_000_000,
    batch=1024,
    seq_batch=256,
    n_batches=16,
    latency_batches=256,
    rounds=15,
    reps=6,
    bandwidth_rows=1_000_000,  # 256 MB of rows from the 1 GB table
)
QUICK = Sizes(
    onehot_vocab=4_000,
    big_vocab=40_000,
    batch=256,
    seq_batch=64,
    n_batches=2,
    latency_batches=4,
    rounds=2,
    reps=2,
    bandwidth_rows=20_000,
)
# Used when /dev/shm or RAM cannot hold the full 7.7 GB (the brief's stated fallback).
REDUCED_ONEHOT_VOCAB = 250_000


@dataclass(frozen=True)
class TableSpec:
    """One float32 [vocab, 64] table; ``offset`` is its byte offset in a raw shared file."""

    name: str
    vocab: int
    offset: int = 0

    @property
    def nbytes(self) -> int:
        """Size of the table in bytes."""
        return self.vocab * ROW_BYTES


@dataclass(frozen=True)
class TableSource:
    """Where every process finds the tables: the same physical pages for all of them.

    ``kind`` is ``checkpoint`` (``path`` is a TensorFlow-format checkpoint prefix in /dev/shm,
    written by embserve; embserve and TF restore it, the others map its tables through a
    restored embserve object) or ``file`` (``path`` is a raw /dev/shm file of back-to-back
    tables, for the table-size sweep, whose smaller tables are prefixes of one 8 GB table).
    """

    kind: str
    path: str
    specs: tuple[TableSpec, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of all tables."""
        return sum(spec.nbytes for spec in self.specs)


def _layout(sizes: Sizes) -> list[TableSpec]:
    """The 26 one-hot tables ``t00``..``t25`` then ``big``, back to back."""
    specs: list[TableSpec] = []
    offset = 0
    for name, vocab in [(f"t{i:02d}", sizes.onehot_vocab) for i in range(N_ONEHOT)] + [
        ("big", sizes.big_vocab)
    ]:
        specs.append(TableSpec(name, vocab, offset))
        offset += vocab * ROW_BYTES
    return specs


def _map_file(path: str, specs: Sequence[TableSpec]) -> tuple[mmap.mmap, dict[str, np.ndarray]]:
    """Maps a raw shared file and returns writable float32 views, one per table (no copy)."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        mapping = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    tables = {
        spec.name: np.frombuffer(mapping, np.float32, spec.vocab * DIM, spec.offset).reshape(
            spec.vocab, DIM
        )
        for spec in specs
    }
    return mapping, tables


def _random_fill(arrays: Sequence[np.ndarray], seed: int) -> None:
    """Fills float32 arrays with uniform [0, 1) in 64 MB chunks on every core.

    numpy's ``Generator.random`` releases the GIL: 1.92 GB took 2.9-3.7 s on one thread,
    1.5-1.6 s on two.
    """
    chunk_rows = 1 << 18  # 64 MB per chunk
    jobs = [
        (a, lo, min(lo + chunk_rows, a.shape[0]))
        for a in arrays
        for lo in range(0, a.shape[0], chunk_rows)
    ]
    seeds = np.random.SeedSequence(seed).spawn(len(jobs))

    def fill(job: tuple[np.ndarray, int, int], s: np.random.SeedSequence) -> None:
        array, lo, hi = job
        np.random.default_rng(s).random(out=array[lo:hi], dtype=np.float32)

    with ThreadPoolExecutor(_cpu_count()) as pool:
        list(pool.map(fill, jobs, seeds))


def _fill_file(path: str, specs: Sequence[TableSpec]) -> float:
    """Creates a raw shared file and fills every table with uniform [0, 1); returns seconds."""
    start = time.perf_counter()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, sum(spec.nbytes for spec in specs))
    finally:
        os.close(fd)
    mapping, tables = _map_file(path, specs)
    _random_fill(list(tables.values()), SEED)
    del tables, mapping
    return time.perf_counter() - start


def _write_checkpoint(prefix: str, specs: Sequence[TableSpec]) -> float:
    """Writes the tables as a TensorFlow-format checkpoint with ``es.train.Checkpoint.write``.

    Returns seconds. The checkpoint is what ``tf.train.Checkpoint(embedding=mid).write`` would
    write for a ``TPUEmbeddingForServing`` holding every table (object ``embedding``, one child
    per table name), so embserve and TensorFlow restore it through their public APIs.

    Memory: the writer takes each table's value from its initializer and streams it to the data
    file, but ``build()`` creates every table before the write, so distinct random tables would
    hold a second 7.7 GB copy next to the checkpoint in /dev/shm. Instead the tables of one
    vocabulary size are overlapping windows of one random source of ``vocab + n`` rows (table
    ``i`` is rows ``i … i + vocab``): zero-copy views, 256 MB of source for the 26 one-hot
    tables, yet every table's content differs (a lookup in the wrong table does not pass the
    check). The checkpoint itself has 26 distinct copies: distinct physical pages, as served.
    """
    import embserve as es

    start = time.perf_counter()
    by_vocab: dict[int, list[TableSpec]] = {}
    for spec in specs:
        by_vocab.setdefault(spec.vocab, []).append(spec)
    sources = {
        vocab: np.empty((vocab + len(group) - 1, DIM), np.float32)
        for vocab, group in by_vocab.items()
    }
    _random_fill(list(sources.values()), SEED)
    configs = {}
    for vocab, group in by_vocab.items():
        for i, spec in enumerate(group):
            window = sources[vocab][i : i + vocab]
            configs[spec.name] = es.TableConfig(
                vocabulary_size=vocab,
                dim=DIM,
                name=spec.name,
                initializer=lambda shape, dtype=None, window=window: window,
            )
    writer = es.TPUEmbeddingForServing(
        {name: es.FeatureConfig(table=config) for name, config in configs.items()}, optimizer=None
    )
    es.train.Checkpoint(embedding=writer).write(prefix)
    return time.perf_counter() - start


def _open_tables(source: TableSource) -> tuple[Any, dict[str, np.ndarray]]:
    """Every table of ``source`` as a zero-copy view of the shared pages, and what keeps the
    mapping alive.

    A checkpoint's tables are ``np.memmap`` s of its data file at the offsets its index gives:
    how a PyTorch or NumPy server would read a TensorFlow checkpoint without copying it (and how
    torch, numpy, the machine probes and the reference read it here). Such a map uses 4 KiB
    pages; embserve's own restore maps the file at 2 MiB boundaries and, with
    ``collapse_huge_pages``, on 2 MiB pages (the ``embserve`` rows; ``embserve (4 KiB pages)``
    runs embserve's lookups on these maps instead).
    """
    if source.kind == "file":
        return _map_file(source.path, source.specs)
    from embserve.checkpoint import BundleReader
    from embserve.checkpoint.bundle import data_path
    from embserve.checkpointing import find_embedding_tables

    with BundleReader(source.path) as reader:
        found = {t.table: t for t in find_embedding_tables(reader)}
        infos = {name: reader.info(t.key) for name, t in found.items()}
        shards = reader.num_shards
    tables = {}
    for spec in source.specs:
        info = infos[spec.name]
        tables[spec.name] = np.memmap(
            data_path(source.path, info.shard_id, shards),
            dtype=np.float32,
            mode="r",
            offset=info.offset,
            shape=(spec.vocab, DIM),
        )
    return None, tables


def _table(tables: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Table ``name``; ``"base@N"`` is the first N rows of table ``base`` (table-size sweep)."""
    base, _, rows = name.partition("@")
    return tables[base][: int(rows)] if rows else tables[base]


@dataclass
class Workload:
    """One benchmark case: its inputs (plain numpy, identical for every contestant) and options.

    ``kind`` is ``onehot`` (one id per example per feature, dense ids ``[B]``), ``bag`` (ragged
    ``values`` / ``row_splits`` / optional ``weights``) or ``sequence`` (ragged, packed into
    ``[B, seq_len, 64]``). ``rows_read`` is the number of table rows each batch needs, for the
    achieved-bandwidth column.
    """

    key: str
    title: str
    kind: str
    tables: list[str]
    batches: list[Any]
    rows_read: list[int]
    reps: int
    combiner: str = "sum"
    weighted: bool = False
    seq_len: int = 0
    torch_note: str = ""
    n_checked: int = 0  # batches whose outputs are checked (0: all); big sweep points check 2
    point: int = 0  # sweep: the batch size or table rows this workload is a point of

    def plain(self) -> dict[str, Any]:
        """The workload as plain data, for the TF worker (which cannot import this module)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class _IdSampler:
    """Zipf-like ids: rank r has probability ∝ r^-1.05, ranks mapped to ids by a permutation.

    The permutation scatters the hot rows over the table, as trained id vocabularies do.
    """

    def __init__(self, rng: np.random.Generator, cdf: np.ndarray) -> None:
        self.cdf = cdf  # shared by the 26 samplers of one vocabulary size (8 MB at 1M rows)
        self.vocab = len(cdf)
        self.perm = rng.permutation(self.vocab)

    @staticmethod
    def zipf_cdf(vocab: int) -> np.ndarray:
        """Cumulative probabilities of ranks 1..vocab."""
        cdf = np.cumsum(np.arange(1, vocab + 1, dtype=np.float64) ** -ZIPF_EXPONENT)
        return cdf / cdf[-1]

    def zipf(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` Zipf-distributed int64 ids."""
        ranks = np.searchsorted(self.cdf, rng.random(n), side="right")
        return self.perm[np.minimum(ranks, self.vocab - 1)].astype(np.int64)


def _ragged(
    rng: np.random.Generator, sampler: _IdSampler, batch: int, lo: int, hi: int, weighted: bool
) -> dict[str, np.ndarray | None]:
    """A ragged batch: row lengths uniform in [lo, hi], Zipf ids, weights in (0, 1] if asked."""
    lengths = rng.integers(lo, hi + 1, size=batch)
    row_splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(row_splits[-1])
    weights = (1.0 - rng.random(n, dtype=np.float32)) if weighted else None
    return {"values": sampler.zipf(rng, n), "row_splits": row_splits, "weights": weights}


def _make_workloads(sizes: Sizes) -> list[Workload]:
    """Builds workloads a (Zipf, uniform), b (sum, weighted mean), c (sequence) and d (latency)."""
    rng = np.random.default_rng(SEED)
    onehot = [f"t{i:02d}" for i in range(N_ONEHOT)]
    onehot_cdf = _IdSampler.zipf_cdf(sizes.onehot_vocab)
    samplers = [_IdSampler(rng, onehot_cdf) for _ in onehot]
    big = _IdSampler(rng, _IdSampler.zipf_cdf(sizes.big_vocab))
    b, k = sizes.batch, sizes.n_batches
    workloads: list[Workload] = []

    zipf_a = [[s.zipf(rng, b) for s in samplers] for _ in range(k)]
    uniform_a = [
        [rng.integers(0, sizes.onehot_vocab, b, dtype=np.int64) for _ in onehot] for _ in range(k)
    ]
    for key, label, batches in (("a-zipf", "Zipf", zipf_a), ("a-uniform", "uniform", uniform_a)):
        workloads.append(
            Workload(
                key=key,
                title=f"a) 26 one-hot × {sizes.onehot_vocab:,}×64, {label} ids, B={b}",
                kind="onehot",
                tables=onehot,
                batches=batches,
                rows_read=[N_ONEHOT * b] * k,
                reps=sizes.reps,
                torch_note="26 × embedding_bag(offsets=arange(B), mode='sum')",
            )
        )
    bag_cases = [("b-sum", "sum", False), ("b-wmean", "mean", True)]
    # Issue 12 (float32 bags level with torch): the weighted sum and the unweighted mean too.
    # Their batches are drawn after every other workload's, so b-sum / b-wmean / c / d keep the
    # inputs of earlier runs.
    extra_cases = [("b-wsum", "sum", True), ("b-mean", "mean", False)]
    for key, combiner, weighted in bag_cases:
        batches = [_ragged(rng, big, b, 1, 40, weighted) for _ in range(k)]
        label = ("weighted " if weighted else "") + combiner
        workloads.append(
            Workload(
                key=key,
                title=f"b) bags of 1–40 ids, {sizes.big_vocab:,}×64, B={b}, {label}",
                kind="bag",
                tables=["big"],
                batches=batches,
                rows_read=[len(x["values"]) for x in batches],
                reps=sizes.reps,
                combiner=combiner,
                weighted=weighted,
                torch_note=_bag_torch_note(combiner, weighted),
            )
        )
    seq_len = 50
    batches = [_ragged(rng, big, sizes.seq_batch, 0, 80, False) for _ in range(k)]
    workloads.append(
        Workload(
            key="c-seq",
            title=f"c) sequence, rows of 0–80 ids → [{sizes.seq_batch}, {seq_len}, 64]",
            kind="sequence",
            tables=["big"],
            batches=batches,
            # rows inside the [B, 50] window; ids beyond it need no row (TF gathers them anyway)
            rows_read=[int(np.minimum(np.diff(x["row_splits"]), seq_len).sum()) for x in batches],
            reps=sizes.reps,
            seq_len=seq_len,
            torch_note="embedding on the ids inside the window, scattered into zeros [B, 50, 64]",
        )
    )
    latency = [[s.zipf(rng, 1) for s in samplers] for _ in range(sizes.latency_batches)]
    workloads.append(
        Workload(
            key="d-latency",
            title="d) batch 1 × 26 one-hot features, Zipf ids (latency)",
            kind="onehot",
            tables=onehot,
            batches=latency,
            rows_read=[N_ONEHOT] * len(latency),
            reps=sizes.reps * 20,  # 40-250 µs calls (vs ms for a-c): 20× the reps, still cheap
            torch_note="26 × embedding_bag(offsets=[0], mode='sum')",
        )
    )
    for key, combiner, weighted in extra_cases:
        batches = [_ragged(rng, big, b, 1, 40, weighted) for _ in range(k)]
        label = ("weighted " if weighted else "") + combiner
        workloads.append(
            Workload(
                key=key,
                title=f"b) bags of 1–40 ids, {sizes.big_vocab:,}×64, B={b}, {label}",
                kind="bag",
                tables=["big"],
                batches=batches,
                rows_read=[len(x["values"]) for x in batches],
                reps=sizes.reps,
                combiner=combiner,
                weighted=weighted,
                torch_note=_bag_torch_note(combiner, weighted),
            )
        )
    return workloads


def _bag_torch_note(combiner: str, weighted: bool) -> str:
    """What torch runs for a bag workload."""
    if weighted and combiner == "mean":
        return "embedding_bag(mode='sum', per_sample_weights) × 1/segment_reduce(weights)"
    if weighted:
        return "embedding_bag(offsets, mode='sum', per_sample_weights)"
    return f"embedding_bag(offsets, mode='{combiner}')"


def _reference(workload: Workload, tables: dict[str, np.ndarray], batch: Any) -> np.ndarray:
    """The expected output of one batch, written plainly with float64 accumulation.

    The spec is SEMANTICS.md §4.1 (dense: plain gather), §4.7(a) (ragged combine, divide-or-zero)
    and §4.7(b) (ragged sequence: pack left, cut or zero-pad to L).
    """
    if workload.kind == "onehot":
        return np.stack(
            [_table(tables, name)[ids] for name, ids in zip(workload.tables, batch, strict=True)]
        )
    table = _table(tables, workload.tables[0])
    splits = batch["row_splits"]
    n_rows = len(splits) - 1
    if workload.kind == "sequence":
        out = np.zeros((n_rows, workload.seq_len, DIM), np.float32)
        for row in range(n_rows):
            ids = batch["values"][splits[row] : splits[row + 1]][: workload.seq_len]
            out[row, : len(ids)] = table[ids]
        return out
    out64 = np.zeros((n_rows, DIM), np.float64)
    for row in range(n_rows):
        lo, hi = splits[row], splits[row + 1]
        rows = table[batch["values"][lo:hi]].astype(np.float64)
        weights = (
            np.ones(hi - lo) if batch["weights"] is None else batch["weights"][lo:hi].astype(float)
        )
        total = weights @ rows
        if workload.combiner == "mean":
            denominator = weights.sum()
            total = total / denominator if denominator != 0 else np.zeros(DIM)
        out64[row] = total
    return out64.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Contestants (each constructed inside its own worker process)
# --------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A contestant's ready-to-time form of one workload.

    ``inputs`` are already in the contestant's own types; ``call`` does one lookup of one batch;
    ``to_numpy`` turns a result into the canonical array the parent checks (never timed);
    ``None`` marks a diagnostic (a part of a contestant, timed but not a lookup, not checked);
    ``table`` is the array the call reads (its first table), whose mapping the worker describes
    (:func:`_mapping_pages`).
    """

    call: Callable[[Any], Any]
    inputs: list[Any]
    to_numpy: Callable[[Any], np.ndarray] | None
    table: np.ndarray | None = None  # the (first) table it reads, for the page facts


class _NumpyContestant:
    """Plain NumPy, vectorised: fancy-index gathers and ``np.add.reduceat`` over bag starts."""

    def __init__(self) -> None:
        self.versions = {"numpy": np.__version__}

    def prepare(self, workload: Workload, tables: dict[str, np.ndarray]) -> dict[str, Prepared]:
        """One variant, ``numpy``."""
        if workload.kind == "onehot":
            weights = [_table(tables, name) for name in workload.tables]

            def onehot(batch: list[np.ndarray]) -> list[np.ndarray]:
                return [np.take(t, ids, axis=0) for t, ids in zip(weights, batch, strict=True)]

            return {"numpy": Prepared(onehot, workload.batches, np.stack)}
        table = _table(tables, workload.tables[0])
        if workload.kind == "sequence":
            length = workload.seq_len

            def sequence(batch: dict[str, np.ndarray]) -> np.ndarray:
                splits, values = batch["row_splits"], batch["values"]
                lengths = np.diff(splits)
                rows = np.repeat(np.arange(len(lengths)), lengths)
                positions = np.arange(len(values)) - np.repeat(splits[:-1], lengths)
                keep = positions < length
                out = np.zeros((len(lengths), length, DIM), np.float32)
                out[rows[keep], positions[keep]] = np.take(table, values[keep], axis=0)
                return out

            return {"numpy": Prepared(sequence, workload.batches, np.asarray)}
        # np.add.reduceat returns the first element, not 0, for an empty bag; b's bags hold 1–40.
        assert all(np.diff(x["row_splits"]).min() > 0 for x in workload.batches)
        mean = workload.combiner == "mean"

        def bag(batch: dict[str, np.ndarray]) -> np.ndarray:
            starts = batch["row_splits"][:-1]
            gathered = np.take(table, batch["values"], axis=0)
            weights = batch["weights"]
            if weights is None:
                sums = np.add.reduceat(gathered, starts, axis=0)
                if mean:  # b's bags hold 1–40 ids: no empty bag to divide by zero
                    sums /= np.diff(batch["row_splits"])[:, None]
                return sums
            gathered *= weights[:, None]
            sums = np.add.reduceat(gathered, starts, axis=0)
            if not mean:
                return sums
            denominators = np.add.reduceat(weights, starts)[:, None]
            return np.divide(sums, denominators, out=np.zeros_like(sums), where=denominators != 0)

        return {"numpy": Prepared(bag, workload.batches, np.asarray)}


class _TorchContestant:
    """PyTorch on the CPU: ``embedding_bag`` (offsets form), ``embedding`` for sequences."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        torch.set_num_threads(_cpu_count())  # 2 on this machine
        torch.set_grad_enabled(False)  # serving: no autograd bookkeeping
        self.versions = {"torch": torch.__version__, "torch threads": str(torch.get_num_threads())}

    def prepare(self, workload: Workload, tables: dict[str, np.ndarray]) -> dict[str, Prepared]:
        """One variant, ``torch``; tables wrap the shared pages (``from_numpy``, no copy)."""
        torch = self.torch
        functional = torch.nn.functional
        with warnings.catch_warnings():
            # Checkpoint tables are read-only maps; torch warns that it cannot protect them
            # from writes, and these lookups never write.
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            weights = {name: torch.from_numpy(_table(tables, name)) for name in workload.tables}

        if workload.kind == "onehot":
            ordered = [weights[name] for name in workload.tables]
            offsets = torch.arange(len(workload.batches[0][0]), dtype=torch.int64)
            inputs = [[torch.from_numpy(ids) for ids in batch] for batch in workload.batches]

            def onehot(batch: list[Any]) -> list[Any]:
                return [
                    functional.embedding_bag(ids, table, offsets, mode="sum")
                    for ids, table in zip(batch, ordered, strict=True)
                ]

            def onehot_np(out: list[Any]) -> np.ndarray:
                return np.stack([o.numpy() for o in out])

            return {"torch": Prepared(onehot, inputs, onehot_np)}

        table = weights[workload.tables[0]]
        inputs = [
            {k: (None if v is None else torch.from_numpy(v)) for k, v in x.items()}
            for x in workload.batches
        ]
        if workload.kind == "sequence":
            length = workload.seq_len

            def sequence(batch: dict[str, Any]) -> Any:
                splits, values = batch["row_splits"], batch["values"]
                lengths = torch.diff(splits)
                n_rows = len(lengths)
                rows = torch.repeat_interleave(torch.arange(n_rows), lengths)
                positions = torch.arange(len(values)) - torch.repeat_interleave(
                    splits[:-1], lengths
                )
                keep = positions < length
                out = torch.zeros((n_rows, length, DIM), dtype=torch.float32)
                out[rows[keep], positions[keep]] = functional.embedding(values[keep], table)
                return out

            return {"torch": Prepared(sequence, inputs, lambda out: out.numpy())}

        mean = workload.combiner == "mean"

        def bag(batch: dict[str, Any]) -> Any:
            splits, values, bag_weights = batch["row_splits"], batch["values"], batch["weights"]
            sums = functional.embedding_bag(
                values,
                table,
                splits,
                mode="mean" if mean and bag_weights is None else "sum",
                per_sample_weights=bag_weights,
                include_last_offset=True,
            )
            if not mean or bag_weights is None:
                return sums
            # mode="mean" refuses per_sample_weights: divide by the per-bag weight sums (0 → 0).
            denominators = torch.segment_reduce(bag_weights, "sum", offsets=splits)
            inverse = torch.where(denominators != 0, 1.0 / denominators, 0.0)
            return sums.mul_(inverse.unsqueeze(1))

        return {"torch": Prepared(bag, inputs, lambda out: out.numpy(), table.numpy())}


class _EmbserveContestant:
    """embserve through its public serving API: ``TPUEmbeddingForServing`` restored from the
    benchmark's checkpoint, called as ``mid(features, weights)``.

    Per workload the worker builds ``mid = es.TPUEmbeddingForServing(feature_config,
    optimizer=None)`` with the workload's configs (table names as in the checkpoint) and
    ``es.train.Checkpoint(embedding=mid).restore(prefix)``: the tables become read-only
    memory-mapped views of the checkpoint's data file, the pages every other contestant reads.
    Objects are shared by workloads with the same configs (a, d). Sweep tables ``base@N``
    (prefixes of one big table, which no checkpoint holds) are given through
    ``TableConfig(initializer=...)`` returning the shared view, which ``build()`` keeps
    without copying.
    """

    def __init__(self, source: TableSource) -> None:
        import numba

        import embserve as es

        self.serving_class = es.TPUEmbeddingForServing
        self.es = es
        self.numba = numba
        self.source = source
        self.mids: dict[tuple[Any, ...], Any] = {}
        self.huge_pages = os.environ.get("EMBSERVE_BENCH_HUGE_PAGES", "1") != "0"
        self.setup_s: dict[str, float] = {}
        # Internal, for one diagnostic row only (ARCHITECTURE.md: "the check is a cheap pass;
        # measure it in the benchmark"). If it moves, the row goes; the contestant stays.
        try:
            from embserve.kernels.check import first_bad_id
        except ImportError:
            first_bad_id = None
        self.first_bad_id = first_bad_id
        self.versions = {
            "embserve": str(getattr(es, "__version__", "?")),
            "numba": numba.__version__,
            "numba threads": str(numba.get_num_threads()),
        }

    def _mid(self, workload: Workload, tables: dict[str, np.ndarray]) -> tuple[Any, list[str]]:
        """The workload's serving object (restored or built once per config) and feature keys."""
        es = self.es
        kind, names = workload.kind, list(workload.tables)
        signature = (kind, tuple(names), workload.combiner, workload.seq_len)
        keys = [f"f{i:02d}" for i in range(len(names))] if kind == "onehot" else ["f"]
        if signature in self.mids:
            return self.mids[signature], keys
        restore = self.source.kind == "checkpoint" and not any("@" in n for n in names)
        configs = {}
        for name in names:
            view = _table(tables, name).view()
            view.flags.writeable = False  # served tables are read-only
            configs[name] = es.TableConfig(
                vocabulary_size=view.shape[0],
                dim=DIM,
                combiner=workload.combiner,
                name=name,
                initializer=None if restore else (lambda shape, dtype=None, v=view: v),
            )
        if kind == "onehot":
            feature_config: Any = {
                key: es.FeatureConfig(table=configs[name])
                for key, name in zip(keys, names, strict=True)
            }
        else:
            feature_config = {
                "f": es.FeatureConfig(table=configs[names[0]], max_sequence_length=workload.seq_len)
            }
        mid = self.serving_class(feature_config, optimizer=None)
        if restore:
            es.train.Checkpoint(embedding=mid).restore(self.source.path)
            if self.huge_pages:
                from embserve.checkpointing import collapse_huge_pages

                start = time.perf_counter()
                moved = collapse_huge_pages(mid)
                self.setup_s[
                    f"collapse_huge_pages ({moved / 2**30:.2f} GiB), {kind}: {names[0]}…"
                ] = time.perf_counter() - start
        else:
            mid.build()
        self.mids[signature] = mid
        return mid, keys

    def _plain_mid(self, workload: Workload, tables: dict[str, np.ndarray]) -> Any:
        """The workload's serving object over the ``np.memmap`` tables everyone else reads (4 KiB
        pages), given through ``TableConfig(initializer=...)`` (kept by ``build()`` without a
        copy): embserve's lookups without its huge-page mapping."""
        es = self.es
        names = list(workload.tables)
        configs = {}
        for name in names:
            view = _table(tables, name).view(np.ndarray)
            view.flags.writeable = False
            configs[name] = es.TableConfig(
                vocabulary_size=view.shape[0],
                dim=DIM,
                combiner=workload.combiner,
                name=name,
                initializer=lambda shape, dtype=None, v=view: v,
            )
        if workload.kind == "onehot":
            fc: Any = {f"f{i:02d}": es.FeatureConfig(table=configs[n]) for i, n in enumerate(names)}
        else:
            fc = {
                "f": es.FeatureConfig(table=configs[names[0]], max_sequence_length=workload.seq_len)
            }
        mid = self.serving_class(fc, optimizer=None)
        mid.build()
        return mid

    def prepare(self, workload: Workload, tables: dict[str, np.ndarray]) -> dict[str, Prepared]:
        """Variants ``embserve`` (dense ids for one-hot) and ``embserve (ragged)`` (1-id bags)."""
        es = self.es
        mid, keys = self._mid(workload, tables)

        if workload.kind == "onehot":

            def onehot(batch: dict[str, Any]) -> dict[str, np.ndarray]:
                return mid(batch)

            def onehot_np(out: dict[str, np.ndarray]) -> np.ndarray:
                return np.stack([out[key] for key in keys])

            dense = [dict(zip(keys, batch, strict=True)) for batch in workload.batches]
            batch_size = len(workload.batches[0][0])
            variants = {"embserve": Prepared(onehot, dense, onehot_np)}
            if self.huge_pages and self.source.kind == "checkpoint" and not workload.point:
                plain = self._plain_mid(workload, tables)
                variants["embserve (4 KiB pages)"] = Prepared(
                    lambda batch: plain(batch), dense, onehot_np
                )
            variants.update(self._id_check(workload, tables, list(workload.batches)))
            if batch_size > 1 and not workload.point:
                one_per_row = np.arange(batch_size + 1, dtype=np.int64)
                ragged = [
                    {
                        key: es.RaggedTensor.from_row_splits(ids, one_per_row)
                        for key, ids in x.items()
                    }
                    for x in dense
                ]
                variants["embserve (ragged)"] = Prepared(onehot, ragged, onehot_np)
            return variants

        inputs = []
        for x in workload.batches:
            ids = es.RaggedTensor.from_row_splits(x["values"], x["row_splits"])
            weights = (
                None
                if x["weights"] is None
                else {"f": es.RaggedTensor.from_row_splits(x["weights"], x["row_splits"])}
            )
            inputs.append(({"f": ids}, weights))

        def ragged_lookup(batch: tuple[dict[str, Any], Any]) -> np.ndarray:
            return mid(batch[0], batch[1])["f"]

        served = next(iter(mid.embedding_tables.values()))
        variants = {"embserve": Prepared(ragged_lookup, inputs, np.asarray, served)}
        if self.huge_pages and self.source.kind == "checkpoint" and not workload.point:
            plain = self._plain_mid(workload, tables)
            variants["embserve (4 KiB pages)"] = Prepared(
                lambda batch: plain(batch[0], batch[1])["f"],
                inputs,
                np.asarray,
                next(iter(plain.embedding_tables.values())),
            )
        variants.update(self._id_check(workload, tables, [[x["values"]] for x in workload.batches]))
        return variants

    def _id_check(
        self, workload: Workload, tables: dict[str, np.ndarray], ids: list[list[np.ndarray]]
    ) -> dict[str, Prepared]:
        """Diagnostic ``embserve: id check``: the bounds pass over every id of a batch alone."""
        check = self.first_bad_id
        if check is None or workload.point:
            return {}
        rows = [_table(tables, name).shape[0] for name in workload.tables]

        def check_all(batch: list[np.ndarray]) -> None:
            for values, n_rows in zip(batch, rows, strict=True):
                check(values, n_rows, False)

        return {"embserve: id check": Prepared(check_all, ids, None)}

    def after_first_calls(self) -> None:
        """Records numba's threading layer, known only once a parallel kernel has run."""
        with contextlib.suppress(ValueError):
            self.versions["numba layer"] = str(self.numba.threading_layer())


class _GatherLimit:
    """The machine's limit for exactly a workload's rows (a diagnostic, not a lookup).

    It copies every table row the outputs need into a preallocated buffer: numba ``prange``
    (serial below 2,048 ids, where waking threads costs more than it saves), no combining, no
    id checks, no output allocation. Timed interleaved with the contestants, it is what the
    memory system gives for the same rows at the same moment.
    """

    def __init__(self) -> None:
        import numba

        def copy_rows(source: np.ndarray, ids: np.ndarray, out: np.ndarray) -> None:
            for i in numba.prange(ids.shape[0]):
                row = ids[i]
                for j in range(source.shape[1]):
                    out[i, j] = source[row, j]

        self.parallel = numba.njit(parallel=True)(copy_rows)
        self.serial = numba.njit(copy_rows)
        self.versions: dict[str, str] = {}

    def prepare(self, workload: Workload, tables: dict[str, np.ndarray]) -> dict[str, Prepared]:
        """Variant ``machine: row gather`` over (table, ids) pairs: per feature, or the ids
        inside the window of a sequence."""
        sources = [_table(tables, name) for name in workload.tables]
        inputs: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
        for batch in workload.batches:
            if workload.kind == "onehot":
                pairs = list(zip(sources, batch, strict=True))
            elif workload.kind == "sequence":
                splits, values = batch["row_splits"], batch["values"]
                lengths = np.diff(splits)
                positions = np.arange(len(values)) - np.repeat(splits[:-1], lengths)
                pairs = [(sources[0], values[positions < workload.seq_len])]
            else:
                pairs = [(sources[0], batch["values"])]
            inputs.append([(t, ids, np.empty((len(ids), DIM), np.float32)) for t, ids in pairs])
        parallel, serial = self.parallel, self.serial

        def gather(batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
            for table, ids, out in batch:
                (parallel if len(ids) >= 2048 else serial)(table, ids, out)

        return {"machine: row gather": Prepared(gather, inputs, None)}


def _bandwidth_probes(table: np.ndarray, rows: int, reps: int) -> list[tuple[str, list[float]]]:
    """This machine's memory bandwidth in GB/s: random 256-byte row gathers and sequential reads.

    The table is workload b's (1 GB at full size, 32× the L3), so every probe reads DRAM. NumPy
    runs on 1 thread; the numba kernels use ``prange`` on numba's default thread count.
    """
    import numba

    @numba.njit(parallel=True)
    def gather(source: np.ndarray, ids: np.ndarray, out: np.ndarray) -> None:
        for i in numba.prange(ids.shape[0]):
            row = ids[i]
            for j in range(source.shape[1]):
                out[i, j] = source[row, j]

    # fastmath lets the reduction vectorise: this is a bandwidth probe, not a result.
    @numba.njit(parallel=True, fastmath=True)
    def total(source: np.ndarray) -> float:
        acc = 0.0
        for i in numba.prange(source.shape[0]):
            for j in range(source.shape[1]):
                acc += source[i, j]
        return acc

    rng = np.random.default_rng(SEED + 1)
    ids = rng.integers(0, table.shape[0], rows, dtype=np.int64)
    out = np.empty((rows, DIM), np.float32)
    threads = numba.get_num_threads()
    probes: list[tuple[str, Callable[[], object], int]] = [
        ("random 256-byte row gather, NumPy np.take (1 thread)",
         lambda: np.take(table, ids, axis=0, out=out), rows * ROW_BYTES),
        (f"random 256-byte row gather, numba prange ({threads} threads)",
         lambda: gather(table, ids, out), rows * ROW_BYTES),
        ("sequential read, NumPy sum(axis=0) (1 thread)",
         lambda: table.sum(axis=0), table.nbytes),
        (f"sequential read, numba prange sum ({threads} threads)",
         lambda: total(table), table.nbytes),
    ]  # fmt: skip
    results = []
    for label, probe, nbytes in probes:
        probe()  # compile / fault in
        rates = []
        for _ in range(reps):
            start = time.perf_counter()
            probe()
            rates.append(nbytes / (time.perf_counter() - start) / 1e9)
        results.append((label, rates))
    return results


# --------------------------------------------------------------------------------------------
# Page facts: what memory each contestant's table sits on
# --------------------------------------------------------------------------------------------


def page_settings() -> str:
    """This machine's transparent-huge-page settings, one line (the selected value of each).

    They decide what pages a table gets: under ``enabled = madvise`` anonymous memory gets 2 MiB
    pages only where the allocator asks (numpy does for large arrays, torch's allocator does not
    unless ``THP_MEM_ALLOC_ENABLE=1``), tmpfs / page-cache files follow ``shmem_enabled`` and
    embserve's ``collapse_huge_pages``.
    """
    parts = []
    for name in ("enabled", "defrag", "shmem_enabled"):
        try:
            with open(f"/sys/kernel/mm/transparent_hugepage/{name}") as f:
                text = f.read().split()
        except OSError:
            parts.append(f"THP {name} ?")
            continue
        chosen = [word[1:-1] for word in text if word.startswith("[")]
        parts.append(f"THP {name} = {chosen[0] if chosen else ' '.join(text)}")
    return ", ".join(parts)


def _mapping_pages(array: np.ndarray) -> dict[str, Any]:
    """The mappings that hold ``array``'s bytes, from /proc/self/smaps, summed (``madvise``
    splits one mapping into several): file or anonymous memory, kB mapped and resident, and how
    much is mapped by 2 MiB page-table entries (``AnonHugePages`` / ``ShmemPmdMapped`` /
    ``FilePmdMapped``). Whole mappings are counted, so a table sharing a mapping with others
    (a checkpoint's data file) reports the file's figures."""
    lo_addr = int(array.ctypes.data)
    hi_addr = lo_addr + array.nbytes
    facts: dict[str, Any] = {}
    fields = ("Rss", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped", "Anonymous")
    try:
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                head = line.split()
                if not head:
                    continue
                if not head[0].endswith(":") and "-" in head[0]:
                    lo, hi = (int(x, 16) for x in head[0].split("-"))
                    inside = lo < hi_addr and hi > lo_addr
                    if inside:
                        facts.setdefault("mapping", head[5] if len(head) > 5 else "[anonymous]")
                        facts["size_kb"] = facts.get("size_kb", 0) + (hi - lo) // 1024
                elif inside and head[0].rstrip(":") in fields:
                    key = head[0].rstrip(":")
                    facts[key] = facts.get(key, 0) + int(head[1])
    except OSError:
        pass
    return facts


def _pages_text(facts: dict[str, Any]) -> str:
    """``file /dev/shm/…, 2 MiB-mapped 1,024 of 1,048,580 kB`` from :func:`_mapping_pages`."""
    if not facts:
        return "?"
    where = facts.get("mapping", "?")
    kind = "anonymous" if where.startswith("[") or not where else f"file {os.path.basename(where)}"
    huge = sum(facts.get(k, 0) for k in ("AnonHugePages", "ShmemPmdMapped", "FilePmdMapped"))
    return (
        f"{kind}, resident {facts.get('Rss', 0):,} kB, on 2 MiB entries {huge:,} kB "
        f"(of {facts.get('size_kb', 0):,} kB mapped)"
    )


# --------------------------------------------------------------------------------------------
# Worker process
# --------------------------------------------------------------------------------------------


def _worker_main(conn: Connection, library: str, source: TableSource) -> None:
    """One contestant's process: import it, map the tables, then answer the parent's requests.

    Requests: ``("prepare", workload)`` → outputs of the checked batches per variant and timings
    of the first calls; ``("run", key, variant, reps, start)`` → per-call nanoseconds;
    ``("drop", key)``; ``("bandwidth", rows, reps)`` (the ``machine`` worker); ``("quit",)``.
    """
    started = time.perf_counter()
    contestant: Any
    try:
        if library == "numpy":
            contestant = _NumpyContestant()
        elif library == "torch":
            contestant = _TorchContestant()
        elif library == "embserve":
            contestant = _EmbserveContestant(source)
        else:
            contestant = _GatherLimit()
    except (ImportError, AttributeError) as exc:
        conn.send(("unavailable", f"{type(exc).__name__}: {exc}"))
        return
    mapping, tables = _open_tables(source)
    versions = getattr(contestant, "versions", {})
    conn.send(("ready", {"start_s": time.perf_counter() - started, "versions": versions}))
    prepared: dict[str, dict[str, Prepared]] = {}
    while True:
        request = conn.recv()
        try:
            if request[0] == "quit":
                break
            if request[0] == "prepare":
                workload: Workload = request[1]
                t0 = time.perf_counter()
                variants = contestant.prepare(workload, tables)
                prep_s = time.perf_counter() - t0
                outputs, first_call_s = {}, {}
                for name, p in variants.items():
                    t0 = time.perf_counter()
                    first = p.call(p.inputs[0])  # includes numba compilation, if any
                    first_call_s[name] = time.perf_counter() - t0
                    to_numpy = p.to_numpy
                    checked = p.inputs[1 : workload.n_checked or len(p.inputs)]
                    outputs[name] = (
                        None
                        if to_numpy is None
                        else [to_numpy(first)] + [to_numpy(p.call(x)) for x in checked]
                    )
                if hasattr(contestant, "after_first_calls"):
                    contestant.after_first_calls()
                prepared[workload.key] = variants
                pages = {
                    name: _mapping_pages(p.table)
                    for name, p in variants.items()
                    if p.table is not None
                }
                reply: Any = {
                    "pages": pages,
                    "outputs": outputs,
                    "prep_s": prep_s,
                    "first_call_s": first_call_s,
                    "versions": contestant.versions,
                    "setup_s": dict(getattr(contestant, "setup_s", {})),
                }
            elif request[0] == "run":
                _, key, variant, reps, start = request
                reply = _time_calls(prepared[key][variant], reps, start)
            elif request[0] == "drop":
                prepared.pop(request[1], None)
                reply = None
            elif request[0] == "bandwidth":
                reply = _bandwidth_probes(_table(tables, request[3]), request[1], request[2])
            else:
                raise ValueError(f"unknown request {request[0]!r}")
            conn.send(("ok", reply))
        except Exception:
            conn.send(("error", traceback.format_exc()))
    del mapping  # unmapped with the last view of it, at exit


def _time_calls(prepared: Prepared, reps: int, start: int) -> list[int]:
    """Times ``reps`` calls on batches ``start, start + 1, …`` (cycling); nanoseconds per call.

    The garbage collector is paused so a collection does not land inside one contestant's call.
    Calls run back to back, as under steady serving load.
    """
    times: list[int] = []
    inputs, call = prepared.inputs, prepared.call
    # One untimed call first: it wakes the thread pool after the other contestants' turns (the
    # first call of a turn was up to 8 ms slower in --quick runs) and is the same for everyone.
    call(inputs[(start - 1) % len(inputs)])
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(reps):
            batch = inputs[(start + i) % len(inputs)]
            t0 = time.perf_counter_ns()
            out = call(batch)
            t1 = time.perf_counter_ns()
            del out  # freed outside the timed region, the same for everyone
            times.append(t1 - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


@dataclass
class Worker:
    """The parent's handle on one worker process.

    ``plain``: the worker runs another interpreter (TensorFlow's venv) and cannot unpickle this
    module's classes, so workloads go to it as plain dicts.
    """

    library: str
    process: Any
    conn: Any
    start_s: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    plain: bool = False
    setup_s: dict[str, float] = field(default_factory=dict)

    def ask(self, *request: Any) -> Any:
        """Sends one request and returns the reply, raising the worker's traceback on error."""
        self.conn.send(request)
        try:
            status, reply = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.library} worker exited (out of memory?)") from None
        if status != "ok":
            raise RuntimeError(f"{self.library} worker failed:\n{reply}")
        return reply


def _start_workers(
    libraries: Sequence[str], source: TableSource
) -> tuple[list[Worker], dict[str, str]]:
    """Spawns one worker per library; returns the ready ones and why the others are missing."""
    context = mp.get_context("spawn")
    pending = []
    for library in libraries:
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_worker_main, args=(child_end, library, source), daemon=True
        )
        process.start()
        child_end.close()
        pending.append(Worker(library, process, parent_end))
    ready, missing = [], {}
    for worker in pending:
        status, info = worker.conn.recv()
        if status == "ready":
            worker.start_s, worker.versions = info["start_s"], info["versions"]
            ready.append(worker)
        else:
            missing[worker.library] = info
            worker.process.join(timeout=10)
    return ready, missing


class _PickleChannel:
    """``send`` / ``recv`` of pickled objects over a child's stdin and stdout."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdin is not None
        assert popen.stdout is not None
        self.writer, self.reader = popen.stdin, popen.stdout

    def send(self, obj: Any) -> None:
        """Pickles ``obj`` to the child."""
        pickle.dump(obj, self.writer, protocol=pickle.HIGHEST_PROTOCOL)
        self.writer.flush()

    def recv(self) -> Any:
        """The child's next message (``EOFError`` when it has exited)."""
        return pickle.load(self.reader)


class _ChildProcess:
    """A ``subprocess.Popen`` with the ``join`` / ``is_alive`` / ``terminate`` of
    ``multiprocessing.Process``, so ``_stop_workers`` treats every worker alike."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen

    def join(self, timeout: float | None = None) -> None:
        """Waits for the child to exit, at most ``timeout`` seconds."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)

    def is_alive(self) -> bool:
        """Whether the child is still running."""
        return self.popen.poll() is None

    def terminate(self) -> None:
        """SIGTERM to this child only."""
        self.popen.terminate()


def _start_tf_worker(tf_python: str, source: TableSource) -> tuple[Worker | None, str]:
    """Starts ``_tf_worker.py`` under TensorFlow's interpreter; the worker or why not."""
    worker_path = Path(__file__).with_name("_tf_worker.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # this venv's paths must not leak into TensorFlow's
    started = time.perf_counter()
    try:
        popen = subprocess.Popen(
            [tf_python, os.fspath(worker_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        return None, f"cannot run {tf_python}: {exc}"
    worker = Worker("tensorflow", _ChildProcess(popen), _PickleChannel(popen), plain=True)
    try:
        worker.conn.send(("init", source.path, {s.name: s.vocab for s in source.specs}))
        status, info = worker.conn.recv()
    except (EOFError, BrokenPipeError):
        popen.wait(30)
        return None, f"{tf_python} worker exited with {popen.returncode} before it was ready"
    if status != "ready":
        worker.process.join(30)
        return None, str(info)
    worker.start_s, worker.versions = time.perf_counter() - started, info["versions"]
    return worker, ""


def _stop_workers(workers: Sequence[Worker]) -> None:
    """Asks each worker to quit; terminates (by its own handle) one that does not."""
    for worker in workers:
        with contextlib.suppress(OSError):
            worker.conn.send(("quit",))
    for worker in workers:
        worker.process.join(timeout=10)
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(timeout=5)


# --------------------------------------------------------------------------------------------
# Driving, checking, reporting
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """Timings of one contestant variant on one workload."""

    workload: Workload
    contestant: str
    times_ns: list[int]
    first_call_s: float
    prep_s: float
    diagnostic: bool = False  # timed for context, not a contestant (no ratio, not checked)
    round_medians: list[float] = field(default_factory=list)  # one per round, for paired ratios
    pages: dict[str, Any] = field(default_factory=dict)  # its table's mapping (_mapping_pages)


def _check(
    workload: Workload, name: str, outputs: list[np.ndarray], refs: list[np.ndarray]
) -> None:
    """Fails loudly unless every batch's output has the right shape and matches (rtol 1e-5)."""
    for i, (out, ref) in enumerate(zip(outputs, refs, strict=True)):
        if out.shape != ref.shape or out.dtype != np.float32:
            raise AssertionError(
                f"{workload.key} / {name} / batch {i}: got {out.dtype}{out.shape}, "
                f"expected float32{ref.shape}"
            )
        np.testing.assert_allclose(
            out, ref, rtol=1e-5, atol=1e-8, err_msg=f"{workload.key} / {name} / batch {i}"
        )


def _run_workload(
    workload: Workload, workers: Sequence[Worker], tables: dict[str, np.ndarray], rounds: int
) -> list[Row]:
    """Prepares, checks, then times one workload round-robin over every contestant variant."""
    checked = workload.batches[: workload.n_checked or len(workload.batches)]
    refs = [_reference(workload, tables, batch) for batch in checked]
    rows: list[Row] = []
    contestants: list[tuple[Worker, str]] = []
    for worker in workers:
        reply = worker.ask("prepare", workload.plain() if worker.plain else workload)
        worker.versions = reply["versions"]
        worker.setup_s.update(reply.get("setup_s", {}))
        for name, outputs in reply["outputs"].items():
            if outputs is not None:
                _check(workload, name, outputs, refs)
            rows.append(
                Row(
                    workload,
                    name,
                    [],
                    reply["first_call_s"][name],
                    reply["prep_s"],
                    diagnostic=outputs is None,
                    pages=reply.get("pages", {}).get(name, {}),
                )
            )
            contestants.append((worker, name))
    del refs
    turns = list(zip(contestants, rows, strict=True))
    for r in range(rounds):
        shift = r % len(turns)  # rotate who goes first
        for (worker, name), row in turns[shift:] + turns[:shift]:
            time.sleep(SETTLE_S)
            times = worker.ask("run", workload.key, name, workload.reps, r * workload.reps)
            row.times_ns += times
            row.round_medians.append(statistics.median(times))
    for worker in workers:
        worker.ask("drop", workload.key)
    return rows


def _fmt_us(ns: float) -> str:
    """Nanoseconds as microseconds, 3 significant-ish digits: ``31.2``, ``1,523``."""
    us = ns / 1e3
    return f"{us:,.1f}" if us < 100 else f"{us:,.0f}"


def _results_table(rows: Sequence[Row]) -> str:
    """The main markdown table: one row per workload × contestant."""
    lines = [
        "| workload | contestant | median µs | min µs | max µs | × torch time | table GB/s "
        "| calls |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    torch_median = {
        row.workload.key: statistics.median(row.times_ns)
        for row in rows
        if row.contestant == "torch"
    }
    for row in rows:
        if row.diagnostic:
            continue
        median = statistics.median(row.times_ns)
        base = torch_median.get(row.workload.key)
        ratio = f"{median / base:.2f}×" if base else "—"
        mean_rows = statistics.fmean(row.workload.rows_read)
        gbps = mean_rows * ROW_BYTES / median  # bytes per ns = GB/s
        lines.append(
            f"| {row.workload.title} | {row.contestant} | {_fmt_us(median)} | "
            f"{_fmt_us(min(row.times_ns))} | {_fmt_us(max(row.times_ns))} | {ratio} | "
            f"{gbps:.2f} | {len(row.times_ns)} |"
        )
    return "\n".join(lines)


def _diagnostics_table(rows: Sequence[Row]) -> str:
    """Parts of a contestant timed on their own, as a share of that contestant's median."""
    medians = {(r.workload.key, r.contestant): statistics.median(r.times_ns) for r in rows}
    lines = [
        "| workload | part | median µs | share of the full call (machine: of embserve's) |",
        "| --- | --- | ---: | ---: |",
    ]
    for row in rows:
        if not row.diagnostic:
            continue
        median = medians[row.workload.key, row.contestant]
        owner = "embserve" if row.contestant.startswith("machine") else row.contestant
        whole = medians.get((row.workload.key, owner.split(":")[0]))
        share = f"{100 * median / whole:.1f} %" if whole else "—"
        lines.append(f"| {row.workload.key} | {row.contestant} | {_fmt_us(median)} | {share} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _setup_table(
    steps: Sequence[tuple[str, str, float]], workers: Sequence[Worker], rows: Sequence[Row]
) -> str:
    """Setup costs, kept out of the timings: tables, worker start, restores, prep, first calls."""
    lines = ["| step | contestant | seconds |", "| --- | --- | ---: |"]
    lines += [f"| {step} | {who} | {seconds:.1f} |" for step, who, seconds in steps]
    lines += [
        f"| worker start (imports + map tables) | {w.library} | {w.start_s:.2f} |" for w in workers
    ]
    for worker in workers:
        lines += [f"| {step} | {worker.library} | {t:.2f} |" for step, t in worker.setup_s.items()]
    for row in rows:
        lines.append(
            f"| {row.workload.key}: convert inputs / first call | {row.contestant} | "
            f"{row.prep_s:.2f} / {row.first_call_s:.3f} |"
        )
    return "\n".join(lines)


def _bandwidth_table(probes: Sequence[tuple[str, list[float]]]) -> str:
    """Machine bandwidth probes as markdown rows (median and best of the repetitions)."""
    lines = ["| probe | median GB/s | best GB/s |", "| --- | ---: | ---: |"]
    lines += [
        f"| {label} | {statistics.median(rates):.2f} | {max(rates):.2f} |"
        for label, rates in probes
    ]
    return "\n".join(lines)


def _machine_facts(workers: Sequence[Worker]) -> str:
    """nproc, CPU model, RAM and library versions, one markdown bullet list."""
    model = cpu_model()
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for worker in workers:
        versions.update(worker.versions)
    commit = git_commit()
    return "\n".join(
        [
            f"- nproc {os.cpu_count()} ({_cpu_count()} usable), CPU {model}, "
            f"RAM {mem_kib / 2**20:.1f} GiB",
            f"- pages: {page_settings()}",
            "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            f"- embserve tree: git {commit}",
        ]
    )


def _verdicts(rows: Sequence[Row], tf_given: bool) -> list[str]:
    """One line per target of issue 6: the figure from this run, and met / not met.

    Ratios compare medians of the same interleaved run. "× torch" is torch's median over
    embserve's (> 1: embserve is faster).
    """
    medians = {
        (r.workload.key, r.contestant): statistics.median(r.times_ns) for r in rows if r.times_ns
    }
    keys = list(dict.fromkeys(r.workload.key for r in rows))
    lines: list[str] = []

    def speedup(key: str, other: str) -> float | None:
        mine, theirs = medians.get((key, "embserve")), medians.get((key, other))
        return theirs / mine if mine and theirs else None

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "**not met**")

    for group, want, label in (
        (("a-zipf", "a-uniform"), 1.3, "a) one-hot ≥ 1.3× torch embedding_bag"),
        (("b-sum", "b-wmean"), 1.3, "b) multi-hot ≥ 1.3× torch embedding_bag"),
        (("c-seq",), 2.0, "c) sequence ≥ 2× torch embedding + padding"),
    ):
        figures = [(k, speedup(k, "torch")) for k in group if k in keys]
        known = [x for _, x in figures if x is not None]
        text = ", ".join(f"{k} {x:.2f}×" if x else f"{k} —" for k, x in figures)
        ok = None if len(known) < len(figures) or not figures else min(known) >= want
        lines.append(f"- {label}: {text or '—'} — {verdict(ok)}")
    latency = medians.get(("d-latency", "embserve"))
    lines.append(
        "- d) batch 1 × 26 features ≤ 15 µs per call, ids checked: "
        + (f"{latency / 1e3:.1f} µs" if latency else "—")
        + f" — {verdict(None if latency is None else latency <= 15_000)}"
    )
    tf = [(k, speedup(k, "TF tf.function")) for k in keys]
    tf_known = [(k, x) for k, x in tf if x is not None]
    if tf_known:
        worst = min(x for _, x in tf_known)
        complete = len(tf_known) == len(keys)
        lines.append(
            "- every workload ≥ 10× TF tf.function: "
            + ", ".join(f"{k} {x:.1f}×" for k, x in tf_known)
            + f" — {verdict(worst >= 10 if complete else None if worst >= 10 else False)}"
            + ("" if complete else " (TF ran only the workloads listed)")
        )
    else:
        reason = "TF did not run" if tf_given else "no --tf-python given"
        lines.append(f"- every workload ≥ 10× TF tf.function: — ({reason}) — not measured")
    shares = []
    for key in ("a-zipf", "a-uniform", "b-sum", "b-wmean"):
        part, whole = medians.get((key, "embserve: id check")), medians.get((key, "embserve"))
        if part and whole:
            shares.append((key, 100 * part / whole))
    if shares:
        worst_share = max(x for _, x in shares)
        lines.append(
            "- input checking ≤ 10 % of the call at batch 1024 (bounds pass over every id, "
            "timed alone): "
            + ", ".join(f"{k} {x:.1f} %" for k, x in shares)
            + f" — {verdict(worst_share <= 10)}"
        )
    else:
        lines.append("- input checking ≤ 10 % of the call at batch 1024: — — not measured")
    return lines


def _paired(rows: Sequence[Row], key: str, mine: str, other: str) -> list[float] | None:
    """Per round: ``other``'s median / ``mine``'s median in that round (> 1: ``mine`` is
    faster). Both ran in the same round, one after the other, so drifts of the shared machine
    that last longer than a round cancel."""
    by_name = {r.contestant: r for r in rows if r.workload.key == key}
    a, b = by_name.get(mine), by_name.get(other)
    if a is None or b is None or not a.round_medians:
        return None
    return [y / x for x, y in zip(a.round_medians, b.round_medians, strict=True)]


def _fmt_paired(ratios: list[float] | None) -> str:
    """``1.12× (1.03–1.20)``: median of the paired ratios and their quartiles."""
    if not ratios:
        return "—"
    if len(ratios) < 2:
        return f"{ratios[0]:.2f}×"
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"{statistics.median(ratios):.2f}× ({q1:.2f}–{q3:.2f})"


def _bags_section(rows: Sequence[Row]) -> list[str]:
    """Issue 12 item 5: float32 bags against torch on the same memory, as paired ratios, and
    what memory every contestant's table sits on."""
    keys = list(dict.fromkeys(r.workload.key for r in rows if r.workload.kind == "bag"))
    if not keys or not any(r.contestant == "torch" for r in rows):
        return []
    lines = [
        "### Float32 bags against torch, paired per round (issue 12)",
        "",
        "| workload | embserve (4 KiB pages) | embserve | torch µs | rounds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    worst: list[float] = []
    for key in keys:
        same = _paired(rows, key, "embserve (4 KiB pages)", "torch")
        huge = _paired(rows, key, "embserve", "torch")
        torch_row = next(r for r in rows if r.workload.key == key and r.contestant == "torch")
        if same:
            worst.append(statistics.median(same))
        lines.append(
            f"| {torch_row.workload.title} | {_fmt_paired(same)} | {_fmt_paired(huge)} | "
            f"{_fmt_us(statistics.median(torch_row.times_ns))} | {len(torch_row.round_medians)} |"
        )
    lines += [
        "",
        "torch's speed over embserve's (> 1: embserve is faster): per round, torch's median call "
        "over embserve's median call of the same round, then the median (and quartiles) over "
        "the rounds. embserve (4 KiB pages) reads the np.memmap pages torch reads (the same "
        "memory); embserve reads its own restore's mapping of the same file, collapsed onto "
        "2 MiB pages.",
    ]
    if worst:
        ok = min(worst) >= 1.0
        lines.append(
            f"- every float32 bag workload at least torch's speed on the same memory: worst "
            f"{min(worst):.2f}× — {'met' if ok else '**not met**'}"
        )
    first = [r for r in rows if r.workload.key == keys[0] and r.pages]
    if first:
        lines += ["", f"Table memory ({keys[0]}'s table, after its checked calls):", ""]
        lines += ["| contestant | table mapping |", "| --- | --- |"]
        lines += [f"| {r.contestant} | {_pages_text(r.pages)} |" for r in first]
    return [*lines, ""]


def _report(
    *,
    command: str,
    sizes: Sizes,
    notes: Sequence[str],
    workloads: Sequence[Workload],
    workers: Sequence[Worker],
    rows: Sequence[Row],
    probes: Sequence[tuple[str, list[float]]],
    steps: Sequence[tuple[str, str, float]],
    tf_given: bool,
) -> str:
    """The whole markdown section: facts, verdicts, the results table, notes, bandwidth, setup."""
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    has_torch = any(row.contestant == "torch" for row in rows)
    torch_notes = [f"- {w.key}: torch = {w.torch_note}" for w in workloads if has_torch]
    parts = [
        f"## {date}{' (--quick smoke run)' if sizes is QUICK else ''}",
        "",
        f"Command: `{command}`",
        "",
        _machine_facts(workers),
        "",
        "### Targets (issue 6)",
        "",
        *_verdicts(rows, tf_given),
        "",
        "### Lookup time per call",
        "",
        _results_table(rows),
        "",
        "Per call of one whole batch (all its features), interleaved round-robin in separate "
        f"processes ({sizes.rounds} rounds, {sizes.n_batches} distinct batches cycled; each "
        "turn starts with one untimed call, then its calls run back to back). "
        "× torch time = median / torch's median (> 1 is slower than torch). table GB/s = "
        "rows the output needs × 256 B / median. Zipf ids: rank r ∝ r^-1.05, ranks permuted "
        "over the table. embserve = `TPUEmbeddingForServing(feature_config, optimizer=None)` "
        "restored with `es.train.Checkpoint(embedding=mid).restore(prefix)` from a checkpoint "
        "in /dev/shm (tables memory-mapped at 2 MiB boundaries), then "
        "`embserve.checkpointing.collapse_huge_pages(mid)` (2 MiB pages; `[server] huge_pages` "
        "in `embserve serve`), called as "
        "`mid(features, weights)`: dense ids for one-hot (a plain gather, SEMANTICS.md §4.1); "
        "embserve (4 KiB pages) = the same lookups on the np.memmap tables torch reads; "
        "torch, numpy and the machine rows read the same physical pages through np.memmap of "
        "the data file at the index's offsets (4 KiB page-table entries); "
        "embserve (ragged) = the one-hot ids as 1-id ragged bags, combiner sum. TF = "
        "`tf.tpu.experimental.embedding.TPUEmbeddingForServing` restored from the same "
        "checkpoint (into its own variables), inputs as tf.Tensor / tf.RaggedTensor, called "
        "through `tf.function(reduce_retracing=True)` and eagerly. Every output was checked "
        "against a float64 reference before timing.",
        *torch_notes,
        *[f"- {note}" for note in notes],
        "",
        *_bags_section(rows),
        "### Parts of a call and the machine's limit (diagnostics, not contestants)",
        "",
        _diagnostics_table(rows)
        or "(none: embserve's internal id check could not be imported or embserve is absent)",
        "",
        "machine: row gather = numba copying exactly the rows the outputs need into a "
        "preallocated buffer (no combining, no checks), timed in the same rounds; its share is "
        "of embserve's median.",
        "",
        "### Machine memory bandwidth",
        "",
        _bandwidth_table(probes),
        "",
        "### Setup (not in the timings)",
        "",
        _setup_table(steps, workers, rows),
        "",
    ]
    return "\n".join(parts)


def _room() -> int:
    """Bytes that may still go to /dev/shm and private memory: min(MemAvailable, shm free)."""
    with open("/proc/meminfo") as f:
        available = int(next(line for line in f if line.startswith("MemAvailable")).split()[1])
    return min(available * 1024, shutil.disk_usage("/dev/shm").free)


MARGIN = 4 << 30  # outputs, references, interpreters, torch: ~2 GB seen; 4 GiB spare


def _choose_sizes(quick: bool) -> tuple[Sizes, list[str]]:
    """``QUICK``, ``FULL``, or ``FULL`` with 250,000-row one-hot tables when memory is short."""
    if quick:
        return QUICK, ["--quick: tiny tables and few rounds; a smoke run, not a measurement"]
    needed = sum(spec.nbytes for spec in _layout(FULL))
    room = _room()
    if room >= needed + MARGIN:
        return FULL, []
    reduced = dataclasses.replace(FULL, onehot_vocab=REDUCED_ONEHOT_VOCAB)
    return reduced, [
        f"one-hot tables reduced to {REDUCED_ONEHOT_VOCAB:,} rows: only {room / 2**30:.1f} GiB "
        f"free for {needed / 2**30:.1f} GiB of tables"
    ]


@contextlib.contextmanager
def _checkpoint_source(specs: Sequence[TableSpec]) -> Any:
    """Writes the tables as a checkpoint in a fresh /dev/shm directory; yields (source, seconds)
    and removes the directory afterwards (also on errors)."""
    directory = tempfile.mkdtemp(prefix=f"embserve-bench-{os.getpid()}-", dir="/dev/shm")
    try:
        prefix = os.path.join(directory, "ckpt")
        seconds = _write_checkpoint(prefix, specs)
        yield TableSource("checkpoint", prefix, tuple(specs)), seconds
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _launch(
    source: TableSource, tf_python: str | None, notes: list[str], *, tf_room: bool = True
) -> list[Worker]:
    """Starts every worker for ``source`` (TF too when asked and there is room); notes who is
    left out and why."""
    workers, missing = _start_workers([*LIBRARIES, "machine"], source)
    if tf_python and source.kind != "checkpoint":
        missing["tensorflow"] = (
            "not in the table sweep: TF restores checkpoints only (and would copy up to 8 GiB), "
            "these tables are prefixes of one raw file"
        )
    elif tf_python and not tf_room:
        missing["tensorflow"] = (
            f"TF copies the tables into its own memory ({source.nbytes / 2**30:.1f} GiB) and "
            f"only {_room() / 2**30:.1f} GiB are free"
        )
    elif tf_python:
        _log("starting the TensorFlow worker")
        tf_worker, reason = _start_tf_worker(tf_python, source)
        if tf_worker is None:
            missing["tensorflow"] = reason
        else:
            workers.append(tf_worker)
    for library, reason in missing.items():
        notes.append(f"{library} left out: {reason}")
        _log(f"{library} left out: {reason}")
    return workers


def _main_run(args: argparse.Namespace, command: str) -> str:
    """Workloads a-d: the issue's targets; returns the markdown section."""
    sizes, notes = _choose_sizes(args.quick)
    load_before = os.getloadavg()[0]
    workloads = _make_workloads(sizes)
    if args.only:
        keys = [key.strip() for key in args.only.split(",") if key.strip()]
        unknown = sorted(set(keys) - {w.key for w in workloads})
        if unknown:
            raise SystemExit(
                f"--only: no workload {', '.join(unknown)} "
                f"(there are {', '.join(w.key for w in workloads)})"
            )
        workloads = [w for w in workloads if w.key in keys]
        notes.append(f"--only {','.join(keys)}: the other workloads were not run")
    needed = {name for w in workloads for name in w.tables}
    specs = [spec for spec in _layout(sizes) if spec.name in needed]
    total = sum(spec.nbytes for spec in specs)
    workers: list[Worker] = []
    _log(f"writing a {total / 1e9:.2f} GB checkpoint in /dev/shm")
    with _checkpoint_source(specs) as (source, write_s):
        try:
            _log(f"checkpoint written in {write_s:.1f} s")
            tf_room = _room() >= total + MARGIN
            workers = _launch(source, args.tf_python, notes, tf_room=tf_room)
            _holder, tables = _open_tables(source)  # _holder keeps the mapping alive
            contestants = [w for w in workers if w.library != "machine"]
            machine = next(w for w in workers if w.library == "machine")
            rows: list[Row] = []
            for workload in workloads:
                _log(f"workload {workload.key}: checking outputs, then {sizes.rounds} rounds")
                rows += _run_workload(workload, [*contestants, machine], tables, sizes.rounds)
            _log("bandwidth probes")
            time.sleep(SETTLE_S)
            # 9 repetitions: on this VM the 2-thread probes varied 3-10 GB/s (gather) between runs.
            probe_table = "big" if "big" in needed else specs[-1].name
            probes = machine.ask("bandwidth", sizes.bandwidth_rows, 9, probe_table)
            notes.append(
                "tables start 8 bytes into the checkpoint's data file (after the save counter, "
                "as TensorFlow lays it out), so a 256-byte row spans 5 cache lines, not 4: the "
                "same for every contestant, and the probes read the same table"
            )
            notes.append(
                f"1-minute load average {load_before:.2f} before the run, "
                f"{os.getloadavg()[0]:.2f} after (the 2 cores are shared with other work)"
            )
            steps = [(f"write checkpoint ({total / 1e9:.2f} GB, es.train.Checkpoint.write)",
                      "parent", write_s)]  # fmt: skip
            return _report(
                command=command,
                sizes=sizes,
                notes=notes,
                workloads=workloads,
                workers=contestants,
                rows=rows,
                probes=probes,
                steps=steps,
                tf_given=bool(args.tf_python),
            )
        finally:
            _stop_workers(workers)


# --------------------------------------------------------------------------------------------
# Sweeps: throughput vs batch size and vs table size
# --------------------------------------------------------------------------------------------

BATCH_SIZES = (1, 4, 16, 64, 256, 1024, 4096, 16384)
QUICK_BATCH_SIZES = (1, 16, 256)
SWEEP_ROWS = 32 * 2**20  # 33,554,432 rows × 256 B = 8 GiB: the largest table-sweep point
QUICK_SWEEP_ROWS = 1 << 16
SWEEP_BATCH = 1024
SWEEP_ROUNDS = 5
ROWS_PER_TURN = 1 << 18  # timed rows per contestant turn: reps = this / rows per call, 2..200


def _sweep_reps(rows_per_call: float) -> int:
    """Timed calls per turn: enough for ~64 MB of rows, between 2 and 200 calls."""
    return int(min(200, max(2, ROWS_PER_TURN // max(1, int(rows_per_call)))))


def _batch_sweep_workloads(sizes: Sizes, batch_sizes: Sequence[int]) -> list[Workload]:
    """One-hot × 26 (Zipf ids, tables t00..t25) and bags of 1–40 (sum, ``big``) per batch size."""
    rng = np.random.default_rng(SEED + 2)
    onehot = [f"t{i:02d}" for i in range(N_ONEHOT)]
    cdf = _IdSampler.zipf_cdf(sizes.onehot_vocab)
    samplers = [_IdSampler(rng, cdf) for _ in onehot]
    big = _IdSampler(rng, _IdSampler.zipf_cdf(sizes.big_vocab))
    workloads = []
    for b in batch_sizes:
        # distinct batches: ≥ 64 MB of rows in all (2× the L3), 2..64 of them
        k = int(min(64, max(2, (64 << 20) // (N_ONEHOT * b * ROW_BYTES))))
        workloads.append(
            Workload(
                key=f"sweep-onehot-B{b}",
                title=f"26 one-hot, B={b}",
                kind="onehot",
                tables=onehot,
                batches=[[s.zipf(rng, b) for s in samplers] for _ in range(k)],
                rows_read=[N_ONEHOT * b] * k,
                reps=_sweep_reps(N_ONEHOT * b),
                n_checked=2,
                point=b,
            )
        )
    for b in batch_sizes:
        k = int(min(64, max(2, (64 << 20) // (20 * b * ROW_BYTES))))
        batches = [_ragged(rng, big, b, 1, 40, False) for _ in range(k)]
        rows_read = [len(x["values"]) for x in batches]
        workloads.append(
            Workload(
                key=f"sweep-bags-B{b}",
                title=f"bags of 1–40, sum, B={b}",
                kind="bag",
                tables=["big"],
                batches=batches,
                rows_read=rows_read,
                reps=_sweep_reps(statistics.fmean(rows_read)),
                n_checked=2,
                point=b,
            )
        )
    return workloads


def _table_sweep_points(max_rows: int) -> list[int]:
    """4,096 rows (1 MiB, cache-resident) × 4 per step up to ``max_rows`` (included)."""
    points = [4096]
    while points[-1] * 4 < max_rows:
        points.append(points[-1] * 4)
    return [*points, max_rows]


def _table_sweep_workloads(points: Sequence[int], quick: bool) -> list[Workload]:
    """Bags of 1–40 uniform ids, sum, B=1024 (64 in --quick), on the first N rows of ``sweep``."""
    rng = np.random.default_rng(SEED + 3)
    batch = 64 if quick else SWEEP_BATCH
    workloads = []
    for rows in points:
        batches = []
        for _ in range(8):  # 8 × ~5 MB of rows per point
            lengths = rng.integers(1, 41, size=batch)
            splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            values = rng.integers(0, rows, int(splits[-1]), dtype=np.int64)
            batches.append({"values": values, "row_splits": splits, "weights": None})
        rows_read = [len(x["values"]) for x in batches]
        workloads.append(
            Workload(
                key=f"sweep-table-{rows}",
                title=f"bags of 1–40 uniform ids, sum, B={batch}, {rows:,} rows",
                kind="bag",
                tables=[f"sweep@{rows}"],
                batches=batches,
                rows_read=rows_read,
                reps=_sweep_reps(statistics.fmean(rows_read)),
                n_checked=2,
                point=rows,
            )
        )
    return workloads


def _sweep_table(rows: Sequence[Row], what: str) -> str:
    """Markdown: per sweep point and contestant, median (min–max) µs, Mlookups/s and GB/s."""
    lines = [
        f"| {what} | contestant | median µs (min – max) | M lookups/s | GB/s of rows |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        median = statistics.median(row.times_ns)
        ids = statistics.fmean(row.workload.rows_read)
        lines.append(
            f"| {row.workload.point:,} | {row.contestant} | {_fmt_us(median)} "
            f"({_fmt_us(min(row.times_ns))} – {_fmt_us(max(row.times_ns))}) | "
            f"{ids / median * 1e3:.1f} | {ids * ROW_BYTES / median:.2f} |"
        )
    return "\n".join(lines)


def _series(rows: Sequence[Row], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    """Per contestant: sweep points and lookups per second, for the workloads ``prefix*``."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        if not row.workload.key.startswith(prefix):
            continue
        xs, ys = out.setdefault(row.contestant, ([], []))
        xs.append(row.workload.point)
        ys.append(statistics.fmean(row.workload.rows_read) / statistics.median(row.times_ns) * 1e9)
    return out


def _plot(
    path: Path,
    panels: Sequence[tuple[str, str, dict[str, tuple[list[int], list[float]]]]],
    sequential_gbs: float | None,
    xlabel_bytes: bool,
) -> None:
    """One PNG: a panel per (title, x label, series); log-log, the machine dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False)
    styles = {"embserve": "C0", "torch": "C1", "numpy": "C2", "TF tf.function": "C3",
              "TF eager": "C4", "machine: row gather": "k"}  # fmt: skip
    for ax, (title, xlabel, series) in zip(axes[0], panels, strict=True):
        for name, (xs, ys) in series.items():
            scale = ROW_BYTES if xlabel_bytes else 1
            ax.plot(
                [x * scale for x in xs],
                ys,
                marker="o",
                markersize=3,
                label=name,
                color=styles.get(name),
                linestyle="--" if name.startswith("machine") else "-",
            )
        if sequential_gbs:
            ax.axhline(sequential_gbs * 1e9 / ROW_BYTES, color="0.5", linestyle=":",
                       label=f"machine: sequential read ({sequential_gbs:.0f} GB/s)")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("lookups (ids) per second")
        secondary = ax.secondary_yaxis(
            "right", functions=(lambda v: v * ROW_BYTES / 1e9, lambda g: g * 1e9 / ROW_BYTES)
        )
        secondary.set_ylabel("GB/s of 256-byte rows")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sweep_run(args: argparse.Namespace, command: str) -> str:
    """Batch-size sweep (on the checkpoint of workloads a/b) then table-size sweep (on one raw
    shared file of up to 8 GiB); one phase's tables are released before the next is made."""
    sizes, notes = _choose_sizes(args.quick)
    rounds = 2 if args.quick else SWEEP_ROUNDS
    load_before = os.getloadavg()[0]
    steps: list[tuple[str, str, float]] = []
    all_workers: list[Worker] = []
    specs = _layout(sizes)
    total = sum(spec.nbytes for spec in specs)
    batch_sizes = QUICK_BATCH_SIZES if args.quick else BATCH_SIZES

    _log(f"batch sweep: writing a {total / 1e9:.2f} GB checkpoint")
    with _checkpoint_source(specs) as (source, write_s):
        steps.append((f"write checkpoint ({total / 1e9:.2f} GB)", "parent", write_s))
        workers = _launch(source, args.tf_python, notes, tf_room=_room() >= total + MARGIN)
        try:
            holder, tables = _open_tables(source)
            batch_rows: list[Row] = []
            for workload in _batch_sweep_workloads(sizes, batch_sizes):
                _log(f"{workload.key}: {rounds} rounds × {workload.reps} calls")
                batch_rows += _run_workload(workload, workers, tables, rounds)
            del holder, tables
        finally:
            _stop_workers(workers)
        all_workers += [w for w in workers if w.library != "machine"]

    max_rows = QUICK_SWEEP_ROWS if args.quick else SWEEP_ROWS
    while max_rows * ROW_BYTES + MARGIN > _room() and max_rows > 1 << 20:
        max_rows //= 2
    if max_rows != (QUICK_SWEEP_ROWS if args.quick else SWEEP_ROWS):
        notes.append(
            f"table sweep stops at {max_rows:,} rows ({max_rows * ROW_BYTES / 2**30:.1f} GiB): "
            f"{_room() / 2**30:.1f} GiB free"
        )
    points = _table_sweep_points(max_rows)
    sweep_spec = (TableSpec("sweep", max_rows),)
    path = tempfile.mktemp(prefix=f"embserve-bench-{os.getpid()}-sweep-", dir="/dev/shm")
    workers = []
    try:
        _log(f"table sweep: filling {max_rows * ROW_BYTES / 1e9:.2f} GB in {path}")
        fill_s = _fill_file(path, sweep_spec)
        steps.append((f"fill raw table ({max_rows * ROW_BYTES / 1e9:.2f} GB)", "parent", fill_s))
        source = TableSource("file", path, sweep_spec)
        workers = _launch(source, args.tf_python, notes)
        mapping, tables = _map_file(path, sweep_spec)
        os.unlink(path)  # every process has it mapped; the pages live until the last unmap
        table_rows: list[Row] = []
        for workload in _table_sweep_workloads(points, args.quick):
            _log(f"{workload.key}: {rounds} rounds × {workload.reps} calls")
            table_rows += _run_workload(workload, workers, tables, rounds)
        machine = next(w for w in workers if w.library == "machine")
        probe_rows = min(points[-1], 4 * 2**20)  # 1 GiB table (the whole table in --quick)
        time.sleep(SETTLE_S)
        probes = machine.ask(
            "bandwidth", min(probe_rows, sizes.bandwidth_rows), 5, f"sweep@{probe_rows}"
        )
        del mapping, tables
    finally:
        _stop_workers(workers)
        if os.path.exists(path):
            os.unlink(path)
    all_workers += [w for w in workers if w.library != "machine"]
    sequential = max(statistics.median(r) for label, r in probes if label.startswith("seq"))

    plot_lines: list[str] = []
    plots_dir = Path(args.plots_dir) if args.plots_dir else None
    if plots_dir is None:
        plot_lines.append("(plots not drawn: --quick without --plots-dir)")
    else:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            plot_lines.append("(plots not drawn: matplotlib is not installed; `make bench`)")
        else:
            _plot(
                plots_dir / "batch_sweep.png",
                [
                    (
                        f"26 one-hot features × {sizes.onehot_vocab:,}×64 tables, Zipf ids",
                        "batch size",
                        _series(batch_rows, "sweep-onehot"),
                    ),
                    (
                        f"bags of 1–40 ids, sum, {sizes.big_vocab:,}×64 table, Zipf ids",
                        "batch size",
                        _series(batch_rows, "sweep-bags"),
                    ),
                ],
                sequential,
                xlabel_bytes=False,
            )
            _plot(
                plots_dir / "table_sweep.png",
                [
                    (
                        f"bags of 1–40 uniform ids, sum, B={64 if args.quick else SWEEP_BATCH}",
                        "table size (bytes)",
                        _series(table_rows, "sweep-table"),
                    )
                ],
                sequential,
                xlabel_bytes=True,
            )
            rel = os.path.relpath(plots_dir, RESULTS_PATH.parent)
            plot_lines += [
                f"![throughput vs batch size]({rel}/batch_sweep.png)",
                "",
                f"![throughput vs table size]({rel}/table_sweep.png)",
            ]
            _log(f"plots written to {plots_dir}")
    notes.append(
        f"1-minute load average {load_before:.2f} before the run, "
        f"{os.getloadavg()[0]:.2f} after (the 2 cores are shared with other work)"
    )
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"## {date}: throughput sweeps{' (--quick smoke run)' if args.quick else ''}",
        "",
        f"Command: `{command}`",
        "",
        _machine_facts(all_workers),
        "",
        *plot_lines,
        "",
        "Lookups per second = ids whose rows the output needs / median call time; GB/s = that "
        "× 256 B. Each point: contestants in their own processes, interleaved round-robin "
        f"({rounds} rounds, 2..200 calls per turn, distinct batches holding ≥ 64 MB of rows "
        "cycled), outputs of 2 batches checked before timing. machine: row gather = numba "
        "copying the same rows into a preallocated buffer (dashed); sequential read = the "
        "probe below (dotted). For pooled bags the row-gather copy writes 256 B per id while "
        "a pooled lookup writes one row per bag, so a pooled kernel can beat that line. "
        "Batch sweep: embserve restored from a checkpoint as in the "
        "main run. Table sweep: one table of up to 8 GiB in a raw /dev/shm file, smaller "
        "tables are its first N rows (embserve gets them through "
        "`TableConfig(initializer=...)` returning the shared view, zero-copy), uniform ids so "
        "that caches hide nothing beyond the table's own size.",
        *[f"- {note}" for note in notes],
        "",
        "### Batch-size sweep",
        "",
        _sweep_table(
            [r for r in batch_rows if r.workload.key.startswith("sweep-onehot")], "B (26 one-hot)"
        ),
        "",
        _sweep_table(
            [r for r in batch_rows if r.workload.key.startswith("sweep-bags")], "B (bags, sum)"
        ),
        "",
        "### Table-size sweep",
        "",
        _sweep_table(table_rows, "table rows"),
        "",
        "### Machine memory bandwidth (the table-sweep table's first 1 GiB)",
        "",
        _bandwidth_table(probes),
        "",
        "### Setup (not in the timings)",
        "",
        "\n".join(
            ["| step | contestant | seconds |", "| --- | --- | ---: |"]
            + [f"| {a} | {b} | {c:.1f} |" for a, b, c in steps]
            + [
                f"| {k} | {w.library} | {t:.2f} |"
                for w in all_workers
                for k, t in w.setup_s.items()
            ]
        ),
        "",
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; prints the markdown section and optionally writes RESULTS.md."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--write", action="store_true", help="prepend results to RESULTS.md")
    parser.add_argument("--sweep", action="store_true", help="batch- and table-size sweeps")
    parser.add_argument(
        "--only",
        help="comma-separated workload keys to run (a-zipf, a-uniform, b-sum, b-wmean, c-seq, "
        "d-latency, b-wsum, b-mean); only their tables are written",
    )
    parser.add_argument(
        "--tf-python", help="python of a venv with tensorflow 2.21 (adds the TF contestant)"
    )
    parser.add_argument(
        "--plots-dir",
        help="where --sweep saves its PNGs (default benchmarks/plots; --quick: none)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="threads per contestant (torch and numba; default: every usable core). On a "
        "machine whose cores other work keeps busy, 1 keeps a contestant's thread team from "
        "waiting for a thread that is not running",
    )
    args = parser.parse_args(argv)
    if args.threads:
        # Read by the spawned workers: numba sizes its pool from NUMBA_NUM_THREADS at import.
        os.environ["EMBSERVE_BENCH_THREADS"] = str(args.threads)
        os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    if args.sweep and not args.quick and not args.plots_dir:
        args.plots_dir = os.fspath(Path(__file__).with_name("plots"))
    command = " ".join([".venv/bin/python", "benchmarks/run.py", *sys.argv[1:]])
    section = _sweep_run(args, command) if args.sweep else _main_run(args, command)
    publish(section, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
