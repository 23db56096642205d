"""Quantized tables (issue 12): lookup speed and resident memory per storage type, against PyTorch.

What it does. One random float32 table of ``[rows, 64]`` (4,000,000 rows = 1 GiB, far larger
than the 32 MiB L3; and a cache-resident one of 4,096 rows = 1 MiB) is quantized with
``embserve.storage.quantize_rows`` to float16, bfloat16, int8 and int4; each storage type's rows
go to their own file in /dev/shm, which every worker maps (the same physical pages for everyone,
4 KiB page-table entries, as ``run.py``'s np.memmap contestants). Two workloads per table:

* ``onehot``: 26 one-hot features × B=1024 (W1-like; here all 26 read the one table), Zipf ids;
* ``bags``: B=1024 bags of 1–40 Zipf ids, combiner sum (W2-like).

Contestants, each library in its own spawned worker process (thread pools apart), driven
round-robin by the parent with the order rotated every round:

* ``embserve <type>``: ``embserve.lookup.LookupPlan(feature_config).run(inputs, None, tables)``
  (what ``es.serving_embedding_lookup`` runs, with the plan built once, as
  ``TPUEmbeddingForServing`` keeps it), the table a plain float32 array or a
  ``embserve.storage.QuantizedTable`` over the mapped rows (``check=False``: the parent wrote
  them), so the kernels widen the stored rows and no float32 copy exists;
* ``torch float32``: ``torch.nn.functional.embedding_bag`` on the float32 file's pages;
* ``torch int8`` / ``torch int4``: ``torch.ops.quantized.embedding_bag_byte_rowwise_offsets`` /
  ``embedding_bag_4bit_rowwise_offsets`` on the SAME bytes embserve reads (embserve's int8 / int4
  rows are FBGEMM's fused row-wise layouts; ``QuantizedTable.data`` is handed over unchanged).

Every contestant's outputs of two batches are checked before timing against a float64
reference computed from ``embserve.storage.dequantize_rows`` of the same stored rows (relative
1e-5 of the summed magnitudes: accumulation order and FBGEMM's fused multiply-adds differ).

Reported: per workload, table and contestant the median call (µs), the paired ratios (per round,
one contestant's median over another's in the same round, then the median and quartiles over
rounds; drifts of the shared machine cancel): torch's quantized op / embserve on the same bytes
(aim ≥ 1.3), embserve float32 / embserve type (aim > 1 on the large table), torch float32 /
embserve float32. Memory: after the timings the embserve worker reads every row of every table
once (a lookup of all ids) and reports, per storage type, the stored bytes, the resident kB of
its mapping (/proc/self/smaps) and the growth of the process's private memory (``RssAnon``) from
before the tables were mapped: a float32 copy would show there (aim: resident within 5 % of the
stored bytes). The page settings (transparent huge pages) are recorded.

Usage::

    .venv/bin/python benchmarks/quantized.py            # a few minutes
    .venv/bin/python benchmarks/quantized.py --quick    # seconds (tests/test_benchmarks.py)
    .venv/bin/python benchmarks/quantized.py --write    # ... and append to RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from _common import RESULTS_PATH, cpu_model, git_commit
from run import _mapping_pages, page_settings

DIM = 64
N_ONEHOT = 26
SEED = 20_251_205
TYPES = ("float32", "float16", "bfloat16", "int8", "int4")
TORCH_VARIANTS = ("float32", "int8", "int4")
SETTLE_S = 0.03  # idle OpenMP pools spin for milliseconds after a turn (see run.py)


@dataclass(frozen=True)
class Sizes:
    """How big everything is."""

    big_rows: int  # larger than every cache
    small_rows: int  # cache-resident
    batch: int
    n_batches: int  # distinct batches cycled through, so the big table's rows are not cached
    rounds: int
    reps: int  # timed calls per contestant per round


FULL = Sizes(big_rows=4_000_000, small_rows=4096, batch=1024, n_batches=16, rounds=12, reps=8)
QUICK = Sizes(big_rows=20_000, small_rows=1024, batch=64, n_batches=2, rounds=2, reps=2)


def _log(message: str) -> None:
    print(f"[quantized {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Tables and inputs (parent)
# --------------------------------------------------------------------------------------------


def _write_tables(directory: str, name: str, rows: int) -> dict[str, str]:
    """Random float32 rows (normal, scaled like trained embeddings) and every storage type's
    stored rows, each in its own file, quantized block by block; returns type → path."""
    from embserve.storage import quantize_rows, row_bytes, storage_dtype

    paths = {t: os.path.join(directory, f"{name}.{t}") for t in TYPES}
    files = {}
    for t in TYPES:
        width = DIM if t in ("float32", "float16", "bfloat16") else row_bytes(t, DIM)
        files[t] = np.lib.format.open_memmap(
            paths[t], mode="w+", dtype=storage_dtype(t) if t != "float32" else np.float32,
            shape=(rows, width),
        )  # fmt: skip
    rng = np.random.default_rng(SEED + rows)
    block = 1 << 18
    for lo in range(0, rows, block):
        hi = min(rows, lo + block)
        values = (rng.standard_normal((hi - lo, DIM), dtype=np.float32) * 0.05).astype(np.float32)
        files["float32"][lo:hi] = values
        for t in TYPES[1:]:
            files[t][lo:hi] = quantize_rows(values, t, table=name, first_row=lo)
    for array in files.values():
        array.flush()
    return paths


def _open_table(path: str) -> np.ndarray:
    """A read-only map of one stored-rows file (.npy: the header is skipped, no copy)."""
    return np.load(path, mmap_mode="r").view(np.ndarray)


def _zipf_ids(rng: np.random.Generator, rows: int, n: int, cdf: np.ndarray, perm: np.ndarray):  # type: ignore[no-untyped-def]
    ranks = np.searchsorted(cdf, rng.random(n), side="right")
    return perm[np.minimum(ranks, rows - 1)].astype(np.int64)


def _inputs(sizes: Sizes, rows: int, seed: int) -> dict[str, list[Any]]:
    """Per workload, ``n_batches`` batches: one-hot → 26 id arrays; bags → (ids, row_splits)."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(np.arange(1, rows + 1, dtype=np.float64) ** -1.05)
    cdf /= cdf[-1]
    perm = rng.permutation(rows)
    b = sizes.batch
    onehot = [
        [_zipf_ids(rng, rows, b, cdf, perm) for _ in range(N_ONEHOT)]
        for _ in range(sizes.n_batches)
    ]
    bags = []
    for _ in range(sizes.n_batches):
        lengths = rng.integers(1, 41, size=b)
        splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        bags.append((_zipf_ids(rng, rows, int(splits[-1]), cdf, perm), splits))
    return {"onehot": onehot, "bags": bags}


