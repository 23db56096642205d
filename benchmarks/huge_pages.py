"""How much the page size under a memory-mapped table costs embserve's lookups.

Random row gathers from tables of gigabytes miss the TLB on nearly every row with 4 KiB pages;
with 2 MiB pages the page walks mostly disappear. This script maps ONE random float32 table
(1 GiB by default, in a /dev/shm file, as the benchmark's checkpoints are) three ways and runs
the same embserve lookups on each, interleaved in one process:

* ``4 KiB pages``: ``np.memmap`` of the file, as every contestant of ``run.py`` reads it;
* ``2 MiB pages (mapped file)``: the same file mapped at a 2 MiB-aligned address, its page-cache
  pages collapsed into huge pages with ``madvise(MADV_COLLAPSE)`` (Linux >= 6.1; tmpfs allows it
  even with ``shmem_enabled=never``), so the mapping uses PMD entries;
* ``2 MiB pages (anonymous copy)``: a private copy in numpy-allocated memory, which numpy
  advises for transparent huge pages (what ``restore(copy=True)`` gives).

Workloads: 26 one-hot features × B=1024 (all looking up this table) and bags of 1-40 uniform ids,
B=1024, sum, both through ``es.serving_embedding_lookup``.

Usage::

    .venv/bin/python benchmarks/huge_pages.py [--gib 1] [--write]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from typing import Any

import numpy as np
from _common import cpu_model, git_commit, insert_results

import embserve as es

DIM = 64
HUGE = 2 << 20
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
PROT_NONE, PROT_READ = 0, 1
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20


def _libc() -> Any:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def _map_collapsed(path: str, nbytes: int) -> tuple[np.ndarray, float, str]:
    """The file mapped read-only at a 2 MiB-aligned address and collapsed into huge pages.

    Returns the table view, the seconds the collapse took and a note. The mapping lives until
    the process exits (this is a measuring script; embserve itself does not do this yet).
    """
    libc = _libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        reserve = libc.mmap(None, nbytes + HUGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        aligned = (reserve + HUGE - 1) // HUGE * HUGE
        address = libc.mmap(aligned, nbytes, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0)
    finally:
        os.close(fd)
    if address in (None, ctypes.c_void_p(-1).value) or address != aligned:
        raise OSError(ctypes.get_errno(), "mmap at an aligned address failed")
    start = time.perf_counter()
    libc.madvise(address, nbytes // HUGE * HUGE, MADV_HUGEPAGE)
    failed = libc.madvise(address, nbytes // HUGE * HUGE, MADV_COLLAPSE)
    seconds = time.perf_counter() - start
    note = "collapsed" if not failed else f"MADV_COLLAPSE failed: {os.strerror(ctypes.get_errno())}"
    raw = (ctypes.c_char * nbytes).from_address(address)
    table = np.frombuffer(raw, np.float32).reshape(-1, DIM)
    table.flags.writeable = False
    return table, seconds, note


def _pmd_mapped_kib() -> int:
    """ShmemPmdMapped of this process: how much of the mapped file uses 2 MiB entries."""
    with open("/proc/self/smaps_rollup", encoding="ascii") as f:
        for line in f:
            if line.startswith("ShmemPmdMapped:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="table size in GiB")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="prepend results to RESULTS.md")
    args = parser.parse_args()
    rows = int(args.gib * 2**30) // (DIM * 4)
    nbytes = rows * DIM * 4
    rng = np.random.default_rng(2026)
    directory = tempfile.mkdtemp(prefix="embserve-hugepages-", dir="/dev/shm")
    path = os.path.join(directory, "table.f32")
    try:
        plain = np.memmap(path, np.float32, "w+", shape=(rows, DIM))
        for lo in range(0, rows, 1 << 20):
            plain[lo : lo + (1 << 20)] = rng.random((min(1 << 20, rows - lo), DIM), np.float32)
        plain.flush()
        del plain
        tables: dict[str, np.ndarray] = {
            "4 KiB pages (np.memmap)": np.memmap(path, np.float32, "r", shape=(rows, DIM))
        }
        collapsed, collapse_s, note = _map_collapsed(path, nbytes)
        tables["2 MiB pages (mapped file, collapsed)"] = collapsed
        tables["2 MiB pages (anonymous copy)"] = np.array(tables["4 KiB pages (np.memmap)"])
        pmd_kib = _pmd_mapped_kib()

        config = es.TableConfig(vocabulary_size=rows, dim=DIM, name="t")
        onehot_fc = {f"f{i:02d}": es.FeatureConfig(table=config) for i in range(26)}
        bag_fc = {"bag": es.FeatureConfig(table=config)}
        onehot = [{k: rng.integers(0, rows, 1024) for k in onehot_fc} for _ in range(8)]
        bags = []
        for _ in range(8):
            lengths = rng.integers(1, 41, 1024)
            splits = np.concatenate([[0], np.cumsum(lengths)])
            values = rng.integers(0, rows, int(splits[-1]))
            bags.append({"bag": es.RaggedTensor.from_row_splits(values, splits)})
        workloads = {
            "26 one-hot × B=1024": (onehot_fc, onehot),
            "bags of 1–40, B=1024, sum": (bag_fc, bags),
        }
        times: dict[tuple[str, str], list[int]] = {}
        reference: dict[str, Any] = {}
        for wname, (fc, batches) in workloads.items():
            for table in tables.values():
                out = es.serving_embedding_lookup(batches[0], None, {config: table}, fc)
                first = next(iter(out.values()))
                if wname in reference:
                    np.testing.assert_array_equal(first, reference[wname])
                reference[wname] = first
        for _ in range(args.rounds):
            for wname, (fc, batches) in workloads.items():
                for tname, table in tables.items():
                    mapping = {config: table}
                    for batch in batches:
                        t0 = time.perf_counter_ns()
                        out = es.serving_embedding_lookup(batch, None, mapping, fc)
                        times.setdefault((wname, tname), []).append(time.perf_counter_ns() - t0)
                        del out
        lines = [
            f"## {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: page size under a "
            "mapped table (`huge_pages.py`)",
            "",
            f"Command: `.venv/bin/python benchmarks/huge_pages.py --gib {args.gib:g}"
            f"{' --write' if args.write else ''}`",
            "",
            f"- nproc {os.cpu_count()}, CPU {cpu_model()}, python {platform.python_version()}, "
            f"kernel {platform.release()}, embserve tree: git {git_commit()}",
            f"- one {nbytes / 2**30:.2f} GiB float32 table ({rows:,} × {DIM}) in /dev/shm; "
            f"MADV_COLLAPSE: {note} in {collapse_s:.1f} s, {pmd_kib / 2**20:.2f} GiB "
            "PMD-mapped afterwards",
            f"- {args.rounds} interleaved rounds × 8 distinct batches per cell; outputs of the "
            "three mappings checked equal",
            "",
            "| workload | table memory | median µs | min µs | vs 4 KiB pages |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for wname in workloads:
            base = statistics.median(times[(wname, next(iter(tables)))])
            for tname in tables:
                ts = times[(wname, tname)]
                med = statistics.median(ts)
                lines.append(
                    f"| {wname} | {tname} | {med / 1e3:,.0f} | {min(ts) / 1e3:,.0f} | "
                    f"{base / med:.2f}× |"
                )
        lines += [
            "",
            "Same data, same kernels, same process: only the page size under the table differs. "
            "Collapsing costs seconds per GiB (a copy inside the kernel), which is why embserve "
            "does not do it at restore (restores stay O(1)).",
            "",
        ]
        report = "\n".join(lines)
        print(report)
        if args.write:
            insert_results(report)
    finally:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
