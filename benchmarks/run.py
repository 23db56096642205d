"""Benchmark embserve's serving lookups against PyTorch ``embedding_bag`` and plain NumPy.

What it does: four serving workloads (DLRM-style one-hot features, multi-hot bags, a sequence
feature, batch-1 latency) are run by every contestant; per call it reports the median, min and max
time, the ratio to PyTorch and the achieved table-read bandwidth, as markdown rows on stdout
(and, with ``--write``, in ``benchmarks/RESULTS.md`` together with the machine and the command).
For context it also measures this machine's random-row-gather and sequential-read bandwidth.

Why it is built this way (ARCHITECTURE.md, "Habits"):

- Every contestant runs in its own *spawned* worker process: numba's and torch's thread pools
  disturb each other inside one process. The parent drives the workers round-robin, one at a
  time, rotating who goes first, so every contestant sees the same (shared, noisy) machine.
- The tables exist once, in a ``/dev/shm`` file that every worker maps: 26 × 1,000,000 × 64
  float32 is 6.7 GB, and one private copy per worker (3 × 7.7 GB with workload b's table) would
  not fit in this machine's 24 GiB. Everyone reads the same physical pages, which is also how
  embserve serves (memory-mapped checkpoint shards).
- Inputs are generated once by the parent, converted to each contestant's types inside its worker
  before any timing, and every contestant's output for every input batch is checked against a
  float64 reference (``np.allclose`` semantics, rtol 1e-5) before the first timed call.
- Each workload cycles through several distinct input batches, so a timed call does not find
  its rows still in the 32 MiB L3 cache from the previous call (16 batches × 6.8 MB of rows
  in workload a is 3.4× the L3).

Usage::

    .venv/bin/python benchmarks/run.py           # full run (make bench), a few minutes
    .venv/bin/python benchmarks/run.py --write   # ... and prepend the results to RESULTS.md
    .venv/bin/python benchmarks/run.py --quick   # seconds-long smoke run (tests/test_benchmarks.py)

Contestants that cannot be imported (torch without the ``bench`` extra, embserve while its lookup
is unwritten) are left out with a note; any other failure, including a wrong output, is an error.
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
import platform
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from _common import RESULTS_PATH, cpu_model, git_commit, insert_results

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
    """Cores this process may run on (2 here); torch gets this many threads."""
    return len(os.sched_getaffinity(0))


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
    """One float32 [vocab, 64] table at a byte offset of the shared file."""

    name: str
    vocab: int
    offset: int

    @property
    def nbytes(self) -> int:
        """Size of the table in bytes."""
        return self.vocab * ROW_BYTES


def _layout(sizes: Sizes) -> list[TableSpec]:
    """The 26 one-hot tables ``t00``..``t25`` then ``big``, back to back in one file."""
    specs: list[TableSpec] = []
    offset = 0
    for name, vocab in [(f"t{i:02d}", sizes.onehot_vocab) for i in range(N_ONEHOT)] + [
        ("big", sizes.big_vocab)
    ]:
        specs.append(TableSpec(name, vocab, offset))
        offset += vocab * ROW_BYTES
    return specs


def _map_tables(path: str, layout: Sequence[TableSpec]) -> tuple[mmap.mmap, dict[str, np.ndarray]]:
    """Maps the shared file and returns writable float32 views, one per table (no copy)."""
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
        for spec in layout
    }
    return mapping, tables


def _fill_tables(path: str, layout: Sequence[TableSpec]) -> float:
    """Creates the shared file and fills every table with uniform [0, 1) float32; returns seconds.

    Two threads with independent generators: numpy's ``Generator.random`` releases the GIL, and
    1.92 GB took 2.9-3.7 s on one thread, 1.5-1.6 s on two (so ~6 s for the full 7.7 GB when the
    machine is quiet).
    """
    start = time.perf_counter()
    total = sum(spec.nbytes for spec in layout)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, total)
    finally:
        os.close(fd)
    _, tables = _map_tables(path, layout)
    chunk_rows = 1 << 18  # 64 MB per chunk
    jobs = [
        (name, lo, min(lo + chunk_rows, table.shape[0]))
        for name, table in tables.items()
        for lo in range(0, table.shape[0], chunk_rows)
    ]
    seeds = np.random.SeedSequence(SEED).spawn(len(jobs))

    def fill(job: tuple[str, int, int], seed: np.random.SeedSequence) -> None:
        name, lo, hi = job
        np.random.default_rng(seed).random(out=tables[name][lo:hi], dtype=np.float32)

    with ThreadPoolExecutor(_cpu_count()) as pool:
        list(pool.map(fill, jobs, seeds))
    return time.perf_counter() - start


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
    for key, combiner, weighted in (("b-sum", "sum", False), ("b-wmean", "mean", True)):
        batches = [_ragged(rng, big, b, 1, 40, weighted) for _ in range(k)]
        label = "weighted mean" if weighted else "sum"
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
                torch_note=(
                    "embedding_bag(mode='sum', per_sample_weights) × 1/segment_reduce(weights)"
                    if weighted
                    else "embedding_bag(offsets, mode='sum')"
                ),
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
    return workloads


def _reference(workload: Workload, tables: dict[str, np.ndarray], batch: Any) -> np.ndarray:
    """The expected output of one batch, written plainly with float64 accumulation.

    The spec is SEMANTICS.md §4.1 (dense: plain gather), §4.7(a) (ragged combine, divide-or-zero)
    and §4.7(b) (ragged sequence: pack left, cut or zero-pad to L).
    """
    if workload.kind == "onehot":
        return np.stack(
            [tables[name][ids] for name, ids in zip(workload.tables, batch, strict=True)]
        )
    table = tables[workload.tables[0]]
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
    ``None`` marks a diagnostic (a part of a contestant, timed but not a lookup, not checked).
    """

    call: Callable[[Any], Any]
    inputs: list[Any]
    to_numpy: Callable[[Any], np.ndarray] | None