def _reference(workload: str, table64: np.ndarray, batch: Any) -> np.ndarray:
    """float64 expected output: 26 stacked gathers, or bag sums."""
    if workload == "onehot":
        return np.stack([table64[ids] for ids in batch])
    ids, splits = batch
    return np.add.reduceat(table64[ids], splits[:-1], axis=0)


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------


def _embserve_calls(
    paths: dict[str, dict[str, str]], inputs: dict[str, dict[str, list[Any]]]
) -> tuple[dict[tuple[str, str, str], tuple[Callable[[Any], Any], list[Any]]], dict[str, Any]]:
    """Per (table, workload, type): a call and its inputs; and the tables (for memory)."""
    import embserve as es
    from embserve.lookup import LookupPlan
    from embserve.storage import QuantizedTable

    calls = {}
    served: dict[str, Any] = {}
    for table_name, by_type in paths.items():
        for t, path in by_type.items():
            data = _open_table(path)
            rows = data.shape[0]
            table: Any = (
                data
                if t == "float32"
                else QuantizedTable(data, t, DIM, name=f"{table_name}.{t}", check=False)
            )
            served[f"{table_name}.{t}"] = table
            config = es.TableConfig(vocabulary_size=rows, dim=DIM, name=table_name, combiner="sum")
            keys = [f"f{i:02d}" for i in range(N_ONEHOT)]
            onehot_plan = LookupPlan({k: es.FeatureConfig(table=config) for k in keys})
            bag_plan = LookupPlan({"f": es.FeatureConfig(table=config)})
            tables = {config: table}
            onehot_inputs = [dict(zip(keys, b, strict=True)) for b in inputs[table_name]["onehot"]]
            bag_inputs = [
                {"f": es.RaggedTensor.from_row_splits(ids, splits)}
                for ids, splits in inputs[table_name]["bags"]
            ]

            def onehot(x: Any, plan: Any = onehot_plan, tables: Any = tables) -> Any:
                return plan.run(x, None, tables)  # {feature: [B, 64]}; stacked when checked

            def bags(x: Any, plan: Any = bag_plan, tables: Any = tables) -> Any:
                return plan.run(x, None, tables)["f"]

            calls[table_name, "onehot", f"embserve {t}"] = (onehot, onehot_inputs)
            calls[table_name, "bags", f"embserve {t}"] = (bags, bag_inputs)
    return calls, served


def _torch_calls(
    paths: dict[str, dict[str, str]], inputs: dict[str, dict[str, list[Any]]]
) -> dict[tuple[str, str, str], tuple[Callable[[Any], Any], list[Any]]]:
    """Per (table, workload, variant): torch float32 embedding_bag, and FBGEMM's row-wise ops on
    the int8 / int4 files' bytes."""
    import torch

    torch.set_num_threads(_threads())
    torch.set_grad_enabled(False)
    ops = torch.ops.quantized
    calls = {}
    for table_name, by_type in paths.items():
        for t in TORCH_VARIANTS:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "The given NumPy array is not writable")
                weight = torch.from_numpy(_open_table(by_type[t]))
            if t == "float32":

                def bag(w: Any, ids: Any, offsets: Any, last: bool) -> Any:
                    return torch.nn.functional.embedding_bag(
                        ids, w, offsets, mode="sum", include_last_offset=last
                    )
            else:
                op = (
                    ops.embedding_bag_byte_rowwise_offsets
                    if t == "int8"
                    else ops.embedding_bag_4bit_rowwise_offsets
                )

                def bag(w: Any, ids: Any, offsets: Any, last: bool, op: Any = op) -> Any:
                    return op(w, ids, offsets, mode=0, include_last_offset=last)

            batch = len(inputs[table_name]["onehot"][0][0])
            arange = torch.arange(batch, dtype=torch.int64)
            onehot_inputs = [
                [torch.from_numpy(ids) for ids in b] for b in inputs[table_name]["onehot"]
            ]
            bag_inputs = [
                (torch.from_numpy(ids), torch.from_numpy(splits))
                for ids, splits in inputs[table_name]["bags"]
            ]

            def onehot(x: Any, w: Any = weight, bag: Any = bag, offsets: Any = arange) -> Any:
                return [bag(w, ids, offsets, False) for ids in x]  # stacked when checked

            def bags(x: Any, w: Any = weight, bag: Any = bag) -> Any:
                return bag(w, x[0], x[1], True)

            calls[table_name, "onehot", f"torch {t}"] = (onehot, onehot_inputs)
            calls[table_name, "bags", f"torch {t}"] = (bags, bag_inputs)
    return calls


def _canonical(out: Any) -> np.ndarray:
    """One float32 array from a call's result (never timed): a dict of per-feature outputs
    (embserve one-hot, in feature order) or a list of tensors (torch one-hot) stacked."""
    if isinstance(out, dict):
        out = [out[key] for key in sorted(out)]
    if isinstance(out, list):
        return np.stack([np.asarray(x, dtype=np.float32) for x in out])
    return np.asarray(out, dtype=np.float32)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _memory_report(served: dict[str, Any], anon_before_kb: int) -> list[dict[str, Any]]:
    """Reads every row of every table once, then each table's stored bytes and the resident kB
    of its mapping, and the private memory the process gained since before the tables."""
    import embserve as es

    report = []
    for name, table in served.items():
        rows = table.shape[0]
        config = es.TableConfig(vocabulary_size=rows, dim=DIM, name=name)
        features = {"f": es.FeatureConfig(table=config)}
        step = 1 << 16
        anon_start = _status_kb("RssAnon")
        peak = anon_start
        for lo in range(0, rows, step):
            ids = np.arange(lo, min(rows, lo + step), dtype=np.int64)
            es.serving_embedding_lookup({"f": ids}, None, {config: table}, features)
            peak = max(peak, _status_kb("RssAnon"))
        data = table if isinstance(table, np.ndarray) else table.data
        pages = _mapping_pages(data)
        report.append(
            {"table": name, "stored_bytes": int(data.nbytes), "resident_kb": pages.get("Rss", 0),
             "mapped_kb": pages.get("size_kb", 0), "huge_kb": sum(pages.get(k, 0) for k in (
                 "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped")),
             "read_growth_kb": peak - anon_start}
        )  # fmt: skip
    report.append({"anon_growth_kb": _status_kb("RssAnon") - anon_before_kb})
    return report