class _NumpyContestant:
    """Plain NumPy, vectorised: fancy-index gathers and ``np.add.reduceat`` over bag starts."""

    def __init__(self) -> None:
        self.versions = {"numpy": np.__version__}

    def prepare(self, workload: Workload, tables: dict[str, np.ndarray]) -> dict[str, Prepared]:
        """One variant, ``numpy``."""
        if workload.kind == "onehot":
            weights = [tables[name] for name in workload.tables]

            def onehot(batch: list[np.ndarray]) -> list[np.ndarray]:
                return [np.take(t, ids, axis=0) for t, ids in zip(weights, batch, strict=True)]

            return {"numpy": Prepared(onehot, workload.batches, np.stack)}
        table = tables[workload.tables[0]]
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
                return np.add.reduceat(gathered, starts, axis=0)
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
        weights = {name: torch.from_numpy(tables[name]) for name in workload.tables}

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
                mode="sum",
                per_sample_weights=bag_weights,
                include_last_offset=True,
            )
            if not mean:
                return sums
            # mode="mean" refuses per_sample_weights: divide by the per-bag weight sums (0 → 0).
            denominators = torch.segment_reduce(bag_weights, "sum", offsets=splits)
            inverse = torch.where(denominators != 0, 1.0 / denominators, 0.0)
            return sums.mul_(inverse.unsqueeze(1))

        return {"torch": Prepared(bag, inputs, lambda out: out.numpy())}