def _threads() -> int:
    """Threads per contestant: ``--threads`` (``EMBSERVE_BENCH_THREADS``) or every usable core."""
    chosen = os.environ.get("EMBSERVE_BENCH_THREADS")
    return int(chosen) if chosen else len(os.sched_getaffinity(0))


def _worker(conn: Connection, library: str, paths: Any, inputs: Any) -> None:
    """One library's process: build its calls, check outputs on request, time turns."""
    try:
        if library == "embserve":
            import embserve  # noqa: F401  (imports and numba's pool before the baseline)
        anon_before = _status_kb("RssAnon")
        if library == "torch":
            try:
                calls = _torch_calls(paths, inputs)
            except ImportError as exc:
                conn.send(("unavailable", str(exc)))
                return
            served: dict[str, Any] = {}
            import torch

            versions = {"torch": torch.__version__, "torch threads": str(torch.get_num_threads())}
        else:
            import numba

            calls, served = _embserve_calls(paths, inputs)
            versions = {"numba": numba.__version__, "numba threads": str(numba.get_num_threads())}
        outputs = {
            key: [_canonical(call(b)) for b in batches[:2]]
            for key, (call, batches) in calls.items()
        }
        conn.send(("ready", {"versions": versions, "outputs": outputs}))
        del outputs
        while True:
            request = conn.recv()
            if request[0] == "quit":
                break
            if request[0] == "memory":
                conn.send(("ok", _memory_report(served, anon_before)))
                continue
            _, key, reps, start = request
            call, batches = calls[key]
            call(batches[(start - 1) % len(batches)])  # wakes the pool, untimed
            times = []
            for i in range(reps):
                batch = batches[(start + i) % len(batches)]
                t0 = time.perf_counter_ns()
                out = call(batch)
                times.append(time.perf_counter_ns() - t0)
                del out
            conn.send(("ok", times))
    except Exception:
        conn.send(("error", traceback.format_exc()))


# --------------------------------------------------------------------------------------------
# Driver and report
# --------------------------------------------------------------------------------------------


def _ask(conn: Connection, *request: Any) -> Any:
    conn.send(request)
    status, reply = conn.recv()
    if status != "ok":
        raise RuntimeError(f"worker failed:\n{reply}")
    return reply


def _check(key: Any, got: list[np.ndarray], refs: list[np.ndarray]) -> None:
    """Outputs within 1e-5 of the summed magnitudes of the float64 reference (order of the
    additions and FBGEMM's fused multiply-adds differ; a wrong row is off by far more)."""
    for out, ref in zip(got, refs, strict=True):
        if out.shape != ref.shape:
            raise AssertionError(f"{key}: shape {out.shape}, expected {ref.shape}")
        scale = np.abs(ref).max() + 1e-30
        worst = float(np.abs(out - ref).max() / scale)
        if worst > 1e-5:
            raise AssertionError(f"{key}: off the reference by {worst:.2e} of its magnitude")


def _paired(a: list[float], b: list[float]) -> str:
    """median (quartiles) of b[i] / a[i]."""
    ratios = [y / x for x, y in zip(a, b, strict=True)]
    if len(ratios) < 2:
        return f"{ratios[0]:.2f}×"
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"{statistics.median(ratios):.2f}× ({q1:.2f}–{q3:.2f})"