class _EmbserveContestant:
    """embserve through its public API: configs, ``TPUEmbeddingForServing``, lookup on our tables.

    ``TPUEmbeddingForServing(feature_config, optimizer=None)`` is constructed (that names the
    tables, as in serving) but never built: building would initialise 7.7 GB of truncated-normal
    tables. The lookups go through ``serving_embedding_lookup`` with the shared tables, passed
    read-only as served checkpoint tables are.
    """

    def __init__(self) -> None:
        import numba

        import embserve as es

        # Missing names mean the lookup has not landed yet: the contestant is "unavailable".
        self.lookup = es.serving_embedding_lookup
        self.serving_class = es.TPUEmbeddingForServing
        self.es = es
        self.numba = numba
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

    def prepare(self, workload: Workload, tables: dict[str, np.ndarray]) -> dict[str, Prepared]:
        """Variants ``embserve`` (dense ids for one-hot) and ``embserve (ragged)`` (1-id bags)."""
        es = self.es
        readonly = {}
        for name in workload.tables:
            view = tables[name].view()
            view.flags.writeable = False
            readonly[name] = view
        configs = {
            name: es.TableConfig(
                vocabulary_size=readonly[name].shape[0],
                dim=DIM,
                combiner=workload.combiner,
                name=name,
            )
            for name in workload.tables
        }
        by_config = {configs[name]: readonly[name] for name in workload.tables}
        lookup = self.lookup

        if workload.kind == "onehot":
            keys = [f"f{i:02d}" for i in range(len(workload.tables))]
            feature_config = {
                key: es.FeatureConfig(table=configs[name])
                for key, name in zip(keys, workload.tables, strict=True)
            }
            self.serving_class(feature_config, optimizer=None)

            def onehot(batch: dict[str, Any]) -> dict[str, np.ndarray]:
                return lookup(batch, None, by_config, feature_config)

            def onehot_np(out: dict[str, np.ndarray]) -> np.ndarray:
                return np.stack([out[key] for key in keys])

            dense = [dict(zip(keys, batch, strict=True)) for batch in workload.batches]
            batch_size = len(workload.batches[0][0])
            variants = {"embserve": Prepared(onehot, dense, onehot_np)}
            variants.update(self._id_check(workload, readonly, list(workload.batches)))
            if batch_size > 1:
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

        config = es.FeatureConfig(table=configs["big"], max_sequence_length=workload.seq_len)
        feature_config = {"f": config}
        self.serving_class(feature_config, optimizer=None)
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
            return lookup(batch[0], batch[1], by_config, feature_config)["f"]

        variants = {"embserve": Prepared(ragged_lookup, inputs, np.asarray)}
        variants.update(
            self._id_check(workload, readonly, [[x["values"]] for x in workload.batches])
        )
        return variants

    def _id_check(
        self, workload: Workload, tables: dict[str, np.ndarray], ids: list[list[np.ndarray]]
    ) -> dict[str, Prepared]:
        """Diagnostic ``embserve: id check``: the bounds pass over every id of a batch alone."""
        check = self.first_bad_id
        if check is None:
            return {}
        rows = [tables[name].shape[0] for name in workload.tables]

        def check_all(batch: list[np.ndarray]) -> None:
            for values, n_rows in zip(batch, rows, strict=True):
                check(values, n_rows, False)

        return {"embserve: id check": Prepared(check_all, ids, None)}

    def after_first_calls(self) -> None:
        """Records numba's threading layer, known only once a parallel kernel has run."""
        with contextlib.suppress(ValueError):
            self.versions["numba layer"] = str(self.numba.threading_layer())


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
# Worker process
# --------------------------------------------------------------------------------------------


def _worker_main(conn: Connection, library: str, shm_path: str, layout: list[TableSpec]) -> None:
    """One contestant's process: import it, map the tables, then answer the parent's requests.

    Requests: ``("prepare", workload)`` → outputs of every batch per variant and timings of the
    first calls; ``("run", key, variant, reps, start)`` → per-call nanoseconds;
    ``("drop", key)``; ``("bandwidth", rows, reps)``; ``("quit",)``.
    """
    started = time.perf_counter()
    contestant: Any
    try:
        if library == "numpy":
            contestant = _NumpyContestant()
        elif library == "torch":
            contestant = _TorchContestant()
        elif library == "embserve":
            contestant = _EmbserveContestant()
        else:
            contestant = None  # the bandwidth probe imports numba itself
    except (ImportError, AttributeError) as exc:
        conn.send(("unavailable", f"{type(exc).__name__}: {exc}"))
        return
    mapping, tables = _map_tables(shm_path, layout)
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
                    outputs[name] = (
                        None
                        if to_numpy is None
                        else [to_numpy(first)] + [to_numpy(p.call(x)) for x in p.inputs[1:]]
                    )
                if hasattr(contestant, "after_first_calls"):
                    contestant.after_first_calls()
                prepared[workload.key] = variants
                reply: Any = {
                    "outputs": outputs,
                    "prep_s": prep_s,
                    "first_call_s": first_call_s,
                    "versions": contestant.versions,
                }
            elif request[0] == "run":
                _, key, variant, reps, start = request
                reply = _time_calls(prepared[key][variant], reps, start)
            elif request[0] == "drop":
                prepared.pop(request[1], None)
                reply = None
            elif request[0] == "bandwidth":
                reply = _bandwidth_probes(tables["big"], request[1], request[2])
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
    """The parent's handle on one worker process."""

    library: str
    process: Any
    conn: Connection
    start_s: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)

    def ask(self, *request: Any) -> Any:
        """Sends one request and returns the reply, raising the worker's traceback on error."""
        self.conn.send(request)
        status, reply = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"{self.library} worker failed:\n{reply}")
        return reply