def run(quick: bool) -> str:
    """Writes the tables, runs every contestant interleaved; returns the markdown section."""
    from embserve.storage import dequantize_rows

    sizes = QUICK if quick else FULL
    load_before = os.getloadavg()[0]
    directory = tempfile.mkdtemp(prefix=f"embserve-quantized-{os.getpid()}-", dir="/dev/shm")
    workers: dict[str, tuple[Any, Connection]] = {}
    try:
        table_rows = {"large": sizes.big_rows, "cached": sizes.small_rows}
        t0 = time.perf_counter()
        paths = {}
        for name, rows in table_rows.items():
            _log(f"writing and quantizing table {name} ({rows:,} x {DIM})")
            paths[name] = _write_tables(directory, name, rows)
        write_s = time.perf_counter() - t0
        inputs = {
            name: _inputs(sizes, rows, SEED + i)
            for i, (name, rows) in enumerate(table_rows.items())
        }
        context = mp.get_context("spawn")
        notes: list[str] = []
        versions: dict[str, str] = {}
        outputs: dict[Any, list[np.ndarray]] = {}
        for library in ("embserve", "torch"):
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker, args=(child, library, paths, inputs), daemon=True
            )
            process.start()
            child.close()
            status, info = parent.recv()
            if status == "unavailable":
                notes.append(f"{library} left out: {info}")
                process.join(10)
                continue
            if status != "ready":
                raise RuntimeError(f"{library} worker failed:\n{info}")
            versions.update(info["versions"])
            outputs.update(info["outputs"])
            workers[library] = (process, parent)
        _log("checking every contestant's outputs against the float64 reference")
        for name in table_rows:
            for t in TYPES:
                stored = _open_table(paths[name][t])
                table64 = (
                    np.asarray(stored, np.float64)
                    if t == "float32"
                    else dequantize_rows(np.asarray(stored), t, DIM).astype(np.float64)
                )
                for workload in ("onehot", "bags"):
                    refs = [_reference(workload, table64, b) for b in inputs[name][workload][:2]]
                    for who in (f"embserve {t}", f"torch {t}"):
                        if (name, workload, who) in outputs:
                            _check((name, workload, who), outputs[name, workload, who], refs)
                del table64
        turns = [
            (key, library)
            for library, (_, conn) in workers.items()
            for key in sorted(outputs)
            if key[2].startswith(library)
        ]
        medians: dict[Any, list[float]] = {key: [] for key, _ in turns}
        for r in range(sizes.rounds):
            _log(f"round {r + 1} / {sizes.rounds}")
            shift = (r * 7) % len(turns)
            for key, library in turns[shift:] + turns[:shift]:
                time.sleep(SETTLE_S)
                times = _ask(workers[library][1], "run", key, sizes.reps, r * sizes.reps)
                medians[key].append(statistics.median(times))
        memory = _ask(workers["embserve"][1], "memory")
    finally:
        for process, conn in workers.values():
            with contextlib.suppress(OSError):
                conn.send(("quit",))
            process.join(10)
            if process.is_alive():
                process.terminate()
        shutil.rmtree(directory, ignore_errors=True)

    notes.append(
        f"1-minute load average {load_before:.2f} before the run, {os.getloadavg()[0]:.2f} "
        "after (2 cores shared with other work)"
    )
    return _report(sizes, table_rows, medians, memory, versions, notes, write_s, quick)


def _report(
    sizes: Sizes,
    table_rows: dict[str, int],
    medians: dict[Any, list[float]],
    memory: list[dict[str, Any]],
    versions: dict[str, str],
    notes: list[str],
    write_s: float,
    quick: bool,
) -> str:
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join([".venv/bin/python", "benchmarks/quantized.py", *sys.argv[1:]])
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    lines = [
        f"## {date}: quantized tables, speed and memory (`quantized.py`)"
        + (" (--quick smoke run)" if quick else ""),
        "",
        f"Command: `{command}`",
        "",
        f"- nproc {os.cpu_count()}, CPU {cpu_model()}, RAM {mem_kib / 2**20:.1f} GiB",
        f"- pages: {page_settings()}",
        f"- python {platform.python_version()}, numpy {np.__version__}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- embserve tree: git {git_commit()}",
        f"- tables: large {table_rows['large']:,} × {DIM}, cached {table_rows['cached']:,} × "
        f"{DIM}; B={sizes.batch}, {sizes.n_batches} distinct batches cycled, {sizes.rounds} "
        f"rounds × {sizes.reps} calls per contestant, order rotated per round; tables written "
        f"and quantized in {write_s:.1f} s",
        "",
        "| table | workload | contestant | median µs | torch's op / this (same bytes) | "
        "embserve float32 / this | torch float32 / this |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    verdicts: dict[str, list[float]] = {"torch": [], "f32": []}
    for name in table_rows:
        for workload in ("onehot", "bags"):
            es32 = medians.get((name, workload, "embserve float32"))
            t32 = medians.get((name, workload, "torch float32"))
            for who in [f"embserve {t}" for t in TYPES] + [f"torch {t}" for t in TORCH_VARIANTS]:
                mine = medians.get((name, workload, who))
                if mine is None:
                    continue
                t = who.split()[1]
                torch_same = medians.get((name, workload, f"torch {t}"))
                vs_torch = (
                    _paired(mine, torch_same)
                    if who.startswith("embserve") and torch_same and t in ("int8", "int4")
                    else ""
                )
                vs_f32 = _paired(mine, es32) if es32 and who.startswith("embserve") else ""
                vs_t32 = _paired(mine, t32) if t32 and who == "embserve float32" else ""
                if vs_torch:
                    verdicts["torch"].append(
                        statistics.median(
                            [b / a for a, b in zip(mine, torch_same or [], strict=True)]
                        )
                    )
                if vs_f32 and name == "large" and t != "float32":
                    verdicts["f32"].append(
                        statistics.median([b / a for a, b in zip(mine, es32 or [], strict=True)])
                    )
                lines.append(
                    f"| {name} | {workload} | {who} | {statistics.median(mine) / 1e3:,.1f} | "
                    f"{vs_torch} | {vs_f32} | {vs_t32} |"
                )
    lines += [
        "",
        "Ratios are paired: per round, the other contestant's median call over this one's in the "
        "same round; the median over rounds and the quartiles (> 1: this one is faster). "
        "onehot = 26 one-hot features of B ids on the table (torch: 26 embedding_bag calls "
        "with one id per bag); bags = B bags of 1–40 Zipf ids, sum. Outputs are stacked into one "
        "array only for the check, never in a timed call.",
    ]
    if verdicts["torch"]:
        worst = min(verdicts["torch"])
        lines.append(
            f"- int8 / int4 at least 1.3× torch's quantized ops: worst {worst:.2f}× — "
            + ("met" if worst >= 1.3 else "**not met**")
        )
    if verdicts["f32"]:
        worst = min(verdicts["f32"])
        lines.append(
            f"- every quantized type faster than embserve float32 on the large table: worst "
            f"{worst:.2f}× — " + ("met" if worst > 1 else "**not met**")
        )
    lines += [
        "",
        "Memory after reading every row of every table once (embserve worker):",
        "",
        "| table | stored bytes | resident kB of its mapping | resident / stored | on 2 MiB "
        "entries kB | private kB gained reading it |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    growth = None
    worst_mem = 0.0
    for entry in memory:
        if "anon_growth_kb" in entry:
            growth = entry["anon_growth_kb"]
            continue
        ratio = entry["resident_kb"] * 1024 / entry["stored_bytes"]
        if entry["table"].startswith("large."):  # the cached table's bytes are a few pages
            worst_mem = max(worst_mem, abs(ratio - 1))
        lines.append(
            f"| {entry['table']} | {entry['stored_bytes']:,} | {entry['resident_kb']:,} | "
            f"{ratio:.3f} | {entry['huge_kb']:,} | {entry['read_growth_kb']:,} |"
        )
    lines += [
        "",
        f"- resident memory of the large served tables within 5 % of the stored bytes: worst "
        f"{100 * worst_mem:.1f} % off — " + ("met" if worst_mem <= 0.05 else "**not met**"),
        "- private kB gained reading it: the peak growth of the worker's RssAnon while every "
        "row of that table was looked up once, 65,536 ids per call (a float32 copy of the large "
        f"table would be {table_rows['large'] * DIM * 4 // 1024:,} kB; one call's output is "
        f"{min(65536, table_rows['large']) * DIM * 4 // 1024:,} kB)",
        f"- the worker's RssAnon from after importing embserve to the end: +{growth or 0:,} kB "
        "(compiled kernels, inputs, the output buffers each lookup plan keeps for reuse)",
        *[f"- {note}" for note in notes],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--write", action="store_true", help="append the section to RESULTS.md")
    parser.add_argument(
        "--threads", type=int, help="threads per contestant (default: every usable core)"
    )
    args = parser.parse_args(argv)
    if args.threads:  # read by the spawned workers (numba sizes its pool at import)
        os.environ["EMBSERVE_BENCH_THREADS"] = str(args.threads)
        os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    section = run(args.quick)
    print(section)
    if args.write:
        with open(RESULTS_PATH, "a") as f:
            f.write("\n" + section)
        print(f"appended to {RESULTS_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