def _start_workers(
    libraries: Sequence[str], shm_path: str, layout: list[TableSpec]
) -> tuple[list[Worker], dict[str, str]]:
    """Spawns one worker per library; returns the ready ones and why the others are missing."""
    context = mp.get_context("spawn")
    pending = []
    for library in libraries:
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_worker_main, args=(child_end, library, shm_path, layout), daemon=True
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
    workload: Workload, workers: Sequence[Worker], tables: dict[str, np.ndarray], sizes: Sizes
) -> list[Row]:
    """Prepares, checks, then times one workload round-robin over every contestant variant."""
    refs = [_reference(workload, tables, batch) for batch in workload.batches]
    rows: list[Row] = []
    contestants: list[tuple[Worker, str]] = []
    for worker in workers:
        reply = worker.ask("prepare", workload)
        worker.versions = reply["versions"]
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
                )
            )
            contestants.append((worker, name))
    del refs
    turns = list(zip(contestants, rows, strict=True))
    for r in range(sizes.rounds):
        shift = r % len(turns)  # rotate who goes first
        for (worker, name), row in turns[shift:] + turns[:shift]:
            time.sleep(SETTLE_S)
            row.times_ns += worker.ask("run", workload.key, name, workload.reps, r * workload.reps)
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
        "| workload | part | median µs | share of the full call |",
        "| --- | --- | ---: | ---: |",
    ]
    for row in rows:
        if not row.diagnostic:
            continue
        median = medians[row.workload.key, row.contestant]
        whole = medians.get((row.workload.key, row.contestant.split(":")[0]))
        share = f"{100 * median / whole:.1f} %" if whole else "—"
        lines.append(f"| {row.workload.key} | {row.contestant} | {_fmt_us(median)} | {share} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _setup_table(
    fill_s: float, total_bytes: int, workers: Sequence[Worker], rows: Sequence[Row]
) -> str:
    """Setup costs, kept out of the timings: table fill, worker start, prep and first calls."""
    lines = [
        "| step | contestant | seconds |",
        "| --- | --- | ---: |",
        f"| fill shared tables ({total_bytes / 1e9:.2f} GB, 2 threads) | parent | {fill_s:.1f} |",
    ]
    lines += [
        f"| worker start (imports + map tables) | {w.library} | {w.start_s:.2f} |" for w in workers
    ]
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
            "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            f"- embserve tree: git {commit}",
        ]
    )


def _report(
    *,
    command: str,
    sizes: Sizes,
    notes: Sequence[str],
    workloads: Sequence[Workload],
    workers: Sequence[Worker],
    rows: Sequence[Row],
    probes: Sequence[tuple[str, list[float]]],
    fill_s: float,
    total_bytes: int,
) -> str:
    """The whole markdown section: facts, the results table, notes, bandwidth, setup."""
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
        "### Lookup time per call",
        "",
        _results_table(rows),
        "",
        "Per call of one whole batch (all its features), interleaved round-robin in separate "
        f"processes ({sizes.rounds} rounds, {sizes.n_batches} distinct batches cycled; each "
        "turn starts with one untimed call, then its calls run back to back). "
        "× torch time = median / torch's median (> 1 is slower than torch). table GB/s = "
        "rows the output needs × 256 B / median. Zipf ids: rank r ∝ r^-1.05, ranks permuted "
        "over the table. embserve (ragged) = the one-hot ids as 1-id ragged bags, combiner sum; "
        "embserve = dense ids (a plain gather, SEMANTICS.md §4.1).",
        *torch_notes,
        *[f"- {note}" for note in notes],
        "",
        "### Parts of a call (diagnostics, not contestants)",
        "",
        _diagnostics_table(rows)
        or "(none: embserve's internal id check could not be imported or embserve is absent)",
        "",
        "### Machine memory bandwidth",
        "",
        _bandwidth_table(probes),
        "",
        "### Setup (not in the timings)",
        "",
        _setup_table(fill_s, total_bytes, workers, rows),
        "",
    ]
    return "\n".join(parts)


def _choose_sizes(quick: bool) -> tuple[Sizes, list[str]]:
    """``QUICK``, ``FULL``, or ``FULL`` with 250,000-row one-hot tables when memory is short."""
    if quick:
        return QUICK, ["--quick: tiny tables and few rounds; a smoke run, not a measurement"]
    needed = sum(spec.nbytes for spec in _layout(FULL))
    with open("/proc/meminfo") as f:
        available = int(next(line for line in f if line.startswith("MemAvailable")).split()[1])
    room = min(available * 1024, shutil.disk_usage("/dev/shm").free)
    margin = 4 << 30  # outputs, references, three interpreters, torch: ~2 GB seen; 4 GiB spare
    if room >= needed + margin:
        return FULL, []
    reduced = dataclasses.replace(FULL, onehot_vocab=REDUCED_ONEHOT_VOCAB)
    return reduced, [
        f"one-hot tables reduced to {REDUCED_ONEHOT_VOCAB:,} rows: only {room / 2**30:.1f} GiB "
        f"free for {needed / 2**30:.1f} GiB of tables"
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; prints the markdown section and optionally writes RESULTS.md."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--write", action="store_true", help="prepend results to RESULTS.md")
    args = parser.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/run.py", *sys.argv[1:]])

    sizes, notes = _choose_sizes(args.quick)
    load_before = os.getloadavg()[0]
    layout = _layout(sizes)
    total_bytes = sum(spec.nbytes for spec in layout)
    shm_path = f"/dev/shm/embserve-bench-{os.getpid()}"
    workers: list[Worker] = []
    try:
        _log(f"filling {total_bytes / 1e9:.2f} GB of tables in {shm_path}")
        fill_s = _fill_tables(shm_path, layout)
        _log(f"tables filled in {fill_s:.1f} s; generating inputs")
        workloads = _make_workloads(sizes)
        _log(f"starting workers {', '.join(LIBRARIES)} (+ bandwidth probe)")
        workers, missing = _start_workers([*LIBRARIES, "bandwidth"], shm_path, layout)
        _, tables = _map_tables(shm_path, layout)
        os.unlink(shm_path)  # every process has it mapped; the pages live until the last unmap
        for library, reason in missing.items():
            notes.append(f"{library} left out: {reason}")
            _log(f"{library} left out: {reason}")
        contestants = [w for w in workers if w.library != "bandwidth"]
        probe_worker = next(w for w in workers if w.library == "bandwidth")
        rows: list[Row] = []
        for workload in workloads:
            _log(f"workload {workload.key}: checking outputs, then {sizes.rounds} rounds")
            rows += _run_workload(workload, contestants, tables, sizes)
        _log("bandwidth probes")
        time.sleep(SETTLE_S)
        # 9 repetitions: on this VM the 2-thread probes varied 3-10 GB/s (gather) between runs.
        probes = probe_worker.ask("bandwidth", sizes.bandwidth_rows, 9)
        notes.append(
            f"1-minute load average {load_before:.2f} before the run, "
            f"{os.getloadavg()[0]:.2f} after (the 2 cores are shared with other work)"
        )
        section = _report(
            command=command,
            sizes=sizes,
            notes=notes,
            workloads=workloads,
            workers=contestants,
            rows=rows,
            probes=probes,
            fill_s=fill_s,
            total_bytes=total_bytes,
        )
    finally:
        _stop_workers(workers)
        if os.path.exists(shm_path):
            os.unlink(shm_path)
    print(section)
    if args.write:
        insert_results(section)
        _log(f"wrote {RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
